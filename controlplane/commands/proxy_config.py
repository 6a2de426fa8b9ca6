"""`meshd proxy-config cluster|listener|route|endpoint|secret|ecds|bootstrap|all [<proxy>]`.

istioctl's tables and dumps (controlplane/debug/configwriter.py), from one of:
- `--meshd URL` (default http://127.0.0.1:15014): what meshd sent the proxy
  (`/debug/config_dump?proxyID=<proxy>`; `<proxy>` is the node id or `pod.namespace`);
- `--envoy URL`: what the proxy's Envoy holds (its admin `/config_dump?include_eds`);
- `--file FILE`: a saved config dump (`-` for stdin), as `istioctl pc ... --file`.

The endpoint table is the EDS view of the config dump (istioctl's `NAME STATUS LOCALITY
CLUSTER`), from meshd and from Envoy alike, so the two can be compared row by row.
"""
from __future__ import annotations

import argparse
import sys

from .http import FetchError, add_dump_sources, get, read_token

KINDS = {
    "cluster": ("clusters", "c"),
    "listener": ("listeners", "l"),
    "route": ("routes", "r"),
    "endpoint": ("endpoints", "ep"),
    "secret": ("secrets", "s"),
    "ecds": (),
    "bootstrap": ("b",),
    "all": ("a",),
}


def load_dump(args: argparse.Namespace):
    """(ConfigDump, the JSON text it was read from)."""
    from ..debug.configdump import ConfigDump, DumpError

    if args.file:
        data = sys.stdin.read() if args.file == "-" else open(args.file).read()
    elif args.envoy:
        params = {"include_eds": "true"} if args.kind in ("endpoint", "all") else None
        data = get(args.envoy, "/config_dump", params).decode()
    elif not args.proxy:
        raise DumpError(f"{args.kind} needs a proxy (node id or pod.namespace), --envoy or --file")
    else:
        data = get(args.meshd, "/debug/config_dump", {"proxyID": args.proxy}, token=read_token(args.token)).decode()
    return ConfigDump.from_json(data), data


def run(args: argparse.Namespace) -> int:
    from ..debug.configdump import DumpError
    from ..debug.configwriter import ClusterFilter, ConfigWriter, EndpointFilter, ListenerFilter, RouteFilter

    out = sys.stdout
    fmt = args.output or ("json" if args.kind == "bootstrap" else "short")
    if fmt not in ("short", "json", "yaml"):
        print(f"Error: output format {fmt!r} not supported (json|yaml|short)", file=sys.stderr)
        return 1
    try:
        dump, raw = load_dump(args)
        w = ConfigWriter(dump, out, include_config_type=args.kind == "all")
        cf = ClusterFilter(args.fqdn or "", args.port or 0, args.subset or "", args.direction or "")
        lf = ListenerFilter(args.address or "", args.port or 0, args.type or "", args.verbose)
        rf = RouteFilter(args.name or "", args.verbose)
        ef = EndpointFilter(args.address or "", args.port or 0, args.cluster or "", args.status or "")
        kind = args.kind
        if kind == "all":
            if fmt == "short":
                w.print_full_summary(cf, lf, rf, ef, with_headers=args.with_headers)
            else:  # istioctl prints the dump as it came (YAML: converted)
                from ..debug.goyaml import to_yaml

                out.write((to_yaml(raw) if fmt == "yaml" else raw.rstrip("\n")) + "\n")
        elif kind == "cluster":
            w.print_cluster_summary(cf) if fmt == "short" else w.print_cluster_dump(cf, fmt)
        elif kind == "listener":
            w.print_listener_summary(lf) if fmt == "short" else w.print_listener_dump(lf, fmt)
        elif kind == "route":
            w.print_route_summary(rf) if fmt == "short" else w.print_route_dump(rf, fmt)
        elif kind == "endpoint":
            w.print_endpoints_summary(ef) if fmt == "short" else w.print_endpoints(ef, fmt)
        elif kind == "secret":
            w.print_secret_summary() if fmt == "short" else w.print_secret_dump(fmt)
        elif kind == "ecds":
            w.print_ecds_summary() if fmt == "short" else w.print_ecds_dump(fmt)
        elif kind == "bootstrap":
            w.print_bootstrap_summary() if fmt == "short" else w.print_bootstrap_dump(fmt)
    except (DumpError, FetchError, OSError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "proxy-config", aliases=["pc"], help="what a proxy was sent (or holds), in istioctl proxy-config's shapes",
        formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__,
    )
    p.add_argument("kind", choices=sorted(KINDS) + sorted(a for al in KINDS.values() for a in al),
                   metavar="{cluster,listener,route,endpoint,secret,ecds,bootstrap,all}")
    p.add_argument("proxy", nargs="?", help="node id (router~IP~POD.NS~NS.svc.cluster.local) or POD.NAMESPACE")
    add_dump_sources(p, "an Envoy config dump JSON file ('-' for stdin)")
    p.add_argument("--output", "-o", help="json|yaml|short (default short; json for bootstrap)")
    p.add_argument("--fqdn", help="clusters: substring of the service FQDN")
    p.add_argument("--port", type=int, help="clusters, listeners, endpoints: port")
    p.add_argument("--subset", help="clusters: substring of the subset")
    p.add_argument("--direction", help="clusters: inbound|outbound")
    p.add_argument("--address", help="listeners, endpoints: address")
    p.add_argument("--type", help="listeners: HTTP|TCP|HTTP+TCP")
    p.add_argument("--name", help="routes: route configuration name")
    p.add_argument("--cluster", help="endpoints: cluster name")
    p.add_argument("--status", help="endpoints: health status (healthy, unhealthy, ...)")
    p.add_argument("--verbose", action=argparse.BooleanOptionalAction, default=True,
                   help="listeners/routes: match and destination columns (default on)")
    p.add_argument("--with-headers", action="store_true", help="all: a banner before each section")
    p.set_defaults(func=_dispatch)


def _dispatch(args: argparse.Namespace) -> int:
    for kind, aliases in KINDS.items():
        if args.kind == kind or args.kind in aliases:
            args.kind = kind
    return run(args)
