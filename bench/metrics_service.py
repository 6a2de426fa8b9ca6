"""What meshd's metrics service costs: 2,000 simulated proxies streaming their counters
every 10 s (Envoy's `envoy.stat_sinks.metrics_service`, as `meshd bootstrap
--metrics-service` configures it), against the same meshd idle, in one run.

meshd runs as its own process (secure port, a CA directory); the fleet runs in this
process on its own event loop: per proxy one StreamMetrics stream over TLS with a bearer
token (100 proxies per HTTP/2 connection), a first message with an Envoy node of about
the size Envoy sends, then a report per interval shaped like a sidecar's (`--clusters`
outbound clusters of 12 counters each, two inbound ports, the server's other stats: about
400 families, 30 KB). Reports are serialized once per tick and shared: meshd's cost does
not depend on the numbers.

Phases, each `--window` seconds, meshd's CPU (utime+stime from /proc) and RSS sampled:
  idle      meshd with its config, no metrics stream
  streaming the fleet connected, reporting every `--interval` seconds
Prints figures; asserts nothing.

    python bench/metrics_service.py [--proxies 2000] [--interval 10] [--window 60]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from controlplane._gen.meshd.telemetry.v1 import metrics_sink_pb2 as pb
from controlplane.security.cadir import open_tokens
from tests.support.envoy_stats import family
from tests.support.harness import free_port, wait_for

NS = "bench"
TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def report(tick: int, clusters: int) -> pb.StreamMetricsMessage:
    msg = pb.StreamMetricsMessage()

    def counter(name: str, value: float) -> None:
        msg.envoy_metrics.append(family(name, value))

    for c in range(clusters):
        name = f"cluster.outbound|80||svc-{c}.{NS}.svc.cluster.local"
        for stat, v in (("upstream_rq_total", 10 * tick), ("upstream_rq_2xx", 9 * tick), ("upstream_rq_5xx", tick),
                        ("upstream_cx_total", tick), ("tlsMode-istio.ssl.handshake", tick),
                        ("upstream_rq_completed", 10 * tick), ("upstream_cx_destroy", 0), ("upstream_rq_retry", 0),
                        ("upstream_cx_connect_fail", 0), ("lb_healthy_panic", 0), ("update_success", 3),
                        ("upstream_rq_pending_total", tick),
                        *((f"other_cluster_counter_{k}", k) for k in range(40))):  # Envoy has ~50 per cluster
            counter(f"{name}.{stat}", v)
    for port in (8080, 9090):
        for stat, v in (("downstream_rq_total", 5 * tick), ("downstream_rq_2xx", 5 * tick),
                        ("downstream_cx_total", tick), ("downstream_cx_ssl_total", tick)):
            counter(f"http.inbound_0.0.0.0_{port}.{stat}", v)
    counter("listener.0.0.0.0_15006.no_filter_chain_match", 0)
    for i in range(150):  # server, runtime, listener manager...: read by name, then skipped
        counter(f"server.misc_stat_{i}", i)
    for i in range(30):
        msg.envoy_metrics.append(family(f"cluster.outbound|80||svc-{i % clusters}.{NS}.svc.cluster.local"
                                        ".upstream_rq_active", 1, type_=1))
    return msg


def first_message(i: int, sa: str, body: pb.StreamMetricsMessage, extensions: int = 600) -> bytes:
    from envoy.config.core.v3 import base_pb2

    node = base_pb2.Node(id=f"sidecar~10.{i // 65536}.{i // 256 % 256}.{i % 256}~app-{i}-0.{NS}~{NS}.svc.cluster.local",
                         cluster=f"app-{i}.{NS}")
    node.metadata.update({"NAMESPACE": NS, "SERVICE_ACCOUNT": sa, "WORKLOAD_NAME": f"app-{i}",
                          "LABELS": {"app": f"app-{i}", "security.istio.io/tlsMode": "istio"},
                          "ISTIO_VERSION": "1.0", "INTERCEPTION_MODE": "REDIRECT"})
    # Envoy's node is ~60 KB, nearly all of it the list of its extensions.
    for k in range(extensions):
        node.extensions.add(name=f"envoy.filters.extension_{k}", category="envoy.filters.network",
                            type_urls=[f"type.googleapis.com/envoy.extensions.example.v3.Extension{k}"])
    msg = pb.StreamMetricsMessage()
    msg.CopyFrom(body)
    msg.identifier.node = node.SerializeToString()
    return msg.SerializeToString()


class Fleet:
    def __init__(self, port: int, root: bytes, tokens: dict[str, str], n: int, interval: float, clusters: int):
        self.port, self.root, self.tokens, self.n, self.interval, self.clusters = port, root, tokens, n, interval, clusters
        self.ramp = 0.02
        self.extensions = 600
        self.bodies = [report(1, clusters)]
        self.sent = 0
        self.errors: list[str] = []
        self.stop = asyncio.Event()

    async def _proxy(self, channel: grpc.aio.Channel, i: int) -> None:
        sa = f"sa-{i % len(self.tokens)}"
        call: Any = channel.stream_unary("/envoy.service.metrics.v3.MetricsService/StreamMetrics",
                                    request_serializer=None, response_deserializer=None)
        await asyncio.sleep(i * self.ramp)  # connect gradually, as a fleet rolls out
        first = first_message(i, sa, self.bodies[0], self.extensions)

        async def messages():
            yield first
            self.sent += 1
            await asyncio.sleep(self.interval * ((i * 7919) % self.n) / self.n)  # flushes spread out
            while not self.stop.is_set():
                yield self.bodies[-1]
                self.sent += 1
                try:
                    await asyncio.wait_for(self.stop.wait(), self.interval)
                except TimeoutError:
                    pass

        try:
            await call(messages(), metadata=(("authorization", f"Bearer {self.tokens[sa]}"),))
        except grpc.aio.AioRpcError as e:
            if not self.stop.is_set():
                self.errors.append(f"{e.code().name}: {e.details()}")

    async def _ticker(self) -> None:
        while not self.stop.is_set():
            await asyncio.sleep(self.interval)
            self.bodies.append(report(len(self.bodies) + 1, self.clusters).SerializeToString())

    async def run(self) -> None:
        self.bodies = [report(1, self.clusters), report(1, self.clusters).SerializeToString()]
        creds = grpc.ssl_channel_credentials(self.root)
        opts = (("grpc.ssl_target_name_override", "istiod.istio-system.svc"), ("grpc.use_local_subchannel_pool", 1))
        channels = [grpc.aio.secure_channel(f"127.0.0.1:{self.port}", creds, options=opts + (("grpc.channel_id", k),))
                    for k in range((self.n + 99) // 100)]
        tasks = [asyncio.create_task(self._proxy(channels[i // 100], i)) for i in range(self.n)]
        ticker = asyncio.create_task(self._ticker())
        await self.stop.wait()
        ticker.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in channels:
            await c.close()


def measure(pid: int, seconds: float) -> tuple[float, float]:
    """meshd's CPU share (%) over `seconds`, and its RSS (MB) at the end."""
    c0, t0 = proc_cpu(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (proc_cpu(pid) - c0) / (time.monotonic() - t0), proc_rss_mb(pid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxies", type=int, default=2000)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--clusters", type=int, default=20)
    ap.add_argument("--service-accounts", type=int, default=50)
    ap.add_argument("--node-extensions", type=int, default=600,
                    help="extensions listed in each node (600: about the 70 KB node Envoy sends)")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "config").mkdir()
        ca_dir, secure, mon, xds = work / "ca", free_port("127.0.0.1"), free_port("127.0.0.1"), free_port("127.0.0.1")
        env = {**os.environ, "MESHD_HOME": str(work / "home"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        meshd = subprocess.Popen([sys.executable, "-m", "controlplane", "serve", "--config-dir", str(work / "config"),
                                  "--ca-dir", str(ca_dir), "--secure-xds-port", str(secure), "--xds-port", str(xds),
                                  "--monitoring-port", str(mon), "--listen-address", "127.0.0.1", "--log-level", "warning"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=open(work / "meshd.log", "w"))
        try:
            import urllib.request

            def ready() -> bool:
                try:
                    return urllib.request.urlopen(f"http://127.0.0.1:{mon}/ready", timeout=1).status == 200
                except OSError:
                    return False

            wait_for(ready, 60, what="meshd ready")
            tokens_ca = open_tokens(ca_dir)
            tokens = {f"sa-{k}": tokens_ca.issue(NS, f"sa-{k}", ttl=__import__("datetime").timedelta(hours=1))
                      for k in range(a.service_accounts)}
            root = (ca_dir / "root-cert.pem").read_bytes()
            size = len(report(1, a.clusters).SerializeToString())
            print(f"meshd pid {meshd.pid}; {a.proxies} proxies, a report every {a.interval:g}s "
                  f"({len(report(1, a.clusters).envoy_metrics)} families, {size / 1024:.1f} KB), windows of {a.window:g}s")
            idle_cpu, idle_rss = measure(meshd.pid, a.window)
            print(f"idle       meshd CPU {idle_cpu:6.2f} %   RSS {idle_rss:7.1f} MB")

            fleet = Fleet(secure, root, tokens, a.proxies, a.interval, a.clusters)
            fleet.extensions = a.node_extensions
            loop = asyncio.new_event_loop()
            import threading

            th = threading.Thread(target=loop.run_until_complete, args=(fleet.run(),), daemon=True)
            th.start()
            wait_for(lambda: fleet.sent >= a.proxies or fleet.errors, 60 + a.proxies * fleet.ramp * 2, interval=0.5,
                     what="every proxy connected")
            if fleet.errors:
                raise SystemExit(f"streams failed: {fleet.errors[:3]}")
            time.sleep(min(a.interval, 30))  # one full round of reports before measuring
            sent0 = fleet.sent
            cpu, rss = measure(meshd.pid, a.window)
            reports = fleet.sent - sent0
            print(f"streaming  meshd CPU {cpu:6.2f} %   RSS {rss:7.1f} MB   ({reports} reports in the window, "
                  f"{reports / a.window:.0f}/s)")
            print(f"extra      CPU {cpu - idle_cpu:+6.2f} % of one core   RSS {rss - idle_rss:+7.1f} MB "
                  f"({(rss - idle_rss) * 1024 / a.proxies:.1f} KB per proxy)")
            import urllib.request as u

            metrics = u.urlopen(f"http://127.0.0.1:{mon}/metrics", timeout=30).read().decode()
            held = next((ln for ln in metrics.splitlines() if ln.startswith("meshd_telemetry_proxies ")), "?")
            print(f"meshd holds: {held}; fleet errors: {len(fleet.errors)}"
                  + (f" (first: {sorted(set(fleet.errors))[:3]})" if fleet.errors else ""))
            loop.call_soon_threadsafe(fleet.stop.set)
            th.join(30)
        finally:
            meshd.terminate()
            meshd.wait(15)


if __name__ == "__main__":
    main()
