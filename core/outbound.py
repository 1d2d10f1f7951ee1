"""How this app's requests leave the machine: to a server on this machine or its network directly, to
any other through the proxy the environment names (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY).

Many machines set a proxy for pip, git or a VPN (Clash's shell command also sets a SOCKS `all_proxy`)
without NO_PROXY for localhost; a proxy elsewhere cannot reach this machine's Ollama, a LAN server or a
mirror on localhost, so through it a running server looked down. Downloads from huggingface.co and
hf-mirror.com, and OpenAI, keep the proxy where it is the only way out.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import urllib.request
from typing import Any

import httpx2

from core.access.hosts import LOOPBACK_NAMES
from core.errors import ConfigError
from core.happy_eyeballs import HappyEyeballsBackend

# Names that only this network resolves (mDNS, home routers, RFC 8375): no proxy elsewhere knows them.
LOCAL_NAME_SUFFIXES = (".local", ".localhost", ".lan", ".home.arpa", ".internal")


def is_on_this_network(host: str) -> bool:
    """Whether a host is this machine or on its network: an address the internet does not route
    (loopback, private, link-local, a VPN's shared range), `localhost`, a name without a dot
    (`gpu-box`) or with a local suffix (`box.local`)."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host in LOOPBACK_NAMES or "." not in host or host.endswith(LOCAL_NAME_SUFFIXES)
    return not address.is_global


def is_certificate_error(exc: BaseException | None) -> bool:
    """Whether a request failed on a server certificate that could not be verified (self-signed, a
    clock far off, a network that inspects HTTPS with its own certificate authority)."""
    while exc is not None:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class ProxyUnreachableError(httpx2.ProxyError):
    """The proxy the environment names takes no connection (a VPN client that is not running)."""

    def __init__(self, proxy: str, request: httpx2.Request) -> None:
        super().__init__(f"cannot connect to the proxy {proxy}", request=request)
        self.proxy = proxy


def _environment_proxies() -> dict[str, str]:
    """The proxy for each scheme from the environment (on macOS and Windows, the system's settings too),
    `http://` added where its scheme is left out (`127.0.0.1:7890`)."""
    found = urllib.request.getproxies()
    proxies = {}
    for scheme in ("http", "https"):
        if url := found.get(scheme) or found.get("all"):
            proxies[scheme] = url if "://" in url else f"http://{url}"
    return proxies


def shown_origin(url: str) -> str:
    """An address as shown: scheme, host and port, without a user name or password it may carry."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.partition('/')[0].rpartition('@')[2]}"


def download_proxy() -> str | None:
    """The proxy that requests to huggingface.co and other hosts on the internet go through, as shown."""
    url = _environment_proxies().get("https")
    return shown_origin(url) if url else None


def _proxy_transport(url: str) -> tuple[httpx2.HTTPTransport, str]:
    """A transport through the proxy at `url`, and the proxy's address as shown."""
    shown = shown_origin(url)
    try:
        return httpx2.HTTPTransport(proxy=url), shown
    except ValueError as exc:  # a scheme httpx has no proxy for (ftp://, socks4://)
        raise ConfigError(
            f"The proxy that the environment sets (http_proxy, https_proxy or all_proxy) cannot be used: "
            f"{shown} is not an http://, https:// or socks5:// address. Fix or unset it.",
            reason="proxy_invalid",
            proxy=shown,
        ) from exc


class ThisNetworkDirect(httpx2.BaseTransport):
    """Sends a request to this machine or its network directly, any other through the environment's
    proxy for its scheme (unless NO_PROXY names the host), as the proxy settings were at creation."""

    def __init__(self) -> None:
        try:  # each transport reads the certificates SSL_CERT_FILE / SSL_CERT_DIR name, if set
            self._direct = httpx2.HTTPTransport()
        except OSError as exc:  # no such file, or no certificate in it (ssl.SSLError)
            named = os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR")
            raise ConfigError(
                f"SSL_CERT_FILE or SSL_CERT_DIR names no certificates this app can read ({named}: "
                f"{exc.strerror or exc}). Fix or unset it.",
                reason="certificates_unreadable",
                path=named,
            ) from exc
        # Its connections as browsers make them (core/happy_eyeballs.py); httpx takes no backend itself.
        self._direct._pool._network_backend = HappyEyeballsBackend()
        self._proxied = {scheme: _proxy_transport(url) for scheme, url in _environment_proxies().items()}

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        host = request.url.host
        proxied = self._proxied.get(request.url.scheme)
        if proxied is None or is_on_this_network(host) or urllib.request.proxy_bypass(host):
            return self._direct.handle_request(request)
        transport, shown = proxied
        try:
            return transport.handle_request(request)
        except httpx2.ConnectError as exc:
            raise ProxyUnreachableError(shown, request) from exc

    def close(self) -> None:
        self._direct.close()
        for transport, _ in self._proxied.values():
            transport.close()


def client(**options: Any) -> httpx2.Client:
    """An httpx client that sends its requests as this module says; `options` as httpx2.Client's."""
    return httpx2.Client(transport=ThisNetworkDirect(), **options)
