"""deploy/: everything to run meshd in a cluster. The manifests parse, every object has
what running meshd like istiod needs, the Deployment's command line is one meshd
accepts, and the RBAC rules are least privilege (the e2e run in test_replicas.py checks
they match exactly what meshd does; here the checker itself is checked)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from kubernetes import client

from ca.issuer import ISTIOD_DNS_NAMES
from controlplane import names
from controlplane.cli import parser
from controlplane.kube.resources import RESOURCES
from tests.support.rbac import grants_for, load_manifests, rbac_mismatch

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MANIFESTS = DEPLOY / "kubernetes"
NS = "istio-system"


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return load_manifests(MANIFESTS)


def one(docs, kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]


def test_every_manifest_parses_into_named_objects(docs):
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == sorted({"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole",
                            "ClusterRoleBinding", "Role", "RoleBinding", "Deployment", "Service",
                            "PodDisruptionBudget", "MutatingWebhookConfiguration",
                            "ValidatingWebhookConfiguration"})
    for d in docs:
        assert d.get("apiVersion") and d["metadata"].get("name"), d
        if d["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                             "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            assert d["metadata"].get("namespace") == NS, f"{d['kind']} {d['metadata']['name']}"
    # files apply in order with `kubectl apply -f deploy/kubernetes/`: the namespace and the CRDs first
    files = sorted(p.name for p in MANIFESTS.glob("*.yaml"))
    assert files[0] == "00-namespace.yaml" and files[1] == "01-crds.yaml"


def test_namespace_and_service_account(docs):
    assert one(docs, "Namespace")["metadata"]["name"] == NS
    assert one(docs, "ServiceAccount", "meshd")["metadata"]["namespace"] == NS


def test_deployment(docs):
    dep = one(docs, "Deployment")
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert pod["serviceAccountName"] == "meshd"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    # anti-affinity: replicas on different nodes
    anti = pod["affinity"]["podAntiAffinity"]
    terms = [t.get("podAffinityTerm", t) for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
             + anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])]
    assert any(t["topologyKey"] == "kubernetes.io/hostname"
               and t["labelSelector"]["matchLabels"].items() <= labels.items() for t in terms)
    (c,) = pod["containers"]
    # probes on /ready, port 15014
    for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/ready", "port": names.PORT_MONITORING}, probe
    assert c["resources"]["requests"].keys() >= {"cpu", "memory"}
    assert {p["containerPort"] for p in c["ports"]} == {15010, 15012, 15014, names.PORT_WEBHOOK}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    # in-cluster: the pod's name and namespace from the downward API
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # the command line is one meshd accepts, in-cluster, on the ports the Service exposes
    args = parser().parse_args(c["args"])
    assert args.command == "serve" and args.in_cluster
    assert (args.xds_port, args.secure_xds_port, args.monitoring_port) == (15010, 15012, 15014)
    assert args.leader_elect
    # the CA's working copy is on a writable volume (the root filesystem is read-only)
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert env["MESHD_HOME"]["value"] in mounts


def test_service_is_istiod_with_its_ports(docs):
    svc = one(docs, "Service", "istiod")
    assert svc["metadata"]["namespace"] == NS
    ports = {p["port"]: p for p in svc["spec"]["ports"]}
    assert set(ports) == {15010, 15012, 15014, 443}
    assert ports[443]["targetPort"] == names.PORT_WEBHOOK  # the admission webhooks, as istiod's
    assert ports[15010]["name"] == "grpc-xds" and ports[15012]["name"] == "https-dds"
    pods = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pods.items()
    # meshd's serving certificate names the Service, as bootstraps verify it
    assert f"istiod.{NS}.svc" in ISTIOD_DNS_NAMES


def test_pod_disruption_budget(docs):
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"].get("minAvailable") == 1 or pdb["spec"].get("maxUnavailable") == 1
    pods = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pods.items()


def test_rbac_is_least_privilege(docs):
    grants = grants_for(docs, NS, "meshd")
    assert grants, "the ServiceAccount is bound to nothing"
    for g in grants:
        assert "*" not in (g.group, g.resource, g.verb)
        assert g.verb in {"get", "list", "watch", "create", "update", "patch"} or (g.resource, g.verb) in {
            ("workloadentries", "delete"),  # auto-registration's cleanup (docs/vm.md)
            # what the leader deployed for a Gateway that is gone (docs/gateway-deployment.md)
            ("serviceaccounts", "delete"), ("services", "delete"), ("deployments", "delete")}, g
    # Leases and the CA's Secrets: only in meshd's namespace, and only the named ones (create cannot be named)
    for g in grants:
        if g.resource == "leases" or (g.resource == "secrets" and g.verb not in ("list", "watch")):
            assert g.namespace == NS, g
            assert g.verb == "create" or g.names, g
    assert {n for g in grants if g.resource == "secrets" for n in g.names} == {"istio-ca-secret", "cacerts"}
    # reading every Secret (list/watch) only for gateway credentials (--watch-secrets), as istiod;
    # writing only the CA's, in meshd's namespace
    watch_secrets = "--watch-secrets" in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {g.verb for g in grants if g.resource == "secrets" and g.namespace is None} == (
        {"list", "watch"} if watch_secrets else set())
    assert {(g.verb, g.namespace) for g in grants if g.resource == "secrets" and g.verb not in ("list", "watch")} == {
        ("create", NS), ("get", NS)}
    # ConfigMaps: written only under the root certificate's name, read by any name only for a
    # Gateway's parametersRef (docs/gateway-deployment.md); the mesh config (ConfigMap istio)
    # and the injection values (ConfigMap istio-sidecar-injector) read and watched in meshd's namespace only
    assert all(g.names == {"istio-ca-root-cert"} for g in grants
               if g.resource == "configmaps" and g.verb not in ("create", "list", "watch") and (g.verb, g.names) != (
                   "get", frozenset()))
    assert {g.namespace for g in grants if g.resource == "configmaps" and g.verb == "get" and not g.names} == {None}
    assert {(g.verb, g.namespace, frozenset(g.names)) for g in grants
            if g.resource == "configmaps" and g.verb in ("list", "watch")} == {
        (verb, NS, frozenset({"istio", "istio-sidecar-injector"})) for verb in ("list", "watch")}
    # Istio objects: read, and only their status written; but for the WorkloadEntries
    # meshd registers for WorkloadGroup members (docs/vm.md), and the dry-run Gateway that
    # proves the validating webhook ready, in meshd's namespace only (docs/webhooks.md)
    writes = {(g.resource, g.verb) for g in grants if g.group.endswith("istio.io") and g.verb not in ("list", "watch")}
    assert {(g.resource, g.namespace) for g in grants if g.group.endswith("istio.io") and g.verb == "create"
            and g.resource == "gateways"} == {("gateways", NS)}
    assert writes == {("gateways", "create")} | {("workloadentries", v) for v in ("get", "create", "update", "delete")} | {(f"{p}/status", "patch") for p in ("gateways", "virtualservices", "destinationrules", "sidecars",
                                                         "serviceentries", "workloadentries", "workloadgroups",
                                                         "peerauthentications", "authorizationpolicies",
                                                         "requestauthentications")}
    # Gateway API objects: read (a Gateway's uid for the owner references of its deployment),
    # and only the status of those meshd controls written
    assert {(g.resource, g.verb) for g in grants if g.group == "gateway.networking.k8s.io"
            and g.verb not in ("list", "watch")} == {(f"{p}/status", "patch") for p in (
                "gatewayclasses", "gateways", "httproutes", "grpcroutes", "tcproutes", "tlsroutes")} | {("gateways", "get")}
    # Deployments: only the gateways meshd deploys (docs/gateway-deployment.md)
    assert {g.verb for g in grants if g.group == "apps"} == {"get", "list", "patch", "delete"}
    assert {g.resource for g in grants if g.group == "apps"} == {"deployments"}
    # every kind the Kubernetes source lists and watches, the reported-only ones included
    reads = {(g.group, g.resource, g.verb) for g in grants}
    for res in RESOURCES:
        for verb in ("list", "watch"):
            assert (res.group, res.plural, verb) in reads, (res.ident, verb)
    assert ("authentication.k8s.io", "tokenreviews", "create") in {(g.group, g.resource, g.verb) for g in grants}
    # Nodes (their topology labels give endpoints their locality): read, cluster-wide, nothing else
    assert {(g.group, g.verb, g.namespace) for g in grants if g.resource.startswith("nodes")} == {
        ("", "list", None), ("", "watch", None)}


def test_the_rbac_checker_finds_forbidden_and_unused_verbs(docs, kube):
    """The checker on what a client sent the real API server (its recording client)."""
    api_client = kube.api_client()
    core = client.CoreV1Api(api_client)
    core.list_namespace()
    with pytest.raises(client.ApiException):
        core.read_namespaced_secret("someone-elses", NS)  # no such Secret (nor namespace): a 404, still a get
    problems = rbac_mismatch(kube, docs)
    assert "forbidden: get core/secrets someone-elses in istio-system" in problems
    assert "never used: list core/namespaces in the cluster" not in problems
    assert "never used: watch core/namespaces in the cluster" in problems
    assert any(p.startswith("never used: create authentication.k8s.io/tokenreviews") for p in problems)


def test_dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(f == "python:3.11-slim" or f.startswith("python:3.11-slim ") for f in froms), froms
    assert re.search(r"pip (install|wheel) .*\.", text)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["meshd"\]', text, re.M)
    assert set(re.findall(r"\b150\d\d\b", " ".join(re.findall(r"^EXPOSE .*", text, re.M)))) == {"15010", "15012", "15014"}
    # the build context holds the package, not the tests or the developer's files
    ignore = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*" and "!controlplane/" in ignore and "!ca/" in ignore and "!tests/" not in ignore


def test_readme_tells_how_to_install():
    readme = (REPO / "README.md").read_text()
    assert "kubectl apply -f deploy/kubernetes/" in readme
    assert "docker build -f deploy/Dockerfile" in readme
    assert "istiod.istio-system.svc:15012" in readme
