"""`meshd proxy-status [<proxy>]`: is every proxy in sync with meshd?

Without a proxy: one row per connected proxy, from meshd's /debug/syncz, in istioctl's
default layout (NAME, CLUSTER, ISTIOD, VERSION: the meshd version that wrote the proxy's
bootstrap, SUBSCRIBED TYPES); `-v 1` (istioctl's --verbosity) shows the state per xDS
type instead (SYNCED, NOT SENT, STALE). A type whose latest response Envoy rejected is
listed below the table with Envoy's message in both layouts. `-o json|yaml` prints the
CSDS response.

With a proxy: the diff between what meshd sent it (/debug/config_dump) and what its Envoy
reports (`--envoy`, default http://127.0.0.1:15000): `Clusters Match`, `Listeners Match`,
`Routes Match`, or the differing JSON.
"""
from __future__ import annotations

import argparse
import json
import sys

from .http import DEFAULT_ENVOY, DEFAULT_MESHD, FetchError, get, read_token


def run(args: argparse.Namespace) -> int:
    from ..debug.compare import compare
    from ..debug.configdump import ConfigDump, DumpError
    from ..debug.status import discovery_response, print_status, print_status_dump

    token = read_token(args.token)
    try:
        if args.proxy and (args.envoy or args.envoy_file or not args.no_diff):
            meshd_dump = ConfigDump.from_json(get(args.meshd, "/debug/config_dump", {"proxyID": args.proxy},
                                                  token=token))
            if args.envoy_file:
                envoy_dump = ConfigDump.from_json(open(args.envoy_file).read())
            else:
                envoy_dump = ConfigDump.from_json(get(args.envoy or DEFAULT_ENVOY, "/config_dump"))
            compare(meshd_dump, envoy_dump, sys.stdout)
            return 0
        syncz = json.loads(get(args.meshd, "/debug/syncz", token=token))
        dr = discovery_response(syncz)
        if args.output in ("json", "yaml"):
            print_status_dump(dr, sys.stdout, args.output)
            return 0
        print_status([dr], sys.stdout, verbose=args.verbosity >= 1, namespace=args.namespace or "",
                     proxy=args.proxy or "")
    except (DumpError, FetchError, OSError, ValueError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("proxy-status", aliases=["ps"], help="sync state of the proxies connected to meshd",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    p.add_argument("proxy", nargs="?", help="node id or POD.NAMESPACE: diff meshd's view against its Envoy")
    p.add_argument("--meshd", default=DEFAULT_MESHD, help="meshd's monitoring address (default %(default)s)")
    p.add_argument("--envoy", help=f"the proxy's Envoy admin for the diff (default {DEFAULT_ENVOY})")
    p.add_argument("--envoy-file", help="compare against this saved Envoy config dump instead")
    p.add_argument("--no-diff", action="store_true", help="with a proxy: only its status row, no diff")
    p.add_argument("--token", help="bearer token for meshd's /debug (or @FILE); default $MESHD_TOKEN")
    p.add_argument("--verbosity", "-v", type=int, default=0, choices=[0, 1],
                   help="0: istioctl's default columns (SUBSCRIBED TYPES); 1: the state of every xDS type")
    p.add_argument("--brief", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    p.add_argument("--namespace", "-n", help="only proxies in this namespace")
    p.add_argument("--output", "-o", choices=["json", "yaml"], help="the CSDS DiscoveryResponse instead of a table")
    p.set_defaults(func=run)
