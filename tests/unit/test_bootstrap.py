"""`meshd bootstrap` (secure and plaintext) and `meshd token`.

The command runs as a subprocess (as operators run it); `envoy --mode validate` checks
that Envoy accepts what it writes (marked e2e: it needs the Envoy binary).
"""
from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ca import TokenAuthority, load_or_create_root, load_or_create_token_key
from controlplane import names
from controlplane.bootstrap import BootstrapParams, XdsTls, build_bootstrap
from controlplane.cli import parse_duration
from tests.support.envoy import envoy_binary
from tests.support.paths import REPO

NS = "istioinaction"
SIDECAR_ARGS = ["--type", "sidecar", "--namespace", NS, "--service-account", "catalog", "--pod", "catalog-0",
                "--ip", "10.0.0.7", "--labels", "app=catalog,version=v1", "--admin-port", "15000"]
ROUTER_ARGS = ["--type", "router", "--namespace", "istio-system", "--pod", "istio-ingressgateway-0", "--ip", "127.0.0.1",
               "--labels", "istio=ingressgateway,app=istio-ingressgateway", "--admin-port", "15000"]


def meshd(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "controlplane", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


@pytest.fixture()
def ca_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    load_or_create_root(d)
    return d


def xds_cluster(doc: dict) -> dict:
    return next(c for c in doc["static_resources"]["clusters"] if c["name"] == "xds-grpc")


def xds_endpoint(doc: dict) -> tuple[str, int]:
    sock = xds_cluster(doc)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    return sock["address"], sock["port_value"]


def test_secure_sidecar_bootstrap(ca_dir: Path, tmp_path: Path):
    out = tmp_path / "sidecar.yaml"
    cp = meshd("bootstrap", *SIDECAR_ARGS, "--ca-dir", str(ca_dir), "--output", str(out))
    assert cp.returncode == 0, cp.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it holds a bearer token
    doc = yaml.safe_load(out.read_text())

    assert xds_endpoint(doc) == ("127.0.0.1", names.PORT_XDS_SECURE)
    ts = xds_cluster(doc)["transport_socket"]
    assert ts["name"] == "envoy.transport_sockets.tls"
    tls = ts["typed_config"]
    assert tls["@type"].endswith("UpstreamTlsContext") and tls["sni"] == "istiod.istio-system.svc"
    vc = tls["common_tls_context"]["validation_context"]
    assert vc["trusted_ca"]["inline_string"] == (ca_dir / "root-cert.pem").read_text()
    assert vc["match_typed_subject_alt_names"] == [{"san_type": "DNS", "matcher": {"exact": "istiod.istio-system.svc"}}]
    assert tls["common_tls_context"]["alpn_protocols"] == ["h2"]

    (svc,) = doc["dynamic_resources"]["ads_config"]["grpc_services"]
    assert svc["envoy_grpc"] == {"cluster_name": "xds-grpc"}
    (md,) = svc["initial_metadata"]
    assert md["key"] == "authorization" and md["value"].startswith("Bearer ")
    tokens = TokenAuthority(load_or_create_token_key(ca_dir))
    assert tokens.verify(md["value"].split(" ", 1)[1]) == (NS, "catalog")

    node = doc["node"]
    assert node["id"] == "sidecar~10.0.0.7~catalog-0.istioinaction~istioinaction.svc.cluster.local"
    meta = node["metadata"]
    assert meta["INTERCEPTION_MODE"] == "REDIRECT" and meta["SERVICE_ACCOUNT"] == "catalog"
    assert meta["NAMESPACE"] == NS
    assert meta["LABELS"] == {"app": "catalog", "version": "v1", "security.istio.io/tlsMode": "istio"}
    listeners = {lst["name"] for lst in doc["static_resources"]["listeners"]}
    assert listeners == {"0.0.0.0_15090", "0.0.0.0_15021"}
    assert "BEGIN" not in cp.stdout and "token" not in cp.stderr.lower()


def test_plaintext_router_bootstrap_is_unchanged(tmp_path: Path):
    out = tmp_path / "gw.yaml"
    cp = meshd("bootstrap", *ROUTER_ARGS, "--xds-address", "127.0.0.1:15010", "--output", str(out))
    assert cp.returncode == 0, cp.stderr
    doc = yaml.safe_load(out.read_text())
    assert "transport_socket" not in xds_cluster(doc)
    assert doc["dynamic_resources"]["ads_config"]["grpc_services"] == [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]
    assert doc["node"]["metadata"]["LABELS"] == {"istio": "ingressgateway", "app": "istio-ingressgateway"}
    assert "INTERCEPTION_MODE" not in doc["node"]["metadata"]
    # default address without TLS: the plaintext port
    cp = meshd("bootstrap", "--type", "router")
    assert cp.returncode == 0 and xds_endpoint(yaml.safe_load(cp.stdout)) == ("127.0.0.1", names.PORT_XDS)


def test_secure_router_gets_token_for_its_service_account(ca_dir: Path):
    sa = "istio-ingressgateway-service-account"
    cp = meshd("bootstrap", *ROUTER_ARGS, "--service-account", sa, "--ca-dir", str(ca_dir))
    assert cp.returncode == 0, cp.stderr
    doc = yaml.safe_load(cp.stdout)
    assert xds_endpoint(doc) == ("127.0.0.1", names.PORT_XDS_SECURE)
    token = doc["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"][0]["value"].split()[1]
    assert TokenAuthority(load_or_create_token_key(ca_dir)).verify(token) == ("istio-system", sa)
    assert "security.istio.io/tlsMode" not in doc["node"]["metadata"]["LABELS"]


def test_root_cert_and_token_files(ca_dir: Path, tmp_path: Path):
    token_file = tmp_path / "token"
    cp = meshd("token", "--namespace", NS, "--service-account", "catalog", "--ttl", "1h", "--ca-dir", str(ca_dir))
    assert cp.returncode == 0, cp.stderr
    token_file.write_text(cp.stdout)
    assert TokenAuthority(load_or_create_token_key(ca_dir)).verify(cp.stdout.strip()) == (NS, "catalog")
    cp = meshd("bootstrap", *SIDECAR_ARGS, "--root-cert", str(ca_dir / "root-cert.pem"), "--token", str(token_file),
               "--xds-address", "meshd.example:15012")
    assert cp.returncode == 0, cp.stderr
    doc = yaml.safe_load(cp.stdout)
    assert xds_endpoint(doc) == ("meshd.example", 15012) and xds_cluster(doc)["type"] == "STRICT_DNS"
    md = doc["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"][0]
    assert md["value"] == f"Bearer {token_file.read_text().strip()}"


def test_token_uses_meshd_home_by_default(tmp_path: Path):
    cp = meshd("token", "--namespace", NS, "--service-account", "webapp", env={"MESHD_HOME": str(tmp_path / "home")})
    assert cp.returncode == 0, cp.stderr
    key = load_or_create_token_key(tmp_path / "home" / "ca")
    assert TokenAuthority(key).verify(cp.stdout.strip()) == (NS, "webapp")
    assert cp.stdout.count("\n") == 1  # only the token on stdout: logs go to stderr


def test_bootstrap_errors_are_reported(ca_dir: Path, tmp_path: Path):
    empty = tmp_path / "empty-ca"
    cases = {
        ("--ca-dir", str(empty)): "root-cert.pem does not exist",
        ("--token", str(tmp_path / "x")): "--token needs --root-cert",
        ("--ca-dir", str(ca_dir), "--root-cert", str(ca_dir / "root-cert.pem")): "not both",
        ("--root-cert", str(tmp_path / "junk.pem")): "not a PEM certificate",
    }
    (tmp_path / "junk.pem").write_text("-----BEGIN NOTHING-----\n")
    bad_token = tmp_path / "bad-token"
    bad_token.write_text("not a token\n")
    cases[("--root-cert", str(ca_dir / "root-cert.pem"), "--token", str(bad_token))] = "does not hold a JWT"
    for extra, message in cases.items():
        cp = meshd("bootstrap", *SIDECAR_ARGS, *extra)
        assert cp.returncode == 2 and message in cp.stderr, (extra, cp.stderr)


def test_plaintext_sidecar_is_allowed_with_a_warning():
    cp = meshd("bootstrap", *SIDECAR_ARGS, "--xds-address", "127.0.0.1:15010")
    assert cp.returncode == 0
    assert "will not send this sidecar a workload certificate" in cp.stderr
    assert "transport_socket" not in xds_cluster(yaml.safe_load(cp.stdout))


def test_parse_duration():
    assert parse_duration("24h").total_seconds() == 86400
    assert parse_duration("1h30m").total_seconds() == 5400
    assert parse_duration("90").total_seconds() == 90
    assert parse_duration("2d").total_seconds() == 172800
    for bad in ("", "h", "10x", "-1h", "0s", "1h 2m"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)


def test_build_bootstrap_in_process_matches_the_command():
    tls = XdsTls(root_cert_pem="PEM", token="a.b.c")
    doc = build_bootstrap(BootstrapParams("sidecar", NS, "catalog-0", "10.0.0.7", "127.0.0.1:15012",
                                          {"app": "catalog", "security.istio.io/tlsMode": "disabled"},
                                          service_account="catalog", tls=tls))
    # a label given explicitly wins over the injector's default
    assert doc["node"]["metadata"]["LABELS"]["security.istio.io/tlsMode"] == "disabled"
    assert "a.b.c" not in repr(tls)  # the token stays out of reprs (and so out of logs)


# --- Envoy accepts it --------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.parametrize("kind,secure", [("sidecar", True), ("router", True), ("router", False), ("sidecar", False)])
def test_envoy_validates_bootstrap(kind: str, secure: bool, ca_dir: Path, tmp_path: Path):
    out = tmp_path / f"{kind}.yaml"
    args = SIDECAR_ARGS if kind == "sidecar" else ROUTER_ARGS
    extra = ["--ca-dir", str(ca_dir)] if secure else []
    cp = meshd("bootstrap", *args, *extra, "--output", str(out))
    assert cp.returncode == 0, cp.stderr
    v = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(out), "--use-dynamic-base-id"],
                       capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and "OK" in v.stdout + v.stderr, v.stdout + v.stderr
