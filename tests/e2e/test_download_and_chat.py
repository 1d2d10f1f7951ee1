"""In a real browser: find a model by name on the Models page, add it, download it, then chat with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.e2e.conftest import state_badge
from tests.fixtures.hub_server import HubServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def hub_with_model(
    hub: HubServer, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> HubServer:
    hub.add_repo("tiny/chat-model", tiny_models["qwen2"], downloads=50)
    hub.add_repo("tiny/chat-model-base", tiny_models["qwen2"], downloads=10)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # the app's first endpoint: the local Hub
    return hub


@pytest.fixture
def app_with_hub(hub_with_model: HubServer, app_url: str) -> str:
    return app_url


def test_download_then_chat(browser: Browser, app_with_hub: str, hub_with_model: HubServer) -> None:
    page = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 1000}).new_page()
    page.goto(f"{app_with_hub}/models")
    search = page.locator(".st-key-find-model")  # found by name, from the keyboard
    words = search.get_by_role("textbox", name="Search by name")
    words.fill("chat llama")  # no name holds both
    words.press("Enter")
    expect(search.get_by_text("No chat model for transformers has “chat llama” in its name.")).to_be_visible()
    words.fill("MODEL chat")  # each word in the name, any case, any order
    words.press("Enter")
    expect(search.get_by_text("2 models for “MODEL chat”")).to_be_visible()
    search.locator(".st-key-find-add-0").get_by_role("button", name="Add").click()  # the most downloaded
    card = page.locator(".st-key-card-chat-model")
    expect(card.get_by_text("tiny/chat-model", exact=True)).to_be_visible()
    expect(search.locator(".st-key-find-add-0").get_by_role("button", name="In the catalog")).to_be_disabled()
    hub_with_model.hold("model.safetensors")  # the download runs on until the page has shown its progress
    # the catalog's estimates need the bandwidth, measured while the page says "measuring…": they are
    # drawn without a click
    expect(page.get_by_text("Estimated decode speed on the CPU").first).to_be_visible(timeout=30_000)
    # the model just added opens on its files: the plan's summary ("… already here, … to fetch"; a
    # browser's "Failed to fetch" of a page script, seen once on a busy CI machine in place of the
    # card's figures, says neither)
    expect(card.get_by_text("already here")).to_be_visible()
    card.get_by_role("button", name="Download", exact=True).click()
    expect(card.get_by_text("Downloading")).to_be_visible()
    expect(card.get_by_text("model.safetensors").first).to_be_visible()  # progress names the file
    hub_with_model.release()
    expect(state_badge(card, "Ready")).to_be_visible(timeout=60_000)
    # the first model ready answers in the chat by itself
    expect(card.get_by_role("button", name="In use for chat", exact=True)).to_be_disabled(timeout=30_000)

    page.get_by_test_id("stSidebarNavItems").get_by_role("link", name="Chat").click()
    box = page.get_by_test_id("stChatInputTextArea")
    expect(box).to_be_visible(timeout=30_000)
    box.fill("Hello from the browser")
    box.press("Enter")
    expect(page.get_by_text("tokens/s").first).to_be_visible(timeout=60_000)  # the reply's stats line
    expect(page.get_by_test_id("stChatMessage")).to_have_count(2)
    assert hub_with_model.requests("GET", "model.safetensors")


@pytest.fixture
def hub_with_the_catalog(
    hub: HubServer, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> HubServer:
    hub.add_repo("Qwen/Qwen2.5-0.5B-Instruct", tiny_models["qwen2"])
    hub.hold("model.safetensors")  # the download runs on until the page has shown its progress
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    return hub


def test_the_first_model_downloads_from_the_chat_page_which_then_opens_by_itself(
    browser: Browser, hub_with_the_catalog: HubServer, app_url: str
) -> None:
    page = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900}).new_page()
    page.goto(app_url)
    start = page.locator(".st-key-quick-start")
    expect(start.get_by_text("推荐本机使用：qwen2.5-0.5b")).to_be_visible(timeout=30_000)
    start.get_by_role("button", name="下载 qwen2.5-0.5b").click()
    expect(start.get_by_text("model.safetensors")).to_be_visible()  # its progress, polled
    expect(start.get_by_text("所有文件校验完成后将自动进入聊天")).to_be_visible()
    start.get_by_role("button", name="取消").click()
    resume = start.get_by_role("button", name="继续下载")  # paused, some files in: it goes on from there
    expect(resume).to_be_visible()
    hub_with_the_catalog.release()
    resume.click()
    box = page.get_by_test_id("stChatInputTextArea")  # no click, no reload
    expect(box).to_be_visible(timeout=60_000)
    box.fill("你好")
    box.press("Enter")
    expect(page.get_by_text("tokens/s").first).to_be_visible(timeout=60_000)
