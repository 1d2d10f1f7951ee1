"""A fresh server's first request for a page URL still goes through the app's router."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, expect

pytestmark = pytest.mark.e2e


def test_first_request_to_a_page_url_uses_the_router(browser: Browser, app_url: str) -> None:
    # Streamlit treats a pages/ folder as legacy multipage mode until app.py has run once; the
    # launcher (ui/server.py) must prevent /models from running pages/models.py on its own.
    context = browser.new_context(locale="zh-CN")
    page = context.new_page()
    page.goto(f"{app_url}/models")
    expect(page.get_by_role("heading", name="模型", exact=True)).to_be_visible(timeout=30_000)
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_text("未加载模型")).to_be_visible()
    expect(sidebar.get_by_text("语言 / Language")).to_be_visible()
    expect(sidebar.get_by_role("link", name="硬件与设置")).to_be_visible()
    context.close()
