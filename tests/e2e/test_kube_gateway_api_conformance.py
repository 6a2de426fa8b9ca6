"""The Gateway API conformance tests that need Kubernetes, on the real kube-apiserver of
../shared/k8s: the suite's own manifests (../shared/corpus/gateway-api/conformance:
`base/manifests.yaml` plus the test's `tests/<test>.yaml`, `{GATEWAY_CLASS_NAME}` =
`istio`, `{GATEWAY_CONTROLLER_NAME}` = istiod's controller name) applied with kubectl,
`meshd serve --kubeconfig` the leader writing status and deploying the gateways, and the
checks the upstream test makes, read back as the suite reads them:

- GatewayClassObservedGenerationBump, GatewayObservedGenerationBump,
  HTTPRouteObservedGenerationBump: the object's conditions carry its generation; the
  test's edit of the spec (a description, a listener added, a backendRef renamed) bumps
  the generation and every condition follows it (for a Gateway also its listeners'
  conditions; for the route the new backend resolves);
- GatewayInfrastructure: the Gateway is Accepted, and the ServiceAccount and Service
  labelled with its name (and the pod template of its Deployment: this API server has no
  kubelet, so no Pod is ever made) carry every `spec.infrastructure` label and annotation.

The suite's namespaces get this test's tag (`gateway-conformance-infra-k3`); the suite's
own "namespace ready" step (every Gateway of the namespace Accepted and Programmed at its
generation) needs the gateways' LoadBalancer Services to have an address, which a
cloud's controller gives them: the test writes one into each Service's status, as
test_kube_gateway_deployment.py does. The conformance Secret the base Gateways name is
made as the suite makes it (a certificate for its hostnames).
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from controlplane.names import GATEWAY_API_CONTROLLER
from tests.support.harness import MeshdHandle, meshd, wait_for
from tests.support.kube import Kube
from tests.support.paths import shared
from tests.support.pki import make_ca, make_cert, tls_secret_yaml

pytestmark = pytest.mark.e2e

GW = "gateway.networking.k8s.io/v1"
NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
SUITE_NAMESPACES = ("gateway-conformance-infra", "gateway-conformance-app-backend", "gateway-conformance-web-backend")
CERTIFICATE = "tls-validity-checks-certificate"  # named by the base manifests' HTTPS Gateway


def conditions(obj: dict) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in (obj.get("status") or obj).get("conditions") or []}


def generations(conds: list[dict] | None) -> set[int | None]:
    return {c.get("observedGeneration") for c in conds or []}


@dataclass
class Suite:
    """One conformance test's objects on the API server and the meshd writing their status."""

    kube: Kube
    infra: str  # the tagged gateway-conformance-infra
    meshd: MeshdHandle

    def get(self, kind: str, name: str, namespace: str | None = None, api_version: str = GW) -> dict:
        obj = self.kube.get(api_version, kind, name, namespace)
        assert obj is not None, f"{kind} {namespace}/{name} is missing"
        return obj

    def gateway(self, name: str) -> dict:
        return self.get("Gateway", name, self.infra)

    def log(self) -> str:
        return "meshd log:\n" + self.meshd.log()[-3000:]

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.kube.cluster.kubectl(*args, input=input).stdout

    def at_latest_generation(self, obj: dict, listeners: bool = True) -> bool:
        """The suite's "latest conditions": every condition of `obj` (and of its listeners)
        written for the generation the object has now."""
        want = obj["metadata"]["generation"]
        status = obj.get("status") or {}
        conds = [*(status.get("conditions") or [])]
        if listeners:
            conds += [c for ln in status.get("listeners") or [] for c in ln.get("conditions") or []]
        return bool(conds) and generations(conds) == {want}

    def give_addresses(self) -> None:
        """What a cloud's load balancer controller does: an address in the status of every
        LoadBalancer Service meshd deployed for the suite's Gateways (once it exists)."""
        gateways = json.loads(self.kubectl("get", "gateways", "-n", self.infra, "-o", "json"))["items"]
        for i, gw in enumerate(gateways):
            name = f"{gw['metadata']['name']}-istio"

            def deployed(n: str = name) -> bool:
                return self.kube.get("v1", "Service", n, self.infra) is not None

            def missing(n: str = name) -> str:
                return f"the Service {n} of the Gateway; {self.log()}"

            wait_for(deployed, 30, what=missing)
            self.kubectl("patch", "service", name, "-n", self.infra, "--subresource=status", "--type=merge", "-p",
                         json.dumps({"status": {"loadBalancer": {"ingress": [{"ip": f"203.0.113.{10 + i}"}]}}}))

    def namespace_ready(self) -> None:
        """The suite's NamespacesMustBeReady for the Gateways: each Accepted and Programmed,
        at its generation (its Pods would be checked too: there are none without a kubelet)."""
        def ready() -> list[str]:
            items = json.loads(self.kubectl("get", "gateways", "-n", self.infra, "-o", "json"))["items"]
            return [g["metadata"]["name"] for g in items
                    if not (conditions(g).get("Accepted", ("",))[0] == "True"
                            and conditions(g).get("Programmed", ("",))[0] == "True"
                            and self.at_latest_generation(g, listeners=False))]
        wait_for(lambda: not ready(), 60, what=lambda: f"the Gateways not ready: {ready()}; {self.log()}")


def suite_manifests(kube: Kube, test_manifest: str) -> str:
    """The base manifests and the test's, the placeholders filled, namespaces tagged."""
    root = shared("corpus", "gateway-api", "conformance")
    text = "\n---\n".join(((root / "base" / "manifests.yaml").read_text(), (root / "tests" / test_manifest).read_text()))
    text = text.replace("{GATEWAY_CLASS_NAME}", "istio").replace("{GATEWAY_CONTROLLER_NAME}", GATEWAY_API_CONTROLLER)
    for ns in SUITE_NAMESPACES:
        text = text.replace(ns, kube.name(ns))
    return text


@contextlib.contextmanager
def conformance(kube: Kube, tmp_path: Path, test_manifest: str) -> Iterator[Suite]:
    system = kube.ns("istio-system")
    infra = kube.name("gateway-conformance-infra")
    kube.cluster.kubectl("apply", "-f", "-", input=suite_manifests(kube, test_manifest))
    cert = make_cert(make_ca("gateway conformance"), ["example.org", "*.example.org", "second-example.org",
                                                      "*.wildcard.org"])
    kube.apply(json.loads(tls_secret_yaml(CERTIFICATE, infra, cert)))
    with meshd(None, tmp_path, extra=["--kubeconfig", str(kube.cluster.kubeconfig), "--leader-election-namespace",
                                      system, "--root-namespace", system]) as m:
        suite = Suite(kube, infra, m)
        suite.give_addresses()
        yield suite


def test_gatewayclass_observed_generation_bump(kube, tmp_path):
    name = "gatewayclass-observed-generation-bump"
    with conformance(kube, tmp_path, f"{name}.yaml") as s:
        def klass() -> dict:
            return s.get("GatewayClass", name)

        wait_for(lambda: "Accepted" in conditions(klass()) and s.at_latest_generation(klass()), 30,
                 what=lambda: f"the class's conditions at its generation: {klass()}; {s.log()}")
        assert conditions(klass())["Accepted"] == ("True", "Accepted")
        before = klass()["metadata"]["generation"]
        s.kubectl("patch", "gatewayclass", name, "--type=merge", "-p", '{"spec": {"description": "new"}}')
        wait_for(lambda: klass()["metadata"]["generation"] != before and s.at_latest_generation(klass()), 30,
                 what=lambda: f"the conditions at the new generation: {klass()}; {s.log()}")
        assert klass()["spec"]["description"] == "new"


def test_gateway_observed_generation_bump(kube, tmp_path):
    name = "gateway-observed-generation-bump"
    with conformance(kube, tmp_path, f"{name}.yaml") as s:
        s.namespace_ready()
        wait_for(lambda: s.at_latest_generation(s.gateway(name)), 30,
                 what=lambda: f"the Gateway's conditions at its generation: {s.gateway(name)}")
        original = s.gateway(name)
        alternate = {"name": "alternate", "hostname": "foo.com", "port": 80, "protocol": "HTTP",
                     "allowedRoutes": {"namespaces": {"from": "All"}}}
        s.kubectl("patch", "gateway", name, "-n", s.infra, "--type=merge", "-p",
                  json.dumps({"spec": {"listeners": [*original["spec"]["listeners"], alternate]}}))
        s.namespace_ready()
        wait_for(lambda: s.at_latest_generation(s.gateway(name)) and len(s.gateway(name)["status"]["listeners"]) == 2,
                 30, what=lambda: f"every condition at the new generation: {s.gateway(name)}; {s.log()}")
        updated = s.gateway(name)
        assert updated["metadata"]["generation"] != original["metadata"]["generation"]
        listeners = {ln["name"]: conditions(ln) for ln in updated["status"]["listeners"]}
        assert listeners["alternate"]["Accepted"] == ("True", "Accepted")
        assert listeners["alternate"]["Programmed"] == ("True", "Programmed")


def test_httproute_observed_generation_bump(kube, tmp_path):
    name = "observed-generation-bump"
    with conformance(kube, tmp_path, "httproute-observed-generation-bump.yaml") as s:
        def parent() -> dict:
            route = s.get("HTTPRoute", name, s.infra)
            ours = [p for p in (route.get("status") or {}).get("parents") or []
                    if p.get("controllerName") == GATEWAY_API_CONTROLLER]
            return {"generation": route["metadata"]["generation"], **(ours[0] if ours else {})}

        def latest() -> bool:
            p = parent()
            return bool(p.get("conditions")) and generations(p["conditions"]) == {p["generation"]}

        s.namespace_ready()
        wait_for(latest, 30, what=lambda: f"the route's parent at its generation: {parent()}; {s.log()}")
        before = parent()
        assert before["parentRef"]["name"] == "same-namespace"
        s.kubectl("patch", "httproute", name, "-n", s.infra, "--type=json", "-p", json.dumps(
            [{"op": "replace", "path": "/spec/rules/0/backendRefs/0/name", "value": "infra-backend-v2"}]))
        wait_for(lambda: parent()["generation"] != before["generation"] and latest(), 30,
                 what=lambda: f"the parent's conditions at the new generation: {parent()}; {s.log()}")
        after = conditions(parent())
        assert after["Accepted"][0] == "True" and after["ResolvedRefs"] == ("True", "ResolvedRefs"), after
        spec = s.get("HTTPRoute", name, s.infra)["spec"]
        assert spec["rules"][0]["backendRefs"][0]["name"] == "infra-backend-v2"


def test_gateway_infrastructure(kube, tmp_path):
    name = "gateway-with-infrastructure-metadata"
    with conformance(kube, tmp_path, "gateway-infrastructure.yaml") as s:
        s.namespace_ready()
        wait_for(lambda: s.at_latest_generation(s.gateway(name)), 30,
                 what=lambda: f"the Gateway's conditions at its generation: {s.gateway(name)}")
        gw = s.gateway(name)
        assert conditions(gw)["Accepted"][0] == "True"
        infra = gw["spec"]["infrastructure"]
        labels, annotations = infra["labels"], infra["annotations"]
        assert (labels, annotations) == ({"key2": "value2"}, {"key1": "value1"})  # the suite's manifest as applied
        found = []
        for kind in ("serviceaccounts", "services", "deployments"):
            items = json.loads(s.kubectl("get", kind, "-n", s.infra, "-l", f"{NAME_LABEL}={name}", "-o", "json"))["items"]
            for item in items:
                # a Deployment stands for the Pods it would make: its pod template's metadata
                md = item["spec"]["template"]["metadata"] if kind == "deployments" else item["metadata"]
                assert labels.items() <= (md.get("labels") or {}).items(), (kind, md)
                assert annotations.items() <= (md.get("annotations") or {}).items(), (kind, md)
                found.append(kind)
        assert sorted(found) == ["deployments", "serviceaccounts", "services"], found
        # the suite's manifest, unchanged but for the placeholders: what upstream applies
        applied = yaml.safe_load((shared("corpus", "gateway-api", "conformance", "tests", "gateway-infrastructure.yaml"))
                                 .read_text().replace("{GATEWAY_CLASS_NAME}", "istio"))
        assert applied["spec"]["infrastructure"] == infra
