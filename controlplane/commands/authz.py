"""`meshd experimental authz check <pod>` (also `meshd x authz check`): the authorization
policies a proxy enforces, as `istioctl x authz check` prints them.

    ACTION   AuthorizationPolicy         RULES
    ALLOW    _anonymous_match_nothing_   1
    ALLOW    httpbin.default             1
    CUSTOM   ext-authz.default           1

The table is read from the RBAC filters of the proxy's listeners (policy names
`ns[<ns>]-policy[<name>]-rule[<i>]`), from one of:
- what meshd sent the proxy (default; `--meshd URL`, default http://127.0.0.1:15014,
  `/debug/config_dump?proxyID=<pod>`; `<pod>` is `name.namespace` or the node id);
- `--envoy URL`: the proxy's own Envoy admin (`/config_dump`);
- `--file FILE` (`-f`): a saved config dump, JSON or YAML (`-` for stdin).

`--listeners` prints the older per-filter-chain form instead:

    LISTENER[FilterChain]     CERTIFICATE      mTLS (MODE)       AuthZ (RULES)
    virtualInbound[3]         SDS: default     yes (STRICT)      yes (1: ns[foo]-policy[allow-sleep]-rule[0])

one row per filter chain of the inbound listeners (of every listener for a gateway):
the certificate the chain presents, whether it requires a client certificate, the
PeerAuthentication mode behind it and the RBAC policies on it. With meshd as the source
the mode is the one meshd computed for the workload (`/debug/mtlsz`). An Envoy config
dump does not carry the mode, so with --file or --envoy it is inferred from the chains of
each port: only mTLS chains STRICT, mTLS and plaintext PERMISSIVE, only plaintext DISABLE.
"""
from __future__ import annotations

import argparse
import json
import sys

from .http import FetchError, add_dump_sources, get, read_token


def _read_file(path: str):
    """A dump file as istioctl -f reads it, YAML accepted too."""
    from ..debug.configdump import ConfigDump, DumpError

    try:
        text = sys.stdin.read() if path == "-" else open(path).read()
    except OSError as e:
        raise DumpError(f"failed to get config dump from file {path}: {e.strerror or e}") from None
    try:
        doc = json.loads(text)
    except ValueError:
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise DumpError(f"failed to get config dump from file {path}: neither JSON nor YAML: {e}") from None
    return ConfigDump.from_json(doc)


def _load(args: argparse.Namespace):
    if args.file:
        return _read_file(args.file)
    from .proxy_config import load_dump

    # proxy-config's fetch: --envoy's /config_dump, else meshd's /debug/config_dump?proxyID=
    return load_dump(argparse.Namespace(file=None, envoy=args.envoy, meshd=args.meshd, proxy=args.pod,
                                        token=args.token, kind="authz check"))[0]


def _mode_source(args: argparse.Namespace, listeners):
    """meshd's own modes when meshd is the source, else the inferred ones."""
    from ..debug import authz_table

    if args.file or args.envoy:
        return authz_table.inferred_modes(listeners)
    data = json.loads(get(args.meshd, "/debug/mtlsz", {"proxyID": args.pod}, token=read_token(args.token)))
    return authz_table.known_modes(data.get("mode"), {int(p): m for p, m in (data.get("portModes") or {}).items()})


def run(args: argparse.Namespace) -> int:
    from ..debug import authz_table
    from ..debug.configdump import DumpError

    try:
        listeners = authz_table.read_listeners(_load(args))
        for w in listeners.warnings:
            print(f"warning: {w}", file=sys.stderr)
        if args.listeners:
            text = authz_table.chain_table(listeners, _mode_source(args, listeners))
        else:
            text = authz_table.policy_table(listeners)
    except (DumpError, FetchError, OSError, ValueError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """`meshd experimental` (alias `x`) with its `authz check` command."""
    x = sub.add_parser("experimental", aliases=["x", "exp"], help="experimental commands (istioctl x's)")
    xsub = x.add_subparsers(dest="experimental_command", required=True)
    authz = xsub.add_parser("authz", help="inspect the AuthorizationPolicies proxies enforce")
    asub = authz.add_subparsers(dest="authz_command", required=True)
    p = asub.add_parser("check", help="the AuthorizationPolicies a proxy enforces (istioctl x authz check)",
                        formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    p.add_argument("pod", nargs="?", help="the proxy: POD.NAMESPACE or node id (not needed with --file/--envoy)")
    add_dump_sources(p, "an Envoy config dump file, JSON or YAML ('-' for stdin)")
    p.add_argument("--listeners", action="store_true",
                   help="per filter chain: certificate, mTLS and the PeerAuthentication mode (inferred from the "
                        "chains with --file/--envoy), authorization rules")
    p.set_defaults(func=run)
    from . import describe

    describe.register(xsub)  # meshd x describe pod|service
