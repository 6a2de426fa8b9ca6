"""The interception rules of an injected pod, as Istio's istio-iptables installs them.

`capture_config(argv)` reads istio-iptables' flags (the injector's istio-init argv) into a
`CaptureConfig`; `rules(cfg)` is a pure function of it: the nat (and, with
--drop-invalid, mangle) table as one `iptables-restore` input; `apply(text)` hands it to
`iptables-restore --noflush` in one call, as istio-iptables does (all or nothing).

REDIRECT mode, IPv4, the chains and rule order of istio-iptables (checked against its
capture/testdata golden files in tests/unit/test_pod_init_iptables.py):

    PREROUTING -> ISTIO_INBOUND: 15008 (HBONE) and the -d ports RETURN, the rest (-b '*')
                  or the -b ports -> ISTIO_IN_REDIRECT (REDIRECT to -z, 15006)
    OUTPUT     -> ISTIO_OUTPUT: -o ports RETURN; inbound passthrough (127.0.0.6 on lo)
                  RETURN; per proxy uid/gid: the proxy calling a local non-127.0.0.1
                  address -> ISTIO_IN_REDIRECT, others on lo RETURN, the proxy's own
                  traffic RETURN; 127.0.0.1 and the -x ranges RETURN; the -q ports and
                  then the -i ranges (or everything, -i '*') -> ISTIO_REDIRECT (to -p, 15001)

What istio-iptables does and meshd does not, refused with the reason rather than
skipped (a pod must not start believing its traffic is intercepted when it is not):
TPROXY mode, DNS capture (--redirect-dns, --capture-all-dns: istio-agent's DNS proxy),
IPv6 ranges and --dual-stack, the CNI and validation flags. `--log_output_level` is
accepted and has no effect.
"""
from __future__ import annotations

import argparse
import ipaddress
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

INBOUND_TUNNEL_PORT = 15008  # HBONE: istio-iptables always lets it through
INBOUND_PASSTHROUGH_SOURCE = "127.0.0.6/32"
LOCALHOST = "127.0.0.1/32"
CHAINS = ("ISTIO_INBOUND", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT")
WILDCARD = "*"

# istio-iptables flags meshd refuses, with why (argparse would only say "unrecognized").
UNSUPPORTED_FLAGS = {
    "--redirect-dns": "DNS capture needs istio-agent's DNS proxy (port 15053), which a meshd pod does not run",
    "--capture-all-dns": "DNS capture needs istio-agent's DNS proxy (port 15053), which a meshd pod does not run",
    "--dual-stack": "meshd's pod-init writes IPv4 rules only",
    "-t": "TPROXY mode is not supported (use -m REDIRECT)",
    "--inbound-tproxy-mark": "TPROXY mode is not supported (use -m REDIRECT)",
    "-r": "TPROXY mode is not supported (use -m REDIRECT)",
    "--inbound-tproxy-route-table": "TPROXY mode is not supported (use -m REDIRECT)",
    "--run-validation": "the istio-validation container's check is not implemented",
    "--skip-rule-apply": "Istio CNI installs the rules then; meshd does not work with Istio CNI",
    "--cni-mode": "meshd does not work with Istio CNI",
    "--network-namespace": "run pod-init inside the pod's network namespace instead",
    "--native-nftables": "meshd writes iptables rules (iptables-nft is fine: choose it with --force-iptables-binary)",
    "--reconcile": "meshd's init step runs once in a fresh pod network namespace",
    "--cleanup-only": "meshd's init step runs once in a fresh pod network namespace",
    "--iptables-probe-port": "the istio-validation probe is not implemented",
    "--probe-timeout": "the istio-validation probe is not implemented",
}


class CaptureError(ValueError):
    """A flag meshd cannot turn into rules: names the flag, the value and the reason."""


@dataclass(frozen=True)
class CaptureConfig:
    """istio-iptables' settings, parsed (flag in brackets)."""

    proxy_port: int = 15001  # -p: outbound traffic goes here
    inbound_capture_port: int = 15006  # -z
    inbound_tunnel_port: int = INBOUND_TUNNEL_PORT  # -e
    proxy_uids: tuple[int, ...] = (1337,)  # -u: traffic of these users is never redirected again
    proxy_gids: tuple[int, ...] = (1337,)  # -g (default: the -u values)
    inbound_ports_include: str | tuple[int, ...] = WILDCARD  # -b: "*", the ports, or () for none
    inbound_ports_exclude: tuple[int, ...] = ()  # -d (with -b '*')
    outbound_ports_include: tuple[int, ...] = ()  # -q
    outbound_ports_exclude: tuple[int, ...] = ()  # -o
    outbound_ip_ranges_include: str | tuple[str, ...] = WILDCARD  # -i: "*", CIDRs, or () for none
    outbound_ip_ranges_exclude: tuple[str, ...] = ()  # -x
    exclude_interfaces: tuple[str, ...] = ()  # -c
    kube_virt_interfaces: tuple[str, ...] = ()  # -k: their inbound traffic is treated as outbound
    # Users whose outbound traffic is never redirected (no istio-iptables flag: the test
    # bed's processes that must reach the host untouched).
    exclude_outbound_uids: tuple[int, ...] = ()
    drop_invalid: bool = False  # --drop-invalid
    dry_run: bool = False  # -n: print the rules, change nothing
    iptables_binary: str = "iptables"  # --force-iptables-binary: iptables, iptables-nft, iptables-legacy


def add_capture_flags(p: argparse.ArgumentParser) -> None:
    """istio-iptables' flags (short and long names as Istio spells them)."""
    g = p.add_argument_group("interception (istio-iptables flags)")
    g.add_argument("-p", "--envoy-port", default="15001", help="outbound capture port (default %(default)s)")
    g.add_argument("-z", "--inbound-capture-port", default="15006", help="inbound capture port (default %(default)s)")
    g.add_argument("-e", "--inbound-tunnel-port", default=str(INBOUND_TUNNEL_PORT),
                   help="tunnel (HBONE) port never redirected (default %(default)s)")
    g.add_argument("-u", "--proxy-uid", default="1337", help="proxy UIDs, comma separated (default %(default)s)")
    g.add_argument("-g", "--proxy-gid", default=None, help="proxy GIDs (default: the -u values)")
    g.add_argument("-m", "--istio-inbound-interception-mode", default="REDIRECT",
                   help="REDIRECT (TPROXY is not supported)")
    g.add_argument("-b", "--istio-inbound-ports", default="", help="inbound ports to redirect: '*', a list, or empty")
    g.add_argument("-d", "--istio-local-exclude-ports", default="", help="inbound ports not redirected (with -b '*')")
    g.add_argument("-i", "--istio-service-cidr", default="", help="outbound CIDRs to redirect: '*', a list, or empty")
    g.add_argument("-x", "--istio-service-exclude-cidr", default="", help="outbound CIDRs not redirected")
    g.add_argument("-q", "--istio-outbound-ports", default="", help="outbound ports always redirected")
    g.add_argument("-o", "--istio-local-outbound-ports-exclude", default="", help="outbound ports not redirected")
    g.add_argument("-c", "--istio-exclude-interfaces", default="", help="interfaces left alone, in and out")
    g.add_argument("-k", "--kube-virt-interfaces", default="",
                   help="interfaces whose inbound traffic is treated as outbound")
    g.add_argument("--drop-invalid", action="store_true", help="drop conntrack-INVALID packets (mangle table)")
    g.add_argument("-n", "--dry-run", action="store_true", help="print the rules instead of installing them")
    g.add_argument("--force-iptables-binary", default="iptables",
                   help="iptables, iptables-nft or iptables-legacy: its -restore installs the rules")
    g.add_argument("--log_output_level", default="", help=argparse.SUPPRESS)  # Istio's logging: no effect here


def refuse_unsupported(argv: Sequence[str]) -> None:
    """CaptureError for the first istio-iptables flag meshd does not implement."""
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name in UNSUPPORTED_FLAGS:
            raise CaptureError(f"{name}: {UNSUPPORTED_FLAGS[name]}")


def capture_config(args: argparse.Namespace) -> CaptureConfig:
    """The parsed flags as a CaptureConfig; CaptureError naming the flag otherwise."""
    mode = args.istio_inbound_interception_mode.strip().upper()
    if mode != "REDIRECT":
        raise CaptureError(f"-m {args.istio_inbound_interception_mode!r}: only REDIRECT is supported (no TPROXY)")
    uids = _ints("-u", args.proxy_uid)
    if not uids:
        raise CaptureError("-u: the proxy UID is required")
    binary = args.force_iptables_binary
    if binary not in ("iptables", "iptables-nft", "iptables-legacy"):
        raise CaptureError(f"--force-iptables-binary {binary!r}: want iptables, iptables-nft or iptables-legacy")
    return CaptureConfig(
        proxy_port=_port("-p", args.envoy_port),
        inbound_capture_port=_port("-z", args.inbound_capture_port),
        inbound_tunnel_port=_port("-e", args.inbound_tunnel_port),
        proxy_uids=uids,
        proxy_gids=uids if args.proxy_gid is None else _ints("-g", args.proxy_gid),
        inbound_ports_include=WILDCARD if args.istio_inbound_ports.strip() == WILDCARD
        else _ports("-b", args.istio_inbound_ports),
        inbound_ports_exclude=_ports("-d", args.istio_local_exclude_ports),
        outbound_ports_include=_ports("-q", args.istio_outbound_ports),
        outbound_ports_exclude=_ports("-o", args.istio_local_outbound_ports_exclude),
        outbound_ip_ranges_include=WILDCARD if args.istio_service_cidr.strip() == WILDCARD
        else _cidrs("-i", args.istio_service_cidr),
        outbound_ip_ranges_exclude=_cidrs("-x", args.istio_service_exclude_cidr),
        exclude_interfaces=_interfaces("-c", args.istio_exclude_interfaces),
        kube_virt_interfaces=_interfaces("-k", args.kube_virt_interfaces),
        drop_invalid=args.drop_invalid,
        dry_run=args.dry_run,
        iptables_binary=binary,
    )


def rules(cfg: CaptureConfig) -> str:
    """iptables-restore input (for `--noflush`) installing the capture of `cfg`."""
    nat: list[str] = []
    # Inserted at the top of PREROUTING, as istio-iptables' InsertRule(..., 1, ...) does.
    for iface in cfg.kube_virt_interfaces:
        nat.append(f"-I PREROUTING 1 -i {iface} -j RETURN")
    for iface in cfg.exclude_interfaces:
        nat.append(f"-A PREROUTING -i {iface} -j RETURN")
        nat.append(f"-A OUTPUT -o {iface} -j RETURN")
    nat.append(f"-A ISTIO_INBOUND -p tcp --dport {cfg.inbound_tunnel_port} -j RETURN")
    nat.append(f"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {cfg.proxy_port}")
    nat.append(f"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {cfg.inbound_capture_port}")
    nat += _inbound(cfg)
    nat += _outbound(cfg)
    out = ["*nat", *(f":{c} - [0:0]" for c in CHAINS), *nat, "COMMIT"]
    if cfg.drop_invalid:
        out += ["*mangle", "-A PREROUTING -m conntrack --ctstate INVALID -j DROP", "COMMIT"]
    return "\n".join(out) + "\n"


def _inbound(cfg: CaptureConfig) -> list[str]:
    if cfg.inbound_ports_include == WILDCARD:
        return ["-A PREROUTING -p tcp -j ISTIO_INBOUND",
                *(f"-A ISTIO_INBOUND -p tcp --dport {p} -j RETURN" for p in cfg.inbound_ports_exclude),
                "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT"]
    if not cfg.inbound_ports_include:
        return []  # -b "": no inbound capture at all
    return ["-A PREROUTING -p tcp -j ISTIO_INBOUND",
            *(f"-A ISTIO_INBOUND -p tcp --dport {p} -j ISTIO_IN_REDIRECT" for p in cfg.inbound_ports_include)]


def _outbound(cfg: CaptureConfig) -> list[str]:
    out = ["-A OUTPUT -p tcp -j ISTIO_OUTPUT"]
    if cfg.outbound_ports_exclude:
        out.append(f"-A ISTIO_OUTPUT -p tcp -m multiport --dports {_csv(cfg.outbound_ports_exclude)} -j RETURN")
    out.append(f"-A ISTIO_OUTPUT -o lo -s {INBOUND_PASSTHROUGH_SOURCE} -j RETURN")
    include = cfg.outbound_ip_ranges_include
    loopback_included = include != WILDCARD and any(ipaddress.ip_network(c, strict=False).is_loopback for c in include)
    owners = [("--uid-owner", u) for u in cfg.proxy_uids] + [("--gid-owner", g) for g in cfg.proxy_gids]
    for flag, ident in owners:
        # The proxy calling a local address other than 127.0.0.1 (the pod through its own
        # Service): to the inbound listener, so the call gets the server side's policy.
        out.append(f"-A ISTIO_OUTPUT -o lo ! -d {LOCALHOST} -p tcp ! --dport {cfg.inbound_tunnel_port} "
                   f"-m owner {flag} {ident} -j ISTIO_IN_REDIRECT")
        if not loopback_included:  # the app calling itself over lo stays direct
            out.append(f"-A ISTIO_OUTPUT -o lo -m owner ! {flag} {ident} -j RETURN")
        out.append(f"-A ISTIO_OUTPUT -m owner {flag} {ident} -j RETURN")  # no loop through the proxy
    out += [f"-A ISTIO_OUTPUT -m owner --uid-owner {u} -j RETURN" for u in cfg.exclude_outbound_uids]
    out.append(f"-A ISTIO_OUTPUT -d {LOCALHOST} -j RETURN")
    out += [f"-A ISTIO_OUTPUT -d {c} -j RETURN" for c in cfg.outbound_ip_ranges_exclude]
    out += [f"-A ISTIO_OUTPUT -p tcp --dport {p} -j ISTIO_REDIRECT" for p in cfg.outbound_ports_include]
    if include == WILDCARD:
        out.append("-A ISTIO_OUTPUT -j ISTIO_REDIRECT")
        out += [f"-I PREROUTING 1 -i {iface} -j ISTIO_REDIRECT" for iface in cfg.kube_virt_interfaces]
    elif include:
        for c in include:
            out += [f"-I PREROUTING 1 -i {iface} -d {c} -j ISTIO_REDIRECT" for iface in cfg.kube_virt_interfaces]
            out.append(f"-A ISTIO_OUTPUT -d {c} -j ISTIO_REDIRECT")
        out.append("-A ISTIO_OUTPUT -j RETURN")
    return out


def restore_command(binary: str = "iptables") -> list[str]:
    """`<binary>-restore --noflush`, waiting for the xtables lock like istio-iptables."""
    return [f"{binary}-restore", "-w", "5", "--noflush"]


def apply(text: str, binary: str = "iptables", timeout: float = 30) -> None:
    """Install `text` with one iptables-restore; CaptureError with its message on failure."""
    argv = restore_command(binary)
    if shutil.which(argv[0]) is None:
        raise CaptureError(f"{argv[0]}: not installed (the init step needs iptables)")
    p = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=timeout, check=False)
    if p.returncode != 0:
        raise CaptureError(f"{argv[0]} failed (exit {p.returncode}): {p.stderr.strip() or p.stdout.strip()}")


# ---- flag values ---------------------------------------------------------------------

def _items(text: str) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def _port(flag: str, text: str) -> int:
    try:
        port = int(str(text).strip())
    except ValueError:
        raise CaptureError(f"{flag} {text!r}: not a port number") from None
    if not 0 < port < 65536:
        raise CaptureError(f"{flag} {text!r}: a port is 1-65535")
    return port


def _ports(flag: str, text: str) -> tuple[int, ...]:
    if text.strip() == WILDCARD:
        raise CaptureError(f"{flag} '*': a wildcard is not allowed here")
    return tuple(_port(flag, s) for s in _items(text))


def _ints(flag: str, text: str) -> tuple[int, ...]:
    out = []
    for s in _items(text):
        if not s.isdigit():
            raise CaptureError(f"{flag} {s!r}: not a numeric id")
        out.append(int(s))
    return tuple(out)


def _cidrs(flag: str, text: str) -> tuple[str, ...]:
    """IPv4 CIDRs. istio-iptables skips a malformed one with a warning ("bug
    compatibility"); meshd refuses it, and refuses IPv6 (no ip6tables rules here)."""
    if text.strip() == WILDCARD:
        raise CaptureError(f"{flag} '*': a wildcard is not allowed here")
    out = []
    for s in _items(text):
        try:
            net = ipaddress.ip_network(s, strict=False)
        except ValueError:
            raise CaptureError(f"{flag} {s!r}: not an IP range in CIDR form") from None
        if net.version != 4:
            raise CaptureError(f"{flag} {s!r}: IPv6 ranges are not supported (IPv4 rules only)")
        out.append(str(net))
    return tuple(out)


def _interfaces(flag: str, text: str) -> tuple[str, ...]:
    names = tuple(_items(text))
    for n in names:
        if len(n) > 15 or not all(c.isalnum() or c in "-_.@" for c in n):
            raise CaptureError(f"{flag} {n!r}: not a network interface name")
    return names


def _csv(ports: Sequence[int]) -> str:
    return ",".join(str(p) for p in ports)
