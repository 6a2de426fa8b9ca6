"""meshd and istiod side by side: the same cluster, the same fleet, one run.

    python bench/sidebyside.py                      # reference scenario, istiod then meshd
    python bench/sidebyside.py --services 100 --sidecars 200 --repeat 3

It starts a real API server (../shared/k8s), loads the scenario's objects into it
(bench/cluster.py: Services, EndpointSlices, VirtualServices, DestinationRules, the
Gateway; Istio 1.14's CRDs, as istiod needs them), and then, for each control plane in
turn (`--planes`, default istiod then meshd), on the same cluster and machine
(first, once the API server and etcd are back at rest after the load, `--startups`
starts of each plane in turn, alternating, for the medians of start-up to ready and of
CPU at ready; a single start is too noisy a figure):
1. starts it against the API server: start-up is process start to /ready (istiod: its
   caches synced and first push context; meshd: the initial lists in and the first
   snapshot built);
2. connects the simulated fleet (bench/loadgen.py, SotW, one gRPC connection per proxy;
   node metadata ISTIO_VERSION 1.14.6 for both, as ../shared/istiod/README.md asks) and
   waits until every proxy has ACKed CDS, EDS, LDS and RDS;
3. full push: patches one DestinationRule (every proxy's CDS changes) and measures until
   every proxy has ACKed the new CDS, with the plane's CPU seconds meanwhile;
4. endpoint change: patches one EndpointSlice and measures, per proxy, until it received
   (and ACKed) an EDS response carrying that cluster: responses are counted, not
   versions (istiod keeps the version string on an EDS-only push);
5. peak resident memory (VmHWM) at the end.
For meshd the per-stage breakdown of each endpoint change is in the JSON (run.py stages).
Prints JSON and a table; nothing asserts.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.cluster import SHARED, Cluster, Istiod, scratch
from bench.run import (
    CDS,
    EDS,
    Fleet,
    Meshd,
    cpu_seconds,
    interrupt_on_sigterm,
    machine,
    memory_mb,
    pct,
    report,
    snapshot_after,
    stages,
)
from bench.scenario import HTTP_PORT, Scenario

ISTIO_VERSION = "1.14.6"


@dataclasses.dataclass
class Plane:
    name: str
    pid: int
    xds: str
    ready_after: float
    meshd: Meshd | None = None
    istiod: Istiod | None = None

    def stop(self) -> None:
        if self.meshd is not None:
            self.meshd.stop()
        if self.istiod is not None:
            self.istiod.stop()


def prepare_cluster(cluster: Cluster) -> None:
    """Istio 1.14's CRDs (istiod serves v1alpha3/v1beta1 only; meshd reads any served
    version) and namespace istio-system."""
    kubectl = [str(cluster.state / "bin" / "kubectl"), "--kubeconfig", str(cluster.kubeconfig)]
    subprocess.run(kubectl + ["apply", "-f", str(SHARED / "istiod" / "etc" / "crd-all.gen.yaml")], check=True,
                   capture_output=True, timeout=180)
    subprocess.run(kubectl + ["wait", "--for=condition=Established", "crd", "--all", "--timeout=120s"], check=True,
                   capture_output=True, timeout=180)
    subprocess.run(kubectl + ["create", "namespace", "istio-system"], check=False, capture_output=True, timeout=60)


def start_plane(name: str, cluster: Cluster, work: Path, args) -> Plane:
    if name == "istiod":
        ist = Istiod.start(cluster, work, prepare=False)
        return Plane(name, ist.pid, ist.xds, ist.ready_after, istiod=ist)
    if name == "meshd" or "=" in name:  # this checkout, or LABEL=another checkout (e.g. before a change)
        label, _, tree = name.partition("=")
        m = Meshd(None, work, ["--kubeconfig", str(cluster.kubeconfig), *args.meshd_arg], site_hooks=args.meshd_site_hooks,
                  cwd=Path(tree) if tree else REPO)
        return Plane(label, m.proc.pid, f"127.0.0.1:{m.xds}", m.ready_after, meshd=m)
    raise ValueError(f"unknown control plane {name!r}")


def settle(*pids: int, seconds: float = 0.5, timeout: float = 60) -> float:
    """Wait until the processes' CPU use (together) is back to rest; their resting rate
    (CPU s per s)."""
    last, deadline = sum(cpu_seconds(p) for p in pids), time.time() + timeout
    rate = 0.0
    while time.time() < deadline:
        time.sleep(seconds)
        now = sum(cpu_seconds(p) for p in pids)
        rate = (now - last) / seconds
        last = now
        if rate <= 0.1:
            break
    return rate


def measure(plane: Plane, sc: Scenario, cluster: Cluster, args) -> dict:
    specs = [dataclasses.replace(s, istio_version=ISTIO_VERSION) for s in sc.proxies()]
    result: dict = {"plane": plane.name, "startup_to_ready_s": round(plane.ready_after, 3)}
    t0 = time.time()
    fleet = Fleet(specs, plane.xds, "sotw", args.loadgen_procs)
    try:
        s = fleet.wait_synced(args.timeout)
        result["initial_sync_s"] = round(s["last"] - t0, 3)
        result["initial_bytes_mb"] = round(s["bytes"] / 1e6, 1)
        idle = settle(plane.pid)
        result["idle_cpu_per_s"] = round(idle, 3)
        result["memory_after_sync"] = memory_mb(plane.pid)

        full = []
        routed = [i for i in range(sc.services) if sc.routed(i)]
        for rep in range(args.repeat):
            i = routed[rep % len(routed)]
            label = f"full-{rep}"
            fleet.arm(label, "version", CDS)
            cpu0 = cpu_seconds(plane.pid)
            t_write = time.time()
            cluster.patch_rule(sc, i, args.generation + rep + 1)
            st = fleet.wait(label, args.timeout, sc.seeing(i))
            settle(plane.pid)
            full.append({"e2e_s": round(max(st["times"]) - t_write, 3),
                         "p50_e2e_s": round(pct([t - t_write for t in st["times"]], 50), 3),
                         "cpu_s": round(cpu_seconds(plane.pid) - cpu0 - idle * (time.time() - t_write), 2),
                         "responses": st["responses_since"]})
        result["full_push"] = full

        eps = []
        for rep in range(args.repeat):
            j = (rep * 7 + 3) % sc.services
            cluster_name = f"outbound|{HTTP_PORT}||{sc.service_name(j)}.{sc.namespace_of(j)}.svc.cluster.local"
            label = f"ep-{rep}"
            fleet.arm(label, "resource", EDS, cluster_name)
            cpu0 = cpu_seconds(plane.pid)
            t_write = time.time()
            cluster.patch_endpoints(sc, j, args.generation + rep + 1)
            st = fleet.wait(label, args.timeout, sc.seeing(j))
            settle(plane.pid)
            lat = [t - t_write for t in st["times"]]
            one = {"p50_s": round(pct(lat, 50), 3), "p99_s": round(pct(lat, 99), 3), "first_s": round(min(lat), 3),
                   "proxies": st["done"],
                   "cpu_s": round(cpu_seconds(plane.pid) - cpu0 - idle * (time.time() - t_write), 2),
                   "responses": st["responses_since"]}
            if plane.meshd is not None:
                one["stages"] = stages(plane.meshd, snapshot_after(plane.meshd, t_write), t_write, st["times"])
            eps.append(one)
        result["endpoint_change"] = eps
        result["memory_end"] = memory_mb(plane.pid)
        result["loadgen_cpu_s"] = round(fleet.cpu(), 1)
    finally:
        fleet.stop()
    return result


def settle_cluster(cluster: Cluster, timeout: float = 120) -> float:
    """Wait until the API server and etcd are back at rest after the objects were loaded
    (a freshly loaded API server spends a while on them): the start-ups are of a replica
    joining a cluster that runs, the same for both planes. The pair's resting CPU rate."""
    facts = json.loads((cluster.state / "up.json").read_text())
    return settle(int(facts["apiserver_pid"]), int(facts["etcd_pid"]), seconds=1.0, timeout=timeout)


def startups(names: list[str], cluster: Cluster, work: Path, args) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each plane started `args.startup_only` times in turn (alternating, so both see the
    same moments of a busy machine) on the loaded cluster: seconds to /ready, and the
    process's CPU seconds when /ready was seen (less noisy than wall time on a shared machine)."""
    out: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for _ in range(args.startup_only or args.startups):
        for name in names:
            plane = start_plane(name, cluster, work, args)
            cpu.setdefault(plane.name, []).append(round(cpu_seconds(plane.pid), 2))
            plane.stop()
            out.setdefault(plane.name, []).append(round(plane.ready_after, 3))
    return out, cpu


def table(results: list[dict], sc: Scenario) -> str:
    med = statistics.median
    lines = [f"scenario: {sc.services} services, {sc.sidecars} sidecars, {sc.gateways} gateways, "
             f"{sc.namespaces} namespaces{', a Sidecar in each' if sc.sidecar_scope else ''}, on a real kube-apiserver; "
             f"{os.cpu_count()} CPUs; SotW"]
    names = [r["plane"] for r in results]
    ratio = len(results) >= 2 and names[0] == "istiod" and names[-1] == "meshd"
    lines.append(f"{'':36}" + "".join(f"{n:>12}" for n in names) + (f"{'meshd/istiod':>14}" if ratio else ""))

    def row(label: str, f, fmt: str = "{:.2f}") -> None:
        vals = []
        for r in results:
            try:
                vals.append(f(r))
            except (KeyError, ValueError, ZeroDivisionError, TypeError, statistics.StatisticsError):
                vals.append(None)
        cells = "".join(f"{fmt.format(v):>12}" if v is not None else f"{'-':>12}" for v in vals)
        if ratio and vals[0] and vals[-1] is not None:
            cells += f"{vals[-1] / vals[0]:>13.2f}x"
        lines.append(f"{label:36}" + cells)

    row("start-up to ready (s)", lambda r: r["startup_to_ready_s"])
    row("start-up to ready, median of starts (s)", lambda r: med(r["startups_s"]))
    row("CPU at ready, median of starts (s)", lambda r: med(r["startup_cpu_s"]))
    row("initial sync of the fleet (s)", lambda r: r["initial_sync_s"])
    row("full push, every proxy ACKed (s)", lambda r: med(x["e2e_s"] for x in r["full_push"]))
    row("CPU per full push (s)", lambda r: med(x["cpu_s"] for x in r["full_push"]))
    row("endpoint change p50 (s)", lambda r: med(x["p50_s"] for x in r["endpoint_change"]), "{:.3f}")
    row("endpoint change p99 (s)", lambda r: med(x["p99_s"] for x in r["endpoint_change"]), "{:.3f}")
    row("endpoint change p99, worst (s)", lambda r: max(x["p99_s"] for x in r["endpoint_change"]), "{:.3f}")
    row("endpoint change, first proxy (s)", lambda r: med(x["first_s"] for x in r["endpoint_change"]), "{:.3f}")
    row("CPU per endpoint change (s)", lambda r: med(x["cpu_s"] for x in r["endpoint_change"]))
    row("RSS after sync (MB)", lambda r: r["memory_after_sync"]["rss_mb"], "{:.0f}")
    row("peak RSS (MB)", lambda r: r["memory_end"]["peak_rss_mb"], "{:.0f}")
    lines.append("endpoint change by stage, medians (s; meshd only: its log says when each ended)")
    for stage, label in (("to_store_s", "  API write -> store (watch, decode)"), ("debounce_s", "  debounce"),
                         ("snapshot_s", "  snapshot"), ("update_s", "  keys and queueing"),
                         ("first_byte_s", "  API write -> first byte on the wire"),
                         ("fanout_p99_s", "  first byte -> p99 proxy (fan-out)")):
        row(label, lambda r, stage=stage: med(x["stages"][stage] for x in r["endpoint_change"]
                                              if stage in x.get("stages", {})), "{:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    interrupt_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--sidecars", type=int, default=2000)
    ap.add_argument("--gateways", type=int, default=10)
    ap.add_argument("--namespaces", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--planes", default="istiod,meshd",
                    help="control planes to measure, in order: istiod, meshd (this checkout), LABEL=PATH (meshd "
                         "from another checkout, e.g. before=/tmp/old)")
    ap.add_argument("--loadgen-procs", type=int, default=1)
    ap.add_argument("--meshd-arg", action="append", default=[], help="extra `meshd serve` argument (repeat)")
    ap.add_argument("--meshd-site-hooks", action="store_true",
                    help="start meshd with this machine's .pth site hooks (run.py without_site_hooks says why not)")
    ap.add_argument("--json", help="also write the JSON document to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, cluster state)")
    ap.add_argument("--startup-only", type=int, default=0, metavar="N",
                    help="only start each plane N times (alternating) on the loaded cluster: start-up to /ready")
    ap.add_argument("--startups", type=int, default=7, metavar="N",
                    help="before the fleet, start each plane N times (alternating): the medians of start-up to "
                         "/ready and of CPU at ready in the table (default %(default)s; 0: none)")
    ap.add_argument("--sidecar-scope", action="store_true",
                    help="one Sidecar per namespace importing ./* and istio-system/* (as bench/run.py)")
    args = ap.parse_args(argv)
    sc = Scenario(services=args.services, sidecars=args.sidecars, gateways=args.gateways, namespaces=args.namespaces,
                  sidecar_scope=args.sidecar_scope)
    work = scratch()
    cluster = Cluster.up(work)
    results: list[dict[str, Any]] = []
    try:
        prepare_cluster(cluster)
        t = time.time()
        counts = cluster.load(sc, work / "scenario")
        loaded = round(time.time() - t, 1)
        if args.startup_only:
            settle_cluster(cluster)
            starts, cpus = startups(args.planes.split(","), cluster, work, args)
            report({"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
                    "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "startup": starts,
                    "startup_cpu_s": cpus}, args.json,
                   "\n".join(f"{name:>10} start-up to ready (s): " + ", ".join(f"{t:.2f}" for t in ts)
                             + f"; median {statistics.median(ts):.2f}" for name, ts in starts.items()) + "\n"
                   + "\n".join(f"{name:>10} CPU at ready (s): " + ", ".join(f"{t:.2f}" for t in ts)
                                + f"; median {statistics.median(ts):.2f}" for name, ts in cpus.items()))
            return 0
        if args.startups:
            settle_cluster(cluster)
        starts, start_cpus = startups(args.planes.split(","), cluster, work, args) if args.startups else ({}, {})
        for n, name in enumerate(args.planes.split(",")):
            args.generation = 100 * (n + 1)  # each plane's changes are new content
            try:
                plane = start_plane(name, cluster, work, args)
            except Exception as e:  # one plane failing to start must not lose the others' figures
                results.append({"plane": name.partition("=")[0], "error": f"start: {e}"})
                continue
            label = plane.name
            try:
                results.append({**measure(plane, sc, cluster, args),
                                "startups_s": starts.get(label, []), "startup_cpu_s": start_cpus.get(label, [])})
            except Exception as e:
                results.append({"plane": plane.name, "startup_to_ready_s": round(plane.ready_after, 3),
                                "error": str(e)})
            finally:
                plane.stop()
            if args.json:  # each plane's figures as soon as they are in (a long run may be cut short)
                Path(args.json + ".partial").write_text(json.dumps(results, indent=2) + "\n")
        doc = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "machine": machine(),
            "scenario": {"services": sc.services, "sidecars": sc.sidecars, "gateways": sc.gateways,
                         "namespaces": sc.namespaces, "sidecar_scope": sc.sidecar_scope, "objects": counts,
                         "load_s": loaded},
            "meshd_args": args.meshd_arg,
            "results": results,
        }
        report(doc, args.json, table(results, sc))
    finally:
        cluster.down()
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
