"""Generate a golden case's output: the stored input through the real parse gate, store and
mesh model, then every xDS type for each proxy, as JSON (config_dump field names)."""
from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import json_format

from controlplane import names
from controlplane.config.objects import Origin, Rejection
from controlplane.config.parse import Unsupported, parse_document
from controlplane.config.store import ConfigStore
from controlplane.generators import builders
from controlplane.generators.destinations import credential_problems
from controlplane.model.mesh import build_mesh
from controlplane.model.proxy import parse_node
from controlplane.sources.yamlfile import load_documents

from .cases import CORPUS, Case

TYPES = (("listeners", names.LISTENER), ("routes", names.ROUTE), ("clusters", names.CLUSTER),
         ("endpoints", names.ENDPOINT), ("secrets", names.SECRET))


def input_text(case: Case) -> str:
    """The corpus files, verbatim, each after a `# source:` line."""
    parts = []
    for src in case.sources:
        text = (CORPUS / src).read_text()
        if not text.endswith("\n"):
            text += "\n"
        parts.append(f"# source: corpus/{src}\n---\n{text}")
    return "---\n".join(parts)


def render(case: Case, directory: Path) -> dict[str, str]:
    """{file name: content} of the case's output, from the input stored in `directory`."""
    store = ConfigStore()
    notes: list[str] = []
    for fname in ("input.yaml", "supplement.yaml"):
        path = directory / fname
        items = []
        for i, doc in enumerate(load_documents(path.read_bytes())):
            parsed = parse_document(doc, Origin("file", fname, i))
            if isinstance(parsed, Rejection):
                notes.append("rejected: " + parsed.message())
            elif isinstance(parsed, Unsupported):
                notes.append(f"unsupported: {fname}#{i}: {parsed.key} ({parsed.api_version})")
            if parsed is not None:
                items.append(parsed)
        store.replace_location(fname, items)
        notes += [f"rejected: {r.message()}" for r in store.rejections() if r.origin.location == fname
                  and f"rejected: {r.message()}" not in notes]
    mesh = build_mesh(store.snapshot())
    notes += [f"gateway conflict: {c.message()}" for c in mesh.gateway_conflicts]
    table = builders()
    out: dict[str, str] = {}
    for proxy_spec in case.proxies:
        proxy = parse_node(proxy_spec.node_id, proxy_spec.metadata)
        # DestinationRule credentials this proxy cannot be served (its clusters are left out).
        own = [f"destination rule conflict: {p.message()} (cluster {c})" for c, p in credential_problems(mesh, proxy)]
        doc: dict = {"proxy": proxy.id, "notes": notes + own}
        for key, type_url in TYPES:
            doc[key] = [json_format.MessageToDict(msg) for _, msg in table[type_url](mesh, proxy)]
        out[f"{proxy_spec.name}.json"] = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    return out
