"""`meshd analyze` for the registry kinds: Sidecar, ServiceEntry, WorkloadEntry, exportTo.

Istio's own cases (../shared/corpus/INDEX.md, analyzers_test.go) for the analyzers whose
Go type name differs from the name Istio registers them under (test_analyze.py runs the
cases whose names agree: sidecar.SelectorAnalyzer, the ServiceEntry protocol conflicts),
the exact wording and lines istioctl prints, and meshd's own checks for WorkloadEntries.
"""
from __future__ import annotations

import pytest

from controlplane.analysis import BY_NAME, analyze, messages
from controlplane.analysis.resources import parse_text
from tests.support.analyzer_cases import TESTDATA, istio_cases
from tests.support.analyzer_cases import run_cli as run

# Istio's test names its analyzers by Go type; `istioctl analyze` (and meshd) by Metadata().Name.
REGISTERED_AS = {
    "serviceentry.ProtocolAddressesAnalyzer": "serviceentry.Analyzer",
    "deprecation.FieldAnalyzer": "deprecation.DeprecationAnalyzer",
    "destinationrule.PodNotSelectedAnalyzer": "destinationrule.SubsetSelectPodAnalyzer",
}
# Where meshd reports what istiod would not, and why.
MESHD_DIFFERS = {
    # Istio trusts the agent's DNS proxy to give each host a VIP when the mesh config turns
    # on ISTIO_META_DNS_AUTO_ALLOCATE; meshd has no DNS proxy, so a TCP ServiceEntry without
    # addresses still gets 0.0.0.0:<port> and takes that port's traffic to every host.
    "missing Addresses and Protocol in Service Entry with ISTIO_META_DNS_AUTO_ALLOCATE enabled": [
        "ServiceEntryAddressesRequired ServiceEntry default/service-entry-test-03",
        "ServiceEntryAddressesRequired ServiceEntry default/service-entry-test-04",
        "ServiceEntryAddressesRequired ServiceEntry default/service-entry-test-07"],
    # status.addresses is written by istiod's IP allocator; meshd neither allocates nor
    # serves those addresses.
    "ServiceEntry Addresses Allocated": ["ServiceEntryAddressesRequired ServiceEntry address-allocated"],
    # istiod adds the Node's topology labels to an endpoint's labels (AugmentLabels); meshd's
    # endpoints carry the Pod's own labels only, so these subsets select no endpoint in meshd.
    "DestinationRuleSubsetsWithTopologyLabels": [
        "DestinationRuleSubsetNotSelectPods DestinationRule default/subsets-with-topology-labels"] * 3,
}
CASES = {name: c for name, c in istio_cases().items() if c["analyzer"] in REGISTERED_AS}
CODES = {t.name for t in messages.ALL}


def test_the_renamed_analyzers_have_corpus_cases():
    assert len(CASES) == 10, sorted(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_istio_analyzer_case(case):
    c = CASES[case]
    resources = []
    for f in sorted(c["files"]):
        resources += parse_text((TESTDATA / f).read_text(), f, "")
    analyzer = BY_NAME[REGISTERED_AS[c["analyzer"]]]
    got = sorted(f"{m.type.name} {m.resource.friendly_name}" for m in analyze(resources, [analyzer]))
    if case in MESHD_DIFFERS:
        expected = MESHD_DIFFERS[case]
    else:
        expected = [] if c["expect"] == "no messages" else [e.strip() for e in c["expect"].split(";")]
    assert got == sorted(e for e in expected if e.split()[0] in CODES)


def _lines(*files: str, analyzer: str | None = None) -> list[str]:
    resources = []
    for f in files:
        resources += parse_text((TESTDATA / f).read_text(), f"testdata/{f}", "")
    chosen = [BY_NAME[analyzer]] if analyzer else None
    return [str(m) for m in (analyze(resources, chosen) if chosen else analyze(resources))]


def test_wording_and_lines_as_istioctl_prints_them():
    """The texts of Istio's messages.yaml, the object and the line istio.io's pages show."""
    side = _lines("sidecar-default-selector.yaml", analyzer="sidecar.SelectorAnalyzer")
    # istio.io/latest/docs/reference/config/analysis/ist0167 shows lines 84 and 90 of this file.
    assert ("Warning [IST0167] (Sidecar ns-ambient/namespace-scoped testdata/sidecar-default-selector.yaml:84) "
            "The policy has no impact: namespace is in ambient mode, the policy has no impact.") in side
    assert ("Warning [IST0167] (Sidecar ns-ambient/pod-scoped testdata/sidecar-default-selector.yaml:90) "
            "The policy has no impact: selected workload is in ambient mode, the policy has no impact.") in side
    assert ('Error [IST0111] (Sidecar ns2/has-conflict-1 testdata/sidecar-default-selector.yaml:24) The Sidecars '
            '[has-conflict-1 has-conflict-2] in namespace "ns2" have no workload selector, which can lead to '
            'undefined behavior.') in side
    sel = _lines("sidecar-selector.yaml", analyzer="sidecar.SelectorAnalyzer")
    assert ('Error [IST0101] (Sidecar default/maps-to-nonexistent testdata/sidecar-selector.yaml:55) '
            'Referenced selector not found: "app=bogus"') in sel  # the selector label's line
    assert ('Error [IST0110] (Sidecar default/dupe-1 testdata/sidecar-selector.yaml:76) The Sidecars [dupe-1 dupe-2] '
            'in namespace "default" select the same workload pod "reviews", which can lead to undefined behavior.') in sel
    se = _lines("serviceentry-missing-addresses-protocol.yaml", analyzer="serviceentry.Analyzer")
    assert se[0] == ("Warning [IST0134] (ServiceEntry default/service-entry-test-03 "
                     "testdata/serviceentry-missing-addresses-protocol.yaml:48) "
                     "ServiceEntry addresses are required for this protocol.")  # the port's line
    conflict = _lines("serviceentry-conflicting-protocol.yaml",
                      analyzer="serviceentry.ConflictingServiceEntryProtocolAnalyzer")
    assert conflict == [
        f"Warning [IST0177] (ServiceEntry default/{name} testdata/serviceentry-conflicting-protocol.yaml:{line}) "
        'Multiple ServiceEntries (default/se-http, default/se-https) define the same host "example.com" and port '
        "13835 with conflicting protocols (HTTP, HTTPS)." for name, line in (("se-http", 19), ("se-https", 4))]
    dep = _lines("deprecation.yaml", analyzer="deprecation.DeprecationAnalyzer")
    # Istio's text says "ignored"; meshd applies egressProxy (model/sidecar_scope.py), so it says so.
    assert "Deprecated: OutboundTrafficPolicy.EgressProxy is deprecated (meshd still applies it in ALLOW_ANY mode)" \
        in dep[0]
    assert "Deprecated: HTTPRoute.fault.delay.percent is deprecated; use HTTPRoute.fault.delay.percentage" in dep[1]


def _analyze(text: str, *names: str) -> list[str]:
    return [f"{m.type.code} {m.resource.friendly_name if m.resource else ''}: {m.text}"
            for m in analyze(parse_text(text, "mesh.yaml"), [BY_NAME[n] for n in names])]


WORKLOAD_ENTRY = """
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: vms}
spec: {address: 10.9.0.1, labels: {app: legacy}}
"""


def test_sidecars_select_workload_entries():
    """A VM's proxy takes its Sidecar by the WorkloadEntry's labels: a selector matching
    only WorkloadEntries matches something; two such Sidecars conflict on the VM."""
    one = WORKLOAD_ENTRY + """---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: vm-scope, namespace: vms}
spec: {workloadSelector: {labels: {app: legacy}}, egress: [{hosts: ["./*"]}]}
"""
    assert _analyze(one, "sidecar.SelectorAnalyzer") == []
    two = one + """---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: vm-scope-2, namespace: vms}
spec: {workloadSelector: {labels: {app: legacy}}, egress: [{hosts: ["*/*"]}]}
"""
    got = _analyze(two, "sidecar.SelectorAnalyzer")
    assert got == [f'IST0110 Sidecar vms/{n}: The Sidecars [vm-scope vm-scope-2] in namespace "vms" select the same '
                   'workload pod "vm-1", which can lead to undefined behavior.' for n in ("vm-scope", "vm-scope-2")]
    # The WorkloadEntry's own metadata labels are not what selectors see.
    elsewhere = WORKLOAD_ENTRY.replace("namespace: vms", "namespace: other") + one.split("---", 1)[1]
    assert _analyze("---\n".join([elsewhere]), "sidecar.SelectorAnalyzer") == [
        'IST0101 Sidecar vms/vm-scope: Referenced selector not found: "app=legacy"']


def test_service_entry_workload_selector_matches_pods_or_workload_entries():
    se = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: vms}
spec:
  hosts: [legacy.example.com]
  addresses: [240.0.0.9]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: legacy}}
"""
    assert _analyze(se, "serviceentry.WorkloadSelectorAnalyzer") == [
        "IST0127 ServiceEntry vms/legacy: No matching workloads for this resource with the following labels: app=legacy"]
    assert _analyze(se + "---" + WORKLOAD_ENTRY, "serviceentry.WorkloadSelectorAnalyzer") == []
    pod = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: vms, labels: {app: legacy}}\n"
    assert _analyze(se + pod, "serviceentry.WorkloadSelectorAnalyzer") == []


def test_protocol_conflicts_follow_export_to():
    """What one namespace sees: a ServiceEntry exported everywhere meets one kept to its
    own namespace there; two kept to different namespaces never meet."""
    def se(name: str, ns: str, protocol: str, export: str) -> str:
        return f"""---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [api.example.com]
  ports: [{{number: 443, name: p, protocol: {protocol}}}]
  resolution: DNS
  exportTo: [{export}]
"""
    name = "serviceentry.ConflictingServiceEntryProtocolAnalyzer"
    got = _analyze(se("a", "ns1", "TLS", '"*"') + se("b", "ns2", "HTTPS", '"."'), name)
    assert got == [f'IST0177 ServiceEntry {n}: Multiple ServiceEntries (ns1/a, ns2/b) define the same host '
                   '"api.example.com" and port 443 with conflicting protocols (HTTPS, TLS).' for n in ("ns1/a", "ns2/b")]
    assert _analyze(se("a", "ns1", "TLS", '"."') + se("b", "ns2", "HTTPS", '"."'), name) == []
    assert _analyze(se("a", "ns1", "TLS", "ns3") + se("b", "ns2", "https", "ns3"), name) != []
    assert _analyze(se("a", "ns1", "tls", '"*"') + se("b", "ns2", "TLS", '"*"'), name) == []  # case does not matter


def test_cli_lists_and_runs_them(tmp_path):
    code, out = run("analyze", "--list-analyzers")
    for n in ("sidecar.SelectorAnalyzer", "serviceentry.Analyzer", "serviceentry.ConflictingServiceEntryProtocolAnalyzer",
              "serviceentry.WorkloadSelectorAnalyzer", "serviceentry.HostConflictAnalyzer", "sidecar.EgressHostAnalyzer",
              "deprecation.DeprecationAnalyzer"):
        assert n in out
    (tmp_path / "mesh.yaml").write_text("""
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: a, namespace: shop}
spec: {egress: [{hosts: ["./*"]}]}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: b, namespace: shop}
spec: {egress: [{hosts: ["istio-system/*"]}]}
""")
    code, out = run("analyze", str(tmp_path))
    assert code == 79
    assert "Error [IST0111] (Sidecar shop/a " in out and "Error [IST0111] (Sidecar shop/b " in out


def test_service_entry_hosts_meshd_does_not_serve():
    """meshd keeps one Service per host: a Kubernetes Service wins over a ServiceEntry
    host, the older ServiceEntry over a newer one; the loser is named with the winner."""
    text = """
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: old, namespace: a, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {hosts: [api.example.com], ports: [{number: 443, name: tls, protocol: TLS}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: new, namespace: a, creationTimestamp: "2025-01-01T00:00:00Z"}
spec:
  hosts: [api.example.com, reviews.shop.svc.cluster.local, own.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
"""
    assert _analyze(text, "serviceentry.HostConflictAnalyzer") == [
        'MSH0005 ServiceEntry a/new: Host "api.example.com" is not served from this ServiceEntry: ServiceEntry a/old '
        "defines it (the older one wins)",
        'MSH0005 ServiceEntry a/new: Host "reviews.shop.svc.cluster.local" is not served from this ServiceEntry: '
        "Service shop/reviews defines it (a Kubernetes Service wins)"]
    # istioctl's assumed ingress gateway Service is not part of the input.
    gw = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: gw, namespace: istio-system}
spec: {hosts: [istio-ingressgateway.istio-system.svc.cluster.local], addresses: [1.1.1.3],
       ports: [{number: 80, name: http, protocol: HTTP}], resolution: STATIC, endpoints: [{address: 1.2.3.4}]}
"""
    assert [m for m in analyze(parse_text(gw, "gw.yaml")) if m.type.code == "MSH0005"] == []


def test_sidecar_egress_hosts_that_select_nothing():
    """An egress host naming no visible Service/ServiceEntry/mesh VirtualService of its
    namespace: a short name, a host in another namespace, a Service exported elsewhere."""
    text = """
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: secret, namespace: shop, annotations: {networking.istio.io/exportTo: "."}}
spec: {selector: {app: secret}, ports: [{name: http, port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: egress}
spec: {hosts: ["*.example.com"], ports: [{number: 443, name: tls, protocol: TLS}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: alias, namespace: shop}
spec: {hosts: [store.internal], http: [{route: [{destination: {host: reviews}}]}]}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: web}
spec:
  egress:
  - hosts:
    - shop/reviews.shop.svc.cluster.local
    - shop/reviews
    - shop/secret.shop.svc.cluster.local
    - egress/api.example.com
    - "*/reviews.shop.svc.cluster.local"
    - shop/store.internal
    - other/reviews.shop.svc.cluster.local
    - "./*"
    - "~/*"
"""
    got = _analyze(text, "sidecar.EgressHostAnalyzer")
    assert got == [f'MSH0006 Sidecar web/default: Egress host "{h}" selects no Service, ServiceEntry or VirtualService '
                   'visible to namespace "web"'
                   for h in ("shop/reviews", "shop/secret.shop.svc.cluster.local", "other/reviews.shop.svc.cluster.local")]


def test_mesh_export_defaults_decide_what_is_visible():
    """Without exportTo of their own, Services, ServiceEntries and VirtualServices are
    exported as the mesh config's defaults say (defaultServiceExportTo, ...)."""
    import dataclasses

    from controlplane.model.meshconfig import DEFAULT

    text = """
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: shop}
spec: {hosts: [api.example.com], ports: [{number: 443, name: tls, protocol: TLS}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: web}
spec:
  hosts: [web]
  http: [{route: [{destination: {host: reviews.shop.svc.cluster.local}}]}]
  tls: [{match: [{sniHosts: [api.example.com]}], route: [{destination: {host: api.example.com}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web-too, namespace: shop}
spec: {hosts: [web.web.svc.cluster.local], http: [{route: [{destination: {host: reviews}}]}]}
"""
    resources = parse_text(text, "mesh.yaml")
    hosts = [BY_NAME["virtualservice.DestinationHostAnalyzer"]]
    conflicts = [BY_NAME["virtualservice.ConflictingMeshGatewayHostsAnalyzer"]]
    assert analyze(resources, hosts) == [] and len(analyze(resources, conflicts)) == 2
    local = dataclasses.replace(DEFAULT, default_service_export_to=(".",), default_virtual_service_export_to=(".",))
    got = sorted(m.text for m in analyze(resources, hosts, mesh_config=local))
    assert got == ['Referenced host not found: "api.example.com"',
                   'Referenced host not found: "reviews.shop.svc.cluster.local"']
    assert analyze(resources, conflicts, mesh_config=local) == []  # each VirtualService seen in its namespace only


def test_malformed_documents_are_findings_not_crashes():
    """Wrong types anywhere in these kinds: the registry analyzers report what they can
    and leave the rest to schema validation (IST0106), never raising."""
    text = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bad, namespace: x}
spec: {hosts: api.example.com, ports: [{number: "443", protocol: [TLS]}, 7], exportTo: ".", addresses: {a: 1},
       workloadSelector: {labels: [app]}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: worse, namespace: x}
spec: [1, 2]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: bad, namespace: x}
spec: {workloadSelector: {labels: "app=x"}, egress: [{hosts: "x/*"}, 3, {hosts: [null, 5, "x/"]}],
       outboundTrafficPolicy: [1]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: bad, namespace: x}
spec: {labels: [a, b]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad, namespace: x}
spec: {hosts: [a], http: [{fault: {delay: {percent: "50"}}}, 4], exportTo: "*"}
"""
    names = ["sidecar.SelectorAnalyzer", "sidecar.EgressHostAnalyzer", "serviceentry.Analyzer",
             "serviceentry.ConflictingServiceEntryProtocolAnalyzer", "serviceentry.WorkloadSelectorAnalyzer",
             "serviceentry.HostConflictAnalyzer", "deprecation.DeprecationAnalyzer"]
    got = analyze(parse_text(text, "bad.yaml"), [BY_NAME[n] for n in names])
    # The port without protocol of a ServiceEntry without addresses still needs them.
    assert [str(m.resource.friendly_name) for m in got if m.type.code == "IST0134"] == ["ServiceEntry x/bad"]
    full = analyze(parse_text(text, "bad.yaml"))  # every analyzer: the schema errors are the findings
    assert {m.resource.friendly_name for m in full if m.type.code == "IST0106"} >= {
        "ServiceEntry x/bad", "ServiceEntry x/worse", "Sidecar x/bad", "WorkloadEntry x/bad"}


def test_destination_rule_hosts_and_subsets_against_the_registry():
    """A subset selects the endpoints of its host: a Service's Pods, a ServiceEntry's
    selected Pods and WorkloadEntries or its inline endpoints; a host resolved by DNS has
    nothing for labels to select. A wildcard rule is known when it covers a host."""
    text = WORKLOAD_ENTRY + """---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: vms}
spec: {hosts: [legacy.example.com], addresses: [240.0.0.9], ports: [{number: 80, name: http, protocol: HTTP}],
       resolution: STATIC, workloadSelector: {labels: {app: legacy}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: static, namespace: vms}
spec: {hosts: [db.example.com], addresses: [240.0.0.10], ports: [{number: 5432, name: tcp, protocol: TCP}],
       resolution: STATIC, endpoints: [{address: 10.0.0.1, labels: {role: primary}}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dns, namespace: vms}
spec: {hosts: [api.example.com], ports: [{number: 443, name: tls, protocol: TLS}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: legacy, namespace: vms}
spec: {host: legacy.example.com, subsets: [{name: vm, labels: {app: legacy}}, {name: v9, labels: {version: v9}}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: vms}
spec: {host: db.example.com, subsets: [{name: primary, labels: {role: primary}}, {name: replica, labels: {role: replica}}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: vms}
spec: {host: api.example.com, subsets: [{name: any, labels: {x: y}}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mesh-wide, namespace: istio-system}
spec: {host: "*.example.com", trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: typo, namespace: vms}
spec: {host: legacy.exmaple.com}
"""
    got = _analyze(text, "destinationrule.SubsetSelectPodAnalyzer")
    assert got == [
        "IST0173 DestinationRule vms/db: The Subset replica defined in the DestinationRule does not select any pods. "
        "Which may lead to 503 UH (NoHealthyUpstream).",
        "IST0173 DestinationRule vms/legacy: The Subset v9 defined in the DestinationRule does not select any pods. "
        "Which may lead to 503 UH (NoHealthyUpstream).",
        "IST0174 DestinationRule vms/typo: The host legacy.exmaple.com defined in the DestinationRule does not match "
        "any services in the mesh."]
    # A host kept to its own namespace is unknown to a rule elsewhere.
    hidden = text.replace("name: dns, namespace: vms}\nspec: {", "name: dns, namespace: vms}\nspec: {exportTo: [.], ")
    hidden = hidden.replace("name: api, namespace: vms", "name: api, namespace: web")
    assert any("IST0174 DestinationRule web/api" in m for m in _analyze(hidden, "destinationrule.SubsetSelectPodAnalyzer"))


def test_manifests_without_pods_use_the_pod_templates(tmp_path):
    """`meshd analyze` on manifests (Deployments, no Pods): a Deployment's pod template
    stands for its Pods, so bookinfo's v1 subsets select something and the subsets of
    versions bookinfo.yaml does not deploy are reported."""
    from tests.support.analyzer_cases import CORPUS

    book = CORPUS / "istio" / "samples" / "bookinfo"
    code, out = run("analyze", str(book / "networking" / "destination-rule-all.yaml"),
                    str(book / "platform" / "kube" / "bookinfo.yaml"))
    subsets = sorted(line.split(") ", 1)[1].split()[2] + "@" + line.split()[3] for line in out.splitlines()
                     if "[IST0173]" in line)
    assert subsets == ["v2-mysql-vm@default/ratings", "v2-mysql@default/ratings", "v2@default/details",
                       "v2@default/ratings"], out


def test_host_conflicts_of_a_running_meshd_follow_creation_time():
    """--meshd: /debug/configz?content=true carries each object's creationTimestamp, so
    the ServiceEntry reported is the one the server left out (the newer), not the one
    whose name sorts last."""
    from controlplane.analysis.resources import from_configz
    from controlplane.config.objects import Origin
    from controlplane.config.parse import parse_document
    from controlplane.config.store import ConfigStore
    from controlplane.debug.views import DebugViews

    def se(name: str, created: str) -> dict:
        return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                "metadata": {"name": name, "namespace": "ext", "creationTimestamp": created},
                "spec": {"hosts": ["api.example.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                         "resolution": "DNS"}}

    store = ConfigStore()
    store.replace_location("/cfg/se.yaml", [parse_document(se("a-newer", "2025-06-01T00:00:00Z"),
                                                           Origin("file", "/cfg/se.yaml", 0)),
                                            parse_document(se("b-older", "2024-06-01T00:00:00Z"),
                                                           Origin("file", "/cfg/se.yaml", 1))])
    ads = type("Ads", (), {"connections": lambda s: [], "mesh": None})()
    resources = from_configz(DebugViews(ads, store).configz(content=True))
    got = [m.resource.full_name for m in analyze(resources, [BY_NAME["serviceentry.HostConflictAnalyzer"]])]
    assert got == ["ext/a-newer"]


def test_workload_groups_stand_for_the_vms_that_will_register():
    """A VM joining with a WorkloadGroup identity is registered as a WorkloadEntry with the
    template's labels under the group's metadata.labels: selectors matching those select
    something before any VM has connected."""
    group = """
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: legacy, namespace: vms}
spec:
  metadata: {labels: {app: legacy}}
  template: {serviceAccount: legacy, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: vm-scope, namespace: vms}
spec: {workloadSelector: {labels: {app: legacy, version: v1}}, egress: [{hosts: ["./*"]}]}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: wrong, namespace: vms}
spec: {workloadSelector: {labels: {app: legacy, version: v2}}, egress: [{hosts: ["./*"]}]}
"""
    assert _analyze(group, "sidecar.SelectorAnalyzer") == [
        'IST0101 Sidecar vms/wrong: Referenced selector not found: "app=legacy,version=v2"']
