"""`meshd serve --workers N`: N processes serving the same xDS ports.

One Python process runs its protocol work (reading requests, answering, pushing) on one
core: the interpreter lock. With workers, every process binds the xDS ports with
SO_REUSEPORT and the kernel spreads proxies' connections across them; each worker reads
the configuration itself (the same directory, or its own watch on the API server), so
the config feed needs no coordination, and each keeps its own generation cache.

What it costs: memory and generation once per worker; the monitoring port, /ready and
the debug views belong to the first process and see its connections only (the others
listen on an ephemeral monitoring port). Workers end with the first process (they are
its children and get SIGTERM when it exits).

docs/push-engine.md ("Use of the machine") has the measurements that decide the default (1).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

WORKER_FLAG = "--worker-of"


def worker_argv(argv: list[str], index: int) -> list[str]:
    """The command line of worker `index`: the same serve arguments, an ephemeral
    monitoring port, and no further workers."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--workers", "--monitoring-port"):
            skip = True
            continue
        if a.startswith(("--workers=", "--monitoring-port=")):
            continue
        out.append(a)
    return out + ["--monitoring-port", "0", WORKER_FLAG, str(os.getpid()), "--workers", "1"]


def start_workers(n: int, argv: list[str]) -> list[subprocess.Popen[bytes]]:
    """Start workers 1..n-1 (this process is worker 0)."""
    return [
        subprocess.Popen([sys.executable, "-m", "controlplane", *worker_argv(argv, i)], start_new_session=False)
        for i in range(1, n)
    ]


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def die_with_parent() -> None:
    """A worker must not outlive the process that started it (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's stop_workers still ends it
        pass
