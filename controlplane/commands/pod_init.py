"""`meshd pod-init`: the init container of an injected pod (Istio's istio-init).

    meshd pod-init <istio-iptables flags> --bootstrap-out PATH --xds-address HOST:PORT
                   --root-cert PATH --token-path PATH [--proxy-config-json JSON]

In this order, and nothing is changed unless every input is valid:
1. reads the istio-iptables flags (podinit/iptables.py), the downward API (env
   POD_NAME, POD_NAMESPACE, INSTANCE_IP, SERVICE_ACCOUNT, ISTIO_META_*, the labels file)
   and --proxy-config-json (podinit/downward.py), and builds the sidecar's bootstrap;
2. writes the bootstrap to --bootstrap-out (JSON, also valid as YAML; mode 0644: it holds
   no credential, only the token's path, and Envoy runs as UID 1337);
3. installs the interception rules with one iptables-restore (--dry-run: prints them).

With --fetch-envoy-filters, step 1 also asks meshd for the EnvoyFilter BOOTSTRAP patches
selecting the pod's proxy and merges them into the bootstrap (bootstrap_patches.py),
before the interception rules exist; a fetch that fails fails the step (exit 2).

What has no effect without istio-agent (DNS capture metadata, pilot-agent's proxy config
fields) is logged as a warning; what cannot be done (TPROXY, IPv6, CNI flags) fails the
step with the flag and the reason. Exit 0 done, 1 the rules could not be installed, 2 bad
input.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import structlog

from ..podinit import downward, iptables
from ..proxy_settings import fetches_bootstrap_patches


class _Refuse(argparse.Action):
    """An istio-iptables flag meshd does not implement: fail naming it and why."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        flag = option_string or self.dest
        parser.error(f"{flag}: {iptables.UNSUPPORTED_FLAGS[flag]}")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pod-init", help="the init step of an injected pod: interception rules and the Envoy bootstrap",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    iptables.add_capture_flags(p)
    for flag in iptables.UNSUPPORTED_FLAGS:
        p.add_argument(flag, nargs="?", action=_Refuse, help=argparse.SUPPRESS)
    b = p.add_argument_group("bootstrap")
    b.add_argument("--bootstrap-out", required=True, help="where to write Envoy's bootstrap")
    b.add_argument("--xds-address", required=True, help="meshd's secure xDS address host:port")
    b.add_argument("--root-cert", required=True, help="the mesh root (ConfigMap istio-ca-root-cert's root-cert.pem)")
    b.add_argument("--token-path", required=True,
                   help="the projected service-account token (audience istio-ca); Envoy re-reads it on every "
                        "connection, so the kubelet's rotation is picked up")
    b.add_argument("--proxy-config-json", help="ProxyConfig as JSON (defaultConfig with the pod's proxy.istio.io/config)")
    b.add_argument("--labels-file", default=downward.LABELS_FILE,
                   help="downward-API labels file (default %(default)s)")
    b.add_argument("--xds-server-name", default=downward.XDS_SERVER_NAME,
                   help="name meshd's certificate is verified for (default %(default)s)")
    b.add_argument("--fetch-envoy-filters", action="store_true",
                   help="ask meshd (at --xds-address, as this pod's proxy, with its token) for the EnvoyFilter "
                        "BOOTSTRAP patches selecting it and merge them in; a failed fetch fails the step (also on when "
                        "the proxy config's proxyMetadata sets BOOTSTRAP_XDS_AGENT, Istio's switch)")
    b.add_argument("--fetch-timeout", type=_timeout, default="15s",
                   help="with --fetch-envoy-filters: how long to wait for meshd's answer (default %(default)s)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..logging import configure

    configure(args.log_level)
    log = structlog.get_logger("meshd.pod_init")
    try:
        cfg = iptables.capture_config(args)
        labels_path = Path(args.labels_file)
        try:
            labels_text = labels_path.read_text()
        except OSError as e:
            raise downward.PodInfoError(f"--labels-file {labels_path}: {e.strerror or e}") from None
        pod = downward.pod_info(os.environ, labels_text, str(labels_path))
        pc = downward.parse_proxy_config(args.proxy_config_json) if args.proxy_config_json else None
        doc = downward.bootstrap(pod, args.xds_address, Path(args.root_cert), Path(args.token_path), pc,
                                 server_name=args.xds_server_name)
        if args.fetch_envoy_filters or fetches_bootstrap_patches(pc):
            doc = _with_envoy_filters(doc, args)
        rules = iptables.rules(cfg)
    except ValueError as e:
        print(f"meshd pod-init: {e}", file=sys.stderr)
        return 2
    for problem in downward.unsupported(pod, pc):
        log.warning("pod-init setting has no effect", setting=problem)
    out = Path(args.bootstrap_out)
    try:
        _write(out, json.dumps(doc, indent=2) + "\n")
    except OSError as e:
        print(f"meshd pod-init: --bootstrap-out {out}: {e.strerror or e}", file=sys.stderr)
        return 2
    node = doc["node"]["id"]
    if cfg.dry_run:
        sys.stdout.write(rules)
        log.info("pod-init dry run: rules printed, not installed", node=node, bootstrap=str(out))
        return 0
    try:
        iptables.apply(rules, cfg.iptables_binary)
    except (iptables.CaptureError, OSError) as e:
        print(f"meshd pod-init: {e}", file=sys.stderr)
        return 1
    log.info("pod-init done", node=node, bootstrap=str(out), rules=sum(1 for r in rules.splitlines() if r[:2] in ("-A", "-I")))
    return 0


def _with_envoy_filters(doc: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The EnvoyFilter BOOTSTRAP patches merged in (bootstrap_patches.py), fetched as the
    sidecar will connect: TLS to meshd with the mounted root, the projected token."""
    from ..bootstrap import XdsTls
    from ..bootstrap_patches import fetch, merge_into

    tls = XdsTls(root_cert_pem=Path(args.root_cert).read_text(), server_name=args.xds_server_name,
                 token_path=str(args.token_path))
    return merge_into(doc, *fetch(doc, args.xds_address, tls, args.fetch_timeout))


def _timeout(text: str) -> float:
    """--fetch-timeout: a Go-style duration (15s, 1m), in seconds."""
    from ..config.validation.durations import SECOND, parse_duration

    try:
        seconds = parse_duration(text) / SECOND
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be positive")
    return seconds


def _write(path: Path, text: str) -> None:
    """Atomically, 0644: a restarted init container never leaves half a bootstrap."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)
