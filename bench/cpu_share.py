"""Who uses the machine during a benchmark run: every `--every` seconds, the CPU share
(in cores) of the benchmark's meshd (`controlplane serve` in a meshd-bench- directory, workers included), of the load generator
(bench/run.py's spawned fleet processes), of istiod (pilot-discovery), of everything
else, and the idle cores, from /proc. Says which of them saturates the machine.

    python bench/cpu_share.py --every 5 --out /tmp/share.tsv &   # beside bench/run.py
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
# The benchmark's meshd only: its command line names the bench's work directory (other
# agents' tests run meshd too); the fleet processes are bench/run.py's multiprocessing spawns.
GROUPS = {"meshd": ("controlplane", "serve", "meshd-bench-"), "loadgen": ("spawn_main",),
          "istiod": ("pilot-discovery",)}


def machine_ticks() -> tuple[int, int]:
    """Busy and idle ticks of all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields[:8]) - idle, idle


def group_ticks() -> dict[str, int]:
    """utime + stime of the live processes of each group."""
    out = dict.fromkeys(GROUPS, 0)
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        for name, words in GROUPS.items():
            if all(w in cmd for w in words):
                out[name] += int(stat[11]) + int(stat[12])
                break
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every", type=float, default=5.0)
    ap.add_argument("--out", type=Path, help="append the rows to this file (default stdout)")
    args = ap.parse_args(argv)
    sink = args.out.open("a", buffering=1) if args.out else sys.stdout
    sink.write("time\t" + "\t".join(GROUPS) + "\tother\tidle\t(cores)\n")
    busy0, idle0 = machine_ticks()
    g0 = group_ticks()
    while True:
        time.sleep(args.every)
        busy1, idle1 = machine_ticks()
        g1 = group_ticks()
        # A process that ended in the interval drops out: clamp at zero rather than count it negative.
        share = {k: max(0, g1[k] - g0.get(k, 0)) / TICK / args.every for k in GROUPS}
        other = max(0.0, (busy1 - busy0) / TICK / args.every - sum(share.values()))
        idle = (idle1 - idle0) / TICK / args.every
        sink.write(time.strftime("%H:%M:%S") + "".join(f"\t{v:.2f}" for v in share.values())
                   + f"\t{other:.2f}\t{idle:.2f}\n")
        busy0, idle0, g0 = busy1, idle1, g1


if __name__ == "__main__":
    raise SystemExit(main())
