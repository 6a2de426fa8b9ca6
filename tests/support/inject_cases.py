"""Istio's injection test cases (pkg/kube/inject/testdata/inject in ../shared/corpus) with
the settings of istio's TestInjection for each, shared by the golden comparison and the
API server's dry run of the injected workloads."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from controlplane.inject import InjectionConfig
from tests.support.paths import SHARED

DATA = SHARED / "corpus" / "istio" / "pkg" / "kube" / "inject" / "testdata" / "inject"
HUB_TAG = {"hub": "registry.istio.io/testing", "tag": "latest"}  # Istio's test defaults


@dataclass(frozen=True)
class Case:
    input: str
    golden: str  # "" for an input Istio expects to be rejected
    values: dict = field(default_factory=dict)
    mesh: dict = field(default_factory=dict)
    error: str = ""  # what the rejection names (Istio's expectedError)
    unsupported: tuple[str, ...] = ()  # Istio settings of the case meshd does not take
    settings: str = ""  # the Istio settings, as the docs table shows them


def iop_values(name: str) -> dict:
    """The values of an IstioOperator file of the test data ({} when there is none)."""
    path = DATA / name
    if not path.exists():
        return {}
    doc = yaml.safe_load(path.read_text())
    return (doc.get("spec") or {}).get("values") or {}


def _proxy(**kw: Any) -> dict:
    return {"global": {"proxy": kw}}


# istio's TestInjection table (pkg/kube/inject/inject_test.go), settings translated.
ISTIO_CASES = [
    Case("hello.yaml", "hello.yaml.cni.injected", {"global": {"network": "network1"}, "cni": {"provider": "default"}},
         unsupported=("components.cni.enabled=true",),
         settings="istio-cni, global.network=network1"),
    Case("hello.yaml", "hello.yaml.proxyImageName.injected", {"global": {"proxy": {"image": "proxyTest"}, **HUB_TAG}},
         settings="global.proxy.image=proxyTest"),
    Case("hello.yaml", "hello.yaml.proxyInitImageName.injected", {"global": {"proxy_init": {"image": "proxyTest"}}},
         settings="global.proxy_init.image (meshd's init image is meshd.image)"),
    Case("hello.yaml", "hello-tproxy.yaml.injected", mesh={"defaultConfig": {"interceptionMode": "TPROXY"}},
         error="sidecar.istio.io/interceptionmode", settings="defaultConfig.interceptionMode=TPROXY"),
    Case("hello.yaml", "hello-always.yaml.injected", {"global": {"imagePullPolicy": "Always"}},
         settings="global.imagePullPolicy=Always"),
    Case("hello.yaml", "hello-never.yaml.injected", {"global": {"imagePullPolicy": "Never"}},
         settings="global.imagePullPolicy=Never"),
    Case("hello.yaml", "hello-fips-140-3.yaml.injected", {"global": {"compliancePolicy": "fips-140-3"}},
         settings="global.compliancePolicy=fips-140-3"),
    Case("format-duration.yaml", "format-duration.yaml.injected", mesh={"defaultConfig": {"drainDuration": "23s"}},
         settings="defaultConfig.drainDuration=23s"),
    Case("traffic-params.yaml", "traffic-params.yaml.injected",
         _proxy(includeIPRanges="127.0.0.1/24,10.96.0.1/24", excludeIPRanges="10.96.0.2/24,10.96.0.3/24",
                excludeInboundPorts="4,5,6", statusPort=0), settings="global.proxy include/exclude ranges and ports, statusPort=0"),
    *(Case(name, name + ".injected", _proxy(statusPort=123, readinessInitialDelaySeconds=100,
                                             readinessPeriodSeconds=200, readinessFailureThreshold=300),
           settings="global.proxy.statusPort=123, readiness*")
      for name in ("status_params.yaml", "kubevirtInterfaces.yaml", "reroute-virtual-interfaces.yaml")),
    Case("hello.yaml", "hello-image-secrets-in-values.yaml.injected", iop_values("hello-image-secrets-in-values.iop.yaml"),
         settings="hello-image-secrets-in-values.iop.yaml"),
    Case("hello-image-pull-secret.yaml", "hello-multiple-image-secrets.yaml.injected",
         iop_values("hello-image-secrets-in-values.iop.yaml"), settings="hello-image-secrets-in-values.iop.yaml"),
    Case("hello.yaml", "hello-template-in-values.yaml.injected", iop_values("hello-template-in-values.iop.yaml"),
         settings="hello-template-in-values.iop.yaml"),
    Case("hello.yaml", "hello-mount-mtls-certs.yaml.injected", {"global": {"mountMtlsCerts": True}},
         settings="global.mountMtlsCerts=true"),
    *(Case(name, golden, {"cni": {"provider": "multus"}}, unsupported=("components.cni.enabled=true",),
           settings="istio-cni (multus)")
      for name, golden in (("hello.yaml", "hello-cncf-networks.yaml.injected"),
                           ("hello-existing-cncf-networks.yaml", "hello-existing-cncf-networks.yaml.injected"),
                           ("hello-existing-cncf-networks-json.yaml", "hello-existing-cncf-networks-json.yaml.injected"))),
    Case("hello.yaml", "hello.proxyHoldsApplication.yaml.injected", _proxy(holdApplicationUntilProxyStarts=True),
         settings="global.proxy.holdApplicationUntilProxyStarts=true"),
    Case("hello-probes.yaml", "hello-probes.proxyHoldsApplication.yaml.injected",
         _proxy(holdApplicationUntilProxyStarts=True), settings="global.proxy.holdApplicationUntilProxyStarts=true"),
    Case("hello-probes-noProxyHoldApplication-ProxyConfig.yaml", "hello-probes-noProxyHoldApplication-ProxyConfig.yaml.injected",
         _proxy(holdApplicationUntilProxyStarts=True), settings="global.proxy.holdApplicationUntilProxyStarts=true"),
    *(Case(f"traffic-annotations-bad-{what}.yaml", "", error=f"traffic.sidecar.istio.io/{annotation.lower()}",
           settings="Istio rejects it")
      for what, annotation in (("includeipranges", "includeOutboundIPRanges"),
                               ("excludeipranges", "excludeOutboundIPRanges"),
                               ("includeinboundports", "includeInboundPorts"),
                               ("excludeinboundports", "excludeInboundPorts"),
                               ("excludeoutboundports", "excludeOutboundPorts"))),
    Case("traffic-annotations.yaml", "traffic-annotations.yaml.injected",
         mesh={"defaultConfig": {"proxyMetadata": {"ISTIO_META_TLS_CLIENT_KEY": "/etc/identity/client/keys/client-key.pem"}}},
         settings="defaultConfig.proxyMetadata"),
    Case("proxy-override-runas.yaml", "proxy-override-runas.yaml.cni.injected",
         unsupported=("components.cni.enabled=true",), settings="istio-cni"),
    Case("proxy-override-runas.yaml", "proxy-override-runas.yaml.tproxy.injected",
         mesh={"defaultConfig": {"interceptionMode": "TPROXY"}}, error="sidecar.istio.io/interceptionmode",
         settings="defaultConfig.interceptionMode=TPROXY"),
    Case("proxy-override-args.yaml", "proxy-override-args-native.yaml.injected", {"global": {"nativeSidecars": True}},
         settings="ENABLE_NATIVE_SIDECARS=true"),
    Case("custom-template.yaml", "custom-template.yaml.injected", iop_values("custom-template.iop.yaml"),
         settings="custom-template.iop.yaml"),
    Case("merge-probers.yaml", "merge-probers.yaml.injected", _proxy(holdApplicationUntilProxyStarts=True),
         settings="global.proxy.holdApplicationUntilProxyStarts=true"),
    Case("hello-tracing-disabled.yaml", "hello-tracing-disabled.yaml.injected", mesh={"defaultConfig": {"tracing": {}}},
         settings="defaultConfig.tracing={}"),
    Case("hello-probes-localhost.yaml", "hello-probes-localhost.yaml.injected",
         mesh={"inboundTrafficPolicy": {"mode": "LOCALHOST"}}, settings="inboundTrafficPolicy LOCALHOST"),
    *(Case(name, name + ".injected", unsupported=("components.cni.enabled=true", "platform OpenShift"),
           settings="OpenShift, istio-cni")
      for name in ("hello-openshift.yaml", "hello-openshift-custom-injection.yaml")),
]
# Goldens of istio's other test (the pre-1.x template kept for upgrades): not meshd's concern.
OLD_TEMPLATE_GOLDENS = ("cronjob-old-version", "daemonset-old-version", "hello-old-version", "job-old-version",
                        "native-sidecar-old-version", "pod-old-version", "replicaset-old-version",
                        "statefulset-old-version")


def cases() -> list[Case]:
    """Istio's table, then every other input with its same-name golden (and its .iop.yaml)."""
    out = list(ISTIO_CASES)
    taken = {c.golden for c in out} | {c.input for c in out if not c.golden}
    for path in sorted(DATA.glob("*.yaml")):
        name = path.name
        if name.endswith(".iop.yaml") or name + ".injected" in taken or name in taken:
            continue
        values = iop_values(name[:-len(".yaml")] + ".iop.yaml")
        settings = f"{name[:-len('.yaml')]}.iop.yaml" if values else ""
        if name == "proxy-resources-null-no-init.yaml":
            values, settings = iop_values("proxy-resources-null.iop.yaml"), "proxy-resources-null.iop.yaml"
        if "spire" in name:
            values, settings = iop_values("spire-template.iop.yaml"), "spire-template.iop.yaml"
        out.append(Case(name, name + ".injected", values, settings=settings))
    return out


def config_of(case: Case) -> InjectionConfig:
    return InjectionConfig.from_sources(case.mesh or None, case.values or None)


def documents(name: str) -> list[Any]:
    return [d for d in yaml.safe_load_all((DATA / name).read_text()) if d is not None]
