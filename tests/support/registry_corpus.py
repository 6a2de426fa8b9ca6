"""Istio's FakeDiscoveryServer inputs (../shared/corpus/istio/tests/testdata/networking/*)
through meshd: what the parse gate makes of each document, and what the proxy Istio's
lds_test connects gets from meshd's generators.

`python -m tests.support.registry_corpus` prints the table of docs/registry-corpus.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from controlplane import names
from controlplane.config.objects import Origin, Rejection
from controlplane.config.parse import Unsupported, parse_document
from controlplane.config.store import ConfigStore
from controlplane.generators import builders
from controlplane.model.mesh import MeshSnapshot, build_mesh
from controlplane.model.meshconfig import DEFAULT as DEFAULT_MESH_CONFIG
from controlplane.model.proxy import parse_node
from controlplane.sources.yamlfile import load_documents

from .paths import SHARED

NETWORKING = SHARED / "corpus" / "istio" / "tests" / "testdata" / "networking"


def _pod(name: str, ns: str, ip: str, labels: dict[str, str]) -> str:
    lab = ", ".join(f"{k}: {v}" for k, v in labels.items())
    return (f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{lab}}}}}\n"
            f"spec: {{containers: [{{name: app}}]}}\nstatus: {{podIP: {ip}}}\n")


@dataclass(frozen=True)
class Case:
    name: str  # the directory under networking/
    node_id: str  # the proxy Istio's lds_test connects
    metadata: dict = field(default_factory=dict)
    root_namespace: str = "istio-system"
    # What Istio's test adds outside the files (MemRegistry.AddWorkload): Pods for meshd.
    supplement: str = ""
    istio_expects: str = ""  # Istio's assertions on that proxy (pilot/pkg/xds/lds_test.go)

    @property
    def path(self):
        return NETWORKING / self.name / "configs.yaml"


CASES = (
    Case("envoyfilter-without-service", "sidecar~98.1.1.1~envoyfilter-test.consumerns~consumerns.svc.cluster.local",
         {"NAMESPACE": "consumerns", "LABELS": {"app": "envoyfilter-test-app", "some": "otherlabel"}},
         supplement=_pod("envoyfilter-test", "consumerns", "98.1.1.1",
                         {"app": "envoyfilter-test-app", "some": "otherlabel"}),
         istio_expects="TestLDSEnvoyFilterWithWorkloadSelector: one HTTP listener 0.0.0.0_8081 whose HTTP filters "
                       "include envoy.lua for this workload only"),
    Case("ingress-gateway", "router~99.1.1.1~istio-ingressgateway-0.istio-system~istio-system.svc.cluster.local",
         {"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}}, root_namespace="istio-config",
         istio_expects="TestLDSWithIngressGateway: 2 listeners (80, 443); 0.0.0.0_443 has 3 filter chains"),
    Case("sidecar-ns-scope", "sidecar~100.1.1.2~http2.ns1~ns1.svc.cluster.local", {"NAMESPACE": "ns1"},
         root_namespace="istio-config",
         istio_expects="TestLDSWithDefaultSidecar: 4 listeners, 9 clusters (CDS+EDS), route 8080 with 3 virtual hosts "
                       "(one of them from Istio's in-memory registry)"),
    Case("sidecar-without-service", "sidecar~98.1.1.1~consumer.consumerns~consumerns.svc.cluster.local",
         {"NAMESPACE": "consumerns", "LABELS": {"app": "consumeronly"}}, root_namespace="istio-config",
         supplement=_pod("consumer", "consumerns", "98.1.1.1", {"app": "consumeronly"}),
         istio_expects="TestLDSWithSidecarForWorkloadWithoutService: HTTP listeners 0.0.0.0_8081 (1 filter chain) and "
                       "virtualInbound; exactly one EDS cluster, outbound|8081||http1.ns1.svc.cluster.local"),
)


@dataclass
class Outcome:
    documents: list[tuple[str, str]]  # ("Kind ns/name", "served" | "unsupported: why" | "rejected: why")
    services: list[str]
    listeners: dict[str, int]  # name -> filter chains
    chain_ports: dict[str, list[int]]  # listener -> the destination ports its filter chains match
    clusters: list[str]
    routes: dict[str, int]  # route configuration -> virtual hosts


def _label(doc: object) -> str:
    d = doc if isinstance(doc, dict) else {}
    md = d.get("metadata") if isinstance(d.get("metadata"), dict) else {}
    ns = f"{md.get('namespace')}/" if md.get("namespace") else ""
    return f"{d.get('kind')} {ns}{md.get('name')}"


def load(files: list[tuple[str, bytes]], root_namespace: str = "istio-system",
         reported: str = "") -> tuple[list[tuple[str, str]], MeshSnapshot]:
    """`files` ((location, content)) through the parse gate and the store into a mesh; what
    the gate made of each document of the `reported` location."""
    store = ConfigStore()
    documents: list[tuple[str, str]] = []
    for location, data in files:
        items = []
        for i, doc in enumerate(load_documents(data)):
            if doc is None:  # an empty document (a trailing `---`)
                continue
            parsed = parse_document(doc, Origin("file", location, i))
            if location == reported:
                if isinstance(parsed, Rejection):
                    documents.append((_label(doc), f"rejected: {parsed.message()}"))
                elif isinstance(parsed, Unsupported):
                    documents.append((_label(doc), f"unsupported: {parsed.reason}"))
                else:
                    documents.append((_label(doc), "served"))
            if parsed is not None:
                items.append(parsed)
        store.replace_location(location, items)
    seen = {o for _, o in documents}
    for r in store.rejections():  # conflicts the store found between documents
        if f"rejected: {r.message()}" not in seen:
            documents.append((str(r.origin), f"rejected: {r.message()}"))
    mesh_config = dataclasses.replace(DEFAULT_MESH_CONFIG, root_namespace=root_namespace)
    return documents, build_mesh(store.snapshot(), mesh_config=mesh_config)


def run(case: Case) -> Outcome:
    """The case's file through the parse gate, the store and the mesh model, then the
    generators for its proxy."""
    corpus_file = f"{case.name}/configs.yaml"
    documents, mesh = load([(corpus_file, case.path.read_bytes()), ("supplement", case.supplement.encode())],
                           case.root_namespace, corpus_file)
    proxy = parse_node(case.node_id, case.metadata)
    table = builders()
    built = [m for _, m in table[names.LISTENER](mesh, proxy)]
    listeners = {m.name: len(m.filter_chains) for m in built}
    chain_ports = {m.name: sorted({c.filter_chain_match.destination_port.value for c in m.filter_chains
                                   if c.filter_chain_match.HasField("destination_port")}) for m in built}
    clusters = sorted(m.name for _, m in table[names.CLUSTER](mesh, proxy))
    routes = {m.name: len(m.virtual_hosts) for _, m in table[names.ROUTE](mesh, proxy)}
    services = sorted(f"{s.hostname} ({s.source})" for s in mesh.services.values())
    return Outcome(documents, services, listeners, chain_ports, clusters, routes)


def markdown() -> str:
    rows = ["| input | documents through the parse gate | services | the proxy Istio's test connects gets | "
            "Istio's test expects |", "|---|---|---|---|---|"]
    for case in CASES:
        out = run(case)
        docs = "<br>".join(f"{d}: {o}" for d, o in out.documents)
        services = "<br>".join(out.services) or "none"
        got = (f"`{case.node_id.split('~')[0]}` {case.node_id.split('~')[1]}: "
               f"{len(out.listeners)} listeners ({', '.join(f'{k} [{v}]' for k, v in sorted(out.listeners.items()))}); "
               f"{len(out.clusters)} clusters ({', '.join(out.clusters)}); "
               f"routes {', '.join(f'{k} [{v} vhosts]' for k, v in sorted(out.routes.items())) or 'none'}")
        cells = [case.name, docs, services, got, case.istio_expects]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")  # cluster names hold `|`
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    import sys

    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # the table alone on stdout
    print(markdown(), end="")
