"""Proxies from the environment: a server on this machine or its network is reached directly, any other
through the proxy. The proxies are real loopback servers (an OpenAI-style one, the test hub) that answer
requests sent to them as a proxy; the dead ones are closed ports."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub.utils import close_session

from core import outbound
from core.chat.providers import OpenAICompatibleProvider
from core.errors import ConfigError, ProviderError
from core.hub.transfer import DownloadTarget, ModelDownload, Progress, TransferPolicy
from tests.fixtures.hub_server import SELF_SIGNED_CERTIFICATE, HubServer
from tests.fixtures.openai_faults import FaultyOpenAIServer
from tests.fixtures.serving import free_port

REPO = {"config.json": b'{"model_type": "qwen2"}', "tokenizer.json": b"{}", "model.safetensors": b"w" * 4096}
ON_THE_INTERNET = "models.example"  # a name reserved never to resolve (RFC 2606)


@pytest.fixture
def proxies(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No proxy settings but the test's; huggingface_hub's shared client made again under them, and
    again afterwards without them."""
    for name in ("no_proxy", "http_proxy", "https_proxy", "all_proxy", "ssl_cert_file", "ssl_cert_dir"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    close_session()
    yield monkeypatch
    close_session()


@pytest.mark.parametrize(
    ("host", "here"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("::1", True),
        ("192.168.1.20", True),
        ("fe80::1", True),
        ("100.101.102.103", True),  # a Tailscale address
        ("gpu-box", True),
        ("ollama.local", True),
        ("api.openai.com", False),
        ("hf-mirror.com", False),
        ("8.8.8.8", False),
    ],
)
def test_which_hosts_are_on_this_network(host: str, here: bool) -> None:
    assert outbound.is_on_this_network(host) is here


def test_a_model_server_here_is_reached_without_the_proxy_and_one_on_the_internet_through_it(
    proxies: pytest.MonkeyPatch,
) -> None:
    """http_proxy set for pip or git, without NO_PROXY: Ollama on localhost looked down through it."""
    with (
        FaultyOpenAIServer('listing:{"data": [{"id": "through-the-proxy"}]}') as proxy,
        FaultyOpenAIServer('listing:{"data": [{"id": "direct"}]}') as here,
    ):
        proxies.setenv("http_proxy", proxy.url.removesuffix("/v1"))
        assert OpenAICompatibleProvider(here.url, None, "").list_models() == ["direct"]
        assert proxy.requests == 0
        internet = f"http://{ON_THE_INTERNET}/v1"
        assert OpenAICompatibleProvider(internet, None, "").list_models() == ["through-the-proxy"]


def _download(endpoint: str, models: Path) -> Progress:
    policy = TransferPolicy(backoff_s=0.01, stall_timeout_s=2.0, disk_margin_bytes=0)
    return ModelDownload(DownloadTarget("m", "org/model"), models, [endpoint], policy=policy).run()


def _downloaded(endpoint: str, models: Path) -> bytes:
    progress = _download(endpoint, models)
    assert progress.state == "completed", progress.error
    return (models / "m" / "model.safetensors").read_bytes()


def test_a_mirror_here_is_reached_without_the_proxies_clash_sets(
    hub: HubServer, tmp_path: Path, proxies: pytest.MonkeyPatch
) -> None:
    """Clash's shell command sets an HTTP proxy and a SOCKS all_proxy: every download stopped on "an
    unexpected error (ImportError: Using SOCKS proxy, but the 'socksio' package is not installed)", and a
    mirror on localhost went to the proxy."""
    hub.add_repo("org/model", REPO)
    dead = f"127.0.0.1:{free_port()}"
    proxies.setenv("http_proxy", f"http://{dead}")
    proxies.setenv("all_proxy", f"socks5://{dead}")
    assert _downloaded(hub.url, tmp_path) == REPO["model.safetensors"]


def test_a_mirror_on_the_internet_is_reached_through_the_proxy(
    hub: HubServer, tmp_path: Path, proxies: pytest.MonkeyPatch
) -> None:
    hub.add_repo("org/model", REPO)
    proxies.setenv("http_proxy", hub.url)  # the test hub answers for any host it is asked as a proxy
    assert _downloaded(f"http://{ON_THE_INTERNET}", tmp_path) == REPO["model.safetensors"]


def test_a_proxy_that_takes_no_connection_is_named_not_the_server(
    tmp_path: Path, proxies: pytest.MonkeyPatch
) -> None:
    """A VPN client that is not running, its variables still set: "the server is not running" and "no
    network" sent people looking at the wrong thing. The proxy's password is never shown."""
    port = free_port()
    proxies.setenv("http_proxy", f"http://me:hunter22@127.0.0.1:{port}")
    with pytest.raises(ProviderError) as raised:
        OpenAICompatibleProvider(f"http://{ON_THE_INTERNET}/v1", None, "").list_models()
    assert raised.value.params["reason"] == "proxy_unreachable"
    assert f"the proxy http://127.0.0.1:{port} that the environment sets" in str(raised.value)
    progress = _download(f"http://{ON_THE_INTERNET}", tmp_path)
    assert progress.state == "failed"
    assert (
        "the proxy that the environment sets (http_proxy, https_proxy or all_proxy) takes no connection"
        in (progress.error or "")
    )
    assert "hunter22" not in str(raised.value) + (progress.error or "")


def test_a_proxy_of_a_kind_that_cannot_be_used_is_one_sentence(
    tmp_path: Path, proxies: pytest.MonkeyPatch
) -> None:
    """`all_proxy=ftp://…` or `socks4://…`: a traceback from every command that reads a model listing."""
    proxies.setenv("all_proxy", "socks4://me:hunter22@127.0.0.1:1080/")
    said = "The proxy that the environment sets (http_proxy, https_proxy or all_proxy) cannot be used: "
    with pytest.raises(ConfigError, match=re.escape(f"{said}socks4://127.0.0.1:1080 is not an http://")):
        OpenAICompatibleProvider(f"http://{ON_THE_INTERNET}/v1", None, "")
    progress = _download(f"http://{ON_THE_INTERNET}", tmp_path)
    assert progress.state == "failed"
    assert (progress.error or "").startswith(said)
    assert "hunter22" not in (progress.error or "")


def test_a_certificate_that_cannot_be_verified_is_named_and_ssl_cert_file_fixes_it(
    tmp_path: Path, proxies: pytest.MonkeyPatch
) -> None:
    """A network that inspects HTTPS with its own certificate authority, a self-signed server, a clock far
    off: "cannot connect (no network, …)" sent people checking their network."""
    with (
        HubServer(tls=True) as hub,
        FaultyOpenAIServer('listing:{"data": [{"id": "m"}]}', tls=True) as server,
    ):
        hub.add_repo("org/model", REPO)
        progress = _download(hub.url, tmp_path / "before")
        assert progress.state == "failed"
        assert "the server's certificate could not be verified" in (progress.error or "")
        with pytest.raises(ProviderError, match=r"The certificate of .* could not be verified"):
            OpenAICompatibleProvider(server.url, None, "").list_models()
        proxies.setenv("SSL_CERT_FILE", str(SELF_SIGNED_CERTIFICATE))  # what the sentences say to do
        close_session()
        assert _downloaded(hub.url, tmp_path / "after") == REPO["model.safetensors"]
        assert OpenAICompatibleProvider(server.url, None, "").list_models() == ["m"]


@pytest.mark.parametrize("content", [None, "not a certificate"], ids=["no such file", "no certificate in it"])
def test_a_certificates_file_that_cannot_be_read_is_one_sentence(
    tmp_path: Path, proxies: pytest.MonkeyPatch, content: str | None
) -> None:
    """SSL_CERT_FILE is what the certificate sentence above says to set: a wrong one stopped a download
    "on an unexpected error (FileNotFoundError …)"."""
    named = tmp_path / "company-ca.pem"
    if content is not None:
        named.write_text(content)
    proxies.setenv("SSL_CERT_FILE", str(named))
    said = f"SSL_CERT_FILE or SSL_CERT_DIR names no certificates this app can read ({named}: "
    with pytest.raises(ConfigError, match=re.escape(said)):
        OpenAICompatibleProvider(f"http://{ON_THE_INTERNET}/v1", None, "")
    progress = _download(f"http://{ON_THE_INTERNET}", tmp_path / "models")
    assert progress.state == "failed"
    assert (progress.error or "").startswith(said)
