"""The CA over its life, without Envoy: plug-in CA loading (ca/signer.py), the CA
directory's rotation and ledger (ca/store.py), and the running meshd's phases
(controlplane/security/authority.py: trust both roots, switch signer, drop the old root
when nothing it signed is alive)."""
from __future__ import annotations

import asyncio
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from ca import CAStateError, Identity
from ca.signer import PLUG_IN, SELF_SIGNED, load_plugin
from ca.store import CADirectory
from controlplane.security.authority import MeshCA
from controlplane.server.metrics import Metrics
from tests.support.pki import make_cacerts

CATALOG = Identity("cluster.local", "istioinaction", "catalog")


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# --- plug-in CA ----------------------------------------------------------------------
def test_plugin_ca_loads_istio_cacerts(tmp_path: Path):
    root, inter = make_cacerts(tmp_path / "cacerts")
    signer = load_plugin(tmp_path / "cacerts")
    assert signer.kind == PLUG_IN and signer.cert == inter and signer.root == root
    assert signer.intermediates == ()  # cert-chain.pem is ca-cert + root: nothing in between
    assert x509.load_pem_x509_certificates(signer.chain_pem) == [inter, root]


def test_plugin_ca_without_cert_chain_and_with_root_left_out(tmp_path: Path):
    d = tmp_path / "cacerts"
    root, inter = make_cacerts(d)
    (d / "cert-chain.pem").unlink()
    assert load_plugin(d).chain_certs == [inter, root]


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "ca-key.pem").unlink(), "partial plug-in CA"),
    (lambda d: os.chmod(d / "ca-key.pem", 0o644), "0600"),
    (lambda d: (d / "root-cert.pem").write_bytes((d / "ca-cert.pem").read_bytes()), "not self-signed"),
    (lambda d: (d / "ca-cert.pem").write_text("junk"), "not PEM"),
])
def test_plugin_ca_refuses_broken_cacerts(tmp_path: Path, damage, message):
    d = tmp_path / "cacerts"
    make_cacerts(d)
    damage(d)
    with pytest.raises(CAStateError, match=message):
        load_plugin(d)


def test_plugin_ca_refuses_key_of_another_cert_and_foreign_root(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_cacerts(a, "A")
    make_cacerts(b, "B")
    (a / "ca-key.pem").unlink()
    (a / "ca-key.pem").write_bytes((b / "ca-key.pem").read_bytes())
    os.chmod(a / "ca-key.pem", 0o600)
    with pytest.raises(CAStateError, match="not the key"):
        load_plugin(a)
    make_cacerts(a, "A")
    (a / "root-cert.pem").write_bytes((b / "root-cert.pem").read_bytes())
    with pytest.raises(CAStateError, match="does not lead to the root"):
        load_plugin(a)


def test_leaves_from_plugin_ca_carry_the_full_chain(tmp_path: Path):
    root, inter = make_cacerts(tmp_path / "ca")
    ca = MeshCA.open(tmp_path / "ca", "cluster.local")
    kc = ca.issue_workload(CATALOG, timedelta(hours=1))
    chain = x509.load_pem_x509_certificates(kc.chain_pem)
    assert chain[1:] == [inter, root]
    chain[0].verify_directly_issued_by(inter)
    assert ca.trust_bundle_pem == root.public_bytes(__import__("cryptography").hazmat.primitives.serialization.Encoding.PEM)


# --- the directory ---------------------------------------------------------------------
def test_rotate_root_archives_the_old_signer_and_writes_the_bundle(tmp_path: Path):
    d = CADirectory(tmp_path / "ca")
    first = d.load().active
    old, new = d.rotate_root()
    assert old.fingerprint == first.fingerprint and new.fingerprint != first.fingerprint
    assert new.kind == SELF_SIGNED
    state = d.load()
    assert state.active.fingerprint == new.fingerprint
    assert [p.signer.fingerprint for p in state.previous] == [first.fingerprint]
    archived = state.previous[0].path
    assert mode(archived) == 0o700 and mode(archived / "root-key.pem") == 0o600
    bundle = x509.load_pem_x509_certificates((tmp_path / "ca" / "trust-bundle.pem").read_bytes())
    assert bundle == [new.root, first.root]


def test_rotate_to_plugin_and_back(tmp_path: Path):
    d = CADirectory(tmp_path / "ca")
    first = d.load().active
    root, inter = make_cacerts(tmp_path / "cacerts")
    old, new = d.rotate_root(cacerts=tmp_path / "cacerts")
    assert old.fingerprint == first.fingerprint and new.kind == PLUG_IN and new.root == root
    assert not (tmp_path / "ca" / "root-key.pem").exists()
    assert mode(tmp_path / "ca" / "ca-key.pem") == 0o600
    assert d.load().active.fingerprint == new.fingerprint
    with pytest.raises(CAStateError, match="already in use"):
        d.rotate_root(cacerts=tmp_path / "cacerts")
    _, back = d.rotate_root()
    assert back.kind == SELF_SIGNED and not (tmp_path / "ca" / "ca-key.pem").exists()
    assert {p.signer.fingerprint for p in d.load().previous} == {first.fingerprint, new.fingerprint}


def test_rotate_root_refuses_unsafe_cacerts_and_leaves_the_ca_alone(tmp_path: Path):
    d = CADirectory(tmp_path / "ca")
    first = d.load().active
    make_cacerts(tmp_path / "cacerts")
    os.chmod(tmp_path / "cacerts" / "ca-key.pem", 0o644)
    with pytest.raises(CAStateError, match="0600"):
        d.rotate_root(cacerts=tmp_path / "cacerts")
    assert d.load().active.fingerprint == first.fingerprint and d.load().previous == ()


def test_ledger_records_before_issue_with_little_writing(tmp_path: Path):
    ca = MeshCA.open(tmp_path / "ca", "cluster.local")
    ledger = tmp_path / "ca" / "ledger.json"
    ca.issue_workload(CATALOG, timedelta(hours=1))
    first = json.loads(ledger.read_text())[ca.signer_fingerprint]
    mtime = ledger.stat().st_mtime_ns
    for _ in range(5):  # a burst inside the headroom: no more writes
        ca.issue_workload(CATALOG, timedelta(hours=1))
    assert ledger.stat().st_mtime_ns == mtime
    until = datetime.fromisoformat(first["issued_until"])
    assert timedelta(minutes=59) < until - datetime.now(UTC) <= timedelta(hours=1, minutes=1)
    assert first["root"] == ca.active.root_fingerprint


# --- the running CA's phases -------------------------------------------------------------
def test_rotation_phases(tmp_path: Path):
    clock = Clock()
    metrics = Metrics()
    ca = MeshCA.open(tmp_path / "ca", "cluster.local", clock=clock, metrics=metrics)
    old = ca.active
    ca.issue_workload(CATALOG, timedelta(minutes=10))
    unsynced = ["conn-1"]
    ca.propagation_check = lambda since: list(unsynced)
    bundles, signers = [], []
    ca.on_bundle_change(lambda: bundles.append([r.serial_number for r in ca.trusted_roots()]))
    ca.on_signer_change(lambda s: signers.append(s.fingerprint))

    async def main():
        await ca.check()
        assert bundles == [] and signers == []
        _, new = CADirectory(tmp_path / "ca").rotate_root()
        await ca.check()  # noticed: phase 1, both roots trusted, still signing with the old
        assert ca.pending.fingerprint == new.fingerprint and ca.active.fingerprint == old.fingerprint
        assert len(ca.trusted_roots()) == 2 and bundles
        leaf = x509.load_pem_x509_certificates(ca.issue_workload(CATALOG, timedelta(minutes=10)).chain_pem)
        assert leaf[-1] == old.root
        await ca.check()
        assert ca.pending is not None  # a proxy has not ACKed the new bundle
        unsynced.clear()
        await ca.check()
        await ca.check()  # two quiet checks: phase 2
        assert ca.pending is None and ca.active.fingerprint == new.fingerprint and signers == [new.fingerprint]
        assert len(ca.trusted_roots()) == 2, "the old root stays while its certificates live"
        assert ca.serving_signer().fingerprint == old.fingerprint, "meshd's own cert: oldest trusted root"
        leaf = x509.load_pem_x509_certificates(ca.issue_workload(CATALOG, timedelta(minutes=10)).chain_pem)
        assert leaf[-1] == new.root
        clock.now += timedelta(minutes=9)
        await ca.check()
        assert len(ca.trusted_roots()) == 2
        clock.now += timedelta(minutes=3)  # every certificate from the old root has expired
        await ca.check()
        assert [r.serial_number for r in ca.trusted_roots()] == [new.root.serial_number]
        assert ca.serving_signer().fingerprint == new.fingerprint
        assert not list((tmp_path / "ca" / "previous").glob("*"))
        assert (tmp_path / "ca" / "trust-bundle.pem").read_bytes() == new.root_pem

    asyncio.run(main())
    assert metrics.trust_bundle_roots._value.get() == 1


def test_a_broken_change_keeps_the_current_signer(tmp_path: Path):
    metrics = Metrics()
    ca = MeshCA.open(tmp_path / "ca", "cluster.local", metrics=metrics)
    before = ca.active.fingerprint

    async def main():
        (tmp_path / "ca" / "ca-cert.pem").write_text("half a cacerts set")
        await ca.check()

    asyncio.run(main())
    assert ca.active.fingerprint == before and ca.pending is None
    assert metrics.ca_reload_failures._value.get() == 1


def test_hand_replaced_cacerts_are_rotated_to_and_the_old_signer_archived(tmp_path: Path):
    ca = MeshCA.open(tmp_path / "ca", "cluster.local")
    ca.propagation_check = lambda since: []
    old = ca.active
    ca.issue_workload(CATALOG, timedelta(minutes=10))

    async def main():
        # an operator drops cacerts in (as a Kubernetes Secret update would), no CLI
        for name in ("root-key.pem",):
            (tmp_path / "ca" / name).unlink()
        root, inter = make_cacerts(tmp_path / "ca")
        for _ in range(3):
            await ca.check()
        return root

    root = asyncio.run(main())
    assert ca.active.root == root
    assert {fp for fp in (p.signer.fingerprint for p in ca.previous())} == {old.fingerprint}
    assert [r.serial_number for r in ca.trusted_roots()] == [root.serial_number, old.root.serial_number]
