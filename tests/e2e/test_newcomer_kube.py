"""`meshd serve --kubeconfig` as a newcomer meets it (issue 16 items 2 and 3), against
the real kube-apiserver of ../shared/k8s:

- a CA directory left by an earlier `meshd serve` of the example ($MESHD_HOME/ca) is
  neither read nor a reason to refuse: the cluster's CA is created and served;
- `--ca-dir` with a CA of its own offers it to the cluster as its plug-in CA (Secret
  cacerts); when the cluster has another plug-in CA, that one stays and meshd starts on
  it; the operator's directory is never written;
- SIGTERM or SIGINT while meshd waits for its namespace to exist ends it within seconds.

Each test uses its own namespace (meshd's --leader-election-namespace, where the CA
Secrets live) on the session's API server (the `kube` fixture).
"""
from __future__ import annotations

import base64
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from kubernetes import client

from ca.root import fingerprint
from controlplane.kube.ca_secrets import offered_ca
from controlplane.security.cadir import open_ca
from tests.support.harness import Process, free_port, meshd, wait_for
from tests.support.paths import REPO

pytestmark = pytest.mark.e2e

TD = "cluster.local"


@pytest.fixture
def cluster(kube):
    """This test's part of the session's real API server: the cluster and a core client."""
    return kube.cluster, client.CoreV1Api(kube.api_client())


def secret_files(core: client.CoreV1Api, ns: str, name: str) -> dict[str, bytes] | None:
    try:
        s = core.read_namespaced_secret(name, ns)
    except client.ApiException as e:
        if e.status == 404:
            return None
        raise
    return {k: base64.b64decode(v) for k, v in (s.data or {}).items()}


def published_root(core: client.CoreV1Api, ns: str) -> str | None:
    """The fingerprint of the root meshd publishes (ConfigMap istio-ca-root-cert)."""
    try:
        cm = core.read_namespaced_config_map("istio-ca-root-cert", ns)
    except client.ApiException:
        return None
    return fingerprint(x509.load_pem_x509_certificate(cm.data["root-cert.pem"].encode()))


def files_of(d: Path) -> dict[str, bytes]:
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file() and f.name != ".lock"}


def home_with_a_ca(tmp_path: Path) -> tuple[Path, str]:
    """A $MESHD_HOME in which file mode made its CA (what `meshd serve` of the example leaves)."""
    home = tmp_path / "home"
    opened = open_ca(home / "ca", TD)
    return home, opened.root.fingerprint


def kube_args(cluster, ns: str) -> list[str]:
    return ["--kubeconfig", str(cluster.kubeconfig), "--leader-election-namespace", ns]


def test_a_local_ca_from_file_mode_is_neither_used_nor_a_reason_to_refuse(cluster, kube, tmp_path):
    c, core = cluster
    ns = kube.ns("newcomer-default")
    home, local_root = home_with_a_ca(tmp_path)
    before = files_of(home / "ca")
    with meshd(None, tmp_path, extra=kube_args(c, ns), home=home, fresh_ca_dir=False) as cp:
        created = secret_files(core, ns, "istio-ca-secret")
        assert created is not None, cp.log()[-3000:]
        cluster_root = fingerprint(x509.load_pem_x509_certificate(created["ca-cert.pem"]))
        assert cluster_root != local_root
        wait_for(lambda: published_root(core, ns) == cluster_root, 20, what="the cluster's root published")
        assert secret_files(core, ns, "cacerts") is None  # nothing offered: --ca-dir was not given
        assert "holds a CA" not in cp.log()
    assert cp.process.proc.returncode == 0, cp.log()[-3000:]
    assert files_of(home / "ca") == before  # the file-mode CA is untouched
    assert list((home / "kubernetes").glob("*/ca/.kubernetes"))  # the mirror is meshd's own, per cluster


def test_ca_dir_is_offered_as_the_clusters_plugin_ca(cluster, kube, tmp_path):
    c, core = cluster
    ns = kube.ns("newcomer-offer")
    home, local_root = home_with_a_ca(tmp_path)
    before = files_of(home / "ca")
    with meshd(None, tmp_path, extra=kube_args(c, ns) + ["--ca-dir", str(home / "ca")], home=home) as cp:
        cacerts = secret_files(core, ns, "cacerts")
        assert cacerts is not None, cp.log()[-3000:]
        assert fingerprint(x509.load_pem_x509_certificate(cacerts["root-cert.pem"])) == local_root
        assert cacerts["ca-cert.pem"] == cacerts["root-cert.pem"] == (home / "ca" / "root-cert.pem").read_bytes()
        assert secret_files(core, ns, "istio-ca-secret") is None  # no self-signed root made beside it
        wait_for(lambda: published_root(core, ns) == local_root, 20, what="the offered root published")
        assert "is the cluster's plug-in CA now" in cp.log()
    assert files_of(home / "ca") == before


def test_an_offer_the_cluster_does_not_take_leaves_both_cas_as_they_are(cluster, kube, tmp_path):
    c, core = cluster
    ns = kube.ns("newcomer-taken")
    open_ca(tmp_path / "theirs", TD)
    theirs = offered_ca(tmp_path / "theirs", TD)  # another CA, in Secret cacerts's layout
    core.create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name="cacerts"), type="Opaque",
        data={k: base64.b64encode(v).decode() for k, v in theirs.files.items()}))
    home, local_root = home_with_a_ca(tmp_path)
    before = files_of(home / "ca")
    with meshd(None, tmp_path, extra=kube_args(c, ns) + ["--ca-dir", str(home / "ca")], home=home) as cp:
        cluster_root = fingerprint(x509.load_pem_x509_certificate(theirs.files["root-cert.pem"]))
        wait_for(lambda: published_root(core, ns) == cluster_root, 20, what="the cluster's own plug-in root published")
        assert secret_files(core, ns, "cacerts") == theirs.files  # not replaced
        assert "offered CA not used" in cp.log()
    assert cp.process.proc.returncode == 0
    assert files_of(home / "ca") == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_signal_while_waiting_for_the_namespace_stops_meshd_at_once(cluster, kube, tmp_path, sig):
    c, _ = cluster
    argv = [sys.executable, "-m", "controlplane", "serve", *kube_args(c, kube.name("not-yet")),
            "--listen-address", "127.0.0.1", "--xds-port", str(free_port("127.0.0.1")),
            "--monitoring-port", str(free_port("127.0.0.1")), "--secure-xds-port", str(free_port("127.0.0.1")),
            "--webhook-port", "0"]
    p = Process("meshd", argv, tmp_path / "meshd.log",
                env={**os.environ, "PYTHONPATH": str(REPO), "MESHD_HOME": str(tmp_path / "home")})
    try:
        wait_for(lambda: "ca secrets not readable yet" in p.log() or not p.alive(), 30, what="meshd waiting for its namespace")
        assert p.alive(), p.log()
        sent = time.monotonic()
        p.proc.send_signal(sig)
        p.proc.wait(15)  # bounded: a meshd that ignored the signal fails here or below
        took = time.monotonic() - sent
        assert took < 3, f"meshd took {took:.1f}s to stop after {sig.name}:\n{p.log()[-2000:]}"
        assert p.proc.returncode == 0, p.log()[-2000:]
        assert "meshd stopped before it started" in p.log()
    finally:
        p.stop()
