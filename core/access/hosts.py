"""Which `Host` and `Origin` a request may carry: this machine's names and addresses, or configured ones.

A web page on any site can make the user's browser send requests to 127.0.0.1 (a cross-site POST), and
with DNS rebinding an attacker's domain can resolve to 127.0.0.1 and read the answers. Both carry the
attacker's name: in `Host` (rebinding) or in `Origin` (cross-site). So every HTTP request and websocket
is refused unless its `Host` names this machine (loopback names and addresses, the machine's own
addresses, its hostname) or a host in LOCALLLM_ALLOWED_HOSTS, and a browser's `Origin` is the address
the page was served from (or a configured origin).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import psutil

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
ADDRESSES_TTL_S = 30.0  # interface addresses are read again after this (a laptop changes networks)
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
logger = logging.getLogger(__name__)


def _split(value: str | None) -> frozenset[str]:
    return frozenset(item.strip().lower().rstrip(".") for item in (value or "").split(",") if item.strip())


def host_name(header: str | None) -> str | None:
    """The host of a `Host` header value ("[::1]:8000" → "::1"), lowercased; None when malformed."""
    if not header or any(ch in header for ch in "/@?# \t\\"):
        return None
    try:
        parsed = urlsplit(f"//{header}")
        parsed.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return None
    return (parsed.hostname or "").rstrip(".") or None


def _authority(header: str, scheme: str) -> tuple[str, int] | None:
    """(host, port) of a Host header or an origin's netloc, the scheme's default port filled in."""
    host = host_name(header)
    if host is None:
        return None
    port = urlsplit(f"//{header}").port or DEFAULT_PORTS.get(scheme, 80)
    return host, port


def _machine_addresses() -> frozenset[str]:
    found = set()
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                found.add(address.address.split("%", 1)[0].lower())  # drop an IPv6 zone: fe80::1%eth0
    return frozenset(found)


def _machine_names() -> frozenset[str]:
    name = socket.gethostname().lower().rstrip(".")
    return frozenset({name, f"{name}.local", name.split(".", 1)[0]}) if name else frozenset()


@dataclass
class HostPolicy:
    """This machine's names and addresses plus configured hosts and origins."""

    allowed_hosts: frozenset[str] = frozenset()  # LOCALLLM_ALLOWED_HOSTS: extra names (a proxy's, a DNS name)
    allowed_origins: frozenset[str] = frozenset()  # cross-site origins a server opens itself to (CORS)
    _addresses: frozenset[str] = field(default=frozenset(), repr=False)
    _read_at: float = field(default=-ADDRESSES_TTL_S, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _addresses_now(self, refresh: bool = False) -> frozenset[str]:
        with self._lock:
            if refresh or time.monotonic() - self._read_at > ADDRESSES_TTL_S:
                self._addresses, self._read_at = _machine_addresses(), time.monotonic()
            return self._addresses

    def allows_host(self, header: str | None) -> bool:
        """Whether a `Host` header names this machine or a configured host."""
        return host_name(header) in self.allowed_hosts or self.names_this_machine(header)

    def names_this_machine(self, header: str | None) -> bool:
        """Whether a `Host` header names this machine itself: a loopback name or address, its hostname,
        one of its addresses (not a configured host: a reverse proxy's name)."""
        host = host_name(header)
        if host is None:
            return False
        if host in LOOPBACK_NAMES or host in _machine_names():
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False  # a name nobody configured: DNS rebinding looks exactly like this
        if address.is_loopback or address.is_unspecified:
            return True
        text = str(address).lower()
        return text in self._addresses_now() or text in self._addresses_now(refresh=True)

    def allows_origin(self, origin: str | None, host_header: str | None, scheme: str = "http") -> bool:
        """A browser's `Origin` must be the page's own (same host and port as `Host`), a configured
        origin, or a page served under a configured host name; no Origin (not a browser) is fine."""
        if origin is None:
            return True
        origin = origin.strip().lower().rstrip("/")
        if origin in self.allowed_origins:
            return True
        parsed = urlsplit(origin)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            return False  # "null" (sandboxed frames, file://) and anything stranger
        theirs = _authority(parsed.netloc, parsed.scheme)
        if theirs is None:
            return False
        return theirs == _authority(host_header or "", scheme) or theirs[0] in self.allowed_hosts


def load_host_policy(env: Mapping[str, str] | None = None) -> HostPolicy:
    """LOCALLLM_ALLOWED_HOSTS (names, comma-separated) and LOCALLLM_CORS_ORIGINS (origins of other
    sites allowed to call the API from a browser, e.g. http://localhost:3000)."""
    env = os.environ if env is None else env
    return HostPolicy(_split(env.get("LOCALLLM_ALLOWED_HOSTS")), _split(env.get("LOCALLLM_CORS_ORIGINS")))


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


Refusal = Callable[[Scope, Receive, Send, int, str], Awaitable[None]]


async def plain_refusal(scope: Scope, receive: Receive, send: Send, status: int, reason: str) -> None:
    """The status with one sentence (HTTP), or a websocket closed before it is accepted (a 403)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})
        return
    body = reason.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class TrustedHostsMiddleware:
    """Refuses any request or websocket whose `Host` is not this machine's or whose browser `Origin`
    is another site's, before the app sees it."""

    def __init__(
        self, app: ASGIApp, policy: HostPolicy | None = None, refuse: Refusal = plain_refusal
    ) -> None:
        self.app = app
        self.policy = policy or load_host_policy()
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = header(scope, b"host")
        if not self.policy.allows_host(host):
            logger.info(
                "refused a request for host %r from %s", str(host)[:80], (scope.get("client") or ("?",))[0]
            )
            reason = (
                f"This server does not answer to the host name {str(host)[:80]!r}. "
                "Open it by this machine's address, or add the name to LOCALLLM_ALLOWED_HOSTS."
            )
            await self.refuse(scope, receive, send, 400, reason)
            return
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        origin = header(scope, b"origin")
        if not self.policy.allows_origin(origin, host, scheme):
            logger.info("refused a request from the page at %r", str(origin)[:80])
            reason = f"Requests from the web page at {str(origin)[:80]!r} are not allowed here."
            await self.refuse(scope, receive, send, 403, reason)
            return
        if scope["type"] == "websocket" and origin is not None:
            scope = _as_addressed(scope, origin)
        await self.app(scope, receive, send)


def _as_addressed(scope: Scope, origin: str) -> Scope:
    """A websocket whose Origin the policy accepted, with the `Host` the browser addressed: its page's.

    Behind a reverse proxy that rewrites `Host` (nginx's `proxy_pass` does unless told otherwise), the
    websocket arrives with `Host: 127.0.0.1:8501` and the proxy's name in Origin (listed in
    LOCALLLM_ALLOWED_HOSTS). Streamlit checked it again by asking checkip.amazonaws.com for this
    machine's address (a call off the machine) and refused it: the dashboard never loaded. And the app
    took such a visitor for this machine's own user (ui/access.py)."""
    addressed = urlsplit(origin.strip()).netloc.encode("latin-1")
    headers = [(name, value) for name, value in scope["headers"] if name != b"host"]
    return {**scope, "headers": [*headers, (b"host", addressed)]}
