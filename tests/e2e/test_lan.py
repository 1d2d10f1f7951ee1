"""The dashboard opened from another host on the LAN (a network namespace over a veth pair).

The app runs as `python -m core app --lan`; chromium runs inside the namespace, so the app sees its
requests come from 10.231.x.y, a real non-loopback address on a real interface. Nothing leaves this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import Browser, Page, expect

from core.access.sign_in import owner_of
from core.chat.service import ChatService
from core.storage.db import Database
from core.storage.records import Message
from tests.e2e.conftest import (
    LONG_PROMPT,
    LanHost,
    RunningApp,
    reply_length,
    running_app,
    send,
    stop_button,
)

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse"


@pytest.fixture
def lan_server(
    isolated_env: Path, slow_model_ready: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningApp]:
    monkeypatch.setenv("LOCALLLM_PASSWORD", PASSWORD)
    with running_app("--lan", log_path=isolated_env / "app.log") as app:
        yield app


@pytest.fixture
def lan_app(lan_server: RunningApp) -> str:
    return lan_server.url


def lan_page(lan_browser: tuple[LanHost, Browser], app_url: str, path: str = "") -> Page:
    host, browser = lan_browser
    page = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900}).new_page()
    page.goto(host.url(app_url) + path)
    return page


def sign_in(page: Page, name: str, password: str, personal: str = "my own password") -> None:
    page.get_by_label("User name").fill(name)
    page.get_by_label("Shared password").fill(password)
    page.get_by_label("Your password", exact=True).fill(personal)
    page.get_by_role("button", name="Sign in").click()


def claim(page: Page, name: str, password: str, personal: str = "my own password") -> None:
    """A name's first sign-in: its personal password, typed twice, claims it."""
    sign_in(page, name, password, personal)
    page.get_by_label("Your password again").fill(personal)
    page.get_by_role("button", name="Claim the name and sign in").click()


def test_lan_browser_must_sign_in_and_the_local_one_need_not(
    lan_browser: tuple[LanHost, Browser], browser: Browser, lan_app: str
) -> None:
    page = lan_page(lan_browser, lan_app, "/models")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Qwen/Qwen2.5-0.5B-Instruct")).to_have_count(0)  # nothing behind the form
    sign_in(page, "alice", "not the password")
    expect(page.get_by_text("Wrong user name or password.")).to_be_visible(timeout=30_000)
    claim(page, "alice", PASSWORD)
    expect(page.get_by_text("Signed in as alice (user)")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    # A user who is not the admin cannot delete a model.
    expect(page.locator(".st-key-delete-slow").get_by_role("button", name="Delete")).to_be_disabled()
    page.reload()  # the session cookie keeps alice signed in
    expect(page.get_by_text("Signed in as alice (user)")).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible(timeout=30_000)
    page.reload()  # signed out for good: the old cookie opens nothing
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible(timeout=30_000)
    sign_in(page, "alice", PASSWORD, "a guess at alice's")  # the shared password alone is not alice
    expect(page.get_by_text("Wrong user name or password.")).to_be_visible(timeout=30_000)
    sign_in(page, "alice", PASSWORD)
    expect(page.get_by_text("Signed in as alice (user)")).to_be_visible(timeout=30_000)

    local = browser.new_context(locale="en-US").new_page()
    local.goto(lan_app)
    expect(local.get_by_role("heading", name="Chat")).to_be_visible(timeout=30_000)
    expect(local.get_by_role("heading", name="Sign in")).to_have_count(0)


def test_without_a_password_the_lan_is_turned_away(
    lan_browser: tuple[LanHost, Browser], isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Started by hand with Streamlit on every interface, with no password configured anywhere.
    monkeypatch.delenv("LOCALLLM_PASSWORD", raising=False)
    args = ("run", "app.py", "--server.address", "0.0.0.0")
    with running_app(*args, log_path=isolated_env / "open.log", module="streamlit") as app:
        page = lan_page(lan_browser, app.url)
        expect(page.get_by_text("no password is configured")).to_be_visible(timeout=30_000)
        expect(page.get_by_label("Shared password")).to_have_count(0)


def test_two_lan_users_chat_at_once_each_in_their_own_conversation(
    lan_browser: tuple[LanHost, Browser], lan_app: str
) -> None:
    alice, bob = lan_page(lan_browser, lan_app), lan_page(lan_browser, lan_app)
    claim(alice, "alice", PASSWORD)
    claim(bob, "bob", PASSWORD)
    send(alice, "Good morning")  # loads the model, so that the next request starts generating at once
    expect(alice.get_by_text("tokens/s")).to_have_count(1, timeout=60_000)
    reply_length(2000)  # from now on both replies run long enough to be seen running together
    send(alice, LONG_PROMPT)
    expect(stop_button(alice)).to_be_visible(timeout=30_000)  # alice's reply runs
    send(bob, "Short question from Bob")
    # Bob's reply is generated beside Alice's (one batch), not after it: part of his is saved while
    # hers is still running (one at a time, his would start once her 2,000 tokens are done).
    db = Database(os.environ["LOCALLLM_DB_URL"])  # one connection for the polls (each open copies the WAL)
    deadline = time.monotonic() + 60
    while not (bob_reply := newest_reply(db, "bob")) or not bob_reply.content:
        assert time.monotonic() < deadline, (
            f"no part of Bob's reply was saved within 60 s: {stored(db, 'bob')}"
        )
        time.sleep(0.2)
    assert newest_reply(db, "alice").finish_reason == "interrupted"  # the mark of a reply still running
    for page in (alice, bob):
        stop_button(page).click()
    for page, messages in ((alice, 4), (bob, 2)):
        expect(page.get_by_text("tokens/s")).to_have_count(messages // 2, timeout=120_000)  # replies finished
        expect(page.get_by_test_id("stChatMessage")).to_have_count(messages)
    bob_titles = bob.get_by_test_id("stSidebar").get_by_role("button", name="Short question from Bob")
    expect(bob_titles).to_have_count(1)
    expect(bob.get_by_test_id("stSidebar").get_by_text("Good morning")).to_have_count(0)
    expect(alice.get_by_test_id("stSidebar").get_by_text("Short question from Bob")).to_have_count(0)


def stored(db: Database, name: str) -> list[str]:
    """A LAN user's stored messages in short (for a failure's message): role, finish, length."""
    chat = ChatService(db, provider=lambda: None, owner=owner_of(name))
    return [
        f"{c.id}:{m.role}/{m.finish_reason}/{len(m.content)}"
        for c in chat.conversations()
        for m in chat.messages(c.id)
    ]


def newest_reply(db: Database, name: str) -> Message | None:
    """The newest reply in a LAN user's newest conversation, as stored."""
    chat = ChatService(db, provider=lambda: None, owner=owner_of(name))
    conversations = chat.conversations()
    if not conversations:
        return None
    return next((m for m in reversed(chat.messages(conversations[0].id)) if m.role == "assistant"), None)


PROBE = """
import http.client, json, sys, urllib.parse
url, cookie = urllib.parse.urlsplit(sys.argv[1]), sys.argv[2]
def status(method, path, body=b""):
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    connection.putrequest(method, path)
    connection.putheader("Content-Length", str(len(body)))
    if cookie:
        connection.putheader("Cookie", "localllm_session=" + cookie)
    connection.endheaders()
    try:
        connection.send(body)
        response = connection.getresponse()
        return f"{response.status} {response.read(40).decode(errors='replace')}".strip()
    except ConnectionError:  # refused before the body was read: the server closed the connection
        return "refused"
uploads = [status("PUT", f"/_stcore/upload_file/s{i}/f{i}", b"x" * 5_000_000) for i in range(20)]
others = {p: status("GET", p) for p in ("/", "/_stcore/health", "/media/x.png", "/_stcore/metrics",
                                        "/component/x/index.html", "/_stcore/agent/openapi.json")}
print(json.dumps({"uploads": uploads, "others": others}))
"""


def session_cookie(page: Page) -> str:
    """The session cookie, once the signed-in page has stored it."""
    deadline = time.monotonic() + 30
    while True:
        cookies = {c["name"]: c["value"] for c in page.context.cookies()}
        if "localllm_session" in cookies:
            return cookies["localllm_session"]
        assert time.monotonic() < deadline, "the session cookie was never stored"
        page.wait_for_timeout(100)


def probe_from(host: LanHost, url: str, cookie: str = "") -> dict:
    """Requests from the other host (inside its network namespace), as a script there would send them."""
    result = subprocess.run(["ip", "netns", "exec", host.name, sys.executable, "-c", PROBE, url, cookie],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_before_signing_in_a_lan_client_reaches_only_the_sign_in_page(
    lan_browser: tuple[LanHost, Browser], lan_server: RunningApp
) -> None:
    host = lan_browser[0]
    url = host.url(lan_server.url)
    before = psutil.Process(lan_server.process.pid).memory_info().rss
    refused = probe_from(host, url)
    grown = psutil.Process(lan_server.process.pid).memory_info().rss - before
    assert set(refused["uploads"]) <= {"403 Sign in first.", "refused"}  # twenty 5 MB uploads: none taken
    assert {path: answer[:3] for path, answer in refused["others"].items()} == {
        "/": "200", "/_stcore/health": "200", "/media/x.png": "403", "/_stcore/metrics": "403",
        "/component/x/index.html": "403", "/_stcore/agent/openapi.json": "403",
    }  # fmt: skip
    assert grown < 50 * 1024**2, f"the app grew by {grown / 1024**2:.0f} MiB"

    page = lan_page(lan_browser, lan_server.url)
    claim(page, "alice", PASSWORD)
    expect(page.get_by_text("Signed in as alice (user)")).to_be_visible(timeout=30_000)
    cookie = session_cookie(page)
    signed_in = probe_from(host, url, cookie)
    # Past the gate: Streamlit answers itself (no such upload session, its own XSRF check).
    assert not {"403 Sign in first.", "refused"} & set(signed_in["uploads"]), signed_in["uploads"][:2]
    assert signed_in["others"]["/media/x.png"].startswith("404")
