"""A real app server (started as the README starts it) and Debian's chromium driven by Playwright."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, Playwright, expect, sync_playwright

from core.chat.configs import ConfigStore
from core.inference.params import GenerationParams
from core.logs import log_file
from core.settings import PROJECT_ROOT
from core.storage import repo
from core.storage.db import Database
from tests.fixtures.serving import free_port
from tests.fixtures.tiny_models import build_tiny_model, install_ready

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUTBOUND_AUDIT = PROJECT_ROOT / "tests" / "fixtures" / "outbound_audit"  # its sitecustomize logs each try
# Without these, chromium keeps trying to reach Google's services, which this machine cannot reach.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def wait_until_healthy(url: str, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited early with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"the app did not answer on {url} within {timeout_s} s")


@dataclass(frozen=True)
class RunningApp:
    url: str
    port: int
    process: subprocess.Popen


@contextmanager
def running_app(
    *args: str, log_path: Path, module: str = "core", port: int | None = None
) -> Iterator[RunningApp]:
    """`python -m core app --port N ARGS` as the README starts it, or `python -m MODULE ARGS --server.port N`.

    Stopped, with all it started, on exit."""
    port = port or free_port()
    command = ["app", "--port", str(port), *args] if module == "core" else [*args, "--server.port", str(port)]
    outbound = log_path.with_suffix(".outbound")
    python_path = os.pathsep.join([str(OUTBOUND_AUDIT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": python_path, "LOCALLLM_TEST_OUTBOUND_LOG": str(outbound)}
    with log_path.open("a") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *command],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown stops everything it started
        )
        url = f"http://localhost:{port}"
        try:
            wait_until_healthy(url, process)
            yield RunningApp(url, port, process)
        finally:
            stop_process_group(process)
    deprecated = [
        line for line in log_path.read_text(errors="replace").splitlines() if "deprecat" in line.lower()
    ]
    assert not deprecated, f"the app used a deprecated API: {deprecated[:3]}"
    own_log = log_file()  # where the last net under the pages (app.py) writes a fault of the app's own
    logged = own_log.read_text(errors="replace").splitlines() if own_log.exists() else []
    faults = [line for line in logged if "the page failed" in line]
    assert not faults, f"a page failed: {faults[:3]} (the traceback is in {own_log})"
    left = outbound.read_text().splitlines() if outbound.exists() else []
    assert not left, f"the app tried to reach another host: {left[:3]}"


def stop_process_group(process: subprocess.Popen, sig: signal.Signals = signal.SIGTERM) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _browsers(item: pytest.Item) -> list[Browser]:
    fixtures = item.funcargs.values()  # lan_browser is a (host, browser) pair
    values = [part for value in fixtures for part in (value if isinstance(value, tuple) else [value])]
    return [value for value in values if isinstance(value, Browser)]


# A state waited for, as long as a busy machine may need (the other test process runs torch beside the
# browser: a page's figures came 5 s after its heading there); Playwright's default is 5 s.
expect.set_options(timeout=30_000)


@pytest.fixture(autouse=True)
def close_pages_after_each_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A page left open keeps reconnecting to its stopped app, and would join a later app that
    happens to get the same port."""
    yield
    for browser in _browsers(request.node):
        for context in browser.contexts:
            context.close()


def _page_problems(page: Page) -> list[str]:
    """What the page's scripts threw and its console's errors (a blank page says why: a script error
    empties Streamlit's whole page)."""
    try:
        thrown = [f"page error: {error}" for error in page.page_errors()]
        said = [f"console {m.type}: {m.text}" for m in page.console_messages() if m.type == "error"]
    except Exception as exc:  # a diagnostic must not hide the real failure
        return [f"(no page errors: {exc})"]
    return [line[:500] for line in [*thrown, *said][-10:]]


def _what_the_browsers_show(item: pytest.Item) -> str:
    """Each open page's address, visible text and script errors, and the tail of each app log of a
    failed test."""
    lines: list[str] = []
    for browser in _browsers(item):
        for page in (page for context in browser.contexts for page in context.pages):
            try:
                text = page.inner_text("body", timeout=2_000)
            except Exception as exc:  # a diagnostic must not hide the real failure
                text = f"(unreadable: {exc})"
            lines += [f"== page {page.url}", text[-1_500:], *_page_problems(page)]
    env = item.funcargs.get("isolated_env")
    # The apps' consoles, and the engine's own log (its failures are logged there, not on the console).
    logs = [*Path(env).glob("*.log"), *Path(env).glob("data/logs/*.log")] if isinstance(env, Path) else []
    for log in sorted(logs):
        lines += [f"== {log.name}", *log.read_text(errors="replace").splitlines()[-25:]]
    return "\n".join(lines)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed browser test also shows what its pages showed and what its apps logged (for CI logs)."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        report.sections.append(("what the browsers showed", _what_the_browsers_show(item)))


LONG_PROMPT = "hello world " * 250  # ~2,000 tokens: reading it keeps the engine busy for a while


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random model big enough that a long prompt takes about a second to read on 2 cores."""
    return build_tiny_model(
        tmp_path_factory.mktemp("slow"), hidden_size=384, layers=6, context=4096, endless=True
    )


@pytest.fixture
def slow_model_ready(isolated_env: Path, slow_model: Path) -> str:
    """The slow model installed, verified and chosen for chat, as after a download and "Use for chat"."""
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "slow", slow_model)
    db = Database(os.environ["LOCALLLM_DB_URL"])
    with db.begin() as session:
        repo.add_custom_model(session, "slow", "test/slow", "main", {})
    ConfigStore(db).use_local_model("slow")
    return "slow"


def send(page: Page, text: str, placeholder: str = "Message the model…") -> None:
    """Type a chat message and press Enter, as a user does: into the one chat input of the page in
    its language (right after a language switch the old one may still be on the page for a moment)."""
    expect(page.get_by_test_id("stChatInputTextArea")).to_have_count(1, timeout=30_000)
    box = page.get_by_placeholder(placeholder)
    expect(box).to_be_visible(timeout=30_000)
    box.fill(text)
    # Enter sends only once the text is in and every attached file is uploaded (the button says so).
    expect(page.get_by_test_id("stChatInputSubmitButton")).to_be_enabled(timeout=30_000)
    box.press("Enter")


def state_badge(card: Locator, text: str) -> Locator:
    """A model card's state badge saying `text` (its icon's name comes first: "check_circle Ready")."""
    return card.get_by_text(re.compile(rf"\b{re.escape(text)}$"))


def stop_button(page: Page) -> Locator:
    """The reply's own Stop button (Streamlit's own Stop, in the header, is hidden: ui.widgets)."""
    return page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Stop")


def reply_length(tokens: int) -> None:
    """The chosen model's replies end after `tokens` tokens (its provider config's max_new_tokens)."""
    store = ConfigStore(Database(os.environ["LOCALLLM_DB_URL"]))
    store.update_config(store.get_current_config().id, params=GenerationParams(max_new_tokens=tokens))


@pytest.fixture
def short_replies(slow_model_ready: str) -> str:
    """The slow model, answering in 16 tokens: for tests that need a finished reply, not a long one."""
    reply_length(16)
    return slow_model_ready


@pytest.fixture
def long_replies(slow_model_ready: str) -> str:
    """The slow model, answering in up to 2,048 tokens (half its context): still writing when a test
    reloads, presses Esc or kills the server, however busy the machine (512 tokens took 0.7 s: a reload
    on a loaded machine came after the reply had ended)."""
    reply_length(2048)
    return slow_model_ready


@pytest.fixture
def app_url(isolated_env: Path) -> Iterator[str]:
    with running_app(log_path=isolated_env / "app.log") as app:
        yield app.url


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    """One Playwright driver for the session (two cannot run in one thread)."""
    with sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: run the README's test command, which installs it.")
    instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    yield instance
    instance.close()


class LanHost:
    """A second host: a network namespace joined to this one by a veth pair, with chromium inside it."""

    # A /30 of its own per test process: two runs at once on one machine both added 10.231.7.1, and one
    # run's replies left by the other's link (its LAN browser timed out).
    _BASE = os.getpid() % 16384 * 4
    HOST_IP = f"10.231.{_BASE // 256}.{_BASE % 256 + 1}"
    CLIENT_IP = f"10.231.{_BASE // 256}.{_BASE % 256 + 2}"

    def __init__(self, tmp: Path) -> None:
        self.name = f"llmtest{os.getpid()}"
        self.veth = f"vh{os.getpid()}"[:15]
        self.wrapper = tmp / "chromium-in-namespace"
        self.wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {self.name} {CHROMIUM} "$@"\n')
        self.wrapper.chmod(0o755)

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    def __enter__(self) -> LanHost:
        peer = f"vn{os.getpid()}"[:15]
        self._ip("netns", "add", self.name)
        try:
            self._ip("link", "add", self.veth, "type", "veth", "peer", "name", peer)
            self._ip("link", "set", peer, "netns", self.name)
            # No IPv6 link-local addresses: their duplicate-address checks end a second or two after
            # the link is up, and chromium aborts whatever it is loading then (ERR_NETWORK_CHANGED).
            self._ip("link", "set", self.veth, "addrgenmode", "none")
            self._ip("-n", self.name, "link", "set", peer, "addrgenmode", "none")
            self._ip("addr", "add", f"{self.HOST_IP}/30", "dev", self.veth)
            self._ip("link", "set", self.veth, "up")
            self._ip("-n", self.name, "addr", "add", f"{self.CLIENT_IP}/30", "dev", peer)
            self._ip("-n", self.name, "link", "set", peer, "up")
            self._ip("-n", self.name, "link", "set", "lo", "up")
        except subprocess.CalledProcessError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def url(self, app_url: str) -> str:
        """The app's URL as the other host reaches it: this machine's address on the veth link."""
        return app_url.replace("localhost", self.HOST_IP)


@pytest.fixture(scope="session")
def lan_browser(
    playwright: Playwright, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LanHost, Browser]]:
    """Chromium on another host (a network namespace): its requests reach the app from 10.231.7.2."""
    try:
        host = LanHost(tmp_path_factory.mktemp("lan")).__enter__()
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        pytest.fail(f"cannot make a network namespace (needs root and iproute2): {detail}")
    try:
        wrapper = str(host.wrapper)
        instance = playwright.chromium.launch(executable_path=wrapper, headless=True, args=CHROMIUM_ARGS)
        yield host, instance
        instance.close()
    finally:
        host.__exit__()
