"""`meshd crds --gateway-api`: the standard-channel CRDs of every Gateway API kind meshd
serves, at (at least) the versions it reads."""
from __future__ import annotations

import subprocess
import sys

import yaml

from controlplane.config import kinds


def test_meshd_crds_gateway_api_prints_a_crd_for_every_served_kind_and_version():
    out = subprocess.run([sys.executable, "-m", "controlplane", "crds", "--gateway-api"], capture_output=True,
                         text=True, check=True).stdout
    crds = {d["spec"]["names"]["kind"]: d for d in yaml.safe_load_all(out) if d}
    for kind in kinds.GATEWAY_API_KINDS:
        crd = crds[kind.kind]
        assert crd["spec"]["group"] == "gateway.networking.k8s.io"
        assert crd["spec"]["scope"] == ("Namespaced" if kind.namespaced else "Cluster")
        served = {v["name"] for v in crd["spec"]["versions"]}
        assert set(kind.versions) <= served, kind.kind
        assert crd["metadata"]["annotations"]["gateway.networking.k8s.io/channel"] == "standard"
