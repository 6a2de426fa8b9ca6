"""Build config snapshots from YAML text through the real parse path."""
from __future__ import annotations

import yaml

from controlplane.config.objects import ConfigObject, Origin, Rejection
from controlplane.config.parse import parse_document
from controlplane.config.snapshot import ConfigSnapshot
from controlplane.config.store import ConfigStore
from controlplane.model.mesh import MeshSnapshot, build_mesh


def objects_from_yaml(text: str, location: str = "test.yaml") -> list[ConfigObject]:
    out = []
    for i, doc in enumerate(yaml.safe_load_all(text)):
        parsed = parse_document(doc, Origin("file", location, i))
        if isinstance(parsed, Rejection):
            raise AssertionError(f"unexpected rejection: {parsed.message()}")
        if isinstance(parsed, ConfigObject):
            out.append(parsed)
    return out


def snapshot_from_yaml(text: str) -> ConfigSnapshot:
    store = ConfigStore()
    store.replace_location("test.yaml", objects_from_yaml(text))
    return store.snapshot()


def mesh_from_yaml(text: str) -> MeshSnapshot:
    return build_mesh(snapshot_from_yaml(text))


def unvalidated_objects(text: str, location: str = "unvalidated.yaml") -> list[ConfigObject]:
    """ConfigObjects built straight from YAML, skipping the parse gate's validation: for
    testing that a stage behaves safely on input validation would have refused."""
    out = []
    for i, doc in enumerate(d for d in yaml.safe_load_all(text) if d):
        md = doc.get("metadata") or {}
        api_version = str(doc.get("apiVersion") or "v1")
        group, _, version = api_version.rpartition("/")
        out.append(ConfigObject(
            kind=doc["kind"], group=group, version=version, namespace=str(md.get("namespace") or ""),
            name=str(md["name"]), labels=md.get("labels") or {}, annotations=md.get("annotations") or {},
            spec=doc.get("spec") or {}, origin=Origin("file", location, i), generation=f"{location}#{i}",
            extra={"creationTimestamp": str(md.get("creationTimestamp") or "")}))
    return out
