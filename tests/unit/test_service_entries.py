"""ServiceEntry: Istio's validation fixtures through the parse gate, and the Services and
endpoints it becomes in the mesh snapshot (model/service_entries.py), as istiod's
serviceentry registry converts it; the rule for a host both a Kubernetes Service and a
ServiceEntry (or two ServiceEntries) define; the Kubernetes source watching it."""
from __future__ import annotations

import asyncio
import re

import pytest
import yaml

from controlplane.config import kinds
from controlplane.config.objects import Origin, Rejection
from controlplane.config.parse import parse_document
from controlplane.config.validation import validate
from controlplane.model import protocol
from controlplane.model.mesh import MeshSnapshot
from tests.support.configs import mesh_from_yaml
from tests.support.kube_source import get, running, until
from tests.support.paths import shared

FIXTURES = ("corpus", "istio", "pkg", "config", "validation", "testdata", "crds")


def fixture_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(shared(*FIXTURES, name).read_text()) if isinstance(d, dict)]


def se(name: str, body: str, ns: str = "shop", created: str = "") -> str:
    stamp = f", creationTimestamp: \"{created}\"" if created else ""
    return f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}{stamp}}}\nspec:\n{body}"


def k8s_service(name: str, ns: str, ports: str, selector: str) -> str:
    return (f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec: {{clusterIP: 10.96.0.9, selector: {{{selector}}}, ports: {ports}}}\n")


def pod(name: str, ns: str, ip: str, labels: str, ports: str = "[]") -> str:
    return (f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n"
            f"spec: {{serviceAccountName: {name}, containers: [{{name: app, ports: {ports}}}]}}\nstatus: {{podIP: {ip}}}\n")


def workload_entry(name: str, ns: str, body: str) -> str:
    return f"apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}"


def mesh(*docs: str) -> MeshSnapshot:
    return mesh_from_yaml("\n---\n".join(docs))


def addresses(m: MeshSnapshot, host: str, port: int) -> list[tuple[str, int]]:
    return [(e.address, e.port) for e in m.service_endpoints(host, port)]


# --- validation: Istio's fixtures ------------------------------------------------------------

def test_istios_valid_service_entries_pass_the_gate():
    docs = fixture_docs("serviceentry-valid.yaml")
    assert len(docs) == 5
    for doc in docs:
        if doc["metadata"]["name"] == "full":
            # PyYAML reads the unquoted flow item `001:db8::` as a one-key mapping where Go's
            # YAML reads a string: quoted, the document is what Istio's test applies.
            assert doc["spec"]["addresses"][1] == {"001:db8:": None}
            doc["spec"]["addresses"][1] = "001:db8::"
        assert validate(doc, kinds.SERVICE_ENTRY) == [], doc["metadata"]["name"]


def test_istios_invalid_service_entries_are_rejected_for_the_reason_istio_gives():
    docs = fixture_docs("serviceentry-invalid.yaml")
    assert len(docs) == 12
    for doc in docs:
        expected = doc.pop("_err")
        errs = validate(doc, kinds.SERVICE_ENTRY)
        path = re.match(r"^(spec[\w.\[\]]*): ", expected)
        if path:
            assert any(e.field == path.group(1) for e in errs), (expected, [str(e) for e in errs])
        else:
            assert any(expected in str(e) for e in errs), (expected, [str(e) for e in errs])


@pytest.mark.parametrize("body, field, reason", [
    ("  hosts: [a.example]\n  addresses: [1.2.3.4/99]\n", "spec.addresses[0]", "not a valid CIDR block"),
    ("  hosts: [\"foo*\"]\n", "spec.hosts[0]", "invalid"),
    ("  hosts: [a.example]\n  ports: [{number: 80, name: http, protocol: FTP}]\n", "spec.ports[0].protocol",
     "unsupported protocol: FTP"),
    ("  hosts: [a.example]\n  ports: [{number: 80, name: Http_1}]\n", "spec.ports[0].name", "invalid port name"),
    ("  hosts: [\"*.example.com\"]\n  resolution: DNS\n  ports: [{number: 80, name: http, protocol: HTTP}]\n",
     "spec.hosts[0]", "hosts must be FQDN if no endpoints are provided for resolution mode DNS"),
    ("  hosts: [a.example]\n  resolution: STATIC\n  ports: [{number: 80, name: http}]\n"
     "  endpoints: [{address: db.example, ports: {grpc: 90}}]\n", "spec.endpoints[0].address", "not a valid IP address"),
    ("  hosts: [a.example]\n  resolution: STATIC\n  ports: [{number: 80, name: http}]\n"
     "  endpoints: [{address: 1.1.1.1, ports: {grpc: 90}}]\n", "spec.endpoints[0].ports[grpc]",
     "endpoint port 90 is not defined by the service entry"),
    ("  hosts: [a.example, b.example]\n  resolution: DNS\n  ports: [{number: 5432, name: tcp, protocol: TCP}]\n",
     "spec.ports[0]", "multiple hosts provided with non-HTTP, non-TLS ports"),
    ("  hosts: [a.example]\n  exportTo: [\".\", \".\"]\n", "spec.exportTo[1]", "duplicate entries in exportTo"),
])
def test_istios_service_entry_rules_name_the_field(body, field, reason):
    parsed = parse_document(yaml.safe_load(se("bad", body)), Origin("file", "se.yaml", 0, 3))
    assert isinstance(parsed, Rejection)
    assert any(e.field == field and reason in e.reason for e in parsed.errors), [str(e) for e in parsed.errors]
    assert parsed.message().startswith("se.yaml:3: ServiceEntry shop/bad: ")


def test_the_corpus_service_entries_istio_accepts_are_accepted():
    """Every ServiceEntry in Istio's samples, its FakeDiscoveryServer inputs and the
    microservices-demo passes (those Istio's own webhook refuses are left out by name)."""
    refused_by_istio = {"negative-condition-svcEntry", "service-entry-ignore", "BACKEND", "istio"}
    checked = 0
    for root in (("corpus", "istio", "samples"), ("corpus", "istio", "tests", "testdata", "networking"),
                 ("corpus", "microservices-demo")):
        for path in sorted(shared(*root).rglob("*.yaml")):
            try:
                docs = list(yaml.safe_load_all(path.read_text()))
            except yaml.YAMLError:
                continue
            for doc in docs:
                if not isinstance(doc, dict) or doc.get("kind") != "ServiceEntry":
                    continue
                if (doc.get("metadata") or {}).get("name") in refused_by_istio:
                    continue
                assert validate(doc, kinds.SERVICE_ENTRY) == [], (str(path), doc["metadata"]["name"])
                checked += 1
    assert checked >= 15


# --- the Services a ServiceEntry becomes ---------------------------------------------------------

EXTERNAL = se("payments", """  hosts: [api.payments.example, pay.example]
  addresses: [240.0.0.10/32, 240.1.0.0/16]
  ports:
  - {number: 443, name: https, protocol: TLS}
  - {number: 80, name: http, protocol: HTTP, targetPort: 8080}
  resolution: STATIC
  exportTo: [".", "web"]
  subjectAltNames: ["spiffe://cluster.local/ns/pay/sa/api"]
  endpoints:
  - {address: 192.0.2.10}
  - {address: 192.0.2.11, ports: {https: 8443}, weight: 3, locality: r2/z2, network: vpc-2, labels: {version: v2}}
  - {address: 192.0.2.12, serviceAccount: pay}
""")


def test_one_service_per_host_with_istiods_attributes():
    m = mesh(EXTERNAL)
    assert sorted(m.services) == ["api.payments.example", "pay.example"]
    svc = m.services["api.payments.example"]
    assert (svc.name, svc.namespace, svc.source) == ("api.payments.example", "shop", "ServiceEntry")
    assert svc.resolution == "ClientSideLB" and svc.mesh_external  # location defaults to MESH_EXTERNAL
    assert svc.addresses == ("240.0.0.10", "240.1.0.0/16")  # a /32 is the plain IP (istiod)
    assert svc.export_to == (".", "web")
    assert svc.subject_alt_names == ("spiffe://cluster.local/ns/pay/sa/api",)
    assert svc.vip == "" and not svc.headless
    assert [protocol.of_service_port(p) for p in svc.ports] == ["TLS", "HTTP"]
    assert m.services["pay.example"].ports == svc.ports


def test_resolutions_map_to_istiods():
    for resolution, want in (("NONE", "Passthrough"), ("STATIC", "ClientSideLB"), ("DNS", "DNS"),
                             ("DNS_ROUND_ROBIN", "DNSRoundRobin")):
        m = mesh(se("x", f"  hosts: [x.example]\n  resolution: {resolution}\n  location: MESH_INTERNAL\n"
                     "  ports: [{number: 80, name: http, protocol: HTTP}]\n"))
        svc = m.services["x.example"]
        assert (svc.resolution, svc.mesh_external) == (want, False)
    default = mesh(se("x", "  hosts: [x.example]\n  ports: [{number: 80, name: http-web}]\n")).services["x.example"]
    assert default.resolution == "Passthrough"  # resolution NONE, the proto's default
    # A port without a protocol is sniffed: never read from its name as a Kubernetes port's
    assert [protocol.of_service_port(p) for p in default.ports] == ["UNSUPPORTED"]


def test_inline_endpoints_take_their_port_from_ports_then_target_port_then_number():
    m = mesh(EXTERNAL)
    for host in ("api.payments.example", "pay.example"):
        assert addresses(m, host, 443) == [("192.0.2.10", 443), ("192.0.2.11", 8443), ("192.0.2.12", 443)]
        assert addresses(m, host, 80) == [("192.0.2.10", 8080), ("192.0.2.11", 8080), ("192.0.2.12", 8080)]
    plain, v2, with_sa = m.service_endpoints("api.payments.example", 443)
    assert (v2.weight, str(v2.locality), v2.network) == (3, "r2/z2", "vpc-2")
    assert v2.labels == {"version": "v2", "topology.kubernetes.io/region": "r2", "topology.kubernetes.io/zone": "z2",
                         "topology.istio.io/network": "vpc-2"}
    # istiod's TLS mode: a service account means a proxy runs there (auto mTLS reads the label)
    assert plain.labels == {} and with_sa.labels == {"security.istio.io/tlsMode": "istio"}
    assert (with_sa.namespace, with_sa.service_account) == ("shop", "pay")
    assert m.service_accounts("api.payments.example") == (("shop", "pay"),)


def test_a_dns_entry_without_endpoints_resolves_its_own_host():
    m = mesh(se("forum", "  hosts: [forum.example, www.forum.example]\n  resolution: DNS\n"
                "  ports: [{number: 80, name: http, protocol: HTTP}, {number: 443, name: tls, protocol: TLS, targetPort: 8443}]\n"))
    assert addresses(m, "forum.example", 80) == [("forum.example", 80)]
    assert addresses(m, "www.forum.example", 443) == [("www.forum.example", 8443)]
    assert m.service_endpoints("forum.example", 80)[0].labels == {}  # no mTLS to it
    assert m._instances_by_ip == {}  # a DNS name is no proxy's address


def test_a_unix_socket_endpoint_has_no_port():
    m = mesh(se("uds", "  hosts: [uds.example]\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n"
                "  endpoints: [{address: \"unix:///var/run/app.sock\"}]\n"))
    assert addresses(m, "uds.example", 80) == [("unix:///var/run/app.sock", 0)]


SELECTING = se("vm-svc", """  hosts: [vm.shop.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP, targetPort: 9080}, {number: 7070, name: grpc, protocol: GRPC}]
  workloadSelector: {labels: {app: vm}}
""")


def test_a_workload_selector_selects_pods_and_workload_entries_of_its_namespace():
    m = mesh(
        SELECTING,
        pod("vm-pod", "shop", "10.1.0.5", "app: vm, security.istio.io/tlsMode: istio", "[{name: http, containerPort: 8181}]"),
        pod("elsewhere", "web", "10.2.0.5", "app: vm"),
        workload_entry("vm-1", "shop", "  address: 10.3.0.5\n  labels: {app: vm}\n  serviceAccount: vm\n  ports: {grpc: 7171}\n"),
        workload_entry("vm-2", "web", "  address: 10.4.0.5\n  labels: {app: vm}\n"),
        workload_entry("db-vm", "shop", "  address: 10.3.0.9\n  labels: {app: db}\n"),
    )
    # The pod's named container port; the entry's `ports`; else targetPort, else the number.
    assert addresses(m, "vm.shop.internal", 8080) == [("10.1.0.5", 8181), ("10.3.0.5", 9080)]
    assert addresses(m, "vm.shop.internal", 7070) == [("10.1.0.5", 7070), ("10.3.0.5", 7171)]
    vm = m.service_endpoints("vm.shop.internal", 8080)[1]
    assert (vm.pod, vm.namespace, vm.service_account, vm.labels["security.istio.io/tlsMode"]) == ("vm-1", "shop", "vm", "istio")


def test_an_empty_selector_selects_the_whole_namespace():
    m = mesh(se("all", "  hosts: [all.internal]\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n"
                "  workloadSelector: {}\n"),
             workload_entry("a", "shop", "  address: 10.3.0.1\n"), workload_entry("b", "other", "  address: 10.3.0.2\n"))
    assert addresses(m, "all.internal", 80) == [("10.3.0.1", 80)]


def test_a_vm_proxy_finds_its_inbound_side_by_its_ip():
    from controlplane.model.proxy import parse_node

    m = mesh(SELECTING, workload_entry("vm-1", "shop", "  address: 10.3.0.5\n  labels: {app: vm}\n  serviceAccount: vm\n"))
    vm = parse_node("sidecar~10.3.0.5~vm-1.shop~shop.svc.cluster.local", {"NAMESPACE": "shop", "LABELS": {"app": "vm"}})
    assert [(i.service.hostname, i.port.port, i.endpoint.port) for i in m.instances_for(vm)] == [
        ("vm.shop.internal", 7070, 7070), ("vm.shop.internal", 8080, 9080)]


# --- a host defined twice --------------------------------------------------------------------------

CART = k8s_service("cart", "shop", "[{name: http, port: 80, targetPort: 8080}]", "app: cart")
CART_ENTRY = se("cart-entry", "  hosts: [cart.shop.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n"
                "  ports: [{number: 80, name: http, protocol: HTTP}]\n  endpoints: [{address: 10.9.9.9}]\n")


def test_a_kubernetes_service_keeps_its_host_against_a_service_entry(capsys):
    m = mesh(CART_ENTRY, CART, pod("cart-1", "shop", "10.1.0.11", "app: cart"))
    svc = m.services["cart.shop.svc.cluster.local"]
    assert svc.source == "Kubernetes"
    assert addresses(m, "cart.shop.svc.cluster.local", 80) == [("10.1.0.11", 8080)]
    assert [(h.hostname, h.namespace, h.source) for h in m.hidden_services] == [
        ("cart.shop.svc.cluster.local", "shop", "ServiceEntry")]
    assert "service host conflict" in capsys.readouterr().out
    assert m._instances_by_ip.get("10.9.9.9") is None  # the hidden entry's endpoints are nobody's instances
    # Without the Service, the entry holds the host.
    alone = mesh(CART_ENTRY)
    assert alone.services["cart.shop.svc.cluster.local"].source == "ServiceEntry" and alone.hidden_services == ()
    assert addresses(alone, "cart.shop.svc.cluster.local", 80) == [("10.9.9.9", 80)]


def test_of_two_service_entries_for_one_host_the_older_holds_it():
    body = "  hosts: [api.example]\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n"
    newer = se("newer", body + "  endpoints: [{address: 192.0.2.1}]\n", ns="a", created="2025-01-01T00:00:00Z")
    older = se("older", body + "  endpoints: [{address: 192.0.2.2}]\n", ns="b", created="2024-01-01T00:00:00Z")
    m = mesh(newer, older)
    assert m.services["api.example"].namespace == "b"
    assert addresses(m, "api.example", 80) == [("192.0.2.2", 80)]
    assert [h.namespace for h in m.hidden_services] == ["a"]


# --- Kubernetes mode ----------------------------------------------------------------------------------

def test_service_entries_and_workload_entries_are_watched_in_kubernetes_mode(kube):
    """Applied with kubectl: listed at start, updated and deleted while watched, and served."""
    ns = kube.ns("ext")
    entry = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "api", "namespace": ns},
             "spec": {"hosts": ["api.example"], "resolution": "STATIC", "location": "MESH_INTERNAL",
                      "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                      "workloadSelector": {"labels": {"app": "vm"}}}}
    vm = {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": {"name": "vm-1", "namespace": ns},
          "spec": {"address": "10.3.0.5", "labels": {"app": "vm"}, "serviceAccount": "vm"}}
    group = {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadGroup", "metadata": {"name": "vms", "namespace": ns},
             "spec": {"template": {"serviceAccount": "vm"}}}
    kube.apply(entry)
    kube.apply(group)

    async def scenario():
        from controlplane.model.mesh import build_mesh

        async with running(kube) as (_src, store):
            assert get(store, "ServiceEntry", ns, "api") is not None and get(store, "WorkloadGroup", ns, "vms") is not None
            kube.apply(vm)
            await until(lambda: get(store, "WorkloadEntry", ns, "vm-1") is not None, "the WorkloadEntry")
            m = build_mesh(store.snapshot())
            assert addresses(m, "api.example", 80) == [("10.3.0.5", 80)]
            kube.apply({**vm, "spec": {**vm["spec"], "address": "10.3.0.6"}})
            await until(lambda: addresses(build_mesh(store.snapshot()), "api.example", 80) == [("10.3.0.6", 80)],
                        "the moved WorkloadEntry")
            kube.delete("networking.istio.io/v1", "ServiceEntry", "api", ns)
            await until(lambda: get(store, "ServiceEntry", ns, "api") is None, "the deleted ServiceEntry")
            assert "api.example" not in build_mesh(store.snapshot()).services

    asyncio.run(scenario())
