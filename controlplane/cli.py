"""The `meshd` command: serve, bootstrap."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import names

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "deploy" / "examples"


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from .app import ServeOptions, serve
    from .logging import configure

    configure(args.log_level, args.log_format)
    config_dir = Path(args.config_dir) if args.config_dir else EXAMPLES_DIR
    if not config_dir.is_dir():
        print(f"meshd: config directory {config_dir} does not exist", file=sys.stderr)
        return 2
    opts = ServeOptions(
        config_dir=config_dir,
        xds_port=args.xds_port,
        monitoring_port=args.monitoring_port,
        listen_address=args.listen_address,
        poll_interval=args.poll_interval,
        debounce_after=args.debounce_after,
    )
    try:
        asyncio.run(serve(opts))
    except KeyboardInterrupt:
        pass
    return 0


def _bootstrap(args: argparse.Namespace) -> int:
    import yaml

    from .bootstrap import BootstrapParams, build_bootstrap, parse_labels

    try:
        params = BootstrapParams(
            proxy_type=args.type,
            namespace=args.namespace,
            pod=args.pod,
            ip=args.ip,
            xds_address=args.xds_address,
            labels=parse_labels(args.labels or ""),
            admin_port=args.admin_port,
            service_account=args.service_account,
            stats_port=args.stats_port,
            health_port=args.health_port,
        )
        doc = build_bootstrap(params)
    except ValueError as e:
        print(f"meshd bootstrap: {e}", file=sys.stderr)
        return 2
    as_json = bool(args.output and args.output.endswith(".json"))
    text = json.dumps(doc, indent=2) + "\n" if as_json else yaml.safe_dump(doc, sort_keys=False)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshd", description="xDS control plane for Envoy speaking Istio's config API")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the control plane")
    s.add_argument("--config-dir", help=f"directory of Istio/Kubernetes YAML (default: the bundled example, {EXAMPLES_DIR})")
    s.add_argument("--xds-port", type=int, default=names.PORT_XDS, help="plaintext ADS port (default %(default)s)")
    s.add_argument("--monitoring-port", type=int, default=names.PORT_MONITORING, help="/ready and /metrics (default %(default)s)")
    s.add_argument("--listen-address", default="0.0.0.0", help="address the servers bind (default %(default)s)")
    s.add_argument("--poll-interval", type=float, default=0.2, help="seconds between config directory scans")
    s.add_argument("--debounce-after", type=float, default=0.1, help="quiet time before a config change is pushed (seconds)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--log-format", default="console", choices=["console", "json"])
    s.set_defaults(func=_serve)

    b = sub.add_parser("bootstrap", help="print an Envoy bootstrap that connects to meshd")
    b.add_argument("--type", choices=["router", "sidecar"], default="router")
    b.add_argument("--namespace", default="istio-system")
    b.add_argument("--pod", default="istio-ingressgateway-0")
    b.add_argument("--ip", default="127.0.0.1")
    b.add_argument("--labels", default="", help="pod labels, k=v,k2=v2 (a gateway needs the ones its Gateway selects)")
    b.add_argument("--service-account", default="default")
    b.add_argument("--xds-address", default=f"127.0.0.1:{names.PORT_XDS}", help="meshd's ADS address host:port")
    b.add_argument("--admin-port", type=int, default=names.PORT_ENVOY_ADMIN)
    b.add_argument("--stats-port", type=int, default=names.PORT_STATS, help="Prometheus listener port, 0 for none")
    b.add_argument("--health-port", type=int, default=names.PORT_HEALTH, help="readiness listener port, 0 for none")
    b.add_argument("--output", "-o", help="write to this file (.json for JSON, else YAML) instead of stdout")
    b.set_defaults(func=_bootstrap)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
