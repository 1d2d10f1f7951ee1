"""Connecting to a host with several addresses as browsers do (RFC 8305, "Happy Eyeballs").

Python's socket.create_connection tries a host's addresses one after the other and waits the whole
connect timeout on each: where a network's IPv6 is broken (a prefix advertised but not routed, common on
home links), each of huggingface.co's IPv6 addresses, listed before its IPv4 ones, cost the full 10 s
before the next was tried, for every new connection (its API, then its CDN). Here the next address is
tried when the one before has not connected within ATTEMPT_DELAY_S, IPv6 and IPv4 in turn, and the first
connection made is kept: as asyncio's create_connection(happy_eyeballs_delay=0.25) does.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time
from collections.abc import Iterable, Sequence
from typing import Any

import httpcore2
from httpcore2._backends.sync import SyncStream

ATTEMPT_DELAY_S = 0.25  # RFC 8305's recommended "Connection Attempt Delay"
AddressInfo = tuple[Any, ...]  # one entry of socket.getaddrinfo


def interleaved(infos: Sequence[AddressInfo]) -> list[AddressInfo]:
    """The addresses in turn by family, the first one's family first (IPv6, IPv4, IPv6, …), each family's
    own order kept."""
    families: dict[int, list[AddressInfo]] = {}
    for info in infos:
        families.setdefault(info[0], []).append(info)
    queues = list(families.values())
    ordered = []
    while queues:
        ordered.extend(queue.pop(0) for queue in queues)
        queues = [queue for queue in queues if queue]
    return ordered


def connect(
    host: str, port: int, timeout: float | None, source_address: tuple[str, int] | None = None
) -> socket.socket:
    """A socket connected to the first of `host`'s addresses that answers, each attempt started
    ATTEMPT_DELAY_S after the one before (at once when it fails) and given `timeout` to connect; the
    last failure raised when none connects (TimeoutError where it ran out of time)."""
    infos = interleaved(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
    pending: dict[socket.socket, float] = {}  # attempts under way, each with its deadline
    last: OSError = OSError(errno.EHOSTUNREACH, f"{host} has no address")
    started = 0
    next_start = time.monotonic()
    with selectors.DefaultSelector() as selector:
        try:
            while started < len(infos) or pending:
                now = time.monotonic()
                if started < len(infos) and (now >= next_start or not pending):
                    attempt = _start(infos[started], source_address)
                    started += 1
                    if isinstance(attempt, OSError):  # the next one at once
                        last, next_start = attempt, now
                    else:
                        selector.register(attempt, selectors.EVENT_WRITE)
                        pending[attempt] = now + timeout if timeout is not None else float("inf")
                        next_start = now + ATTEMPT_DELAY_S
                    continue
                wake = min([*pending.values(), next_start if started < len(infos) else float("inf")])
                for key, _events in selector.select(None if wake == float("inf") else max(0.0, wake - now)):
                    sock = key.fileobj  # type: ignore[assignment]
                    selector.unregister(sock)
                    del pending[sock]
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code == 0:
                        sock.setblocking(True)
                        return sock
                    sock.close()
                    last, next_start = OSError(code, os.strerror(code)), time.monotonic()
                now = time.monotonic()
                for sock, deadline in list(pending.items()):
                    if now >= deadline:
                        selector.unregister(sock)
                        del pending[sock]
                        sock.close()
                        last = TimeoutError("timed out")
        finally:
            for sock in pending:
                sock.close()
    raise last


def _start(info: AddressInfo, source_address: tuple[str, int] | None) -> socket.socket | OSError:
    """A connection attempt under way (its socket), or why it could not start."""
    family, kind, protocol, _name, address = info
    sock = socket.socket(family, kind, protocol)
    try:
        sock.setblocking(False)
        if source_address is not None:
            sock.bind(source_address)
        code = sock.connect_ex(address)
    except OSError as exc:
        sock.close()
        return exc
    if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
        sock.close()
        return OSError(code, os.strerror(code))
    return sock


class HappyEyeballsBackend(httpcore2.SyncBackend):
    """httpcore's network backend with `connect` in place of socket.create_connection."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        source = None if local_address is None else (local_address, 0)
        try:
            sock = connect(host, port, timeout, source)
        except TimeoutError as exc:
            raise httpcore2.ConnectTimeout(exc) from exc
        except OSError as exc:
            raise httpcore2.ConnectError(exc) from exc
        for option in socket_options or ():
            sock.setsockopt(*option)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return SyncStream(sock)
