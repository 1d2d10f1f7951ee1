"""Kill the app halfway through a download started from the Models page, start it again: it resumes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from core.storage import repo
from core.storage.db import Database
from tests.e2e.conftest import running_app, state_badge, stop_process_group
from tests.fixtures.hub_server import HubServer

pytestmark = pytest.mark.e2e


def test_sigkill_mid_download_then_restart_resumes_without_refetching(
    browser: Browser,
    hub: HubServer,
    bigger_model: Path,
    isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    size = len(hub.add_repo("tiny/chat-model", bigger_model).files["model.safetensors"].data)
    hub.throttle(1_000_000)  # ~5 s for the ~5 MB file
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    with Database(os.environ["LOCALLLM_DB_URL"]).begin() as session:
        repo.add_custom_model(session, "chat-model", "tiny/chat-model", "main", {})
    partial = Path(os.environ["LOCALLLM_MODELS_DIR"]) / "chat-model" / "model.safetensors.incomplete"

    page = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 1000}).new_page()
    card = page.locator(".st-key-card-chat-model")
    with running_app(log_path=isolated_env / "app.log") as first:
        page.goto(f"{first.url}/models")
        # The estimates need the bandwidth, measured while the cards say "measuring…" and poll: once drawn,
        # the page is settled (a click on Download during those polls was lost once on a busy CI machine).
        expect(page.get_by_text("Estimated decode speed on the CPU").first).to_be_visible(timeout=30_000)
        card.get_by_role("button", name="Check files and download").click()
        expect(card.get_by_text("already here")).to_be_visible()  # the plan's summary
        card.get_by_role("button", name="Download", exact=True).click()
        deadline = time.monotonic() + 60
        while not (partial.exists() and partial.stat().st_size > size // 3):
            assert time.monotonic() < deadline, "the download did not get a third of the way"
            time.sleep(0.02)
        stop_process_group(first.process, signal.SIGKILL)  # no chance to save anything more
        on_disk_at_kill = partial.stat().st_size
        assert on_disk_at_kill < size

    hub.hold("model.safetensors")  # the resumed download runs on until the page has shown it
    with running_app(log_path=isolated_env / "app.log", port=first.port):
        page.reload()
        expect(card.get_by_text("Downloading")).to_be_visible()  # resumed on its own
        hub.release()
        expect(state_badge(card, "Ready")).to_be_visible(timeout=60_000)

    # Transfers only: a closed range (bytes=0-N) is the header read when the model was added.
    gets = hub.requests("GET", "model.safetensors")
    transfers = [r for r in gets if r.range is None or r.range.endswith("-")]
    [resumed] = [r for r in transfers if r.range]
    start = int(resumed.range.removeprefix("bytes=").rstrip("-"))
    assert start >= on_disk_at_kill
    # The bytes on disk were not fetched again: the resumed request asked for the rest only. (What the
    # first request sent beyond them was in the sockets' buffers when the app was killed: up to a few
    # hundred KB, lost with the process, so a sum over both requests can exceed the file by that much.)
    assert resumed.bytes_sent == size - start
