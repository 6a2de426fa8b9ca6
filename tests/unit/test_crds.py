"""`meshd crds`: the CRDs of the Istio kinds meshd serves, generated from the Istio CRD
schemas meshd validates with, compatible with Istio's own (the corpus's crd-all.gen.yaml),
plus printer columns that make `kubectl get` show why meshd rejected an object."""
from __future__ import annotations

import re
import subprocess
import sys

import yaml

from controlplane.commands.crds import crd_documents, render
from controlplane.config import kinds
from controlplane.config.validation.schema import Node, validate_document
from controlplane.kube.status import desired_status
from tests.support.paths import REPO, shared

DEPLOYED = REPO / "deploy" / "kubernetes" / "01-crds.yaml"


def istio_crds() -> dict[str, dict]:
    path = shared("corpus", "crds", "crd-all.gen.yaml")
    return {d["metadata"]["name"]: d for d in yaml.safe_load_all(path.read_text()) if d}


def test_the_deployed_crds_are_the_commands_output():
    cp = subprocess.run([sys.executable, "-m", "controlplane", "crds"], capture_output=True, text=True, check=True,
                        cwd=REPO)
    assert cp.stdout == render()
    assert DEPLOYED.read_text() == cp.stdout, "regenerate: meshd crds > deploy/kubernetes/01-crds.yaml"


def test_one_crd_per_served_istio_kind_at_every_version_meshd_reads():
    docs = {d["spec"]["names"]["kind"]: d for d in yaml.safe_load_all(DEPLOYED.read_text()) if d}
    served = {k.kind: k for k in kinds.SERVED.values() if k.istio}
    assert set(docs) == set(served) == {"Gateway", "VirtualService", "DestinationRule", "PeerAuthentication", "Sidecar",
                                        "ServiceEntry", "WorkloadEntry", "WorkloadGroup", "AuthorizationPolicy",
                                        "RequestAuthentication", "EnvoyFilter", "Telemetry"}
    for kind, doc in docs.items():
        assert doc["apiVersion"] == "apiextensions.k8s.io/v1" and doc["kind"] == "CustomResourceDefinition"
        assert doc["spec"]["group"] == served[kind].group
        versions = {v["name"]: v for v in doc["spec"]["versions"]}
        assert set(served[kind].versions) <= {n for n, v in versions.items() if v["served"]}
        # One storage version: Istio's (test_compatible_with_istios_crds); v1 but for EnvoyFilter
        # (v1alpha3, its only version) and Telemetry (v1alpha1).
        stored = {"EnvoyFilter": "v1alpha3", "Telemetry": "v1alpha1"}.get(kind, "v1")
        assert [n for n, v in versions.items() if v["storage"]] == [stored]
        assert all(v["subresources"] == {"status": {}} for v in versions.values())


def test_compatible_with_istios_crds():
    """Same names, scope, versions, schemas and status subresource as Istio's CRDs: an object
    written for Istio applies unchanged, and a cluster with Istio's CRDs keeps its objects."""
    theirs = istio_crds()
    for ours in crd_documents():
        t = theirs[ours["metadata"]["name"]]["spec"]
        o = ours["spec"]
        assert (o["group"], o["names"], o["scope"]) == (t["group"], t["names"], t["scope"])
        assert [(v["name"], v["served"], v["storage"]) for v in o["versions"]] == \
               [(v["name"], v["served"], v["storage"]) for v in t["versions"]]
        for ov, tv in zip(o["versions"], t["versions"], strict=True):
            assert ov["schema"] == tv["schema"]
            assert ov.get("subresources") == tv.get("subresources")
            # Istio's columns stay, in order; meshd's come before AGE, which is last (Istio's
            # WorkloadEntry lists it before ADDRESS)
            names = [c["name"] for c in ov["additionalPrinterColumns"]]
            istio_names = [c["name"] for c in tv.get("additionalPrinterColumns") or []]
            assert [n for n in names if n not in ("Status", "Message", "Age")] == [n for n in istio_names if n != "Age"]
            assert names[-3:] == ["Status", "Message", "Age"]


def test_istio_examples_validate_against_the_generated_schemas():
    samples = shared("corpus", "istio", "samples", "bookinfo", "networking")
    schemas = {(d["spec"]["group"], d["spec"]["names"]["kind"], v["name"]): Node(v["schema"]["openAPIV3Schema"])
               for d in crd_documents() for v in d["spec"]["versions"]}
    checked = 0
    for f in sorted(samples.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if not doc:
                continue
            group, _, version = doc["apiVersion"].rpartition("/")
            node = schemas.get((group, doc["kind"], version))
            if node is None:
                continue  # a kind meshd does not serve (ServiceEntry...)
            assert validate_document(doc, node) == [], f"{f.name}: {doc['kind']} {doc['metadata']['name']}"
            checked += 1
    assert checked >= 20


def _jsonpath(obj: dict, expr: str) -> str:
    """The subset of kubectl's JSONPath the printer columns use: .a.b[?(@.k=="v")].c"""
    m = re.fullmatch(r'\.status\.conditions\[\?\(@\.type=="(\w+)"\)\]\.(\w+)', expr)
    assert m, expr
    conds = (obj.get("status") or {}).get("conditions") or []
    return " ".join(str(c.get(m.group(2), "")) for c in conds if c.get("type") == m.group(1))


def test_kubectl_get_shows_the_reason_meshd_writes():
    vs = next(d for d in crd_documents() if d["spec"]["names"]["kind"] == "VirtualService")
    v1 = next(v for v in vs["spec"]["versions"] if v["name"] == "v1")
    columns = {c["name"]: c for c in v1["additionalPrinterColumns"]}
    status = {k: v for k, v in desired_status({}, "spec.http[0].route: Required value", 2).items() if v is not None}
    obj = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "x"},
           "spec": {"hosts": ["x"]}, "status": status}
    assert _jsonpath(obj, columns["Status"]["jsonPath"]) == "Rejected"
    assert _jsonpath(obj, columns["Message"]["jsonPath"]) == "spec.http[0].route: Required value"
    assert columns["Message"]["priority"] == 1  # kubectl get -o wide
    assert _jsonpath({"status": {}}, columns["Status"]["jsonPath"]) == ""  # accepted: empty column
    # and the status meshd writes is valid for the CRD's status schema (nothing pruned)
    assert validate_document(obj, Node(v1["schema"]["openAPIV3Schema"])) == []
