"""`meshd bootstrap --token-path FILE` (a VM's rotating token, docs/vm.md): the ADS service
reads the token file at every (re)connection, as an injected pod's bootstrap does, instead
of a copy of the token in the bootstrap. Run as a subprocess, as operators run it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ca import TokenAuthority, load_or_create_root, load_or_create_token_key
from tests.support.envoy import envoy_binary
from tests.support.paths import REPO

VM_ARGS = ["--type", "sidecar", "--namespace", "vm-apps", "--service-account", "ratings-vm", "--pod", "vm-1",
           "--ip", "10.0.5.17", "--xds-address", "meshd.example:15012"]


def meshd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controlplane", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    ca = tmp_path / "ca"
    load_or_create_root(ca)
    token = TokenAuthority(load_or_create_token_key(ca)).issue("vm-apps", "ratings-vm")
    (tmp_path / "token").write_text(token)  # no newline: Envoy sends the file's bytes as they are
    return {"root": ca / "root-cert.pem", "token": tmp_path / "token", "dir": tmp_path}


def test_the_ads_service_reads_the_token_file_at_each_connection(files: dict[str, Path]):
    out = files["dir"] / "envoy.json"
    # a relative path: Envoy's working directory is not the operator's, the bootstrap names it absolutely
    cp = meshd("bootstrap", *VM_ARGS, "--root-cert", str(files["root"]), "--token-path", "token",
               "--output", str(out), cwd=files["dir"])
    assert cp.returncode == 0, cp.stderr
    text = out.read_text()
    doc = yaml.safe_load(text)
    assert files["token"].read_text() not in text  # not copied: a rotated token is read as it is then
    ads = doc["dynamic_resources"]["ads_config"]["grpc_services"]
    assert len(ads) == 1 and "envoy_grpc" not in ads[0] and "initial_metadata" not in ads[0]
    grpc = ads[0]["google_grpc"]
    assert grpc["target_uri"] == "meshd.example:15012"
    assert grpc["channel_credentials"]["ssl_credentials"]["root_certs"]["inline_string"] == files["root"].read_text()
    plugin = grpc["call_credentials"][0]["from_plugin"]
    assert plugin["name"] == "envoy.grpc_credentials.file_based_metadata"
    assert plugin["typed_config"]["secret_data"] == {"filename": str(files["token"])}
    assert plugin["typed_config"]["header_prefix"] == "Bearer "
    # meshd's certificate is verified for its service name whatever address the VM dials
    assert grpc["channel_args"]["args"]["grpc.ssl_target_name_override"] == {"string_value": "istiod.istio-system.svc"}


def test_a_token_path_with_a_symlink_keeps_the_link(files: dict[str, Path]):
    """A projected token (or a renewal that swaps a link) is read through its link, never pinned
    to the file the link pointed at when the bootstrap was written."""
    link = files["dir"] / "current-token"
    link.symlink_to(files["token"])
    cp = meshd("bootstrap", *VM_ARGS, "--root-cert", str(files["root"]), "--token-path", str(link))
    assert cp.returncode == 0, cp.stderr
    grpc = yaml.safe_load(cp.stdout)["dynamic_resources"]["ads_config"]["grpc_services"][0]["google_grpc"]
    assert grpc["call_credentials"][0]["from_plugin"]["typed_config"]["secret_data"] == {"filename": str(link)}


@pytest.mark.parametrize("extra,error", [
    (["--token", "{token}"], "give either --token (copied into the bootstrap) or --token-path (re-read), not both"),
    (["--ca-dir", "{dir}"], "give either --ca-dir or --root-cert/--token, not both"),
])
def test_token_path_is_alone_with_root_cert(files: dict[str, Path], extra: list[str], error: str):
    args = [a.format(token=files["token"], dir=files["dir"] / "ca") for a in extra]
    cp = meshd("bootstrap", *VM_ARGS, "--root-cert", str(files["root"]), "--token-path", str(files["token"]), *args)
    assert cp.returncode == 2 and cp.stderr.strip() == f"meshd bootstrap: {error}"


def test_token_path_needs_the_root_and_a_usable_token(files: dict[str, Path]):
    cp = meshd("bootstrap", *VM_ARGS, "--token-path", str(files["token"]))
    assert cp.returncode == 2 and "--token-path needs --root-cert" in cp.stderr
    with_newline = files["dir"] / "token-nl"
    with_newline.write_text(files["token"].read_text() + "\n")  # what `kubectl create token > f` writes
    cp = meshd("bootstrap", *VM_ARGS, "--root-cert", str(files["root"]), "--token-path", str(with_newline))
    assert cp.returncode == 2 and "the token has surrounding white space" in cp.stderr
    cp = meshd("bootstrap", *VM_ARGS, "--root-cert", str(files["root"]), "--token-path", str(files["dir"] / "none"))
    assert cp.returncode == 2 and "No such file or directory" in cp.stderr


@pytest.mark.e2e
def test_envoy_validates_the_rotating_token_bootstrap(files: dict[str, Path]):
    out = files["dir"] / "envoy.json"
    cp = meshd("bootstrap", *VM_ARGS, "--root-cert", str(files["root"]), "--token-path", str(files["token"]),
               "--output", str(out))
    assert cp.returncode == 0, cp.stderr
    v = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(out), "--use-dynamic-base-id"],
                       capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and "OK" in v.stdout + v.stderr, v.stdout + v.stderr
