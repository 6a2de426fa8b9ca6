"""Typed config: what it costs to type the Istio objects of the reference benchmark
configuration (bench/scenario.py), as frozen dataclasses (config/types/, what meshd
uses) or as Istio's API messages compiled with protoc (the alternative issue 17 weighed).

    python bench/typed_config.py [--services 1000] [--repeat 5] [--scale 10]

Prints, for `--services` (and `--scale` times as many):
- the parse gate (YAML document -> validated ConfigObject) per option: documents only
  (no typed reading), dataclasses, protobuf; and the typing step alone (spec -> typed);
- the resident memory of a process holding the store (ConfigStore with every object
  of the scenario), each option in a fresh process, and its growth over documents only.

The protobuf schema below mirrors the messages and fields of Istio's networking and
security v1 API that these four kinds use (names, types and nesting; field numbers in
declaration order, comments left out): enough for json_format.ParseDict to read the
validated documents and for upb to lay the messages out as it would Istio's.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.scenario import Scenario
from controlplane.config import types
from controlplane.config.objects import ConfigObject, Origin
from controlplane.config.parse import parse_document
from controlplane.config.store import ConfigStore

SCHEMA = """
syntax = "proto3";
package bench.istio;
import "google/protobuf/duration.proto";
import "google/protobuf/wrappers.proto";

message StringMatch { oneof match_type { string exact = 1; string prefix = 2; string regex = 3; } }
message PortSelector { uint32 number = 1; }
message Percent { double value = 1; }
message Destination { string host = 1; string subset = 2; PortSelector port = 3; }
message Headers {
  message HeaderOperations { map<string, string> set = 1; map<string, string> add = 2; repeated string remove = 3; }
  HeaderOperations request = 1; HeaderOperations response = 2;
}
message HTTPMatchRequest {
  string name = 1; StringMatch uri = 2; StringMatch scheme = 3; StringMatch method = 4; StringMatch authority = 5;
  map<string, StringMatch> headers = 6; uint32 port = 7; map<string, string> source_labels = 8;
  repeated string gateways = 9; map<string, StringMatch> query_params = 10; bool ignore_uri_case = 11;
  map<string, StringMatch> without_headers = 12; string source_namespace = 13; string stat_prefix = 14;
}
message HTTPRouteDestination { Destination destination = 1; int32 weight = 2; Headers headers = 3; }
message RouteDestination { Destination destination = 1; int32 weight = 2; }
message HTTPRedirect {
  enum RedirectPortSelection { FROM_PROTOCOL_DEFAULT = 0; FROM_REQUEST_PORT = 1; }
  string uri = 1; string authority = 2;
  oneof redirect_port { uint32 port = 3; RedirectPortSelection derive_port = 4; }
  string scheme = 5; uint32 redirect_code = 6;
}
message HTTPBody { oneof specifier { string string = 1; bytes bytes = 2; } }
message HTTPDirectResponse { uint32 status = 1; HTTPBody body = 2; }
message Delegate { string name = 1; string namespace = 2; }
message RegexRewrite { string match = 1; string rewrite = 2; }
message HTTPRewrite { string uri = 1; string authority = 2; RegexRewrite uri_regex_rewrite = 3; }
message HTTPRetry {
  int32 attempts = 1; google.protobuf.Duration per_try_timeout = 2; string retry_on = 3;
  google.protobuf.BoolValue retry_remote_localities = 4; google.protobuf.BoolValue retry_ignore_previous_hosts = 5;
  google.protobuf.Duration backoff = 6;
}
message HTTPFaultInjection {
  message Delay {
    int32 percent = 1;
    oneof http_delay_type { google.protobuf.Duration fixed_delay = 2; google.protobuf.Duration exponential_delay = 3; }
    Percent percentage = 4;
  }
  message Abort {
    oneof error_type { int32 http_status = 1; string grpc_status = 2; string http2_error = 3; }
    Percent percentage = 4;
  }
  Delay delay = 1; Abort abort = 2;
}
message HTTPMirrorPolicy { Destination destination = 1; Percent percentage = 2; }
message CorsPolicy {
  repeated string allow_origin = 1; repeated StringMatch allow_origins = 2; repeated string allow_methods = 3;
  repeated string allow_headers = 4; repeated string expose_headers = 5; google.protobuf.Duration max_age = 6;
  google.protobuf.BoolValue allow_credentials = 7;
  enum UnmatchedPreflights { UNSPECIFIED = 0; FORWARD = 1; IGNORE = 2; }
  UnmatchedPreflights unmatched_preflights = 8;
}
message HTTPRoute {
  string name = 1; repeated HTTPMatchRequest match = 2; repeated HTTPRouteDestination route = 3;
  HTTPRedirect redirect = 4; HTTPDirectResponse direct_response = 5; Delegate delegate = 6; HTTPRewrite rewrite = 7;
  google.protobuf.Duration timeout = 8; HTTPRetry retries = 9; HTTPFaultInjection fault = 10; Destination mirror = 11;
  repeated HTTPMirrorPolicy mirrors = 12; google.protobuf.UInt32Value mirror_percent = 13;
  Percent mirror_percentage = 14; CorsPolicy cors_policy = 15; Headers headers = 16;
}
message L4MatchAttributes {
  repeated string destination_subnets = 1; uint32 port = 2; string source_subnet = 3;
  map<string, string> source_labels = 4; repeated string gateways = 5; string source_namespace = 6;
}
message TLSMatchAttributes {
  repeated string sni_hosts = 1; repeated string destination_subnets = 2; uint32 port = 3;
  map<string, string> source_labels = 4; repeated string gateways = 5; string source_namespace = 6;
}
message TCPRoute { repeated L4MatchAttributes match = 1; repeated RouteDestination route = 2; }
message TLSRoute { repeated TLSMatchAttributes match = 1; repeated RouteDestination route = 2; }
message VirtualService {
  repeated string hosts = 1; repeated string gateways = 2; repeated HTTPRoute http = 3; repeated TLSRoute tls = 4;
  repeated TCPRoute tcp = 5; repeated string export_to = 6;
}

message ConnectionPoolSettings {
  message TCPSettings {
    message TcpKeepalive { uint32 probes = 1; google.protobuf.Duration time = 2; google.protobuf.Duration interval = 3; }
    int32 max_connections = 1; google.protobuf.Duration connect_timeout = 2; TcpKeepalive tcp_keepalive = 3;
    google.protobuf.Duration max_connection_duration = 4; google.protobuf.Duration idle_timeout = 5;
  }
  message HTTPSettings {
    enum H2UpgradePolicy { DEFAULT = 0; DO_NOT_UPGRADE = 1; UPGRADE = 2; }
    int32 http1_max_pending_requests = 1; int32 http2_max_requests = 2; int32 max_requests_per_connection = 3;
    int32 max_retries = 4; google.protobuf.Duration idle_timeout = 5; H2UpgradePolicy h2_upgrade_policy = 6;
    bool use_client_protocol = 7; int32 max_concurrent_streams = 8;
  }
  TCPSettings tcp = 1; HTTPSettings http = 2;
}
message LocalityLoadBalancerSetting {
  message Distribute { string from = 1; map<string, uint32> to = 2; }
  message Failover { string from = 1; string to = 2; }
  repeated Distribute distribute = 1; repeated Failover failover = 2; repeated string failover_priority = 3;
  google.protobuf.BoolValue enabled = 4;
}
message LoadBalancerSettings {
  enum SimpleLB { UNSPECIFIED = 0; LEAST_CONN = 1; RANDOM = 2; PASSTHROUGH = 3; ROUND_ROBIN = 4; LEAST_REQUEST = 5; }
  message ConsistentHashLB {
    message RingHash { uint64 minimum_ring_size = 1; }
    message MagLev { uint64 table_size = 1; }
    message HTTPCookie { string name = 1; string path = 2; google.protobuf.Duration ttl = 3; }
    oneof hash_key {
      string http_header_name = 1; HTTPCookie http_cookie = 2; bool use_source_ip = 3;
      string http_query_parameter_name = 4;
    }
    oneof hash_algorithm { RingHash ring_hash = 5; MagLev maglev = 6; }
    uint64 minimum_ring_size = 7;
  }
  oneof lb_policy { SimpleLB simple = 1; ConsistentHashLB consistent_hash = 2; }
  LocalityLoadBalancerSetting locality_lb_setting = 3; google.protobuf.Duration warmup_duration_secs = 4;
}
message OutlierDetection {
  int32 consecutive_errors = 1; google.protobuf.BoolValue split_external_local_origin_errors = 2;
  google.protobuf.UInt32Value consecutive_local_origin_failures = 3;
  google.protobuf.UInt32Value consecutive_gateway_errors = 4; google.protobuf.UInt32Value consecutive_5xx_errors = 5;
  google.protobuf.Duration interval = 6; google.protobuf.Duration base_ejection_time = 7;
  int32 max_ejection_percent = 8; int32 min_health_percent = 9;
}
message ClientTLSSettings {
  enum TLSmode { DISABLE = 0; SIMPLE = 1; MUTUAL = 2; ISTIO_MUTUAL = 3; }
  TLSmode mode = 1; string client_certificate = 2; string private_key = 3; string ca_certificates = 4;
  string credential_name = 5; repeated string subject_alt_names = 6; string sni = 7;
  google.protobuf.BoolValue insecure_skip_verify = 8; string ca_crl = 9;
}
message TrafficPolicy {
  message PortTrafficPolicy {
    PortSelector port = 1; LoadBalancerSettings load_balancer = 2; ConnectionPoolSettings connection_pool = 3;
    OutlierDetection outlier_detection = 4; ClientTLSSettings tls = 5;
  }
  LoadBalancerSettings load_balancer = 1; ConnectionPoolSettings connection_pool = 2;
  OutlierDetection outlier_detection = 3; ClientTLSSettings tls = 4; repeated PortTrafficPolicy port_level_settings = 5;
}
message Subset { string name = 1; map<string, string> labels = 2; TrafficPolicy traffic_policy = 3; }
message WorkloadSelector { map<string, string> match_labels = 1; }
message DestinationRule {
  string host = 1; TrafficPolicy traffic_policy = 2; repeated Subset subsets = 3; repeated string export_to = 4;
  WorkloadSelector workload_selector = 5;
}

message Port { uint32 number = 1; string protocol = 2; string name = 3; uint32 target_port = 4; }
message ServerTLSSettings {
  enum TLSmode { PASSTHROUGH = 0; SIMPLE = 1; MUTUAL = 2; AUTO_PASSTHROUGH = 3; ISTIO_MUTUAL = 4; OPTIONAL_MUTUAL = 5; }
  enum TLSProtocol { TLS_AUTO = 0; TLSV1_0 = 1; TLSV1_1 = 2; TLSV1_2 = 3; TLSV1_3 = 4; }
  message TLSCertificate { string server_certificate = 1; string private_key = 2; repeated string ca_certificates = 3; }
  bool https_redirect = 1; TLSmode mode = 2; string server_certificate = 3; string private_key = 4;
  string ca_certificates = 5; string ca_crl = 6; string credential_name = 7; repeated string credential_names = 8;
  repeated TLSCertificate tls_certificates = 9; repeated string subject_alt_names = 10;
  repeated string verify_certificate_spki = 11; repeated string verify_certificate_hash = 12;
  TLSProtocol min_protocol_version = 13; TLSProtocol max_protocol_version = 14; repeated string cipher_suites = 15;
}
message Server {
  Port port = 1; string bind = 2; repeated string hosts = 3; ServerTLSSettings tls = 4; string default_endpoint = 5;
  string name = 6;
}
message Gateway { repeated Server servers = 1; map<string, string> selector = 2; }

message PeerAuthentication {
  message MutualTLS { enum Mode { UNSET = 0; DISABLE = 1; PERMISSIVE = 2; STRICT = 3; } Mode mode = 1; }
  WorkloadSelector selector = 1; MutualTLS mtls = 2; map<uint32, MutualTLS> port_level_mtls = 3;
}
"""


def compile_schema(where: Path) -> None:
    """The schema above compiled by protoc (grpcio-tools) into `where`."""
    import grpc_tools
    from grpc_tools import protoc

    (where / "istio_bench.proto").write_text(SCHEMA)
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    rc = protoc.main(["protoc", f"-I{where}", f"-I{include}", f"--python_out={where}", str(where / "istio_bench.proto")])
    if rc != 0:
        raise SystemExit(f"protoc failed ({rc})")


def load_schema(where: Path):
    """The compiled schema, imported as a package would import its generated code."""
    sys.path.insert(0, str(where))
    import istio_bench_pb2

    return istio_bench_pb2


def proto_builders(pb) -> dict:
    from google.protobuf import json_format

    def parser(message) -> Callable[[Any], Any]:
        return lambda spec: json_format.ParseDict(spec, message())

    return {key: parser(getattr(pb, kind)) for key, kind in
            (((g, k), k) for g, k in types.BUILDERS)}


# --- the configuration ---------------------------------------------------------------


def documents(services: int) -> list[tuple[str, list]]:
    """(file name, YAML documents) of the reference scenario scaled to `services`."""
    sc = Scenario(services=services, sidecars=2 * services)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    files = []
    for i in range(services):
        files.append((f"services/{sc.service_name(i)}.yaml", sc.service_yaml(i)))
        files.append((f"endpoints/{sc.service_name(i)}.yaml", sc.endpoints_yaml(i)))
        if sc.routed(i):
            files.append((f"rules/{sc.service_name(i)}.yaml", sc.rules_yaml(i)))
    files.append(("gateway.yaml", sc.gateway_yaml()))
    return [(name, list(yaml.load_all(text, Loader=loader))) for name, text in files]


def parse_all(files: list[tuple[str, list]]) -> list[tuple[str, list]]:
    return [(name, [parse_document(d, Origin("file", name, i)) for i, d in enumerate(docs)]) for name, docs in files]


def use(option: str, schema: Path) -> None:
    """Make ConfigObject build `option`'s typed reading: none, dataclasses or protobuf."""
    if option == "dataclasses":
        return
    builders = {} if option == "none" else proto_builders(load_schema(schema))
    types.BUILDERS.clear()
    types.BUILDERS.update(builders)


def rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


# --- the figures ---------------------------------------------------------------------


def child(option: str, services: int, schema: Path) -> dict:
    """In a fresh process: the store of the scenario holding `option`'s typed objects."""
    use(option, schema)
    gc.collect()
    before = rss_kb()
    files = documents(services)
    store = ConfigStore(logger=_Quiet())
    for name, parsed in parse_all(files):
        store.replace_location(name, parsed)
    del files
    gc.collect()
    return {"rss_kb": rss_kb(), "store_kb": rss_kb() - before, "objects": len(store.snapshot())}


def _served(parsed: object) -> ConfigObject:
    """The scenario's documents are all served config: anything else is a broken scenario."""
    if not isinstance(parsed, ConfigObject):
        raise ValueError(f"the scenario wrote a document the parse gate does not serve: {parsed}")
    return parsed


def child_objects(option: str, services: int, schema: Path) -> dict:
    """In a fresh process that parsed only the scenario's Istio documents (so little freed
    memory is left to reuse): the memory one typed object holds, from the RSS growth of
    holding about HELD of them (copies of the scenario's)."""
    use(option, schema)
    sc = Scenario(services=services, sidecars=2 * services)
    texts = [sc.rules_yaml(i) for i in range(services) if sc.routed(i)] + [sc.gateway_yaml()]
    docs = [d for t in texts for d in yaml.safe_load_all(t) if d.get("kind") != "Service"]
    specs = [(o.group, o.kind, o.spec) for o in (_served(parse_document(d, Origin("file", "x"))) for d in docs)]
    del docs, texts
    gc.collect()
    before = rss_kb()
    copies = max(1, HELD // len(specs))
    held = [[types.build(g, k, spec) for g, k, spec in specs] for _ in range(copies)]
    gc.collect()
    return {"per_object_b": (rss_kb() - before) * 1024 / (len(held) * len(specs)), "copies": copies}


HELD = 50_000


class _Quiet:
    def __getattr__(self, name: str):
        return lambda *a, **kw: None


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Best of `repeat` wall times, in milliseconds (the least disturbed run)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def measure(services: int, repeat: int, schema: Path) -> None:
    pb = load_schema(schema)
    files = documents(services)
    specs = [(o.group, o.kind, o.spec) for _, parsed in parse_all(files) for o in parsed
             if isinstance(o, ConfigObject) and (o.group, o.kind) in types.BUILDERS]
    data_builders = dict(types.BUILDERS)
    proto = proto_builders(pb)
    print(f"\n{services} services: {sum(len(d) for _, d in files)} documents, {len(specs)} Istio objects "
          f"({', '.join(f'{n} {k}' for k, n in _count(specs).items())})")

    def gate(builders: dict) -> Callable[[], Any]:
        def run() -> None:
            types.BUILDERS.clear()
            types.BUILDERS.update(builders)
            parse_all(files)
        return run

    rows = [("documents only", gate({})), ("dataclasses", gate(data_builders)), ("protobuf", gate(proto))]
    gate_ms = {name: timed(fn, repeat) for name, fn in rows}
    types.BUILDERS.clear()
    types.BUILDERS.update(data_builders)
    typing_ms = {
        "dataclasses": timed(lambda: [data_builders[(g, k)](s) for g, k, s in specs], repeat),
        "protobuf": timed(lambda: [proto[(g, k)](s) for g, k, s in specs], repeat),
    }
    print(f"  parse gate, all documents (best of {repeat}):")
    for name, ms in gate_ms.items():
        print(f"    {name:<15} {ms:9.1f} ms")
    print("  typing the Istio specs alone:")
    for name, ms in typing_ms.items():
        print(f"    {name:<15} {ms:9.2f} ms  ({ms * 1000 / max(len(specs), 1):.1f} us per object)")

    print("  store resident memory (fresh process each, median of 3):")
    base = None
    for option in ("none", "dataclasses", "protobuf"):
        runs = [_run_child(option, services, schema) for _ in range(3)]
        if option != "none":
            runs = [{**r, **_run_child(option, services, schema, "--objects")} for r in runs]
        rss = statistics.median(r["rss_kb"] for r in runs)
        store = statistics.median(r["store_kb"] for r in runs)
        per_object = statistics.median(r.get("per_object_b", 0) for r in runs)
        copies = runs[0].get("copies", 0)
        base = store if base is None else base
        label = "documents only" if option == "none" else option
        print(f"    {label:<15} RSS {rss / 1024:7.1f} MiB, store {store / 1024:6.1f} MiB"
              + ("" if option == "none" else f" ({(store - base) / 1024:+.2f} MiB over documents only);"
                 f" one typed object holds {per_object:,.0f} B ({copies} copies of each held)"))


def _count(specs) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, kind, _ in specs:
        out[kind] = out.get(kind, 0) + 1
    return out


def _run_child(option: str, services: int, schema: Path, *more: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", option, "--services", str(services),
                          "--schema", str(schema), *more], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--scale", type=int, default=10, help="also measure this many times the services (0: not)")
    ap.add_argument("--child", choices=("none", "dataclasses", "protobuf"), help=argparse.SUPPRESS)
    ap.add_argument("--schema", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--objects", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run = child_objects if args.objects else child
        print(json.dumps(run(args.child, args.services, args.schema)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        compile_schema(Path(tmp))
        for services in (args.services, args.services * args.scale) if args.scale else (args.services,):
            measure(services, args.repeat, Path(tmp))


if __name__ == "__main__":
    main()
