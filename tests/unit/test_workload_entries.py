"""WorkloadEntry and WorkloadGroup: Istio's validation fixtures through the parse gate, the
typed readings, and WorkloadEntries as endpoints of the Kubernetes Services selecting them
(model/workloads.py, as istiod's kube controller adds workload instances), with the
EndpointSlice fast path of build_mesh keeping them."""
from __future__ import annotations

import re

import yaml

from controlplane.config import kinds
from controlplane.config.store import ConfigStore
from controlplane.model.mesh import MeshSnapshot, build_mesh
from controlplane.model.proxy import parse_node
from tests.support.configs import mesh_from_yaml, objects_from_yaml
from tests.support.paths import shared

FIXTURES = ("corpus", "istio", "pkg", "config", "validation", "testdata", "crds")


def fixture_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(shared(*FIXTURES, name).read_text()) if isinstance(d, dict)]


def check_fixtures(prefix: str, kind: kinds.Kind, valid: int, invalid: int) -> None:
    from controlplane.config.validation import validate

    docs = fixture_docs(f"{prefix}-valid.yaml")
    assert len(docs) == valid
    for doc in docs:
        assert validate(doc, kind) == [], doc["metadata"]["name"]
    docs = fixture_docs(f"{prefix}-invalid.yaml")
    assert len(docs) == invalid
    for doc in docs:
        expected = doc.pop("_err")
        errs = validate(doc, kind)
        path = re.match(r"^(spec[\w.\[\]]*)(:| in body)", expected)
        if path:
            assert any(e.field == path.group(1) for e in errs), (expected, [str(e) for e in errs])
        else:
            assert any(expected in str(e) for e in errs), (expected, [str(e) for e in errs])


def test_istios_workload_entry_fixtures():
    check_fixtures("workloadentry", kinds.WORKLOAD_ENTRY, valid=5, invalid=7)


def test_istios_workload_group_fixtures():
    check_fixtures("workloadgroup", kinds.WORKLOAD_GROUP, valid=2, invalid=3)


def test_istios_workload_rules_beyond_the_schema_name_the_field():
    from controlplane.config.validation import validate

    def errors(spec: dict, kind: kinds.Kind = kinds.WORKLOAD_ENTRY) -> list[str]:
        doc = {"apiVersion": "networking.istio.io/v1", "kind": kind.kind, "metadata": {"name": "x", "namespace": "a"},
               "spec": spec}
        return [str(e) for e in validate(doc, kind)]

    assert any(e.startswith("spec.address: ") and "not a valid FQDN or an IP address" in e
               for e in errors({"address": "bad_host"}))
    assert errors({"address": "1.1.1.1", "labels": {"app": "a b"}}) == ['spec.labels[app]: Invalid value: invalid label value: "a b"']
    # What the CRD's schema already says, it says first (as the API server would).
    assert errors({}, kinds.WORKLOAD_GROUP) == ["spec.template: Required value"]
    assert errors({"template": {}, "probe": {"periodSeconds": -1, "tcpSocket": {"port": 80}}}, kinds.WORKLOAD_GROUP) == [
        "spec.probe.periodSeconds: Invalid value: -1: must be greater than or equal to 0"]
    assert errors({"template": {}, "probe": {"exec": {}}}, kinds.WORKLOAD_GROUP) == ["spec.probe.exec.command: Required value"]
    assert errors({"template": {}, "probe": {"periodSeconds": 1}}, kinds.WORKLOAD_GROUP) == [
        "spec.probe: unknown health check method: one of httpGet, tcpSocket or exec is required"]


def test_the_typed_readings():
    entry, group = objects_from_yaml("""
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: shop}
spec: {address: 10.3.0.5, ports: {http: 9090}, labels: {app: vm}, network: vpc, locality: r/z, weight: 2,
       serviceAccount: vm}
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: vms, namespace: shop}
spec:
  metadata: {labels: {app: vm}, annotations: {a: b}}
  template: {serviceAccount: vm, network: vpc}
  probe: {periodSeconds: 5, httpGet: {path: /ready, port: 8080, httpHeaders: [{name: x-probe, value: "1"}]}}
""")
    we = entry.typed
    assert (we.address, dict(we.ports), we.network, we.locality, we.weight, we.service_account) == (
        "10.3.0.5", {"http": 9090}, "vpc", "r/z", 2, "vm")
    wg = group.typed
    assert (dict(wg.labels), dict(wg.annotations), wg.template.service_account, wg.template.network) == (
        {"app": "vm"}, {"a": "b"}, "vm", "vpc")
    assert wg.probe.period_seconds == 5 and wg.probe.http_get.port == 8080 and wg.probe.http_get.path == "/ready"
    assert [(h.name, h.value) for h in wg.probe.http_get.headers] == [("x-probe", "1")]


# --- Kubernetes Services select WorkloadEntries --------------------------------------------------

def service(ports: str, selector: str = "app: cart") -> str:
    return (f"apiVersion: v1\nkind: Service\nmetadata: {{name: cart, namespace: shop}}\n"
            f"spec: {{clusterIP: 10.96.0.7, selector: {{{selector}}}, ports: {ports}}}\n")


def entry(name: str, body: str, ns: str = "shop") -> str:
    return f"apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}"


POD = """apiVersion: v1
kind: Pod
metadata: {name: cart-1, namespace: shop, labels: {app: cart, security.istio.io/tlsMode: istio}}
spec: {serviceAccountName: cart, containers: [{name: app, ports: [{name: web, containerPort: 8080}]}]}
status: {podIP: 10.1.0.11}
"""
SLICE = """apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: cart-x, namespace: shop, labels: {kubernetes.io/service-name: cart}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: ["%s"], conditions: {ready: true}, targetRef: {kind: Pod, name: cart-1, namespace: shop}}]
"""
HOST = "cart.shop.svc.cluster.local"


def mesh(*docs: str) -> MeshSnapshot:
    return mesh_from_yaml("\n---\n".join(docs))


def endpoints(m: MeshSnapshot, port: int) -> list[tuple[str, int]]:
    return [(e.address, e.port) for e in m.service_endpoints(HOST, port)]


def test_a_service_selects_the_workload_entries_of_its_namespace_besides_its_pods():
    m = mesh(service("[{name: http, port: 80, targetPort: 8080}]"), POD,
             entry("vm-1", "  address: 10.3.0.5\n  labels: {app: cart}\n  serviceAccount: vm\n"),
             entry("vm-2", "  address: 10.3.0.6\n  labels: {app: cart}\n", ns="web"),  # another namespace
             entry("vm-3", "  address: 10.3.0.7\n  labels: {app: db}\n"),  # not selected
             entry("vm-4", "  address: vm4.example\n  labels: {app: cart}\n"),  # a DNS name: no Kubernetes endpoint
             entry("vm-5", "  address: unix:///run/app.sock\n  labels: {app: cart}\n"))  # nor a socket
    assert endpoints(m, 80) == [("10.1.0.11", 8080), ("10.3.0.5", 8080)]
    vm = m.service_endpoints(HOST, 80)[1]
    assert (vm.pod, vm.namespace, vm.service_account, vm.labels.get("security.istio.io/tlsMode")) == (
        "vm-1", "shop", "vm", "istio")
    assert m.service_accounts(HOST) == (("shop", "cart"), ("shop", "vm"))


def test_the_endpoint_port_follows_istiods_target_port_rules():
    vm = entry("vm-1", "  address: 10.3.0.5\n  labels: {app: cart}\n  ports: {http: 9090, web: 9191}\n")
    # A numeric targetPort, unless the entry names the service port.
    assert endpoints(mesh(service("[{name: http, port: 80, targetPort: 8080}]"), vm), 80) == [("10.3.0.5", 9090)]
    assert endpoints(mesh(service("[{name: other, port: 80, targetPort: 8080}]"), vm), 80) == [("10.3.0.5", 8080)]
    assert endpoints(mesh(service("[{name: other, port: 80}]"), vm), 80) == [("10.3.0.5", 80)]
    # A named targetPort: the entry's port of that name, or no endpoint at all.
    assert endpoints(mesh(service("[{name: http, port: 80, targetPort: web}]"), vm), 80) == [("10.3.0.5", 9191)]
    assert endpoints(mesh(service("[{name: http, port: 80, targetPort: admin}]"), vm), 80) == []


def test_a_vm_proxy_gets_the_instances_of_the_service_selecting_its_entry():
    m = mesh(service("[{name: http, port: 80, targetPort: 8080}]"),
             entry("vm-1", "  address: 10.3.0.5\n  labels: {app: cart}\n  serviceAccount: vm\n"))
    vm = parse_node("sidecar~10.3.0.5~vm-1.shop~shop.svc.cluster.local", {"NAMESPACE": "shop", "LABELS": {"app": "cart"}})
    assert [(i.service.hostname, i.port.port, i.endpoint.port) for i in m.instances_for(vm)] == [(HOST, 80, 8080)]


def test_an_endpoint_slice_change_keeps_the_workload_entries():
    """build_mesh's fast path recomputes a Service's endpoints with the WorkloadEntries it
    selects after an EndpointSlice change, and after a WorkloadEntry change, equal to a
    full build."""
    store = ConfigStore()
    changed: set = set()
    store.subscribe(lambda _s, keys: changed.update(keys))
    store.replace_location("svc", objects_from_yaml(service("[{name: http, port: 80, targetPort: 8080}]") + "---\n" + POD))
    store.replace_location("slice", objects_from_yaml(SLICE % "10.1.0.11", "slice"))
    store.replace_location("vm", objects_from_yaml(entry("vm-1", "  address: 10.3.0.5\n  labels: {app: cart}\n"), "vm"))
    first = build_mesh(store.snapshot())
    changed.clear()
    store.replace_location("slice", objects_from_yaml(SLICE % "10.1.0.12", "slice"))
    fast = build_mesh(store.snapshot(), previous=first, changed=frozenset(changed))
    assert fast.derived_from == first.version
    assert endpoints(fast, 80) == [("10.1.0.12", 8080), ("10.3.0.5", 8080)]
    assert fast.endpoints == build_mesh(store.snapshot()).endpoints
    assert dict(fast._instances_by_ip) == dict(build_mesh(store.snapshot())._instances_by_ip)
    changed.clear()
    store.replace_location("vm", objects_from_yaml(entry("vm-1", "  address: 10.3.0.9\n  labels: {app: cart}\n"), "vm"))
    moved = build_mesh(store.snapshot(), previous=fast, changed=frozenset(changed))
    assert moved.derived_from == fast.version
    assert endpoints(moved, 80) == [("10.1.0.12", 8080), ("10.3.0.9", 8080)]
    assert "10.3.0.5" not in moved._instances_by_ip and "10.3.0.9" in moved._instances_by_ip
    assert dict(moved._instances_by_ip) == dict(build_mesh(store.snapshot())._instances_by_ip)


# WorkloadEntry-only steps over tests/support/mesh_changes.py: each takes the fast path.
ENTRY_STEPS = [2, 3, 1, None, 0, 1, 3, None]


def test_a_workload_entry_change_derives_the_snapshot_as_a_full_build_makes_it():
    """Selected by a ServiceEntry (app: vm) or by the Kubernetes Service cart (app: cart),
    moved, relabelled, removed: the derived snapshot's endpoints, instances and every
    proxy's cache keys and output equal those of a snapshot built whole."""
    from controlplane import names
    from controlplane.generators import Generator, builders
    from controlplane.generators.resources import pack
    from tests.support import mesh_changes

    for entry_variant in (2, 0):  # the ServiceEntry selecting app: vm; then STATIC endpoints of its own
        state = {**{s: v for s, v in mesh_changes.everything().items() if not s.startswith("envoyfilter/")},
                 "serviceentry/shop/payments": entry_variant}  # the builders' output here is not patched
        world = mesh_changes.World(state)
        g = Generator()
        for variant in ENTRY_STEPS:
            previous = world.mesh
            fast = world.apply([mesh_changes.Change("workloadentry/shop/vm-1", variant)])
            full = build_mesh(world.store.snapshot())
            assert fast.derived_from == previous.version, variant
            assert fast.endpoints == full.endpoints and dict(fast._instances_by_ip) == dict(full._instances_by_ip), variant
            assert fast._workloads == full._workloads
            for proxy in mesh_changes.PROXIES:
                for t in (names.CLUSTER, names.ENDPOINT, names.LISTENER, names.ROUTE):
                    assert g.key(fast, proxy, t) == Generator().key(full, proxy, t), (variant, proxy.id, t)
                    rs = g.generate(fast, proxy, t)
                    plain = {n: pack(n, t, m).any.value for n, m in builders()[t](full, proxy)}
                    assert {n: rs[n].any.value for n in rs} == plain, (variant, proxy.id, names.SHORT[t])
