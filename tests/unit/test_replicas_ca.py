"""The CA's state in the cluster (controlplane/kube/ca_secrets.py) against the real API
server (a namespace per test): one root Secret however many replicas race to create it
(the server's 409 AlreadyExists), Istio's layouts (istio-ca-secret, cacerts), a local CA
offered as the plug-in CA and never overwritten, and a plug-in CA appearing while meshd
runs becoming a rotation of the CA directory. Failures at a chosen moment come from the
stand-in, which the test says."""
from __future__ import annotations

import asyncio
import base64
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ca import CAStateError
from ca.root import create_root, fingerprint
from ca.signer import PLUG_IN, SELF_SIGNED
from ca.store import CADirectory
from controlplane.kube.api import KubeApi
from controlplane.kube.ca_secrets import CA_SECRET, ClusterCADirs, KubeCAStore, cluster_ca_dirs
from controlplane.security.authority import MeshCA
from controlplane.security.cadir import open_ca
from tests.support.pki import make_cacerts

NS = "istio-system"
TD = "cluster.local"


KUBEAPI_BOOKMARKS = None  # the stand-in API server's default interval (the kubeapi fixture)


@pytest.fixture
def api(kube):
    """meshd's JSON layer on the real server, through the test's recording client."""
    k = KubeApi(kube.api_client())
    yield k
    k.close()


@pytest.fixture
def stand_in_api(kubeapi):
    k = KubeApi(kubeapi.api_client())
    yield k
    k.close()
    k.api_client.close()


def secret(server, name: str, ns: str = NS) -> dict | None:
    return server.get("v1", "Secret", name, ns)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def root_fp(ca_dir: Path) -> str:
    return fingerprint(x509.load_pem_x509_certificate((ca_dir / "root-cert.pem").read_bytes()))


def cacerts_secret(d: Path, ns: str = NS) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cacerts", "namespace": ns}, "type": "Opaque",
            "data": {n: b64((d / n).read_bytes()) for n in ("ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem")}}


def test_racing_replicas_create_one_root_and_all_use_it(kube, api, tmp_path):
    ns = kube.ns("istio-system")
    stores = [KubeCAStore(api, ns, tmp_path / f"ca-{i}", TD) for i in range(3)]
    barrier = threading.Barrier(len(stores))
    for s in stores:  # every replica reads "no Secret" before any of them creates one
        real = s.cluster_ca

        def looked(real=real):
            found = real()
            barrier.wait(5)
            return found
        s.cluster_ca = looked
    with ThreadPoolExecutor(len(stores)) as ex:
        events = list(ex.map(lambda s: s.prepare(), stores))
    assert sorted(events).count("root CA created in the cluster") == 1
    creates = kube.writes("secrets", "POST")
    assert sorted(r.status for r in creates) == [201, 409, 409]
    # everyone uses the winner's root; the losers' candidates never reached their directories
    stored = secret(kube, CA_SECRET, ns)
    assert stored["type"] == "istio.io/ca-root"
    assert set(stored["data"]) == {"ca-cert.pem", "ca-key.pem", "cert-chain.pem", "key.pem", "root-cert.pem"}
    winner = base64.b64decode(stored["data"]["ca-cert.pem"])
    for s in stores:
        assert (s.ca_dir / "root-cert.pem").read_bytes() == winner
        assert CADirectory(s.ca_dir).load(TD, create=False).active.kind == SELF_SIGNED
        assert not list(s.ca_dir.glob("previous/*"))


def test_a_root_istiod_left_in_the_cluster_is_used_as_is(kube, api, tmp_path):
    ns = kube.ns("istio-system")
    istiod = tmp_path / "istiod"
    istiod.mkdir()
    root = create_root(istiod, TD, "rsa-2048")  # istiod's self-signed roots are RSA 2048
    kube.apply({"apiVersion": "v1", "kind": "Secret", "type": "istio.io/ca-root",
                   "metadata": {"name": CA_SECRET, "namespace": ns},
                   "data": {"ca-cert.pem": b64(root.cert_pem), "ca-key.pem": b64((istiod / "root-key.pem").read_bytes()),
                            "cert-chain.pem": "", "key.pem": "", "root-cert.pem": ""}})
    store = KubeCAStore(api, ns, tmp_path / "ca", TD)
    assert store.prepare() == f"CA loaded from Secret {CA_SECRET}"
    assert root_fp(store.ca_dir) == root.fingerprint
    assert kube.writes("secrets") == []
    assert kube.verbs() == {("", "secrets", "get")}


def test_cacerts_wins_and_a_broken_one_is_refused(kube, api, tmp_path):
    ns = kube.ns("istio-system")
    root, inter = make_cacerts(tmp_path / "cacerts")
    kube.apply(cacerts_secret(tmp_path / "cacerts", ns))
    store = KubeCAStore(api, ns, tmp_path / "ca", TD)
    assert store.prepare() == "CA loaded from Secret cacerts"
    active = CADirectory(store.ca_dir).load(TD, create=False).active
    assert active.kind == PLUG_IN and active.fingerprint == fingerprint(inter) and active.root_fingerprint == fingerprint(root)
    assert secret(kube, CA_SECRET, ns) is None  # no self-signed root is made when cacerts exists
    # a cacerts whose key is not the certificate's: meshd refuses to start on it
    _, _ = make_cacerts(tmp_path / "other", name="Other")
    broken = cacerts_secret(tmp_path / "cacerts", ns)
    broken["data"]["ca-key.pem"] = b64((tmp_path / "other" / "ca-key.pem").read_bytes())
    kube.apply(broken)
    with pytest.raises(CAStateError, match="not the key"):
        KubeCAStore(api, ns, tmp_path / "ca2", TD).prepare()


def files_of(d: Path) -> dict[str, bytes]:
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file() and f.name != ".lock"}


def test_a_directory_with_its_own_ca_is_offered_as_the_plugin_ca_and_never_written(kube, api, tmp_path):
    ns = kube.ns("istio-system")
    mine = tmp_path / "home-ca"
    open_ca(mine, TD)  # a developer's ~/.meshd/ca: its own root and token key
    before = files_of(mine)
    KubeCAStore(api, ns, tmp_path / "first", TD).prepare()  # the cluster has a self-signed root already
    dirs = cluster_ca_dirs(mine, tmp_path / "mirror")
    assert dirs == ClusterCADirs(tmp_path / "mirror", mine)
    store = KubeCAStore(api, ns, dirs.mirror, TD, offered=dirs.offered)
    assert store.prepare() == f"CA of {mine} is the cluster's plug-in CA now"
    offered = CADirectory(mine).load(TD, create=False).active
    cacerts = {k: base64.b64decode(v) for k, v in secret(kube, "cacerts", ns)["data"].items()}
    assert cacerts["root-cert.pem"] == cacerts["ca-cert.pem"] == (mine / "root-cert.pem").read_bytes()
    active = CADirectory(dirs.mirror).load(TD, create=False).active
    assert active.kind == PLUG_IN and active.fingerprint == offered.fingerprint
    assert (dirs.mirror / "token-key.pem").read_bytes() == (mine / "token-key.pem").read_bytes()
    assert files_of(mine) == before
    # A mirror (the marker) or an empty directory is the mirror itself; no default, meshd's own.
    assert cluster_ca_dirs(dirs.mirror, tmp_path / "x") == ClusterCADirs(dirs.mirror, None)
    assert cluster_ca_dirs(tmp_path / "empty", tmp_path / "x") == ClusterCADirs(tmp_path / "empty", None)
    assert cluster_ca_dirs(None, tmp_path / "x") == ClusterCADirs(tmp_path / "x", None)
    # A directory with a CA of its own used as the mirror directly: refused, not overwritten.
    with pytest.raises(CAStateError, match="did not come from the cluster"):
        KubeCAStore(api, ns, mine, TD).prepare()
    assert files_of(mine) == before


def test_an_offer_the_cluster_does_not_take_still_starts_on_the_clusters_ca(kube, api, tmp_path):
    ns = kube.ns("istio-system")
    root, inter = make_cacerts(tmp_path / "cacerts")
    kube.apply(cacerts_secret(tmp_path / "cacerts", ns))  # the cluster's plug-in CA
    mine = tmp_path / "home-ca"
    CADirectory(mine).load(TD)
    before = files_of(mine)
    store = KubeCAStore(api, ns, tmp_path / "mirror", TD, offered=mine)
    assert store.prepare() == "CA loaded from Secret cacerts"
    assert CADirectory(store.ca_dir).load(TD, create=False).active.fingerprint == fingerprint(inter)
    assert [r.status for r in kube.writes("secrets")] == []  # cacerts exists: not offered again
    assert files_of(mine) == before


def test_api_server_trouble_at_start_is_retried_then_refused(kubeapi, stand_in_api, tmp_path):
    """The stand-in: failing requests and an outage at chosen moments."""
    kubeapi.fail_next(2, 503)
    assert KubeCAStore(stand_in_api, NS, tmp_path / "ca", TD).prepare(timeout=10) == "root CA created in the cluster"
    with kubeapi.outage():
        with pytest.raises(CAStateError, match="cannot read the CA Secrets"):
            KubeCAStore(stand_in_api, NS, tmp_path / "ca2", TD).prepare(timeout=1)


def test_plugging_in_cacerts_while_running_rotates(kube, api, tmp_path):
    ns = kube.ns("istio-system")
    store = KubeCAStore(api, ns, tmp_path / "ca", TD, keep_old_for=timedelta(hours=24))
    store.prepare()
    ca = MeshCA.open(store.ca_dir, TD)
    old = ca.active
    assert old.kind == SELF_SIGNED
    store._follow_once(ca)  # nothing changed: nothing written
    assert not list(store.ca_dir.glob("previous/*"))

    root, inter = make_cacerts(tmp_path / "cacerts")
    kube.apply(cacerts_secret(tmp_path / "cacerts", ns))  # the operator plugs in a CA
    store._follow_once(ca)
    # the directory now holds the plug-in CA, the old root is archived, and the ledger
    # keeps it trusted for a certificate lifetime (other replicas issued from it too)
    assert CADirectory(store.ca_dir).load(TD, create=False).active.fingerprint == fingerprint(inter)
    assert len(list(store.ca_dir.glob("previous/*"))) == 1
    until = CADirectory(store.ca_dir).issued_until(old.fingerprint)
    assert until is not None and abs(until - (datetime.now(UTC) + timedelta(hours=24))) < timedelta(minutes=1)
    # the running CA picks it up as a rotation: both roots trusted, then the new signer
    asyncio.run(ca.check())
    asyncio.run(ca.check())
    asyncio.run(ca.check())
    roots = {fingerprint(r) for r in ca.trusted_roots()}
    assert roots == {old.root_fingerprint, fingerprint(root)}
    assert ca.active.fingerprint == fingerprint(inter)
    bundle = ca.trust_bundle_pem
    assert old.root_pem in bundle and root.public_bytes(Encoding.PEM) in bundle


def test_a_deleted_root_secret_is_put_back(kube, api, tmp_path):
    ns = kube.ns("istio-system")
    store = KubeCAStore(api, ns, tmp_path / "ca", TD)
    store.prepare()
    ca = MeshCA.open(store.ca_dir, TD)
    kube.delete("v1", "Secret", CA_SECRET, ns)
    store._follow_once(ca)
    again = secret(kube, CA_SECRET, ns)
    assert base64.b64decode(again["data"]["ca-cert.pem"]) == ca.active.root_pem
    assert not list(store.ca_dir.glob("previous/*"))  # the same root: no rotation
