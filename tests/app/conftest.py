from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest, app_test

from core.settings import PROJECT_ROOT
from core.storage.db import Database
from tests.fixtures.tiny_models import build_tiny_model, install_ready
from ui.failures import UNEXPECTED


@pytest.fixture(autouse=True)
def _main_module_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Streamlit's script runner leaves the last script it ran in sys.modules["__main__"]: a process
    that a later test starts with `spawn` would then run app.py again as its main module (~3 s each)."""
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])


@pytest.fixture
def client_ip(monkeypatch: pytest.MonkeyPatch) -> Callable[[str | None], None]:
    """Set the browser's address as the server sees it (None: this machine).

    Mocked because AppTest has no network connection: its session client is a MagicMock, so
    st.context.ip_address is a mock. The real addresses are tested in tests/e2e/test_lan.py.
    """

    def set_ip(address: str | None) -> None:
        monkeypatch.setattr("ui.access.client_address", lambda: address)

    set_ip(None)
    return set_ip


@pytest.fixture(autouse=True)
def page_faults() -> Iterator[list[logging.LogRecord]]:
    """What reached the app's last net (ui.failures: `unexpected_failure`): the page shows a sentence instead
    of an exception, so a test fails here on it, with its traceback. A test that causes one on purpose
    empties the list."""
    caught: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = caught.append  # type: ignore[method-assign]
    logger = logging.getLogger(UNEXPECTED)
    logger.addHandler(handler)
    yield caught
    logger.removeHandler(handler)
    if caught:
        record = caught[0]
        pytest.fail(
            f"a page failed: {record.getMessage()}\n{logging.Formatter().formatException(record.exc_info)}"
        )


@pytest.fixture
def new_app(isolated_env, client_ip, monkeypatch: pytest.MonkeyPatch) -> Callable[[], AppTest]:
    """A fresh browser session of the app; process-wide caches are reset for this test's settings."""
    st.cache_resource.clear()
    st.cache_data.clear()

    def make() -> AppTest:
        PagesManager.uses_pages_directory = False  # as ui/server.py starts the real server
        return AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=60)

    # AppTest sets PagesManager.uses_pages_directory back to None before every run, and with a pages/
    # folder beside app.py Streamlit then took it for an old-style multipage app: every run after the
    # first ran the page alone, without app.py (its sign-in gate, its sidebar). Its reset now lands on
    # a subclass, and every run goes through app.py as in the real server.
    monkeypatch.setattr(app_test, "PagesManager", type("NavigationPages", (PagesManager,), {}))

    yield make
    st.cache_resource.clear()
    st.cache_data.clear()


def _install(db_url: str, source: Path) -> str:
    """`source` installed and verified as "tiny", as after a download."""
    from core.storage import repo

    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "tiny", source)
    with Database(db_url).begin() as session:
        repo.add_custom_model(session, "tiny", "test/tiny", "main", {})
    return "tiny"


@pytest.fixture
def ready_model(db_url: str, tiny_models: dict[str, Path]) -> str:
    """The tiny Qwen2 model, ready as "tiny"."""
    return _install(db_url, tiny_models["qwen2"])


@pytest.fixture
def endless_model(db_url: str, tmp_path: Path) -> str:
    """A tiny model whose replies run to their token limit (4,096 tokens of context), ready as "tiny"."""
    return _install(db_url, build_tiny_model(tmp_path / "endless", "llama", context=4096, endless=True))


@pytest.fixture
def thinking_model(db_url: str, tiny_models: dict[str, Path]) -> str:
    """The tiny Qwen3 model (its chat template takes enable_thinking), ready as "tiny"."""
    return _install(db_url, tiny_models["qwen3"])
