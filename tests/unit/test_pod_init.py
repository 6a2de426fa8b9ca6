"""`meshd pod-init`: the downward API and ProxyConfig -> the sidecar's bootstrap, and the
command as the injected init container runs it (with --dry-run: no iptables here).

The rules themselves: test_pod_init_iptables.py. Real Envoy on the written bootstrap,
traffic and token rotation: tests/e2e/test_injected_pod_traffic.py.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane import names
from controlplane.bootstrap import BootstrapParams, XdsTls, build_bootstrap
from controlplane.podinit import downward
from controlplane.podinit.downward import PodInfoError, bootstrap, parse_labels_file, parse_proxy_config, pod_info
from tests.support.envoy import envoy_binary
from tests.support.paths import REPO
from tests.support.pki import make_ca

TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
ENV = {"POD_NAME": "catalog-5d8f", "POD_NAMESPACE": "istioinaction", "INSTANCE_IP": "10.0.0.7",
       "SERVICE_ACCOUNT": "catalog"}
LABELS = 'app="catalog"\npod-template-hash="5d8f"\nversion="v1"\n'
INJECTOR_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
                 "-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info"]


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "root-cert.pem"
    root.write_bytes(make_ca().cert)
    token = tmp_path / "istio-token"
    token.write_text(TOKEN)  # as the kubelet writes it: no newline
    labels = tmp_path / "labels"
    labels.write_text(LABELS)
    return {"root": root, "token": token, "labels": labels, "out": tmp_path / "envoy-rev.json"}


def sidecar(files: dict[str, Path], env: dict[str, str] | None = None, **kw) -> dict:
    pod = pod_info({**ENV, **(env or {})}, files["labels"].read_text())
    return bootstrap(pod, "istiod.istio-system.svc:15012", files["root"], files["token"], **kw)


def pod_init(files: dict[str, Path], *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "controlplane", "pod-init", *args,
            "--bootstrap-out", str(files["out"]), "--xds-address", "istiod.istio-system.svc:15012",
            "--root-cert", str(files["root"]), "--token-path", str(files["token"]), "--labels-file", str(files["labels"])]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ISTIO_META_") and k not in ENV}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env={**clean, "PYTHONPATH": str(REPO), **ENV, **(env or {})})


# ---- the downward API -----------------------------------------------------------------

def test_labels_file_as_the_downward_api_writes_it():
    assert parse_labels_file(LABELS) == {"app": "catalog", "pod-template-hash": "5d8f", "version": "v1"}
    assert parse_labels_file('a="x\\"y"\n\n') == {"a": 'x"y'}


def test_a_malformed_labels_line_is_named():
    with pytest.raises(PodInfoError, match=r"/etc/istio/pod/labels:2: 'version=v1' is not key=\"value\""):
        parse_labels_file('app="a"\nversion=v1\n')


def test_missing_downward_env_is_named():
    with pytest.raises(PodInfoError, match="env INSTANCE_IP, SERVICE_ACCOUNT: not set"):
        pod_info({"POD_NAME": "a", "POD_NAMESPACE": "b"}, "")


@pytest.mark.parametrize("ip, reason", [("fd00::7", "IPv6 pods are not supported"), ("10.0.0", "not an IP address")])
def test_instance_ip_must_be_ipv4(ip, reason):
    with pytest.raises(PodInfoError, match=f"env INSTANCE_IP '{ip}': {reason}"):
        pod_info({**ENV, "INSTANCE_IP": ip}, "")


# ---- the bootstrap --------------------------------------------------------------------

def test_node_identity_from_the_downward_api(files):
    node = sidecar(files)["node"]
    assert node["id"] == "sidecar~10.0.0.7~catalog-5d8f.istioinaction~istioinaction.svc.cluster.local"
    assert node["cluster"] == "catalog.istioinaction"
    md = node["metadata"]
    assert md["LABELS"] == {"app": "catalog", "pod-template-hash": "5d8f", "version": "v1",
                            names.TLS_MODE_LABEL: names.TLS_MODE_ISTIO}
    assert (md["NAMESPACE"], md["SERVICE_ACCOUNT"], md["INSTANCE_IPS"], md["INTERCEPTION_MODE"]) == \
        ("istioinaction", "catalog", "10.0.0.7", "REDIRECT")


def test_node_is_what_meshd_bootstrap_writes_for_the_same_pod(files):
    """Same node id, cluster and metadata as `meshd bootstrap --type sidecar` (the same
    build_bootstrap): only how the token reaches Envoy differs."""
    ours = sidecar(files)
    theirs = build_bootstrap(BootstrapParams(
        proxy_type="sidecar", namespace="istioinaction", pod="catalog-5d8f", ip="10.0.0.7",
        xds_address="istiod.istio-system.svc:15012", service_account="catalog",
        labels={"app": "catalog", "pod-template-hash": "5d8f", "version": "v1"},
        tls=XdsTls(root_cert_pem=files["root"].read_text(), token=TOKEN)))
    assert ours["node"] == theirs["node"]
    assert ours["static_resources"] == theirs["static_resources"]


def test_the_token_is_read_from_its_file_on_every_connection_never_copied(files):
    doc = sidecar(files)
    assert TOKEN not in json.dumps(doc)
    (service,) = doc["dynamic_resources"]["ads_config"]["grpc_services"]
    g = service["google_grpc"]
    assert g["target_uri"] == "istiod.istio-system.svc:15012"
    assert g["channel_credentials"]["ssl_credentials"]["root_certs"]["inline_string"] == files["root"].read_text()
    (cred,) = g["call_credentials"]
    plugin = cred["from_plugin"]
    assert plugin["name"] == g["credentials_factory_name"] == "envoy.grpc_credentials.file_based_metadata"
    assert plugin["typed_config"]["secret_data"] == {"filename": str(files["token"])}
    assert plugin["typed_config"]["header_prefix"] == "Bearer "
    assert g["channel_args"]["args"]["grpc.ssl_target_name_override"] == {"string_value": "istiod.istio-system.svc"}


def test_istio_meta_env_becomes_node_metadata(files):
    md = sidecar(files, env={"ISTIO_META_CLUSTER_ID": "east", "ISTIO_META_NETWORK": "net1",
                             "ISTIO_META_WORKLOAD_NAME": "catalog-v1", "ISTIO_META_APP_CONTAINERS": "catalog",
                             "ISTIO_META_MESH_ID": "mesh1", "ISTIO_META_INTERCEPTION_MODE": "REDIRECT"})["node"]["metadata"]
    assert (md["CLUSTER_ID"], md["NETWORK"], md["WORKLOAD_NAME"]) == ("east", "net1", "catalog-v1")
    assert (md["APP_CONTAINERS"], md["MESH_ID"]) == ("catalog", "mesh1")


def test_istio_meta_that_contradicts_the_pod_is_an_error(files):
    with pytest.raises(PodInfoError, match="ISTIO_META_INTERCEPTION_MODE='TPROXY' contradicts"):
        sidecar(files, env={"ISTIO_META_INTERCEPTION_MODE": "TPROXY"})


def test_proxy_config_json_reaches_the_bootstrap_and_what_needs_an_agent_is_reported(files):
    pc = parse_proxy_config(json.dumps({"proxyStatsMatcher": {"inclusionPrefixes": ["upstream_rq"]},
                                        "proxyMetadata": {"ISTIO_META_FOO": "bar", "ISTIO_AGENT_FLAG": "x"},
                                        "tracing": {"zipkin": {"address": "z:9411"}}}))
    doc = sidecar(files, proxy_config=pc)
    patterns = doc["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"]
    assert {"prefix": "upstream_rq"} in patterns
    assert doc["node"]["metadata"]["FOO"] == "bar"
    pod = pod_info({**ENV, "ISTIO_META_DNS_CAPTURE": "true"}, "")
    assert downward.unsupported(pod, pc) == [
        "ISTIO_META_DNS_CAPTURE=true: has no effect (istio-agent's DNS proxy; meshd has no agent)",
        "proxy config tracing: has no effect (pilot-agent's; meshd has no agent)",
        "proxy config proxyMetadata.ISTIO_AGENT_FLAG: has no effect (pilot-agent's; meshd has no agent)",
    ]


@pytest.mark.parametrize("text, message", [
    ("{", "--proxy-config-json: not JSON"),
    ('{"concurrency": -1}', "--proxy-config-json: concurrency: must be a non-negative integer"),
])
def test_bad_proxy_config_json_is_named(text, message):
    with pytest.raises(PodInfoError, match=message):
        parse_proxy_config(text)


def test_token_file_problems_are_named(files):
    files["token"].write_text(TOKEN + "\n")
    with pytest.raises(PodInfoError, match="surrounding white space"):
        sidecar(files)
    files["token"].write_text("not a jwt")
    with pytest.raises(PodInfoError, match="does not hold a JWT"):
        sidecar(files)
    files["token"].unlink()
    with pytest.raises(PodInfoError, match="--token-path .*: No such file"):
        sidecar(files)


def test_root_cert_must_be_a_certificate(files):
    files["root"].write_text("hello")
    with pytest.raises(ValueError, match="--root-cert .* is not a PEM certificate"):
        sidecar(files)


# ---- the command ----------------------------------------------------------------------

def test_dry_run_writes_the_bootstrap_and_prints_the_rules(files):
    cp = pod_init(files, *INJECTOR_ARGS, "--dry-run", env={"ISTIO_META_DNS_CAPTURE": "true"})
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.startswith("*nat\n") and "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT" in cp.stdout
    assert "ISTIO_META_DNS_CAPTURE=true: has no effect" in cp.stderr
    doc = json.loads(files["out"].read_text())
    assert doc["node"]["id"] == "sidecar~10.0.0.7~catalog-5d8f.istioinaction~istioinaction.svc.cluster.local"
    # Envoy (UID 1337) reads it; it holds no credential
    assert stat.S_IMODE(files["out"].stat().st_mode) == 0o644


@pytest.mark.parametrize("flag, reason", [
    ("--redirect-dns", "DNS capture needs istio-agent's DNS proxy"),
    ("--run-validation", "the istio-validation container's check is not implemented"),
    ("--cni-mode", "meshd does not work with Istio CNI"),
])
def test_unsupported_istio_iptables_flags_fail_with_the_reason(files, flag, reason):
    cp = pod_init(files, *INJECTOR_ARGS, flag, "--dry-run")
    assert cp.returncode == 2
    assert f"{flag}: {reason}" in cp.stderr
    assert not files["out"].exists()


def test_bad_input_changes_nothing(files):
    cp = pod_init(files, *INJECTOR_ARGS, "--dry-run", env={"INSTANCE_IP": ""})
    assert cp.returncode == 2
    assert "meshd pod-init: env INSTANCE_IP: not set" in cp.stderr
    assert not files["out"].exists() and cp.stdout == ""
    cp = pod_init(files, *INJECTOR_ARGS, "-x", "fd00::/8")
    assert cp.returncode == 2 and "IPv6 ranges are not supported" in cp.stderr
    assert not files["out"].exists()


@pytest.mark.e2e
def test_envoy_accepts_the_bootstrap(files, tmp_path):
    assert pod_init(files, *INJECTOR_ARGS, "--dry-run").returncode == 0
    v = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(files["out"]), "--use-dynamic-base-id"],
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 0, v.stdout[-3000:] + v.stderr[-3000:]


def test_the_injectors_istio_init_runs_as_written(files):
    """The contract with the injector: its istio-init argv and env (downward fieldRefs
    resolved as the kubelet would), mount paths mapped to files here, run with --dry-run."""
    from controlplane.inject.config import InjectionConfig
    from controlplane.inject.pod import INIT, inject_pod

    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "catalog-5d8f", "namespace": "istioinaction", "labels": {"app": "catalog"},
                        "annotations": {"proxy.istio.io/config": "{concurrency: 1, holdApplicationUntilProxyStarts: true}",
                                        "traffic.sidecar.istio.io/excludeOutboundPorts": "5432"}},
           "spec": {"serviceAccountName": "catalog", "containers": [{"name": "catalog", "image": "c"}]}}
    mesh = {"defaultConfig": {"discoveryAddress": "istiod.istio-system.svc:15012"}}
    injected = inject_pod(pod, InjectionConfig.from_sources(mesh, {})).pod
    (init,) = [c for c in injected["spec"]["initContainers"] if c["name"] == INIT]
    mapped = {"/var/run/secrets/istio/root-cert.pem": files["root"], "/var/run/secrets/tokens/istio-token": files["token"],
              "/etc/istio/proxy/envoy.json": files["out"]}
    args = [str(mapped.get(a, a)) for a in init["args"]]
    fields = {"metadata.name": "catalog-5d8f", "metadata.namespace": "istioinaction", "status.podIP": "10.0.0.7",
              "spec.serviceAccountName": "catalog", "status.hostIP": "", "spec.nodeName": ""}
    env = {e["name"]: e["value"] if "value" in e else fields[e["valueFrom"]["fieldRef"]["fieldPath"]] for e in init["env"]}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ISTIO_META_")}
    cp = subprocess.run([sys.executable, "-m", "controlplane", *args, "--labels-file", str(files["labels"]), "-n"],
                        capture_output=True, text=True, timeout=60, env={**clean, "PYTHONPATH": str(REPO), **env})
    assert cp.returncode == 0, cp.stderr
    assert "-A ISTIO_OUTPUT -p tcp -m multiport --dports 5432 -j RETURN" in cp.stdout
    assert "has no effect" not in cp.stderr  # discoveryAddress: the injector's, not reported again
    doc = json.loads(files["out"].read_text())
    assert doc["node"]["id"] == "sidecar~10.0.0.7~catalog-5d8f.istioinaction~istioinaction.svc.cluster.local"
    assert doc["node"]["metadata"]["PROXY_CONFIG"]["concurrency"] == 1
    assert doc["node"]["metadata"]["APP_CONTAINERS"] == "catalog"
