"""In a real browser, what people use every day: a file attached to a message, a regenerated answer
kept as a branch and switched back, every conversation exported and a ChatGPT export imported, and the
theme following the system with the menu's switch."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from core.preferences import Preferences
from core.storage import repo
from core.storage.db import Database
from core.units import format_bytes
from tests.e2e.conftest import send
from tests.fixtures.tiny_models import install_ready
from tests.unit.test_archive import _chatgpt_export

pytestmark = pytest.mark.e2e


def open_chat(browser: Browser, url: str, **context: object) -> Page:
    page = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 1000}, **context).new_page()
    page.goto(url)
    return page


def test_attach_regenerate_switch_export_and_import(
    browser: Browser, short_replies: str, app_url: str, tmp_path: Path
) -> None:
    note = tmp_path / "itinerary.md"
    note.write_text("# Trip\n\nDay one: West Lake. Day two: Lingyin Temple.\n")
    page = open_chat(browser, app_url)
    expect(page.get_by_test_id("stChatInputTextArea")).to_be_visible(timeout=30_000)
    page.get_by_test_id("stChatInput").locator("input[type=file]").set_input_files(str(note))
    expect(page.get_by_test_id("stChatInput").get_by_text("itinerary.md")).to_be_visible()
    send(page, "Where do we go on day two?")
    expect(page.get_by_text("itinerary.md: the whole file").first).to_be_visible(timeout=60_000)
    expect(page.get_by_text("tokens/s")).to_have_count(1, timeout=60_000)
    size = format_bytes(note.stat().st_size)
    expect(page.get_by_text(f"itinerary.md · {size}")).to_be_visible()  # the file stays with its message

    page.get_by_role("button", name="Regenerate").click()
    expect(page.get_by_text("2/2", exact=True)).to_be_visible(timeout=60_000)  # both answers kept
    page.get_by_role("button", name="‹").click()
    expect(page.get_by_text("1/2", exact=True)).to_be_visible(timeout=30_000)

    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_role("button", name="Export or import").click()
    with page.expect_download() as download:
        page.get_by_role("button", name="Export all conversations").click()
    exported = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    [conversation] = exported["conversations"]
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant", "assistant"]
    assert conversation["messages"][0]["attachments"][0]["text"].startswith("# Trip")

    chatgpt = tmp_path / "conversations.json"
    chatgpt.write_text(json.dumps(_chatgpt_export()), encoding="utf-8")
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(chatgpt))
    expect(page.get_by_test_id("stFileChipName")).to_have_text("conversations.json", timeout=30_000)
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.get_by_text("Conversations imported: 1 (already here, skipped: 0).")).to_be_visible(
        timeout=30_000
    )
    listed = sidebar.get_by_role("button", name="Trip", exact=True)
    expect(listed).to_be_visible()
    # A title reads from the left of its row, as a list's line does (a button centres its label).
    indent = listed.evaluate(
        "b => b.querySelector('p').getBoundingClientRect().left - b.getBoundingClientRect().left"
    )
    assert indent < 20, indent


def test_a_new_chat_says_where_messages_go_and_starts_from_a_suggestion_by_keyboard(
    browser: Browser, short_replies: str, app_url: str
) -> None:
    page = open_chat(browser, app_url)
    said = f"{short_replies} runs on this machine: nothing you type leaves it."
    expect(page.get_by_text(said)).to_be_visible(timeout=30_000)
    box = page.get_by_test_id("stChatInputTextArea")
    expect(box).to_be_focused(timeout=30_000)  # type at once, as in ChatGPT: no click first
    # The page loads the model as it opens, and the sidebar's status follows that load with no click.
    expect(page.get_by_test_id("stSidebar")).to_contain_text(f"Loaded: {short_replies}", timeout=60_000)
    page.get_by_role("button", name="Write a short poem about autumn.").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_text("tokens/s")).to_have_count(1, timeout=60_000)
    expect(page.get_by_test_id("stChatMessage").first).to_contain_text("Write a short poem about autumn.")
    expect(page.get_by_text("What can I help with?")).to_have_count(0)  # the conversation took the page
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_role("button", name="Write a short poem about autumn.")).to_be_visible()
    sidebar.get_by_placeholder("Search conversations").click()
    page.keyboard.press("Control+Shift+O")  # New chat's shortcut, shown on the button
    expect(page.get_by_text("What can I help with?")).to_be_visible(timeout=30_000)
    expect(box).to_be_focused(timeout=30_000)  # the new chat's message box, even from another field
    sidebar.get_by_placeholder("Search conversations").click()
    page.keyboard.press("Shift+Escape")  # ChatGPT's key for the message box
    expect(box).to_be_focused()
    page.keyboard.type("Typed without a click")
    expect(box).to_have_value("Typed without a click")


def test_a_model_chosen_in_the_chat_loads_while_the_first_message_is_typed(
    browser: Browser, short_replies: str, app_url: str, tiny_models: dict[str, Path]
) -> None:
    """Another model chosen in the Chat page is loaded beside the first as soon as it is chosen (it
    loaded at the first message), so the first reply after a switch comes as quickly as the next."""
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "second", tiny_models["qwen2"])
    with Database(os.environ["LOCALLLM_DB_URL"]).begin() as session:
        repo.add_custom_model(session, "second", "test/second", "main", {})
    page = open_chat(browser, app_url)
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar).to_contain_text(f"Loaded: {short_replies}", timeout=60_000)  # the page's model
    choose(page.get_by_test_id("stSelectbox").filter(has_text="Model"), "secon")  # its whole label: "second"
    expect(sidebar).to_contain_text("Loaded: second", timeout=60_000)  # no message sent
    expect(sidebar).to_contain_text(f"Loaded: {short_replies}")  # beside it, not in its place


def test_a_reply_cut_at_its_length_goes_on_in_the_same_message(
    browser: Browser, short_replies: str, app_url: str
) -> None:
    page = open_chat(browser, app_url)
    send(page, "Tell me a long story")
    reply = page.get_by_test_id("stChatMessage").nth(1)
    expect(reply).to_contain_text("+ 16 tokens", timeout=60_000)  # cut at its 16 tokens
    first = reply.get_by_test_id("stMarkdownContainer").first.inner_text()
    page.get_by_role("button", name="Continue").click()
    expect(reply).to_contain_text("+ 32 tokens", timeout=60_000)  # the same message, its figures added up
    expect(page.get_by_test_id("stChatMessage")).to_have_count(2)
    grown = reply.get_by_test_id("stMarkdownContainer").first.inner_text()
    assert grown.startswith(first.rstrip()) and len(grown) > len(first)


def background(page: Page) -> str:
    return page.evaluate("getComputedStyle(document.querySelector('[data-testid=stApp]')).backgroundColor")


def test_the_theme_follows_the_system_and_the_menu_switches_it(browser: Browser, app_url: str) -> None:
    page = open_chat(browser, app_url, color_scheme="dark")
    expect(page.get_by_role("heading", name="Chat")).to_be_visible(timeout=30_000)
    assert background(page) == "rgb(15, 20, 32)"  # .streamlit/config.toml [theme.dark]
    page.get_by_test_id("stMainMenu").click()
    page.get_by_role("menuitemradio", name="Light").click()
    expect(page.get_by_test_id("stApp")).to_have_css("background-color", "rgb(255, 255, 255)")
    assert page.get_by_role("button", name="Deploy").count() == 0  # no developer tools in the menu
    page.context.close()

    light = open_chat(browser, app_url, color_scheme="light")
    expect(light.get_by_role("heading", name="Chat")).to_be_visible(timeout=30_000)
    assert background(light) == "rgb(255, 255, 255)"


def choose(selectbox: Locator, typed: str) -> None:
    """Pick the option that starts with `typed`, as a user does: type it (the list opens, filtered), then
    press the option without scrolling. The list closes when the page scrolls (an expander that just
    opened, a page still settling), so a list that closed before the press is opened again."""
    field = selectbox.get_by_role("combobox")
    option = selectbox.page.get_by_role("option", name=re.compile(f"^{re.escape(typed)}")).first
    for _ in range(4):
        field.fill("")
        field.press_sequentially(typed)  # keys, as typed: the list opens
        try:
            option.dispatch_event("click", timeout=5_000)
            expect(field).to_have_value(
                re.compile(f"^{re.escape(typed)}."), timeout=10_000
            )  # the whole label
            return
        except (AssertionError, PlaywrightTimeoutError):
            continue
    raise AssertionError(f"no option starting with {typed!r} could be chosen")


def test_in_chinese_a_preset_and_a_context_length_are_chosen(
    browser: Browser, short_replies: str, app_url: str
) -> None:
    page = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 1000}).new_page()
    page.goto(app_url)
    send(page, "你好", placeholder="输入消息…")
    expect(page.get_by_role("button", name="重新生成")).to_be_visible(timeout=60_000)  # the reply is stored
    page.get_by_text("系统提示词与生成参数").click()
    choose(page.get_by_test_id("stSelectbox").filter(has_text="预设"), "翻译")
    system_prompt = page.get_by_role("textbox", name="系统提示词").filter(has_text="你是一名翻译")
    expect(system_prompt).to_be_visible(timeout=30_000)  # the preset's prompt, in the page's language

    page.get_by_test_id("stSidebarNavItems").get_by_role("link", name="模型", exact=True).click()
    card = page.locator(f".st-key-card-{short_replies}")
    context = card.get_by_test_id("stSelectbox").filter(has_text="对话的上下文长度")
    choose(context, "2K tokens")
    expect(context.get_by_role("combobox")).to_have_value(re.compile("^2K tokens · 需要"), timeout=30_000)
    # saved: the browser shows the choice before the app's rerun stores it, so wait for the stored value
    preferences = Preferences(Database(os.environ["LOCALLLM_DB_URL"]))
    deadline = time.monotonic() + 30
    while preferences.context_for(short_replies) != 2048:
        assert time.monotonic() < deadline, f"context length stored: {preferences.context_for(short_replies)}"
        time.sleep(0.1)
