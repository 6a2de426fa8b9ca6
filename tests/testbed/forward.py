"""TCP forwarder from inside a pod's network namespace to an address in the host's.

    python forward.py --netns /run/netns/NAME --map 127.0.0.1:15010=127.0.0.1:40123 [--map ...]

The process runs in the host namespace. It enters the pod's namespace only long enough to
create its listening sockets there (a socket keeps the namespace it was created in), then
returns to the host namespace, from where it connects to the targets. So the pod sees
meshd at 127.0.0.1:15010 (like pilot-agent's local xDS proxy in a real pod) without any
route, address or interface joining the pod's network and the host's.

Prints "READY" once listening; exits on SIGTERM or when its parent dies. Standalone: only
the standard library, no imports from the repository.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import os
import signal
import socket
import sys

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def listen_in(netns_path: str, addrs: list[tuple[str, int]]) -> list[socket.socket]:
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns_path, os.O_RDONLY)
    socks = []
    try:
        _setns(target)
        for host, port in addrs:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            s.listen(128)
            s.setblocking(False)
            socks.append(s)
    finally:
        _setns(home)
        os.close(home)
        os.close(target)
    return socks


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


def _handler(target: tuple[str, int]):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        for w in (writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            w.close()

    return handle


async def main_async(socks: list[socket.socket], targets: list[tuple[str, int]], parent: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    servers = [await asyncio.start_server(_handler(t), sock=s) for s, t in zip(socks, targets, strict=True)]
    print("READY", flush=True)
    while not stop.done():
        if os.getppid() != parent:  # the test process died: do not linger
            break
        await asyncio.wait([stop], timeout=0.5)
    for srv in servers:
        srv.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--netns", required=True, help="path of the namespace to listen in, e.g. /run/netns/NAME")
    ap.add_argument("--map", action="append", required=True, help="LISTEN_HOST:PORT=TARGET_HOST:PORT")
    args = ap.parse_args(argv)
    parent = os.getppid()
    listens, targets = [], []
    for m in args.map:
        a, _, b = m.partition("=")
        listens.append(_hostport(a))
        targets.append(_hostport(b))
    socks = listen_in(args.netns, listens)
    asyncio.run(main_async(socks, targets, parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
