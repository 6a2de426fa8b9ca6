"""The push-engine benchmark: meshd against a fleet of simulated Envoys, and the floor.

    python bench/run.py                          # reference scenario, SotW and delta
    python bench/run.py --services 100 --sidecars 200 --gateways 2 --transport sotw

For each transport it
1. writes the scenario (bench/scenario.py) and starts `meshd serve` on it: start-up time
   is process start to /ready;
2. starts the load generator (bench/loadgen.py) in its own process and waits until every
   proxy has received and ACKed CDS, EDS, LDS and RDS;
3. full push: rewrites one DestinationRule (every proxy's CDS changes) and measures until
   every proxy has ACKed the new CDS version (after answering its EDS re-request), from
   the file write (end to end) and from meshd's snapshot (the push itself); meshd's CPU
   seconds for it;
4. endpoint change: rewrites one EndpointSlice and measures, per proxy, until it has
   ACKed an EDS response carrying that cluster (p50/p99), and counts the responses of
   every type sent meanwhile (only EDS is expected);
5. the floor (bench/floor.py): the same clients, served the captured bytes by a trivial
   grpcio server in its own process; its full push time, and meshd's divided by it;
and prints a JSON document and a table. Nothing here asserts: these are figures.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import floor, loadgen
from bench.scenario import HTTP_PORT, Scenario

CDS, EDS = loadgen.CDS, loadgen.EDS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """Direct children of `pid` (meshd's --workers processes)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except OSError:
                continue
    return out


def cpu_seconds(pid: int | None, tree: bool = True) -> float:
    """utime + stime of `pid`, and of its children (meshd's workers) when `tree`, those
    that ended included (cutime + cstime: meshd's prefetch child, kube/prefetch.py); a
    process not started (no pid yet) has spent none."""
    total = 0.0
    if pid is None:
        return total
    for p in [pid] + (children(pid) if tree else []):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15 if tree else 13]) / os.sysconf("SC_CLK_TCK")
    return total


def memory_mb(pid: int) -> dict[str, float]:
    """Resident and peak resident memory of `pid` and its children (summed)."""
    out: dict[str, float] = {"VmRSS": 0, "VmHWM": 0}
    for p in [pid] + children(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(("VmRSS:", "VmHWM:")):
                        out[line.split(":")[0]] += int(line.split()[1]) / 1024
        except OSError:
            continue
    return {"rss_mb": round(out["VmRSS"], 1), "peak_rss_mb": round(out["VmHWM"], 1)}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * len(values) + 0.5)) - 1))
    return values[k]


def bytecode_env(root: Path = REPO) -> dict[str, str]:
    """meshd's environment: its modules' bytecode cached (outside the checkout), as an
    installed meshd has it. Without a cache (PYTHONDONTWRITEBYTECODE, as this machine's
    shells set it) every start compiles 200 modules from source: 0.5-2 s of CPU that is
    not meshd's start-up but the checkout's. Warmed as the image build warms it
    (controlplane.precompile), the compiled dataclass methods included."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(root)
    env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / f"meshd-bench-pycache-{os.getuid()}")
    subprocess.run([sys.executable, "-m", "controlplane.precompile"], cwd=root, env=env,
                   check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return env


def without_site_hooks(env: dict[str, str]) -> list[str]:
    """Python's flags (and `env` changed) to start meshd as its image does: this machine's
    site-packages hold .pth files that are not meshd's (a sandbox's CA bundle hook, which
    imports certifi, and the editable install of the checkout) and cost every Python
    process here 40-50 ms at start; the image has neither. `-S` skips them, and the
    site-packages go on PYTHONPATH instead (after the tree under test)."""
    sites = [p for p in sys.path if p.endswith("site-packages")]
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], *sites])
    return ["-S"]


class Meshd:
    """`meshd serve` on `config_dir`, or (None) on what `extra` names (--kubeconfig).
    `site_hooks`: start it with this machine's site hooks (see without_site_hooks)."""

    def __init__(self, config_dir: Path | None, work: Path, extra: list[str], profile: str | None = None,
                 python: str = sys.executable, cwd: Path = REPO, site_hooks: bool = False):
        self.xds, self.mon = free_port(), free_port()
        self.log_path = work / f"meshd-{self.xds}.log"
        env = bytecode_env(cwd)
        flags = [] if site_hooks else without_site_hooks(env)
        prefix = [*flags, *(["-m", "cProfile", "-o", profile] if profile else [])]
        source = ["--config-dir", str(config_dir)] if config_dir is not None else []
        argv = [python, *prefix, "-m", "controlplane", "serve", *source,
                "--xds-port", str(self.xds), "--monitoring-port", str(self.mon), "--secure-xds-port", "0",
                "--listen-address", "127.0.0.1", "--ca-dir", str(work / "ca"), "--log-format", "json", *extra]
        # A state directory of its own ($MESHD_HOME: last good config, a cluster CA's
        # mirror): the shared default (~/.meshd) holds every earlier run's copies, and
        # pruning them at start once took 8.7 s of this start-up.
        env["MESHD_HOME"] = str(work / f"home-{self.xds}")
        self.started = time.time()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env=env, start_new_session=True)
        self.ready_after = self._wait_ready()

    def _wait_ready(self) -> float:
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"meshd exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.mon}/ready", timeout=1) as r:
                    if r.status == 200:
                        return time.time() - self.started
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("meshd not ready after 300 s")

    def snapshots(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if '"mesh snapshot built"' in line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def events(self, event: str) -> list[dict]:
        """meshd's JSON log lines of `event`."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if f'"{event}"' in line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


class Fleet:
    """The load generator processes (one by default)."""

    def __init__(self, specs, address: str, transport: str, procs: int = 1):
        ctx = mp.get_context("spawn")
        self.pipes, self.procs = [], []
        for i in range(procs):
            mine = specs[i::procs]
            parent, child = ctx.Pipe()
            p = ctx.Process(target=loadgen.process_main, args=(mine, address, transport, child), daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)

    def ask(self, *cmd):
        for p in self.pipes:
            p.send(cmd)
        return [p.recv() for p in self.pipes]

    def synced(self) -> dict:
        parts = self.ask("synced")
        return {"synced": sum(p["synced"] for p in parts), "total": sum(p["total"] for p in parts),
                "last": max(p["last"] for p in parts), "errors": sum(p["errors"] for p in parts),
                "bytes": sum(p["bytes"] for p in parts)}

    def wait_synced(self, timeout: float) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            s = self.synced()
            if s["synced"] == s["total"]:
                return s
            time.sleep(0.2)
        raise RuntimeError(f"fleet not synced after {timeout}s: {self.synced()}")

    def arm(self, label: str, kind: str, type_url: str, name: str = "") -> None:
        self.ask("arm", label, kind, type_url, name)

    def status(self, label: str) -> dict:
        parts = self.ask("status", label)
        since: dict[str, int] = {}
        for p in parts:
            for k, v in p["responses_since"].items():
                since[k] = since.get(k, 0) + v
        return {"done": sum(p["done"] for p in parts), "total": sum(p["total"] for p in parts),
                "times": [t for p in parts for t in p["times"]], "responses_since": since}

    def wait(self, label: str, timeout: float, expected: int | None = None) -> dict:
        """Until every proxy (or `expected` of them: with --sidecar-scope only those that
        see the changed service get it) met the condition armed as `label`."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            parts = self.ask("progress", label)  # a count, not the whole status, while it runs
            if sum(d for d, _ in parts) >= (sum(t for _, t in parts) if expected is None else expected):
                return self.status(label)
            time.sleep(0.05)
        s = self.status(label)
        raise RuntimeError(f"{label}: only {s['done']}/{s['total']} proxies converged in {timeout}s")

    def capture(self) -> dict:
        merged: dict = {}
        for part in self.ask("capture"):
            for k, v in part.items():
                merged.setdefault(k, v)
        return merged

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def stop(self) -> None:
        try:
            self.ask("stop")
        except (BrokenPipeError, EOFError):
            pass
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


def idle_rate(meshd: Meshd, seconds: float = 2.0) -> float:
    """meshd's CPU use at rest (directory polling), in CPU seconds per second."""
    c0 = cpu_seconds(meshd.proc.pid)
    time.sleep(seconds)
    return (cpu_seconds(meshd.proc.pid) - c0) / seconds


def quiesce(meshd: Meshd, idle: float = 0.0, seconds: float = 0.5, timeout: float = 30) -> None:
    """Wait until meshd's CPU use is back to its resting rate (the push and its ACKs are over)."""
    last = cpu_seconds(meshd.proc.pid)
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(seconds)
        now = cpu_seconds(meshd.proc.pid)
        if now - last <= (idle + 0.05) * seconds:
            return
        last = now


def snapshot_after(meshd: Meshd, t: float, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for s in meshd.snapshots():
            if s.get("at", 0) >= t:
                return s
        time.sleep(0.05)
    raise RuntimeError("no snapshot logged after the change")


def stages(meshd: Meshd, snap: dict, t_write: float, times: list[float]) -> dict:
    """Where an endpoint change's time went, from the change (file write or API write) to
    the last proxy's ACK: to the store (file scan, or watch delivery and decoding), the
    debounce, the snapshot, the server's update (keys, queueing), to the first byte on
    the wire, and the fan-out to the 99th percentile proxy. A meshd that does not log a
    stage (an older build) leaves it out or has it derived."""
    at = snap["at"]
    updated = at - snap.get("queue_ms", 0) / 1000
    built = updated - snap.get("ms", 0) / 1000
    changed = snap.get("changed_at") or built
    debounced = snap.get("debounced_at") or built
    first = next((e["at"] for e in meshd.events("push first write") if e.get("at", 0) >= updated), None)
    out = {"to_store_s": changed - t_write, "debounce_s": debounced - changed, "snapshot_s": built - debounced,
           "update_s": at - built, "express": snap.get("express")}
    if first is not None:
        out["first_byte_s"] = first - t_write
        out["fanout_p99_s"] = pct(times, 99) - first
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def run_transport(sc: Scenario, transport: str, args, work: Path) -> dict:
    config = work / f"config-{transport}"
    sc.write(config)
    specs = sc.proxies()
    result: dict = {"transport": transport}
    meshd = Meshd(config, work, args.meshd_arg, args.profile, cwd=args.meshd_tree or REPO,
                  site_hooks=args.meshd_site_hooks)
    try:
        result["startup_to_ready_s"] = round(meshd.ready_after, 3)
        # Before any proxy: what the configuration alone costs (the per-proxy figures subtract it).
        result["memory_at_ready"] = memory_mb(meshd.proc.pid)
        cpu_ready = cpu_seconds(meshd.proc.pid)
        result["cpu_to_ready_s"] = round(cpu_ready, 2)
        t0 = time.time()
        fleet = Fleet(specs, f"127.0.0.1:{meshd.xds}", transport, args.loadgen_procs)
        try:
            s = fleet.wait_synced(args.timeout)
            result["initial_sync_s"] = round(s["last"] - t0, 3)
            result["initial_sync_cpu_s"] = round(cpu_seconds(meshd.proc.pid) - cpu_ready, 2)
            result["initial_bytes_mb"] = round(s["bytes"] / 1e6, 1)
            quiesce(meshd, idle=0.2, timeout=60)
            idle = idle_rate(meshd)
            result["idle_cpu_per_s"] = round(idle, 3)
            result["memory_after_sync"] = memory_mb(meshd.proc.pid)

            # --- full push: a DestinationRule change reaches every proxy's CDS ------------
            full = []
            routed = [i for i in range(sc.services) if sc.routed(i)]
            for rep in range(args.repeat if "full" in args.measure else 0):
                i = routed[rep % len(routed)]
                label = f"full-{rep}"
                fleet.arm(label, "version", CDS)
                cpu0, gen0 = cpu_seconds(meshd.proc.pid), fleet.cpu()
                t_write = time.time()
                (config / "rules" / f"{sc.service_name(i)}.yaml").write_text(sc.rules_yaml(i, rep + 1))
                st = fleet.wait(label, args.timeout, sc.seeing(i))
                snap = snapshot_after(meshd, t_write)
                pushed_at = snap["at"] - snap.get("queue_ms", 0) / 1000
                quiesce(meshd, idle)
                full.append({
                    "e2e_s": round(max(st["times"]) - t_write, 3),
                    "from_store_s": round(max(st["times"]) - (snap.get("changed_at") or pushed_at), 3),
                    "push_s": round(max(st["times"]) - pushed_at, 3),
                    "p50_push_s": round(pct([t - pushed_at for t in st["times"]], 50), 3),
                    "cpu_s": round(cpu_seconds(meshd.proc.pid) - cpu0 - idle * (time.time() - t_write), 2),
                    "loadgen_cpu_s": round(fleet.cpu() - gen0, 2),
                    "responses": st["responses_since"],
                    "proxies_queued": snap.get("proxies_queued"),
                    "stages": stages(meshd, snap, t_write, st["times"]),
                })
            result["full_push"] = full

            # --- endpoint change: one EndpointSlice ------------------------------------------
            eps = []
            for rep in range(args.repeat if "endpoint" in args.measure else 0):
                j = (rep * 7 + 3) % sc.services
                cluster = f"outbound|{HTTP_PORT}||{sc.service_name(j)}.{sc.namespace_of(j)}.svc.cluster.local"
                label = f"ep-{rep}"
                fleet.arm(label, "resource", EDS, cluster)
                cpu0, gen0 = cpu_seconds(meshd.proc.pid), fleet.cpu()
                t_write = time.time()
                sc.endpoints_path(config, j).write_text(sc.endpoints_yaml(j, rep + 1))
                st = fleet.wait(label, args.timeout, sc.seeing(j))
                snap = snapshot_after(meshd, t_write)
                pushed_at = snap["at"] - snap.get("queue_ms", 0) / 1000
                quiesce(meshd, idle)
                lat = [t - t_write for t in st["times"]]
                store_lat = [t - (snap.get("changed_at") or pushed_at) for t in st["times"]]
                push_lat = [t - pushed_at for t in st["times"]]
                eps.append({
                    "p50_e2e_s": round(pct(lat, 50), 3), "p99_e2e_s": round(pct(lat, 99), 3),
                    "p50_from_store_s": round(pct(store_lat, 50), 3), "p99_from_store_s": round(pct(store_lat, 99), 3),
                    "p50_push_s": round(pct(push_lat, 50), 3), "p99_push_s": round(pct(push_lat, 99), 3),
                    "proxies": st["done"],
                    "cpu_s": round(cpu_seconds(meshd.proc.pid) - cpu0 - idle * (time.time() - t_write), 2),
                    "loadgen_cpu_s": round(fleet.cpu() - gen0, 2),
                    "responses": st["responses_since"],
                    "stages": stages(meshd, snap, t_write, st["times"]),
                })
            result["endpoint_change"] = eps
            result["memory_end"] = memory_mb(meshd.proc.pid)
            result["loadgen_cpu_s"] = round(fleet.cpu(), 1)
            capture = fleet.capture()
        finally:
            fleet.stop()
    finally:
        meshd.stop()

    if args.no_floor:
        return result
    # --- the floor: the same clients, the captured bytes, a trivial server ---------------
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    port = free_port()
    fp = ctx.Process(target=floor.process_main, args=(capture, transport == "delta", port, child), daemon=True)
    fp.start()
    try:
        assert parent.recv() == "ready"
        fleet = Fleet(specs, f"127.0.0.1:{port}", transport, args.loadgen_procs)
        try:
            fleet.wait_synced(args.timeout)
            time.sleep(1)

            def replay(label: str, types: list[str]) -> tuple[list[float], dict]:
                """The floor sends each group's captured last response of `types` to every
                stream; per proxy the seconds until it ACKed a new version of the first
                type, and the CPU seconds spent meanwhile."""
                fleet.arm(label, "version", types[0])
                cpu0, gen0 = cpu_seconds(fp.pid), fleet.cpu()
                t_push = time.time()
                parent.send(("push", types))
                parent.recv()
                st = fleet.wait(label, args.timeout)
                time.sleep(1)
                return [t - t_push for t in st["times"]], {
                    "cpu_s": round(cpu_seconds(fp.pid) - cpu0, 2), "loadgen_cpu_s": round(fleet.cpu() - gen0, 2)}

            runs = []
            for rep in range(args.repeat if "full" in args.measure else 0):
                lat, cpu = replay(f"floor-{rep}", [CDS, EDS])
                runs.append({"push_s": round(max(lat), 3), "cpu_s": cpu["cpu_s"]})
            result["floor_full_push"] = runs
            # The endpoint floor: the last EDS response each group got (one assignment,
            # after the endpoint changes above) sent again to every stream.
            eps = []
            for rep in range(args.repeat if "endpoint" in args.measure else 0):
                lat, cpu = replay(f"floor-ep-{rep}", [EDS])
                eps.append({"p50_s": round(pct(lat, 50), 3), "p99_s": round(pct(lat, 99), 3), **cpu})
            result["floor_endpoint"] = eps
        finally:
            fleet.stop()
    finally:
        parent.send(("stop",))
        fp.join(10)
        if fp.is_alive():
            fp.kill()

    if result["full_push"]:
        med = statistics.median(r["push_s"] for r in result["full_push"])
        floor_med = statistics.median(r["push_s"] for r in result["floor_full_push"])
        result["full_push_vs_floor"] = round(med / floor_med, 2) if floor_med else None
    return result


def table(results: list[dict], sc: Scenario) -> str:
    lines = [f"scenario: {sc.services} services, {sc.sidecars} sidecars, {sc.gateways} gateways, "
             f"{sc.namespaces} namespaces; {os.cpu_count()} CPUs"]
    head = f"{'':34}" + "".join(f"{r['transport']:>14}" for r in results)
    lines.append(head)

    def row(label: str, f) -> None:
        vals = []
        for r in results:
            try:
                vals.append(f"{f(r):>14}")
            except (KeyError, ValueError, ZeroDivisionError, TypeError):
                vals.append(f"{'-':>14}")
        lines.append(f"{label:34}" + "".join(vals))

    med = statistics.median
    row("start-up to ready (s)", lambda r: f"{r['startup_to_ready_s']:.2f}")
    row("initial sync of the fleet (s)", lambda r: f"{r['initial_sync_s']:.2f}")
    row("  meshd CPU meanwhile (s)", lambda r: f"{r['initial_sync_cpu_s']:.1f}")
    row("full push, e2e median (s)", lambda r: f"{med(x['e2e_s'] for x in r['full_push']):.2f}")
    row("full push, from store median (s)", lambda r: f"{med(x['from_store_s'] for x in r['full_push']):.2f}")
    row("full push, push median (s)", lambda r: f"{med(x['push_s'] for x in r['full_push']):.2f}")
    row("floor full push median (s)", lambda r: f"{med(x['push_s'] for x in r['floor_full_push']):.2f}")
    row("meshd / floor", lambda r: f"{r['full_push_vs_floor']:.2f}x")
    for stage, label in (("to_store_s", "full push: write -> store (s)"), ("debounce_s", "  debounce (s)"),
                         ("snapshot_s", "  snapshot (s)"), ("update_s", "  keys and queueing (s)")):
        row(label, lambda r, stage=stage: f"{med(x['stages'][stage] for x in r['full_push'] if stage in x['stages']):.3f}")
    row("full push CPU (s)", lambda r: f"{med(x['cpu_s'] for x in r['full_push']):.2f}")
    row("  load generator CPU meanwhile (s)", lambda r: f"{med(x['loadgen_cpu_s'] for x in r['full_push']):.2f}")
    row("endpoint p50 e2e (s)", lambda r: f"{med(x['p50_e2e_s'] for x in r['endpoint_change']):.3f}")
    # Each change's p99 over the fleet; the median change and the worst one.
    row("endpoint p99 e2e, median (s)", lambda r: f"{med(x['p99_e2e_s'] for x in r['endpoint_change']):.3f}")
    row("endpoint p99 e2e, worst (s)", lambda r: f"{max(x['p99_e2e_s'] for x in r['endpoint_change']):.3f}")
    row("endpoint p99 from store, median (s)",
        lambda r: f"{med(x['p99_from_store_s'] for x in r['endpoint_change']):.3f}")
    row("endpoint p99 push, median (s)", lambda r: f"{med(x['p99_push_s'] for x in r['endpoint_change']):.3f}")
    row("floor endpoint p99, median (s)", lambda r: f"{med(x['p99_s'] for x in r['floor_endpoint']):.3f}")
    row("floor endpoint p99, worst (s)", lambda r: f"{max(x['p99_s'] for x in r['floor_endpoint']):.3f}")
    row("endpoint push CPU (s)", lambda r: f"{med(x['cpu_s'] for x in r['endpoint_change']):.2f}")
    row("  load generator CPU meanwhile (s)", lambda r: f"{med(x['loadgen_cpu_s'] for x in r['endpoint_change']):.2f}")
    for stage, label in (("to_store_s", "endpoint: write -> store (s)"), ("debounce_s", "  debounce (s)"),
                         ("snapshot_s", "  snapshot (s)"), ("update_s", "  keys and queueing (s)"),
                         ("first_byte_s", "  write -> first byte (s)"), ("fanout_p99_s", "  first byte -> p99 (s)")):
        row(label, lambda r, stage=stage: f"{med(x['stages'][stage] for x in r['endpoint_change'] if stage in x['stages']):.3f}")
    row("endpoint push: non-EDS responses", lambda r: str(sum(v for x in r['endpoint_change']
                                                              for k, v in x['responses'].items() if k != 'EDS')))
    row("RSS at ready, no proxy (MB)", lambda r: f"{r['memory_at_ready']['rss_mb']:.0f}")
    row("RSS after sync (MB)", lambda r: f"{r['memory_after_sync']['rss_mb']:.0f}")
    row("peak RSS (MB)", lambda r: f"{r['memory_end']['peak_rss_mb']:.0f}")
    row("load generator CPU (s)", lambda r: f"{r['loadgen_cpu_s']:.0f}")
    return "\n".join(lines)


def machine() -> dict:
    """The machine's size, for the record (and how busy it was: others share it)."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "loadavg": os.getloadavg()}


def report(doc: dict, json_path: str | None, text_table: str) -> None:
    """The JSON document (also to `json_path`), then the table."""
    text = json.dumps(doc, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
    print()
    print(text_table)


def interrupt_on_sigterm() -> None:
    """A run stopped with SIGTERM (`timeout`) ends as Ctrl-C does, so its `finally` blocks
    stop meshd, istiod and the API server instead of leaving them without their parent.
    Forked children (the load generator) keep the default: they just end."""
    main_pid = os.getpid()

    def interrupted(signum: int, frame: object) -> None:
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)


def main(argv: list[str] | None = None) -> int:
    interrupt_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--sidecars", type=int, default=2000)
    ap.add_argument("--gateways", type=int, default=10)
    ap.add_argument("--namespaces", type=int, default=10)
    ap.add_argument("--transport", choices=["sotw", "delta", "both"], default="both")
    ap.add_argument("--delta", dest="transport", action="store_const", const="delta", help="--transport delta")
    ap.add_argument("--sotw", dest="transport", action="store_const", const="sotw", help="--transport sotw")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--loadgen-procs", type=int, default=1)
    ap.add_argument("--meshd-arg", action="append", default=None,
                    help="extra `meshd serve` argument (repeat), e.g. --meshd-arg=--poll-interval=0.1")
    ap.add_argument("--json", help="also write the JSON document to this file")
    ap.add_argument("--profile", help="run meshd under cProfile, writing the profile to this file")
    ap.add_argument("--meshd-site-hooks", action="store_true",
                    help="start meshd with this machine's .pth site hooks (without_site_hooks says why not)")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor measurement")
    ap.add_argument("--measure", default="full,endpoint", help="what to measure: full,endpoint (default both)")
    ap.add_argument("--keep-logs", type=Path, help="copy meshd's logs into this directory")
    ap.add_argument("--meshd-tree", type=Path, help="run the meshd of another checkout (e.g. before a change)")
    ap.add_argument("--sidecar-scope", action="store_true",
                    help="one Sidecar per namespace importing ./* and istio-system/* (scenario.sidecars_yaml)")
    args = ap.parse_args(argv)
    if args.meshd_arg is None:
        args.meshd_arg = []
    sc = Scenario(services=args.services, sidecars=args.sidecars, gateways=args.gateways, namespaces=args.namespaces,
                  sidecar_scope=args.sidecar_scope)
    work = Path(tempfile.mkdtemp(prefix="meshd-bench-"))
    try:
        results = []
        for t in (["sotw", "delta"] if args.transport == "both" else [args.transport]):
            results.append(run_transport(sc, t, args, work))
        doc = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": machine(),
            "scenario": {"services": sc.services, "sidecars": sc.sidecars, "gateways": sc.gateways,
                         "namespaces": sc.namespaces, "routed_fraction": sc.routed_fraction,
                         "sidecar_scope": sc.sidecar_scope},
            "meshd_args": args.meshd_arg,
            "results": results,
        }
        report(doc, args.json, table(results, sc))
    finally:
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in work.glob("meshd-*.log"):
                shutil.copy(log, args.keep_logs / log.name)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
