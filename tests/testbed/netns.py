"""Linux network namespaces for the test bed: create, enter, run in, delete, sweep.

Names are `<prefix>-<run id>-<role>`, the run id a short random hex string, so two test
runs (in a row or at the same time) never share a namespace. Each run also leaves a small
ownership record under RUN_DIR (its owner's pid and the pids of helper processes it
started in the host namespace); `sweep_stale()` removes what a run whose owner died
(SIGKILL, OOM, power cut of the session) left behind, so a crashed run cannot make the
next one fail or leak processes.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

PREFIX = "mtb"  # "meshd test bed"
NETNS_DIR = Path("/run/netns")
RUN_DIR = Path("/run/meshd-testbed")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class NetnsError(RuntimeError):
    pass


def new_run_id() -> str:
    return secrets.token_hex(3)


def ip(*args: str, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess:
    """Run `ip ARGS...` in the calling process's (normally the host's) namespace."""
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def list_netns() -> list[str]:
    """Names of the named namespaces (`ip netns list`), without the `(id: N)` suffix."""
    out = ip("netns", "list").stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def add(name: str) -> None:
    ip("netns", "add", name)


def pids(name: str) -> list[int]:
    p = ip("netns", "pids", name, check=False)
    return [int(x) for x in p.stdout.split() if x.isdigit()]


def kill_all(name: str, grace: float = 2.0) -> None:
    """Kill every process living in namespace `name`: TERM, then KILL after `grace` s."""
    victims = pids(name)
    for pid in victims:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while victims and time.monotonic() < deadline:
        victims = [p for p in victims if _alive(p)]
        if victims:
            time.sleep(0.02)
    for pid in pids(name):
        _signal(pid, signal.SIGKILL)


def delete(name: str) -> None:
    """Kill what runs in `name`, then delete it (veths in it go with it). Idempotent."""
    if not (NETNS_DIR / name).exists():
        return
    kill_all(name)
    ip("netns", "del", name, check=False)


def exec_argv(name: str, argv: Sequence[str]) -> list[str]:
    """argv that runs `argv` inside namespace `name` (`ip netns exec` execs, so the pid
    of the Popen is the command's own pid)."""
    return ["ip", "netns", "exec", name, *argv]


def run(name: str, argv: Sequence[str], check: bool = True, timeout: float = 30,
        input: str | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(exec_argv(name, argv), capture_output=True, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise NetnsError(f"[{name}] {' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()} {p.stdout.strip()}")
    return p


def call_in(name: str, fn: Callable[[], T]) -> T:
    """Call fn() in a short-lived thread that has entered namespace `name`.

    setns(CLONE_NEWNET) changes only the calling thread, so the rest of the process stays
    in the host namespace. Sockets keep the namespace they were created in: a socket made
    by fn() can be used from any thread afterwards.
    """
    result: dict[str, object] = {}

    def target() -> None:
        try:
            fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({name}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result["value"] = fn()
        except BaseException as e:
            result["error"] = e

    t = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]


# ---- ownership records and sweeping ----------------------------------------------

def register_run(run_id: str, workdir: Path | None = None) -> Path:
    """Record that this process owns run `run_id` (and, to be removed by a sweep, its
    temporary work directory)."""
    d = RUN_DIR / run_id
    for attempt in range(5):
        # Written aside, then renamed: a concurrent sweep never sees a record without owner.
        tmp = RUN_DIR / f".{run_id}"
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            (tmp / "owner").write_text(f"{os.getpid()} {_starttime(os.getpid())}\n")
            if workdir is not None:
                (tmp / "workdir").write_text(str(workdir))
            tmp.rename(d)
            return d
        except FileNotFoundError:  # RUN_DIR removed by a run that just ended: again
            if attempt == 4:
                raise
    return d


def register_helper(run_id: str, pid: int) -> None:
    with open(RUN_DIR / run_id / "helpers", "a") as f:
        f.write(f"{pid} {_starttime(pid)}\n")


def unregister_run(run_id: str) -> None:
    shutil.rmtree(RUN_DIR / run_id, ignore_errors=True)
    with contextlib.suppress(OSError):
        RUN_DIR.rmdir()  # only when no other run is registered


def namespaces_of(run_id: str) -> list[str]:
    return [n for n in list_netns() if n.startswith(f"{PREFIX}-{run_id}-")]


def probe_name() -> str:
    """Name for a short-lived namespace of this process (see sweep_stale)."""
    return f"{PREFIX}-probe{os.getpid()}-{new_run_id()}"


def sweep_stale() -> list[str]:
    """Remove what runs whose owner process is gone left behind: namespaces, helper
    processes, work directories. Returns the run ids swept."""
    swept = []
    # Namespaces first, records second: a run writes its record before its first
    # namespace, so a live run's namespace seen here always has its record read below.
    names = list_netns()
    records = {d.name.lstrip(".") for d in RUN_DIR.iterdir()} if RUN_DIR.is_dir() else set()
    for name in names:
        m = re.match(rf"^{PREFIX}-probe(\d+)-", name)
        if m and not _alive(int(m.group(1))):
            delete(name)
            continue
        # A run registers before it creates its first namespace: one without a record is
        # an orphan (its record went with a reboot-less /run cleanup or a partial sweep).
        m = re.match(rf"^{PREFIX}-([0-9a-f]{{6}})-", name)
        if m and m.group(1) not in records:
            delete(name)
    for d in Path(tempfile.gettempdir()).glob("meshd-testbed-bin-*"):
        pid = d.name.split("-")[3]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
    if not RUN_DIR.is_dir():
        return swept
    for d in RUN_DIR.iterdir():
        if d.name.startswith("."):
            continue  # a record being written
        owner = _read_pid_records(d / "owner")
        if owner and any(_same_process(pid, start) for pid, start in owner):
            continue
        for pid, start in _read_pid_records(d / "helpers"):
            if _same_process(pid, start):
                _signal(pid, signal.SIGKILL)
        for name in namespaces_of(d.name):
            delete(name)
        try:
            workdir = Path((d / "workdir").read_text().strip())
        except OSError:
            workdir = None
        if workdir is not None and workdir.name.startswith("meshd-testbed-"):
            shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)
        swept.append(d.name)
    return swept


def _read_pid_records(path: Path) -> list[tuple[int, str]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            out.append((int(parts[0]), parts[1]))
    return out


def _starttime(pid: int) -> str:
    """Start time of pid in clock ticks since boot (field 22 of /proc/PID/stat): with
    the pid it names a process uniquely, so a reused pid is never mistaken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[19]


def _same_process(pid: int, start: str) -> bool:
    return _alive(pid) and _starttime(pid) == start


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
