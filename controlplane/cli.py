"""The `meshd` command: serve, bootstrap, token."""
from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from . import names

# The bundled example, shipped in the package (deploy/examples links here for the walk-through).
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
DEFAULT_TTL = "24h"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """Go-style durations: `24h`, `90m`, `1h30m`, `45s` (also `2d`); a bare number is seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    else:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise argparse.ArgumentTypeError(f"invalid duration {text!r} (examples: 24h, 90m, 1h30m, 45s)")
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be positive")
    return timedelta(seconds=seconds)


def _seconds(text: str) -> float:
    """Seconds as a number (`0.1`) or a Go-style duration (`100ms`, `10s`); 0 allowed."""
    if text.strip() in ("0", "0s", "0.0"):
        return 0.0
    return parse_duration(text).total_seconds()


def _ca_dir(value: str | None) -> Path:
    from .security.cadir import default_ca_dir

    return Path(value).expanduser() if value else default_ca_dir()


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from .app import ServeOptions, serve
    from .logging import configure
    from .state import meshd_home

    configure(args.log_level, args.log_format)
    kube = bool(args.kubeconfig or args.in_cluster)
    # With a Kubernetes source the bundled example is not loaded unless asked for.
    config_dir = Path(args.config_dir) if args.config_dir else (None if kube else EXAMPLES_DIR)
    if config_dir is not None and not config_dir.is_dir():
        print(f"meshd: config directory {config_dir} does not exist", file=sys.stderr)
        return 2
    from ca.identity import check_trust_domain
    from ca.issuer import MAX_WORKLOAD_TTL

    try:
        check_trust_domain(args.trust_domain)
    except ValueError as e:
        print(f"meshd: --trust-domain: {e}", file=sys.stderr)
        return 2
    if args.workload_cert_ttl > MAX_WORKLOAD_TTL:
        print(f"meshd: --workload-cert-ttl {args.workload_cert_ttl} is above the maximum {MAX_WORKLOAD_TTL}", file=sys.stderr)
        return 2
    root_namespace = args.root_namespace
    if args.mesh_config:
        from .sources.meshconfig import MeshConfigSourceError, read_file

        try:  # now, so that a bad file is one line before anything starts
            root_namespace = read_file(args.mesh_config, args.root_namespace)[0].root_namespace
        except MeshConfigSourceError as e:
            print(f"meshd: --mesh-config {e}", file=sys.stderr)
            return 2
    opts = ServeOptions(
        config_dir=config_dir,
        xds_port=args.xds_port,
        monitoring_port=args.monitoring_port,
        listen_address=args.listen_address,
        poll_interval=args.poll_interval,
        debounce_after=args.debounce_after,
        debounce_max=args.debounce_max,
        eds_debounce_after=args.eds_debounce_after,
        debounce_isolated=args.debounce_isolated,
        max_pushes_in_flight=args.max_pushes_in_flight,
        write_timeout=args.push_write_timeout,
        ca_dir=_ca_dir(args.ca_dir),
        ca_dir_default=not args.ca_dir,
        state_dir=meshd_home(),
        trust_domain=args.trust_domain,
        workload_cert_ttl=args.workload_cert_ttl,
        rotation_ratio=args.rotation_ratio,
        workload_key_type=args.workload_key_type,
        ca_mtls_port=args.ca_mtls_port,
        ca_poll_interval=args.ca_poll_interval,
        secure_xds_port=args.secure_xds_port,
        root_namespace=root_namespace,
        mesh_config_file=args.mesh_config,
        jwks_refresh_interval=args.jwks_refresh_interval.total_seconds(),
        workload_entry_grace_period=args.workload_entry_grace_period,
        debug_access=args.debug_access,
        kubeconfig=args.kubeconfig,
        in_cluster=args.in_cluster,
        namespaces=[n for n in (args.namespaces or "").split(",") if n] or None,
        label_selector=args.label_selector,
        watch_secrets=args.watch_secrets,
        webhook_port=0 if args.worker_of else args.webhook_port,  # the main process serves the webhooks
        kube_prefetch=getattr(args, "kube_prefetch", None),
    )
    if kube:
        from .kube.options import options_from_args

        try:
            opts.cluster = options_from_args(args)
        except ValueError as e:
            print(f"meshd: {e}", file=sys.stderr)
            return 2
    from ca import CAError

    from .ports import StartupError
    from .server import workers
    from .sources.meshconfig import MeshConfigSourceError

    children = []
    if args.workers > 1 or args.worker_of:
        opts.share_ports = True  # every process binds the xDS ports (SO_REUSEPORT)
        if args.worker_of:
            workers.die_with_parent()
        else:
            children = workers.start_workers(args.workers, sys.argv[1:])
    try:
        asyncio.run(serve(opts))
    except KeyboardInterrupt:
        pass
    except (CAError, OSError, StartupError) as e:  # an unusable CA directory, a port in use: one line
        print(f"meshd: {e}", file=sys.stderr)
        return 2
    except MeshConfigSourceError as e:  # the cluster's mesh config is invalid (a file was checked above)
        print(f"meshd: mesh config {e}", file=sys.stderr)
        return 2
    finally:
        workers.stop_workers(children)
    return 0


def _quiet_logs() -> None:
    """Commands that print a result on stdout: CA log events go to stderr, warnings only."""
    from .logging import configure

    configure("warning")


def _yaml(doc) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True  # no &id001 anchors in a file people read

    def text(dumper: yaml.SafeDumper, value: str):
        # PEM blocks read best as literal blocks, exactly as they appear in the file.
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump(doc, Dumper=Dumper, sort_keys=False)


def _token(args: argparse.Namespace) -> int:
    from ca import CAError

    _quiet_logs()

    from .security.cadir import open_tokens

    try:
        token = open_tokens(_ca_dir(args.ca_dir)).issue(args.namespace, args.service_account, ttl=args.ttl)
    except (CAError, ValueError, OSError) as e:
        print(f"meshd token: {e}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _bootstrap_tls(args: argparse.Namespace):
    """XdsTls for the flags, or None for a plaintext bootstrap (see the command's help)."""
    from .bootstrap import XDS_SERVER_NAME, xds_tls_from_ca_dir, xds_tls_from_files

    server_name = args.xds_server_name or XDS_SERVER_NAME
    if args.root_cert:
        if args.ca_dir:
            raise ValueError("give either --ca-dir or --root-cert/--token, not both")
        if args.token_path:
            return _rotating_token_tls(args, xds_tls_from_files(Path(args.root_cert), None, server_name))
        return xds_tls_from_files(Path(args.root_cert), Path(args.token) if args.token else None, server_name)
    if args.token or args.token_path:
        raise ValueError(f"{'--token' if args.token else '--token-path'} needs --root-cert (the root that verifies "
                         "meshd's certificate)")
    if args.ca_dir or args.secure:
        return xds_tls_from_ca_dir(_ca_dir(args.ca_dir), args.namespace, args.service_account, args.token_ttl, server_name)
    return None


def _rotating_token_tls(args: argparse.Namespace, tls):
    """--token-path: Envoy reads the token file at every (re)connection (I2's XdsTls.token_path,
    as injected pods do), so a token rotated in place keeps the proxy connecting. Checked now
    as the pod's init step checks it; kept as an absolute path but with its symlinks (a
    projected token's `..data` link moves when the kubelet rotates it)."""
    import dataclasses
    import os

    from .podinit.downward import _check_token_file

    if args.token:
        raise ValueError("give either --token (copied into the bootstrap) or --token-path (re-read), not both")
    _check_token_file(Path(args.token_path))
    return dataclasses.replace(tls, token_path=os.path.abspath(args.token_path))


def _workload_group_args(args: argparse.Namespace) -> dict[str, str]:
    """--workload-group FILE: the group's namespace, service account and name fill the
    flags not given (a flag that contradicts the group is an error); the group's labels,
    returned, go under --labels. Without it, the defaults of --namespace/--pod/
    --service-account."""
    if not args.workload_group:
        args.namespace = args.namespace or "istio-system"
        args.pod = args.pod or "istio-ingressgateway-0"
        args.service_account = args.service_account or "default"
        return {}
    from .bootstrap import read_workload_group

    if args.type != "sidecar":
        raise ValueError("--workload-group: a WorkloadGroup member is a sidecar (--type sidecar)")
    m = read_workload_group(Path(args.workload_group))
    for flag, given, want in (("--namespace", args.namespace, m.namespace),
                              ("--service-account", args.service_account, m.service_account),
                              ("--auto-register-group", args.auto_register_group, m.group)):
        if given and given != want:
            raise ValueError(f"{flag} {given!r} contradicts WorkloadGroup {m.namespace}/{m.group} ({want!r})")
    args.namespace, args.service_account, args.auto_register_group = m.namespace, m.service_account, m.group
    import socket

    args.pod = args.pod or socket.gethostname().split(".")[0]  # istio-agent's POD_NAME on a VM: the host name
    return m.labels


def bootstrap_format(output: str | None) -> str:
    """"yaml" for a .yaml/.yml file, else "json": how Envoy's `-c` reads the file (by its
    extension, JSON for any other), and what istiod's bootstrap is (stdout too)."""
    return "yaml" if output and Path(output).suffix.lower() in (".yaml", ".yml") else "json"


def _bootstrap_proxy_config(args: argparse.Namespace):
    """The mesh config's defaultConfig (--mesh-config), or None; notes what has no effect."""
    if not args.mesh_config:
        return None
    from .proxy_settings import ignored_metadata
    from .sources.meshconfig import read_file

    pc = read_file(args.mesh_config, names.ROOT_NAMESPACE)[0].default_config
    for what in [f"defaultConfig.{f}" for f in pc.unread] + [f"defaultConfig.proxyMetadata.{k}" for k in ignored_metadata(pc)]:
        print(f"meshd bootstrap: {args.mesh_config}: {what} has no effect (pilot-agent's; meshd has no agent)",
              file=sys.stderr)
    return pc


def _bootstrap(args: argparse.Namespace) -> int:
    from ca import CAError

    from .bootstrap import BootstrapParams, build_bootstrap, parse_labels
    from .model.meshconfig import ProxyConfig

    _quiet_logs()
    try:
        proxy_config = _bootstrap_proxy_config(args)
        if args.envoy_args:
            from .proxy_settings import envoy_args

            print(" ".join(envoy_args(proxy_config or ProxyConfig())))
            return 0
        group_labels = _workload_group_args(args)
        tls = _bootstrap_tls(args)
        if tls is None and args.auto_register_group:
            raise ValueError("joining a WorkloadGroup needs the secure xDS port (--ca-dir, --secure or --root-cert/"
                             "--token): meshd registers only a proxy whose identity it verified (docs/vm.md)")
        default_port = names.PORT_XDS_SECURE if tls is not None else names.PORT_XDS
        params = BootstrapParams(
            proxy_type=args.type,
            namespace=args.namespace,
            pod=args.pod,
            ip=args.ip,
            xds_address=args.xds_address or f"127.0.0.1:{default_port}",
            labels={**group_labels, **parse_labels(args.labels or "")},
            admin_port=args.admin_port,
            service_account=args.service_account,
            stats_port=args.stats_port,
            health_port=args.health_port,
            xds_transport=args.xds_transport,
            tls=tls,
            locality=args.locality or "",
            auto_register_group=args.auto_register_group or "",
            workload_name=args.workload_name or "",
            network=args.network or "",
            metrics_flush_interval=args.metrics_flush_interval.total_seconds() if args.metrics_service else 0.0,
            proxy_config=proxy_config,
        )
        doc = build_bootstrap(params)
        from .proxy_settings import fetches_bootstrap_patches

        if args.fetch_envoy_filters or fetches_bootstrap_patches(proxy_config):
            from .bootstrap_patches import fetch, merge_into

            doc = merge_into(doc, *fetch(doc, params.xds_address, tls, args.fetch_timeout.total_seconds()))
    except (ValueError, CAError, OSError) as e:
        print(f"meshd bootstrap: {e}", file=sys.stderr)
        return 2
    if tls is None and args.type == "sidecar":
        print("meshd bootstrap: plaintext xDS: meshd will not send this sidecar a workload certificate "
              "(mTLS needs --ca-dir or --root-cert/--token)", file=sys.stderr)
    text = _yaml(doc) if bootstrap_format(args.output) == "yaml" else json.dumps(doc, indent=2) + "\n"
    if args.output:
        if tls is not None and tls.token:
            from ca import write_private

            write_private(Path(args.output), text.encode())  # holds a bearer token: 0600
        else:
            Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _add_kube_source_flags(p: argparse.ArgumentParser) -> None:
    """The `meshd serve` flags that decide what the Kubernetes source lists (and a few
    around them, to keep --help's order)."""
    p.add_argument("--kubeconfig", help="follow a Kubernetes cluster through this kubeconfig")
    p.add_argument("--in-cluster", action="store_true", help="follow the cluster meshd runs in (service account)")
    p.add_argument("--namespaces", help="only watch these namespaces (comma separated; include the root namespace)")
    p.add_argument("--label-selector", help="only watch objects with these labels")
    p.add_argument("--watch-secrets", action="store_true", help="also watch TLS Secrets (gateway credentials)")
    p.add_argument("--webhook-port", type=int, default=names.PORT_WEBHOOK,
                   help="HTTPS admission webhooks /inject and /validate in Kubernetes mode (default %(default)s, as istiod); 0: none (docs/webhooks.md)")
    p.add_argument("--debug-access", choices=["localhost", "authenticated", "open"], default="localhost",
                   help="who may read /debug on the monitoring port: loopback callers only (default), also callers "
                        "with a root-namespace token (authenticated), or anyone (open)")
    p.add_argument("--root-namespace", default=names.ROOT_NAMESPACE,
                   help="namespace whose selector-less policies apply mesh-wide (default %(default)s); "
                        "a mesh config's rootNamespace takes precedence")
    p.add_argument("--mesh-config", metavar="FILE",
                   help="Istio's MeshConfig YAML (the `mesh` key of ConfigMap istio, or that whole ConfigMap), "
                        "watched: changes apply live. Without it, in Kubernetes mode, ConfigMap istio of the root "
                        "namespace is watched (docs/mesh-config.md)")


def _start_kube_prefetch(argv: list[str]):
    """`meshd serve` in Kubernetes mode: the initial lists are asked for now, by a child
    process that also parses them, while this one imports the rest of meshd
    (kube/prefetch.py). Read with the same flag definitions as the serve command, but
    never a word of its own: flags it cannot read (an abbreviation, a bad value) only mean
    no prefetch, and `serve` reports them."""
    class Quiet(argparse.ArgumentParser):
        def error(self, message: str):
            raise ValueError(message)

    p = Quiet(add_help=False, allow_abbrev=False)
    _add_kube_source_flags(p)
    p.add_argument("--worker-of", type=int, default=0)
    try:
        args, _ = p.parse_known_args(argv[1:])
    except (ValueError, argparse.ArgumentError):
        return None
    if not (args.kubeconfig or args.in_cluster):
        return None
    from .kube.prefetch import Prefetch, PrefetchSettings
    from .kube.resources import INJECTOR_CONFIGMAP_NAME, MESH_CONFIGMAP_NAME

    prefetch = Prefetch.start_in_child(PrefetchSettings(
        kubeconfig=args.kubeconfig, namespaces=[n for n in (args.namespaces or "").split(",") if n] or None,
        label_selector=args.label_selector, watch_secrets=args.watch_secrets, raw_namespace=args.root_namespace,
        # as app.py watches them: ConfigMap istio unless --mesh-config; the injector's with webhooks
        raw_maps=(() if args.mesh_config else (MESH_CONFIGMAP_NAME,))
        + ((INJECTOR_CONFIGMAP_NAME,) if args.webhook_port and not args.worker_of else ()),
    ))
    prefetch.enable_parsing()  # the parse gate imported here (the child's lists are unpickled as its types)
    return prefetch


class _VersionAction(argparse.Action):
    """--version, its answer looked up only when asked (argparse's "version" action takes
    the text when the parser is built, at every start)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show program's version number and exit"):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from .version import meshd_version

        print(f"meshd {meshd_version()}")  # on stdout, as argparse's own version action
        parser.exit()


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """meshd's command line; `only="serve"`: the serve command alone (what `meshd serve`
    parses with: the same flags, help and errors, without importing every other command's
    modules at each start)."""
    p = argparse.ArgumentParser(prog="meshd", description="xDS control plane for Envoy speaking Istio's config API")
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the control plane")
    s.add_argument("--config-dir", help=f"directory of Istio/Kubernetes YAML (default: the bundled example, {EXAMPLES_DIR})")
    s.add_argument("--xds-port", type=int, default=names.PORT_XDS, help="plaintext ADS port (default %(default)s)")
    s.add_argument("--monitoring-port", type=int, default=names.PORT_MONITORING, help="/ready and /metrics (default %(default)s)")
    s.add_argument("--listen-address", default="0.0.0.0", help="address the servers bind (default %(default)s)")
    s.add_argument("--poll-interval", type=float, default=0.2, help="seconds between config directory scans")
    s.add_argument("--debounce-after", type=_seconds, default=0.1,
                   help="quiet time merged into one push: a change is pushed once no other arrived for this long "
                        "(seconds or a duration such as 100ms; default 100ms)")
    s.add_argument("--eds-debounce-after", type=_seconds, default=0.01,
                   help="quiet time of a push of endpoint changes only (EndpointSlices, Pods, Nodes): "
                        "shorter than --debounce-after, as such a push is small (default 10ms)")
    s.add_argument("--debounce-isolated", type=_seconds, default=0.01,
                   help="quiet time of an isolated change (the first after --debounce-after of quiet): pushed once "
                        "no other arrived for this long, else the window waits --debounce-after as usual "
                        "(default 10ms; --debounce-isolated equal to --debounce-after: istiod's trailing debounce)")
    s.add_argument("--debounce-max", type=_seconds, default=10.0,
                   help="longest a change waits for quiet before it is pushed anyway (default 10s)")
    s.add_argument("--max-pushes-in-flight", type=int, default=100,
                   help="responses written to proxies at once; the others wait their turn (default %(default)s)")
    s.add_argument("--push-write-timeout", type=_seconds, default=30.0,
                   help="a proxy whose stream accepts no data for this long is disconnected (it reconnects; "
                        "default 30s, 0 to wait forever)")
    s.add_argument("--secure-xds-port", type=int, default=names.PORT_XDS_SECURE,
                   help="ADS over TLS with bearer-token authentication; the only port that sends workload keys "
                        "(default %(default)s, 0 to disable)")
    s.add_argument("--ca-dir", help="the CA's directory: root created there on first start and reused after "
                                    "(default $MESHD_HOME/ca, else ~/.meshd/ca), or Istio's cacerts files (plug-in CA); "
                                    "watched for `meshd ca rotate-root`; the trust bundle is <ca-dir>/trust-bundle.pem. "
                                    "With --kubeconfig/--in-cluster the CA lives in the cluster (Secret cacerts or "
                                    "istio-ca-secret) and no default directory is read; a --ca-dir holding a CA is "
                                    "offered to the cluster as its plug-in CA (docs/kubernetes.md)")
    s.add_argument("--trust-domain", default=names.TRUST_DOMAIN, help="SPIFFE trust domain (default %(default)s)")
    _add_kube_source_flags(s)  # --kubeconfig ... --mesh-config (also read early: _start_kube_prefetch)
    s.add_argument("--jwks-refresh-interval", type=parse_duration, default="20m",
                   help="how often the key sets of RequestAuthentications' jwksUri are fetched again "
                        "(istiod's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL; default %(default)s)")
    s.add_argument("--workload-entry-grace-period", type=_seconds, default=10.0,
                   help="how long a WorkloadEntry auto-registered for a WorkloadGroup member outlives the proxy's "
                        "connection before it is deleted (istiod's PILOT_WORKLOAD_ENTRY_GRACE_PERIOD; default 10s; "
                        "docs/vm.md)")
    s.add_argument("--workload-cert-ttl", type=parse_duration, default=DEFAULT_TTL,
                   help="lifetime of workload certificates (default %(default)s, at most 90d)")
    from .commands.ca import add_serve_flags

    add_serve_flags(s)  # --rotation-ratio, --workload-key-type, --ca-mtls-port, --ca-poll-interval
    from .kube.options import add_serve_flags as add_cluster_flags

    add_cluster_flags(s, parse_duration)  # --leader-elect, --leader-election-namespace/-id, --leader-lease-duration, ...
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--log-format", default="console", choices=["console", "json"])
    s.add_argument("--workers", type=int, default=1,
                   help="processes serving the xDS ports (SO_REUSEPORT; each reads the config itself; "
                        "monitoring and debug views are the first one's) (default %(default)s)")
    s.add_argument("--worker-of", type=int, default=0, help=argparse.SUPPRESS)
    s.set_defaults(func=_serve)
    if only == "serve":
        return p

    b = sub.add_parser(
        "bootstrap", help="print an Envoy bootstrap that connects to meshd",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Write an Envoy bootstrap with Istio's node id and metadata.

Transport: with --ca-dir (or --secure, which uses the default CA directory) or with
--root-cert [--token], the bootstrap speaks TLS to meshd's secure xDS port (default
address 127.0.0.1:15012), verifies meshd as istiod.istio-system.svc against the root,
and authenticates with the token (minted from the CA directory's key for
--namespace/--service-account, or read from --token). Only such a proxy receives its
workload certificate (SDS `default`), so sidecars need it for mTLS. Without any of
these flags the bootstrap is plaintext (default address 127.0.0.1:15010).

The root certificate and token are copied into the bootstrap; a bootstrap with a
token is written with mode 0600: make it readable by the proxy's user (Envoy runs as
UID 1337 in a pod), e.g. chown 1337 FILE.""",
    )
    b.add_argument("--type", choices=["router", "sidecar"], default="router")
    b.add_argument("--namespace", help="the proxy's namespace (default istio-system, or the --workload-group's)")
    b.add_argument("--pod", help="the pod (or VM) name in the node id (default istio-ingressgateway-0, or the host "
                                 "name with --workload-group)")
    b.add_argument("--ip", default="127.0.0.1")
    b.add_argument("--labels", default="", help="pod labels, k=v,k2=v2 (a gateway needs the ones its Gateway selects)")
    b.add_argument("--service-account", help="default: default, or the --workload-group template's")
    b.add_argument("--workload-group", metavar="FILE",
                   help="a VM joining the mesh (docs/vm.md): the WorkloadGroup YAML it is a member of; sets "
                        "AUTO_REGISTER_GROUP, the namespace, the service account and the labels from it, so meshd "
                        "registers the proxy as a WorkloadEntry while it is connected")
    b.add_argument("--auto-register-group", help="node metadata AUTO_REGISTER_GROUP without a --workload-group file: "
                                                 "the WorkloadGroup (of --namespace) the proxy joins")
    b.add_argument("--workload-name", help="node metadata WORKLOAD_NAME (default: the app label, else --pod)")
    b.add_argument("--network", help="node metadata NETWORK: the network the proxy is on")
    b.add_argument("--locality", help="where the proxy runs, region/zone/subzone (Envoy's node.locality); meshd "
                                       "orders endpoints by it when locality load balancing applies. Topology labels "
                                       "in --labels (topology.kubernetes.io/region, ...) win over it, as in istiod")
    b.add_argument("--xds-address", help="meshd's ADS address host:port (default 127.0.0.1:15012 with TLS, "
                                          "127.0.0.1:15010 without)")
    b.add_argument("--ca-dir", help="meshd's CA directory: TLS to the secure port, roots from <ca-dir>/trust-bundle.pem, "
                                    "a token minted for --namespace/--service-account")
    b.add_argument("--secure", action="store_true", help="TLS with the default CA directory ($MESHD_HOME/ca or ~/.meshd/ca)")
    b.add_argument("--root-cert", help="TLS with this root certificate file (instead of --ca-dir)")
    b.add_argument("--token", help="with --root-cert: file holding the bearer token (from `meshd token`)")
    b.add_argument("--token-path", metavar="FILE",
                   help="with --root-cert: a token file Envoy reads again at every (re)connection instead of a copy "
                        "in the bootstrap, for a token rotated in place (a VM's renewed service-account token); "
                        "must be readable by Envoy's user (docs/vm.md)")
    b.add_argument("--token-ttl", type=parse_duration, default=DEFAULT_TTL,
                   help="lifetime of the token minted with --ca-dir (default %(default)s); meshd checks it "
                        "when the proxy (re)connects")
    b.add_argument("--xds-server-name", help="SNI and expected DNS SAN of meshd's certificate (default istiod.istio-system.svc)")
    b.add_argument("--xds-transport", choices=["sotw", "delta"], default="sotw",
                   help="xDS protocol: sotw (state of the world, api_type GRPC) or delta (incremental, "
                        "api_type DELTA_GRPC: only changed resources are sent) (default %(default)s)")
    b.add_argument("--admin-port", type=int, default=names.PORT_ENVOY_ADMIN)
    b.add_argument("--stats-port", type=int, default=names.PORT_STATS, help="Prometheus listener port, 0 for none")
    b.add_argument("--health-port", type=int, default=names.PORT_HEALTH, help="readiness listener port, 0 for none")
    b.add_argument("--metrics-service", action="store_true",
                   help="stream Envoy's counters to meshd's metrics service on the secure xDS port (needs TLS): the "
                        "traffic on meshd's /ui/ page and istio_requests_total on its /metrics (docs/ui.md)")
    b.add_argument("--metrics-flush-interval", type=parse_duration, default="10s",
                   help="with --metrics-service: how often Envoy sends its counters (default %(default)s)")
    b.add_argument("--mesh-config", metavar="FILE",
                   help="Istio's MeshConfig YAML (as for `meshd serve`): its defaultConfig (ProxyConfig) sets the "
                        "stats matcher and node metadata (docs/mesh-config.md)")
    b.add_argument("--fetch-envoy-filters", action="store_true",
                   help="ask meshd (at --xds-address, as this proxy, with its credentials) for the EnvoyFilter "
                        "BOOTSTRAP patches selecting the proxy and merge them in; a failed fetch is an error; "
                        "also on when --mesh-config's defaultConfig.proxyMetadata sets BOOTSTRAP_XDS_AGENT, Istio's "
                        "switch (docs/envoyfilter.md)")
    b.add_argument("--fetch-timeout", type=parse_duration, default="15s",
                   help="with --fetch-envoy-filters: how long to wait for meshd's answer (default %(default)s)")
    b.add_argument("--envoy-args", action="store_true",
                   help="print the Envoy command-line flags for the mesh config's defaultConfig (--concurrency, "
                        "--drain-time-s, as pilot-agent starts Envoy) instead of the bootstrap")
    b.add_argument("--output", "-o", help="write to this file instead of stdout: YAML for a .yaml/.yml name, JSON "
                                          "otherwise (Envoy reads a file by its extension, and any other name as "
                                          "JSON: istio-agent's envoy-rev.json); stdout gets JSON")
    b.set_defaults(func=_bootstrap)

    t = sub.add_parser("token", help="print a service account token (file mode stand-in for a Kubernetes projected token)")
    t.add_argument("--namespace", required=True)
    t.add_argument("--service-account", required=True)
    t.add_argument("--ttl", type=parse_duration, default=DEFAULT_TTL, help="lifetime (default %(default)s)")
    t.add_argument("--ca-dir", help="meshd's CA directory holding token-key.pem (default $MESHD_HOME/ca, else ~/.meshd/ca)")
    t.set_defaults(func=_token)

    from .commands import register_all

    register_all(sub)  # proxy-config, proxy-status, analyze, validate
    from .commands import ca as ca_command

    ca_command.register(sub)  # meshd ca rotate-root | status
    from .commands import crds as crds_command

    crds_command.register(sub)  # meshd crds
    from .commands import pod_init as pod_init_command

    pod_init_command.register(sub)  # meshd pod-init (an injected pod's init container)
    from .commands import authz as authz_command

    authz_command.register(sub)  # meshd experimental|x authz check
    from .commands import kube_inject as kube_inject_command

    kube_inject_command.register(sub)  # meshd kube-inject (the sidecar injected offline)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    prefetch = None
    if argv[:1] == ["serve"]:
        from . import startup

        startup.begin()  # until the server is ready and warm (app.py)
        prefetch = _start_kube_prefetch(argv)  # before the heavy imports
        args, rest = parser(only="serve").parse_known_args(argv)
        if rest:  # the error as the whole command line gives it
            args = parser().parse_args(argv)
    else:
        args = parser().parse_args(argv)
    args.kube_prefetch = prefetch
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
