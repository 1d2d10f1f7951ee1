"""A fresh server's first request for a page URL still goes through the app's router; what the server
starts before any page is asked (the dashboard's own API)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from core.preferences import Preferences
from core.storage.db import Database
from tests.e2e.conftest import running_app
from tests.fixtures.serving import free_port
from tests.fixtures.tiny_models import install_ready

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


def test_the_dashboards_api_answers_from_its_start_where_it_was_turned_on(
    isolated_env: Path, tiny_models: dict[str, Path], db_url: str
) -> None:
    """Turned on in the settings (as the Hardware page saves it), the API answers as soon as the
    dashboard starts, before any browser opens a page; the page then finds it running, not a second."""
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "qwen2.5-0.5b", tiny_models["qwen2"])
    preferences = Preferences(Database(db_url))
    port = free_port()
    preferences.set("api_serving", "local")
    preferences.set("api_port", port)
    with running_app(log_path=isolated_env / "app.log"):
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).json()
    assert [model["id"] for model in listed["data"]] == ["qwen2.5-0.5b"]
    assert "ScriptRunContext" not in (isolated_env / "app.log").read_text()  # made quietly at the start
