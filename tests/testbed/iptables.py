"""The iptables rules an Istio init container (istio-iptables, REDIRECT mode) installs.

The rules are the product's (controlplane/podinit/iptables.py, the ones `meshd pod-init`
installs in an injected pod: one implementation), the chains and rule semantics of
`istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d
15090,15021,15020`, which is what the sidecar injector puts in istio-init, so
`iptables-save -t nat` inside a test pod reads like one from a Kubernetes pod:

    -A PREROUTING -p tcp -j ISTIO_INBOUND
    -A OUTPUT -p tcp -j ISTIO_OUTPUT
    -A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN          (HBONE)
    -A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN          (excluded inbound ports ...)
    -A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
    -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
    -A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN          (inbound passthrough source)
    -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
    -A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
    -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN      (Envoy's own traffic)
    ... the same three for --gid-owner 1337 ...
    -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
    -A ISTIO_OUTPUT -j ISTIO_REDIRECT
    -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001

Like istio-iptables the rules are applied in one `iptables-restore --noflush`.

Backend: Debian ships iptables-nft (the default `iptables` alternative) and
iptables-legacy; one network namespace must use only one of them. `backend()` picks the
first that passes a functional probe in a throwaway namespace (nft first, legacy when nft
cannot create nat rules with the owner match, e.g. a kernel without nf_tables), or the one
named by the MESHD_TESTBED_IPTABLES environment variable ("nft" or "legacy").
"""
from __future__ import annotations

import functools
import ipaddress
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from . import netns

INBOUND_PASSTHROUGH_SOURCE = "127.0.0.6"


class _InNamespace(Protocol):
    netns: str


@dataclass(frozen=True)
class Backend:
    name: str  # "nft" or "legacy"

    @property
    def iptables(self) -> str:
        return f"iptables-{self.name}"

    @property
    def restore(self) -> str:
        return f"iptables-{self.name}-restore"

    @property
    def save(self) -> str:
        return f"iptables-{self.name}-save"


_PROBE_RULES = """*nat
:MTB_PROBE - [0:0]
-A OUTPUT -p tcp -m owner --uid-owner 1337 -j RETURN
-A OUTPUT -p tcp -j MTB_PROBE
-A MTB_PROBE -p tcp -j REDIRECT --to-ports 15001
COMMIT
"""


@functools.lru_cache(maxsize=1)
def backend() -> Backend:
    wanted = os.environ.get("MESHD_TESTBED_IPTABLES", "").strip()
    candidates = [wanted] if wanted else ["nft", "legacy"]
    errors = []
    for name in candidates:
        b = Backend(name)
        if not shutil.which(b.restore):
            errors.append(f"{b.restore}: not installed")
            continue
        probe = netns.probe_name()
        try:
            netns.add(probe)
            p = netns.run(probe, [b.restore, "-w", "5", "--noflush"], input=_PROBE_RULES, check=False)
            if p.returncode != 0:
                errors.append(f"{b.restore}: {p.stderr.strip()}")
                continue
            saved = netns.run(probe, [b.save, "-t", "nat"], check=False).stdout
            if "--uid-owner 1337" in saved and "REDIRECT --to-ports 15001" in saved:
                return b
            errors.append(f"{b.save}: rules did not read back")
        finally:
            netns.delete(probe)
    raise RuntimeError(
        "no working iptables in a network namespace (apt-get install -y iptables): " + "; ".join(errors)
    )


def istio_rules(
    proxy_uid: int = 1337,
    proxy_gid: int = 1337,
    inbound_port: int = 15006,
    outbound_port: int = 15001,
    exclude_inbound_ports: Sequence[int] = (15020, 15021, 15090),
    include_inbound_ports: str | Sequence[int] = "*",
    exclude_outbound_ports: Sequence[int] = (),
    exclude_outbound_uids: Sequence[int] = (),
    exclude_outbound_ip_ranges: Sequence[str] = (),
    include_outbound_ip_ranges: str | Sequence[str] = "*",
) -> str:
    """The nat table istio-iptables writes in REDIRECT mode, as iptables-restore input:
    the product's rules (controlplane/podinit/iptables.py, what `meshd pod-init` installs).

    Arguments mirror istio-iptables flags: -u/-g proxy uid/gid, -z inbound port, -p outbound
    port, -d excluded inbound ports, -b included inbound ports ("*" or a list), -o excluded
    outbound ports, --redirect-owner-users-exclude (uids whose traffic is never
    redirected), -x/-i excluded/included outbound CIDRs ("*" or a list).
    """
    from controlplane.podinit import iptables as capture

    return capture.rules(capture.CaptureConfig(
        proxy_port=outbound_port,
        inbound_capture_port=inbound_port,
        proxy_uids=(proxy_uid,),
        proxy_gids=(proxy_gid,),
        inbound_ports_include="*" if include_inbound_ports == "*" else tuple(int(p) for p in include_inbound_ports),
        inbound_ports_exclude=tuple(exclude_inbound_ports),
        outbound_ports_exclude=tuple(exclude_outbound_ports),
        outbound_ip_ranges_include="*" if include_outbound_ip_ranges == "*"
        else tuple(_cidr(c) for c in include_outbound_ip_ranges),
        outbound_ip_ranges_exclude=tuple(_cidr(c) for c in exclude_outbound_ip_ranges),
        exclude_outbound_uids=tuple(exclude_outbound_uids),
    ))


def install_istio_redirect(
    pod: _InNamespace,
    proxy_uid: int = 1337,
    proxy_gid: int = 1337,
    inbound_port: int = 15006,
    outbound_port: int = 15001,
    exclude_inbound_ports: Sequence[int] = (15020, 15021, 15090),
    exclude_outbound_uids: Sequence[int] = (),
    **more,
) -> str:
    """Install the istio-init nat rules in `pod`'s namespace and return them (the
    iptables-restore text). Also puts Istio's inbound passthrough source 127.0.0.6 on lo."""
    rules = istio_rules(
        proxy_uid=proxy_uid, proxy_gid=proxy_gid, inbound_port=inbound_port, outbound_port=outbound_port,
        exclude_inbound_ports=exclude_inbound_ports, exclude_outbound_uids=exclude_outbound_uids, **more,
    )
    b = backend()
    netns.run(pod.netns, [b.restore, "-w", "5", "--noflush"], input=rules)
    # 127.0.0.0/8 is local on lo already, so binding 127.0.0.6 works without this; the
    # explicit address documents it and matches what `ip addr` shows on many nodes.
    have = netns.run(pod.netns, ["ip", "-4", "-o", "addr", "show", "dev", "lo"]).stdout
    if f" {INBOUND_PASSTHROUGH_SOURCE}/32 " not in have:
        netns.run(pod.netns, ["ip", "addr", "add", f"{INBOUND_PASSTHROUGH_SOURCE}/32", "dev", "lo"])
    return rules


def save(pod: _InNamespace, table: str = "nat") -> str:
    """`iptables-save -t TABLE` inside the pod."""
    return netns.run(pod.netns, [backend().save, "-t", table]).stdout


def counters(pod: _InNamespace, chain: str, table: str = "nat") -> list[tuple[int, str]]:
    """(packets, rule text) per rule of `chain`, from `iptables -L -v -n -x`."""
    out = netns.run(pod.netns, [backend().iptables, "-w", "5", "-t", table, "-L", chain, "-v", "-n", "-x"]).stdout
    rows = []
    for line in out.splitlines()[2:]:
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0].isdigit():
            rows.append((int(parts[0]), parts[2]))
    return rows


def _cidr(c: str) -> str:
    return str(ipaddress.ip_network(c, strict=False))
