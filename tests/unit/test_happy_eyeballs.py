"""Connecting as browsers do: a host's addresses tried in turn, 250 ms apart, the first to connect kept."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest

from core.happy_eyeballs import connect, interleaved
from core.hub import listing
from core.hub.transfer import DownloadTarget, ModelDownload, TransferPolicy
from tests.fixtures.hub_server import HubServer, unanswering_endpoint

V6, V4 = socket.AF_INET6, socket.AF_INET


def _info(family: int, address: str, port: int) -> tuple:
    sockaddr = (address, port, 0, 0) if family == V6 else (address, port)
    return (family, socket.SOCK_STREAM, 6, "", sockaddr)


@contextmanager
def resolving(monkeypatch: pytest.MonkeyPatch, name: str, addresses: list[tuple]) -> Iterator[None]:
    """`name` resolves to `addresses` (each with its own port), in that order; other names as before."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        return list(addresses) if host == name else real(host, port, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(socket, "getaddrinfo", getaddrinfo)
        yield


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_the_families_take_turns_the_first_ones_first() -> None:
    six = [_info(V6, f"2600::{n}", 443) for n in range(1, 4)]
    four = [_info(V4, f"18.0.0.{n}", 443) for n in range(1, 3)]
    assert interleaved([*six, *four]) == [six[0], four[0], six[1], four[1], six[2]]
    assert interleaved([four[0], *six[:1], four[1]]) == [four[0], six[0], four[1]]
    assert interleaved(four) == four


def test_addresses_that_drop_connections_do_not_hold_up_the_one_that_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three addresses whose connections hang (a broken IPv6 route), then the server's: connected to it
    once the others had their 250 ms each, not after each one's whole timeout (30 s here, 90 s in all,
    as socket.create_connection would wait)."""
    with socket.socket() as server, unanswering_endpoint(drops_connections=True) as dropping:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        hanging = [_info(V4, "127.0.0.1", _port(dropping))] * 3
        with resolving(monkeypatch, "hub.test", [*hanging, _info(V4, *server.getsockname())]):
            started = time.monotonic()
            with connect("hub.test", 443, timeout=30) as sock:
                assert sock.getpeername() == server.getsockname()
                assert sock.getblocking()
            assert time.monotonic() - started < 15  # about 0.75 s; each hanging address alone took 30 s


def test_every_address_failing_raises_the_last_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = _info(V4, *closed.getsockname())
    with unanswering_endpoint(drops_connections=True) as dropping:
        with resolving(monkeypatch, "hub.test", [refused, refused]), pytest.raises(ConnectionRefusedError):
            connect("hub.test", 443, timeout=5)
        hanging = _info(V4, "127.0.0.1", _port(dropping))
        with resolving(monkeypatch, "hub.test", [refused, hanging]), pytest.raises(TimeoutError):
            connect("hub.test", 443, timeout=0.5)


def test_a_download_from_a_hub_whose_first_addresses_hang(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the app's own client (core.outbound): its listing and its weights' bytes come without
    waiting for the hanging address's connect timeout (60 s here, 10 s in the app, on each new
    connection: the Hub's API, then its CDN)."""
    monkeypatch.setattr(listing, "HUB_TIMEOUT", httpx2.Timeout(60, connect=60))
    hub.add_repo("org/model", {"config.json": b"{}", "model.safetensors": b"\x00" * 100_000})
    with unanswering_endpoint(drops_connections=True) as dropping:
        addresses = [_info(V4, "127.0.0.1", _port(dropping)), _info(V4, "127.0.0.1", _port(hub.url))]
        with resolving(monkeypatch, "hub.test", addresses):
            job = ModelDownload(
                DownloadTarget("m", "org/model"), tmp_path, [f"http://hub.test:{_port(hub.url)}"],
                policy=TransferPolicy(connect_timeout_s=60, disk_margin_bytes=0),
            )  # fmt: skip
            started = time.monotonic()
            progress = job.run()
    assert progress.state == "completed", progress.error
    assert progress.notes == ()  # not a try lost to the hanging address
    assert time.monotonic() - started < 30  # about a second; a connection to the hanging address took 60 s
