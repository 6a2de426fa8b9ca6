"""gRPC for the mesh conformance tests' GRPCRoute cases: a server answering any method with
what echo-advanced's gRPC echo reports (the request's metadata, namespace, pod), and a client
that calls a Service from inside a pod.

    python grpc_echo.py serve --pod echo-v1-0 --namespace ns --port 7070
    python grpc_echo.py call --target 10.250.1.9:7070 --authority echo:7070 [--count 100] [-H k=v ...]

`call` prints one JSON line per reply ({"error": ...} for a failed call). Messages are raw
bytes (no generated code): the route matches on the method path and metadata only.
"""
from __future__ import annotations

import argparse
import json
import sys
from concurrent import futures

import grpc

METHOD = "/grpc.testing.EchoTestService/Echo"


def serve(pod: str, namespace: str, port: int) -> int:
    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        headers: dict[str, list[str]] = {}
        for k, v in context.invocation_metadata():
            headers.setdefault(k, []).append(v)
        return json.dumps({"headers": headers, "namespace": namespace, "pod": pod}).encode()

    class Any(grpc.GenericRpcHandler):
        def service(self, details):
            return grpc.unary_unary_rpc_method_handler(echo)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[Any()])
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    print("READY", flush=True)
    server.wait_for_termination()
    return 0


def call(target: str, authority: str, count: int, headers: list[str]) -> int:
    metadata = [tuple(h.split("=", 1)) for h in headers]
    with grpc.insecure_channel(target, options=[("grpc.default_authority", authority)]) as ch:
        stub = ch.unary_unary(METHOD)
        for _ in range(count):
            try:
                print(stub(b"", metadata=metadata, timeout=5).decode(), flush=True)
            except grpc.RpcError as e:
                print(json.dumps({"error": f"{e.code().name}: {e.details()}"}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--pod", required=True)
    s.add_argument("--namespace", required=True)
    s.add_argument("--port", type=int, default=7070)
    c = sub.add_parser("call")
    c.add_argument("--target", required=True)
    c.add_argument("--authority", required=True)
    c.add_argument("--count", type=int, default=1)
    c.add_argument("-H", dest="headers", action="append", default=[])
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        return serve(args.pod, args.namespace, args.port)
    return call(args.target, args.authority, args.count, args.headers)


if __name__ == "__main__":
    sys.exit(main())
