"""A reply cut short by a page reload or by a killed server: the conversation stays whole and usable."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from core.chat.service import ChatService
from core.storage.db import Database
from core.storage.records import Message
from tests.e2e.conftest import LONG_PROMPT, running_app, send, stop_button, stop_process_group

pytestmark = pytest.mark.e2e


def open_chat(browser: Browser, url: str) -> Page:
    page = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 1000}).new_page()
    page.goto(url)
    return page


def first_reply() -> Message | None:
    """The first conversation's first reply as stored."""
    chat = ChatService(Database(os.environ["LOCALLLM_DB_URL"]), provider=lambda: None)
    conversations = chat.conversations()
    if not conversations:
        return None
    return next((m for m in chat.messages(conversations[0].id) if m.role == "assistant"), None)


def saved_reply() -> str:
    """The first reply's text as stored ("" when there is none yet)."""
    reply = first_reply()
    return reply.content if reply else ""


def reply_is_streaming(page: Page) -> str:
    """Wait until part of the reply is saved while it still runs (its Stop button is there); return it."""
    expect(stop_button(page)).to_be_visible(timeout=60_000)
    deadline = time.monotonic() + 60
    while not (partial := saved_reply()):
        assert time.monotonic() < deadline, "no part of the reply was saved within 60 s"
        time.sleep(0.05)
    assert stop_button(page).is_visible()  # still generating
    return partial


def test_esc_stops_the_reply_which_is_drawn_at_once_as_stopped_with_all_it_said(
    browser: Browser, long_replies: str, app_url: str
) -> None:
    page = open_chat(browser, app_url)
    send(page, LONG_PROMPT)
    partial = reply_is_streaming(page)
    # One Stop: Streamlit's own, beside its running indicator, would halt the page's script instead.
    expect(page.get_by_test_id("stStatusWidget")).to_be_visible()
    expect(page.get_by_test_id("stStatusWidget").get_by_role("button", name="Stop")).to_be_hidden()
    page.keyboard.press("Escape")  # the Stop button's shortcut, from the chat input where the focus is
    messages = page.get_by_test_id("stChatMessage")
    # The run that Esc starts waits for the stopped reply to be saved before it draws the conversation
    # (drawn sooner, it showed the reply cut further back, "interrupted", until the next click).
    expect(messages.nth(1).get_by_text("stopped by you")).to_be_visible(timeout=30_000)
    expect(stop_button(page)).to_have_count(0)
    expect(messages.nth(1).get_by_text(re.compile(r"(^| )0 prompt \+ 0 tokens"))).to_have_count(
        0
    )  # no made-up figures
    reply = first_reply()
    assert reply.finish_reason == "stopped" and reply.content.startswith(partial)
    expect(messages.nth(1)).to_contain_text(reply.content.split()[-1])  # drawn with its last words


def test_reload_mid_reply_then_switch_language(browser: Browser, long_replies: str, app_url: str) -> None:
    page = open_chat(browser, app_url)
    send(page, LONG_PROMPT)
    partial = reply_is_streaming(page)
    page.reload()
    # The reload ends the old browser session; its script stops the reply at its next token and
    # saves it as stopped. Look once that has happened, not in the same instant.
    deadline = time.monotonic() + 30
    while (reply := first_reply()) is None or reply.finish_reason == "interrupted":
        assert time.monotonic() < deadline, "the cut-short reply was never finalised"
        time.sleep(0.05)

    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_role("button", name="hello world hello world").click()  # the conversation is listed
    messages = page.get_by_test_id("stChatMessage")
    expect(messages).to_have_count(2, timeout=30_000)  # the question and the reply so far, nothing lost
    expect(messages.nth(1).get_by_text("stopped by you")).to_be_visible()  # marked as cut short
    assert saved_reply().startswith(partial)

    page.get_by_text("中文", exact=True).click()
    expect(page.get_by_role("heading", name="聊天", exact=True)).to_be_visible()
    expect(messages.nth(1).get_by_text("已被你停止")).to_be_visible()
    send(page, "再来一次", placeholder="输入消息…")  # the engine was freed: the next reply runs to the end
    expect(page.get_by_text("已完成").or_(page.get_by_text("达到长度上限"))).to_be_visible(timeout=120_000)
    expect(messages).to_have_count(4)
    expect(page.get_by_test_id("stException")).to_have_count(0)


def test_server_killed_mid_reply_keeps_the_conversation_marked_interrupted(
    browser: Browser, long_replies: str, isolated_env: Path
) -> None:
    with running_app(log_path=isolated_env / "app.log") as first:
        page = open_chat(browser, first.url)
        send(page, LONG_PROMPT)
        partial = reply_is_streaming(page)
        stop_process_group(first.process, signal.SIGKILL)

    with running_app(log_path=isolated_env / "app.log", port=first.port):
        page.reload()
        page.get_by_test_id("stSidebar").get_by_role("button", name="hello world hello world").click()
        messages = page.get_by_test_id("stChatMessage")
        expect(messages).to_have_count(2, timeout=30_000)
        expect(messages.nth(0)).to_contain_text("hello world hello world")
        expect(messages.nth(1).get_by_text("interrupted")).to_be_visible()
        assert saved_reply().startswith(partial)  # what was saved before the kill is still there
        expect(messages.nth(1).get_by_role("button", name="Continue")).to_be_visible()  # it may go on


def test_html_in_a_message_and_its_title_is_shown_not_run(
    browser: Browser, short_replies: str, app_url: str
) -> None:
    attack = '<img src=x onerror="alert(1)"><script>alert(2)</script> **bold?**'
    page = open_chat(browser, app_url)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    send(page, attack)
    user_message = page.get_by_test_id("stChatMessage").first
    expect(user_message).to_contain_text('<img src=x onerror="alert(1)"><script>alert(2)</script> **bold?**')
    expect(page.get_by_text("tokens/s")).to_have_count(1, timeout=60_000)
    expect(page.get_by_test_id("stSidebar").get_by_role("button", name="<img src=x")).to_have_count(1)
    assert page.locator("main img[src='x']").count() == 0
    scripts = page.locator("main script").evaluate_all("found => found.map(script => script.textContent)")
    assert not [script for script in scripts if "alert" in script]  # the page's own (the keys) only
    assert dialogs == []
