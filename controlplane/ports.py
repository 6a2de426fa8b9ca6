"""The ports `meshd serve` listens on, the flag that sets each, and the check that they
are free before anything starts: a port in use is one line naming the port and the
flag to change (`meshd: port 15010 (--xds-port) is already in use`), not a traceback
from the server library.
"""
from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from dataclasses import dataclass


class StartupError(Exception):
    """meshd cannot start; the message is the one line the operator reads."""


@dataclass(frozen=True)
class ServePort:
    flag: str  # the command line flag that sets it, e.g. "--xds-port"
    port: int
    reuse_port: bool = False  # bound with SO_REUSEPORT (`--workers`): shared with sibling processes


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_free(host: str, ports: Iterable[ServePort]) -> None:
    """StartupError for a port given to two flags, or one that cannot be bound on `host`
    (in use, not ours to bind, an address this machine does not have). Port 0 (an
    ephemeral port) is not checked. Binds the way the servers do (SO_REUSEADDR, and
    SO_REUSEPORT for shared ports), so a port the servers could take passes."""
    seen: dict[int, str] = {}
    for p in ports:
        if not p.port:
            continue
        if p.port in seen:
            raise StartupError(f"port {p.port} is given to both {seen[p.port]} and {p.flag}")
        seen[p.port] = p.flag
        with socket.socket(_family(host), socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if p.reuse_port:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                s.bind((host, p.port))
            except OSError as e:
                raise StartupError(bind_error(host, p, e)) from None


def bind_error(host: str, p: ServePort, e: BaseException) -> str:
    """The one line for a failed bind of `p`."""
    code = getattr(e, "errno", None)
    if code == errno.EADDRINUSE:
        return f"port {p.port} ({p.flag}) is already in use"
    if code == errno.EACCES:
        return f"port {p.port} ({p.flag}) may not be bound by this user (ports below 1024 need privileges)"
    if code == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}:{p.port} ({p.flag}): this machine has no address {host} (--listen-address)"
    reason = getattr(e, "strerror", None) or str(e)
    return f"cannot listen on {host}:{p.port} ({p.flag}): {reason}"
