"""WorkloadGroup auto-registration (sources/autoregistration.py): the WorkloadEntry a
member proxy becomes, the identity it must prove, its life while connected and after,
the ADS server's connect/disconnect hook, and the Kubernetes backend on the real
kube-apiserver."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from prometheus_client import CollectorRegistry

from ca import Identity
from controlplane import names
from controlplane.config.objects import ConfigObject, Origin
from controlplane.config.store import ConfigStore
from controlplane.model.proxy import ProxyRefused, parse_node
from controlplane.sources.autoregistration import (
    StoreEntries,
    WorkloadRegistry,
    entry_from_group,
    entry_name,
    expired,
    format_time,
    identity_problem,
    parse_time,
)
from tests.support.ads import eventually, run
from tests.support.ads_server import FakeMesh, Harness

NS = "vm-apps"
GROUP_SPEC = {
    "metadata": {"labels": {"app": "ratings", "team": "a"}, "annotations": {"owner": "ops"}},
    "template": {"serviceAccount": "ratings-vm", "ports": {"http": 9080}, "network": "vm-net",
                 "locality": "eu/west", "labels": {"team": "template", "tier": "db"}},
}


def group(spec=GROUP_SPEC, name: str = "ratings", ns: str = NS) -> ConfigObject:
    return ConfigObject("WorkloadGroup", "networking.istio.io", "v1", ns, name, {}, {}, spec, Origin("file", "g.yaml"))


def member(ip: str = "10.9.0.5", group_name: str = "ratings", ns: str = NS, **metadata):
    md = {"NAMESPACE": ns, "SERVICE_ACCOUNT": "ratings-vm", "LABELS": {"version": "v2"}, **metadata}
    if group_name:
        md[names.META_AUTO_REGISTER_GROUP] = group_name
    return parse_node(f"sidecar~{ip}~vm-1.{ns}~{ns}.svc.cluster.local", md)


SA = Identity("cluster.local", NS, "ratings-vm")


def annotations(doc):
    return doc["metadata"]["annotations"]


# --- names and documents ------------------------------------------------------------
def test_entry_name_is_istiods():
    assert entry_name("ratings", "10.9.0.5") == "ratings-10.9.0.5"
    assert entry_name("ratings", "fd00::5") == "ratings-fd00--5"
    assert entry_name("ratings", "10.9.0.5", "vm-net") == "ratings-10.9.0.5-vm-net"
    long = entry_name("g" * 300, "10.9.0.5")
    assert len(long) == 253 and long.endswith("-10.9.0.5")


def test_entry_from_group_takes_the_template_and_the_proxys_address():
    doc = entry_from_group(group(), member(), "ratings-10.9.0.5")
    spec = doc["spec"]
    assert spec["address"] == "10.9.0.5"
    assert spec["serviceAccount"] == "ratings-vm" and spec["ports"] == {"http": 9080}
    assert spec["network"] == "vm-net" and spec["locality"] == "eu/west"
    # node LABELS > group metadata.labels > template labels, as istiod merges them
    assert spec["labels"] == {"team": "a", "tier": "db", "app": "ratings", "version": "v2"}
    md = doc["metadata"]
    assert (md["namespace"], md["name"]) == (NS, "ratings-10.9.0.5")
    assert md["annotations"] == {names.AUTO_REGISTRATION_GROUP_ANNOTATION: "ratings", "owner": "ops"}


def test_the_nodes_network_and_locality_win_over_the_template():
    proxy = parse_node(f"sidecar~10.9.0.6~vm-2.{NS}~{NS}.svc.cluster.local",
                       {"NAMESPACE": NS, "NETWORK": "other", names.META_AUTO_REGISTER_GROUP: "ratings"},
                       locality={"region": "us", "zone": "east-1"})
    spec = entry_from_group(group(), proxy, "x")["spec"]
    assert spec["network"] == "other" and spec["locality"] == "us/east-1"


def test_identity_problems_name_the_group_and_both_identities():
    assert identity_problem(SA, "WorkloadGroup vm-apps/ratings template", NS, "ratings-vm") is None
    assert identity_problem(SA, "w", NS, "") is None  # no serviceAccount in the template: any of the namespace
    unverified = identity_problem(None, "WorkloadGroup vm-apps/ratings template", NS, "ratings-vm")
    assert unverified is not None and "verified identity" in unverified and "vm-apps/ratings" in unverified
    wrong_sa = identity_problem(Identity("cluster.local", NS, "intruder"), "WorkloadGroup vm-apps/ratings template",
                                NS, "ratings-vm")
    assert wrong_sa is not None
    assert "serviceAccount 'ratings-vm'" in wrong_sa and "'intruder'" in wrong_sa
    assert "spiffe://cluster.local/ns/vm-apps/sa/intruder" in wrong_sa
    wrong_ns = identity_problem(Identity("cluster.local", "other", "ratings-vm"), "w", NS, "ratings-vm")
    assert wrong_ns is not None and "namespace 'vm-apps'" in wrong_ns


def test_times_round_trip_and_go_forms_parse():
    t = datetime(2026, 12, 6, 5, 30, 1, 123456, tzinfo=UTC)
    assert format_time(t) == "2026-12-06T05:30:01.123456000Z"
    assert parse_time(format_time(t)) == t
    assert parse_time("2026-12-06T05:30:01.5Z") == t.replace(microsecond=500000)
    assert parse_time("2026-12-06T05:30:01Z") == t.replace(microsecond=0)
    assert parse_time("yesterday") is None


def test_expired_only_after_the_grace_period_and_only_when_disconnected():
    now = datetime(2026, 12, 6, 6, 0, tzinfo=UTC)
    doc = {"metadata": {"annotations": {names.AUTO_REGISTRATION_GROUP_ANNOTATION: "g",
                                        names.DISCONNECTED_AT_ANNOTATION: format_time(now - timedelta(seconds=11))}}}
    assert expired(doc, 10, now)
    assert not expired(doc, 12, now)
    annotations(doc)[names.CONNECTED_AT_ANNOTATION] = format_time(now)
    assert not expired(doc, 10, now)
    manual = {"metadata": {"annotations": {names.DISCONNECTED_AT_ANNOTATION: format_time(now - timedelta(hours=1))}}}
    assert not expired(manual, 10, now)  # not auto-registered: never deleted


# --- the lifecycle, in directory mode (entries in the store) --------------------------
def registry(grace: float = 0.2, groups=None, prom=None):
    store = ConfigStore()
    backend = StoreEntries(store)
    known = {(NS, "ratings"): group()} if groups is None else groups
    reg = WorkloadRegistry(backend, lambda ns, name: known.get((ns, name)), instance="meshd-0", grace_period=grace,
                           registry=prom)
    return store, backend, reg


def test_a_member_is_an_entry_while_connected_and_gone_after_the_grace_period():
    async def main():
        prom = CollectorRegistry()
        store, backend, reg = registry(grace=0.3, prom=prom)
        proxy = member()
        await reg.connected(proxy, SA)
        [doc] = backend.entries()
        assert doc["metadata"]["name"] == "ratings-10.9.0.5"
        ann = annotations(doc)
        assert ann[names.WORKLOAD_CONTROLLER_ANNOTATION] == "meshd-0"
        assert parse_time(ann[names.CONNECTED_AT_ANNOTATION]) is not None
        assert StoreEntries.location(NS, "ratings-10.9.0.5") in {r for r in _locations(store)}

        reg.disconnected(proxy)
        await eventually(lambda: any(names.DISCONNECTED_AT_ANNOTATION in annotations(d) for d in backend.entries()))
        [doc] = backend.entries()
        assert names.CONNECTED_AT_ANNOTATION not in annotations(doc)  # kept during the grace period
        await eventually(lambda: backend.entries() == [], timeout=3)
        assert _locations(store) == set()
        assert (reg.registered, reg.deleted) == (1, 1)
        # istiod's counters, under its names
        counts = [prom.get_sample_value(f"auto_registration_{n}_total")
                  for n in ("success", "unregister", "deletes", "errors")]
        assert counts == [1, 1, 1, 0]

    run(main())


def _locations(store: ConfigStore) -> set[str]:
    return set(store._locations)


def test_an_entry_appears_in_the_config_snapshot():
    """The entry is in the snapshot the model is built from, as a file's would be."""
    async def main():
        store, _backend, reg = registry()
        await reg.connected(member(), SA)
        held = store.snapshot().get("WorkloadEntry", NS, "ratings-10.9.0.5")
        assert held is not None
        assert held.typed.address == "10.9.0.5" and held.typed.service_account == "ratings-vm"
        assert held.origin.location == "autoregistration/vm-apps/ratings-10.9.0.5"

    run(main())


def test_a_proxy_back_within_the_grace_period_keeps_its_entry():
    async def main():
        _store, backend, reg = registry(grace=0.3)
        proxy = member()
        await reg.connected(proxy, SA)
        reg.disconnected(proxy)
        await eventually(lambda: any(names.DISCONNECTED_AT_ANNOTATION in annotations(d) for d in backend.entries()))
        await reg.connected(proxy, SA)
        [doc] = backend.entries()
        assert names.DISCONNECTED_AT_ANNOTATION not in annotations(doc)
        await asyncio.sleep(0.6)  # past the grace period: the entry must still be there
        assert len(backend.entries()) == 1 and reg.deleted == 0

    run(main())


def test_the_entry_stays_connected_while_another_stream_of_the_proxy_is_open():
    """Envoy reconnecting opens its new stream before the old one is noticed gone."""
    async def main():
        _store, backend, reg = registry(grace=0.1)
        proxy = member()
        await reg.connected(proxy, SA)
        await reg.connected(proxy, SA)
        reg.disconnected(proxy)
        await asyncio.sleep(0.3)
        [doc] = backend.entries()
        assert names.CONNECTED_AT_ANNOTATION in annotations(doc)
        reg.disconnected(proxy)
        await eventually(lambda: backend.entries() == [], timeout=3)

    run(main())


def test_a_proxy_of_another_service_account_is_refused():
    async def main():
        _store, backend, reg = registry()
        with pytest.raises(ProxyRefused) as e:
            await reg.connected(member(SERVICE_ACCOUNT="intruder"), Identity("cluster.local", NS, "intruder"))
        assert e.value.permission
        assert "WorkloadGroup vm-apps/ratings template: serviceAccount 'ratings-vm'" in str(e.value)
        with pytest.raises(ProxyRefused) as e:
            await reg.connected(member(), None)  # the plaintext port: no identity proven
        assert e.value.permission and "verified identity" in str(e.value)
        assert backend.entries() == []
        assert reg.status()["connected"] == []

    run(main())


def test_a_missing_group_is_a_failed_precondition():
    async def main():
        _store, backend, reg = registry()
        with pytest.raises(ProxyRefused) as e:
            await reg.connected(member(group_name="nope"), SA)
        assert not e.value.permission
        assert "cannot find WorkloadGroup vm-apps/nope" in str(e.value)
        assert backend.entries() == []

    run(main())


def test_a_proxy_naming_no_group_is_left_alone():
    async def main():
        _store, backend, reg = registry()
        proxy = member(group_name="")
        await reg.connected(proxy, None)
        reg.disconnected(proxy)
        assert backend.entries() == [] and reg.status()["connected"] == []

    run(main())


# --- the ADS server's hook -------------------------------------------------------------
class Recorder:
    def __init__(self, refuse: ProxyRefused | None = None):
        self.refuse = refuse
        self.events: list[tuple[str, str]] = []

    async def connected(self, proxy, identity):
        self.events.append(("connected", proxy.id))
        if self.refuse is not None:
            raise self.refuse

    def disconnected(self, proxy):
        self.events.append(("disconnected", proxy.id))


def test_the_server_reports_connects_and_disconnects():
    async def main():
        async with Harness() as h:
            h.ads.update(FakeMesh("v1"))
            rec = Recorder()
            h.ads.registrations = rec
            s = h.stream()
            s.send(names.CLUSTER)
            await s.recv()
            assert rec.events == [("connected", s.node_id)]
            await s.close()
            await eventually(lambda: ("disconnected", s.node_id) in rec.events)

    run(main())


@pytest.mark.parametrize("permission,code", [(True, grpc.StatusCode.PERMISSION_DENIED),
                                             (False, grpc.StatusCode.FAILED_PRECONDITION)])
def test_a_refused_proxy_is_not_served(permission, code):
    async def main():
        async with Harness() as h:
            h.ads.update(FakeMesh("v1"))
            rec = Recorder(ProxyRefused("WorkloadGroup x/y template: serviceAccount 'a' is not ...",
                                        permission=permission))
            h.ads.registrations = rec
            s = h.stream()
            s.send(names.CLUSTER)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s.recv()
            assert err.value.code() == code
            assert "WorkloadGroup x/y template" in err.value.details()
            assert h.ads.connections() == []
            assert [e for e, _ in rec.events] == ["connected"]  # never registered: no disconnect

    run(main())


# --- Kubernetes mode: the entries in the real API server --------------------------------
def test_kubernetes_entries_are_written_marked_and_deleted(kube):
    """On the real kube-apiserver: the entry is created with istiod's annotations, marked
    disconnected when the stream ends, deleted after the grace period; a proxy refused
    writes nothing."""
    from controlplane.kube.api import KubeApi
    from controlplane.kube.autoregistration import KubeEntries

    ns = kube.ns("vm")
    api = KubeApi(kube.api_client())

    async def main():
        backend = KubeEntries(api)
        grp = group(ns=ns)
        reg = WorkloadRegistry(backend, lambda n, name: grp if (n, name) == (ns, "ratings") else None,
                               instance="meshd-7", grace_period=0.5)
        proxy = member(ns=ns)
        await reg.connected(proxy, Identity("cluster.local", ns, "ratings-vm"))
        doc = kube.get("networking.istio.io/v1", "WorkloadEntry", "ratings-10.9.0.5", ns)
        assert doc is not None
        assert doc["spec"]["address"] == "10.9.0.5" and doc["spec"]["serviceAccount"] == "ratings-vm"
        ann = annotations(doc)
        assert ann[names.AUTO_REGISTRATION_GROUP_ANNOTATION] == "ratings"
        assert ann[names.WORKLOAD_CONTROLLER_ANNOTATION] == "meshd-7"
        assert names.CONNECTED_AT_ANNOTATION in ann

        with pytest.raises(ProxyRefused):
            await reg.connected(member(ip="10.9.0.6", ns=ns), Identity("cluster.local", ns, "intruder"))
        assert kube.get("networking.istio.io/v1", "WorkloadEntry", "ratings-10.9.0.6", ns) is None

        reg.disconnected(proxy)

        def disconnected():
            d = kube.get("networking.istio.io/v1", "WorkloadEntry", "ratings-10.9.0.5", ns)
            return d is not None and names.DISCONNECTED_AT_ANNOTATION in annotations(d)

        await eventually(lambda: disconnected())
        await eventually(lambda: kube.get("networking.istio.io/v1", "WorkloadEntry", "ratings-10.9.0.5", ns) is None,
                         timeout=10)
        await eventually(lambda: reg.deleted == 1)

    try:
        run(main())
    finally:
        api.close()
    # meshd's ClusterRole allows every request the backend made (get, create, update, delete)
    from tests.support.paths import REPO
    from tests.support.rbac import load_manifests, rbac_mismatch

    problems = rbac_mismatch(kube, load_manifests(REPO / "deploy" / "kubernetes"))
    assert [p for p in problems if p.startswith("forbidden") and "workloadentries" in p] == []
    writes = [f"never used: {v} networking.istio.io/workloadentries" for v in ("get", "create", "update", "delete")]
    assert not [p for p in problems if p.startswith(tuple(writes))], problems


def test_kubernetes_sweep_deletes_entries_left_by_a_gone_replica(kube):
    """The leader's sweep: an auto-registered entry disconnected longer than the grace
    period (its replica died before its timer fired) is deleted; a connected one and a
    hand-written one stay."""
    from controlplane.kube.api import KubeApi
    from controlplane.kube.autoregistration import KubeEntries

    ns = kube.ns("vm")
    old = format_time(datetime.now(UTC) - timedelta(minutes=5))

    def entry(name, ann):
        kube.apply({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
                    "metadata": {"name": name, "namespace": ns, "annotations": ann},
                    "spec": {"address": "10.9.0.9"}})

    entry("left", {names.AUTO_REGISTRATION_GROUP_ANNOTATION: "g", names.DISCONNECTED_AT_ANNOTATION: old})
    entry("here", {names.AUTO_REGISTRATION_GROUP_ANNOTATION: "g", names.CONNECTED_AT_ANNOTATION: old})
    entry("manual", {names.DISCONNECTED_AT_ANNOTATION: old})
    api = KubeApi(kube.api_client())

    async def main():
        backend = KubeEntries(api)
        reg = WorkloadRegistry(backend, lambda n, name: None, instance="meshd-leader", grace_period=1)
        task = asyncio.create_task(backend.sweep(reg))
        try:
            await eventually(lambda: kube.get("networking.istio.io/v1", "WorkloadEntry", "left", ns) is None,
                             timeout=10)
        finally:
            task.cancel()
        assert kube.get("networking.istio.io/v1", "WorkloadEntry", "here", ns) is not None
        assert kube.get("networking.istio.io/v1", "WorkloadEntry", "manual", ns) is not None

    try:
        run(main())
    finally:
        api.close()


# --- the VM's bootstrap ----------------------------------------------------------------
WG_YAML = """
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: ratings, namespace: vm-apps}
spec:
  metadata:
    labels: {app: ratings}
  template:
    serviceAccount: ratings-vm
    labels: {version: v1}
"""


def test_bootstrap_from_a_workload_group_joins_it(tmp_path):
    """`meshd bootstrap --workload-group FILE`: the node a registry registers, with the
    group's namespace, service account and labels; the trust bootstrap (root + token)."""
    import json

    from ca import load_or_create_root
    from tests.support.harness import meshd_cli

    wg = tmp_path / "wg.yaml"
    wg.write_text(WG_YAML)
    ca_dir = tmp_path / "ca"
    load_or_create_root(ca_dir)
    out = meshd_cli("bootstrap", "--type", "sidecar", "--workload-group", str(wg), "--ip", "10.9.0.5",
                    "--pod", "vm-1", "--labels", "extra=1", "--ca-dir", str(ca_dir))
    doc = json.loads(out.stdout)
    node = doc["node"]
    assert node["id"] == "sidecar~10.9.0.5~vm-1.vm-apps~vm-apps.svc.cluster.local"
    md = node["metadata"]
    assert md[names.META_AUTO_REGISTER_GROUP] == "ratings"
    assert (md["NAMESPACE"], md["SERVICE_ACCOUNT"], md["WORKLOAD_NAME"]) == ("vm-apps", "ratings-vm", "ratings")
    assert md["LABELS"] == {"version": "v1", "app": "ratings", "extra": "1", names.TLS_MODE_LABEL: "istio"}
    xds = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "xds-grpc")
    assert "transport_socket" in xds  # TLS to the secure port, verified against the mesh root
    [grpc_service] = doc["dynamic_resources"]["ads_config"]["grpc_services"]
    assert grpc_service["initial_metadata"][0]["key"] == "authorization"

    # what meshd makes of that node: the group's member
    proxy = parse_node(node["id"], md)
    grp = ConfigObject("WorkloadGroup", "networking.istio.io", "v1", "vm-apps", "ratings", {}, {},
                       {"metadata": {"labels": {"app": "ratings"}},
                        "template": {"serviceAccount": "ratings-vm", "labels": {"version": "v1"}}},
                       Origin("file", str(wg)))

    async def main():
        store = ConfigStore()
        backend = StoreEntries(store)
        reg = WorkloadRegistry(backend, lambda ns, n: grp, instance="m")
        await reg.connected(proxy, Identity("cluster.local", "vm-apps", "ratings-vm"))
        [entry] = backend.entries()
        assert entry["metadata"]["name"] == "ratings-10.9.0.5"
        assert entry["spec"]["labels"]["app"] == "ratings"

    run(main())


def test_bootstrap_refuses_flags_that_contradict_the_group(tmp_path):
    from tests.support.harness import meshd_cli

    wg = tmp_path / "wg.yaml"
    wg.write_text(WG_YAML)
    out = meshd_cli("bootstrap", "--type", "sidecar", "--workload-group", str(wg), "--service-account", "web",
                    check=False)
    assert out.returncode == 2
    assert "--service-account 'web' contradicts WorkloadGroup vm-apps/ratings ('ratings-vm')" in out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(WG_YAML.replace("serviceAccount: ratings-vm", "serviceAccount: [x]"))
    out = meshd_cli("bootstrap", "--type", "sidecar", "--workload-group", str(bad), check=False)
    assert out.returncode == 2 and "WorkloadGroup vm-apps/ratings" in out.stderr and "serviceAccount" in out.stderr


def test_a_plaintext_bootstrap_cannot_join_a_group(tmp_path):
    """meshd registers only verified identities: a bootstrap that could never join is an error."""
    from tests.support.harness import meshd_cli

    wg = tmp_path / "wg.yaml"
    wg.write_text(WG_YAML)
    out = meshd_cli("bootstrap", "--type", "sidecar", "--workload-group", str(wg), check=False)
    assert out.returncode == 2 and "needs the secure xDS port" in out.stderr
