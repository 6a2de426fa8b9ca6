"""CA durability: a CA directory meshd cannot use makes `meshd serve` refuse to start with
a clear message, and never creates a new root over it (which would break every
certificate issued before). A healthy directory is reused as it is."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ca.keys import generate_private_key, private_key_to_pem
from tests.support.paths import REPO


def serve(ca_dir: Path, cwd: Path) -> tuple[object, str]:
    (cwd / "cfg").mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "controlplane", "serve", "--config-dir", str(cwd / "cfg"), "--xds-port", "0",
            "--secure-xds-port", "0", "--monitoring-port", "0", "--listen-address", "127.0.0.1", "--ca-dir", str(ca_dir)]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=6, cwd=cwd,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        return p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired:
        return "running", ""


@pytest.fixture(scope="module")
def good_ca(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ca")
    ca = tmp / "ca"
    assert serve(ca, tmp)[0] == "running"  # first start creates the root, and keeps running
    assert (ca / "root-cert.pem").exists() and (ca / "root-key.pem").exists()
    return ca


def _mismatched(d: Path) -> None:
    (d / "root-key.pem").write_bytes(private_key_to_pem(generate_private_key()))


def _key_missing(d: Path) -> None:
    (d / "root-key.pem").unlink()


def _key_garbage(d: Path) -> None:
    (d / "root-key.pem").write_bytes(os.urandom(300))


def _key_unreadable(d: Path) -> None:  # (as root, a mode 000 file is readable: a directory is not)
    (d / "root-key.pem").unlink()
    (d / "root-key.pem").mkdir()


def _cert_garbage(d: Path) -> None:
    (d / "root-cert.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")


def _cert_truncated(d: Path) -> None:
    data = (d / "root-cert.pem").read_bytes()
    (d / "root-cert.pem").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage, message", [
    (_mismatched, "do not match"),
    (_key_missing, "is missing"),
    (_key_garbage, "not a usable PEM private key"),
    (_key_unreadable, "not a regular file"),
    (_cert_garbage, "root-cert.pem"),
    (_cert_truncated, "root-cert.pem"),
], ids=["key-not-matching-cert", "key-missing", "key-garbage", "key-unreadable", "cert-garbage", "cert-truncated"])
def test_unusable_ca_dir_refuses_to_start(good_ca: Path, tmp_path: Path, damage, message):
    ca = tmp_path / "ca"
    shutil.copytree(good_ca, ca)
    damage(ca)
    before = {p.name: p.read_bytes() for p in ca.iterdir() if p.is_file()}
    code, out = serve(ca, tmp_path)
    assert code not in ("running", 0), out
    assert out.startswith("meshd: ") and message in out, out
    assert "Traceback" not in out
    # nothing was created or replaced: no new root
    assert {p.name: p.read_bytes() for p in ca.iterdir() if p.is_file()} == before


def test_ca_dir_that_is_a_file_refuses_to_start(tmp_path: Path):
    (tmp_path / "ca").write_text("not a directory")
    code, out = serve(tmp_path / "ca", tmp_path)
    assert code not in ("running", 0)
    assert "is not a directory" in out and "Traceback" not in out, out
    assert (tmp_path / "ca").read_text() == "not a directory"


def test_healthy_ca_dir_is_reused_unchanged(good_ca: Path, tmp_path: Path):
    ca = tmp_path / "ca"
    shutil.copytree(good_ca, ca)
    before = (ca / "root-cert.pem").read_bytes(), (ca / "root-key.pem").read_bytes()
    assert serve(ca, tmp_path)[0] == "running"
    assert ((ca / "root-cert.pem").read_bytes(), (ca / "root-key.pem").read_bytes()) == before
