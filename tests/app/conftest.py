from __future__ import annotations

from collections.abc import Callable

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.settings import PROJECT_ROOT


@pytest.fixture
def new_app(isolated_env) -> Callable[[], AppTest]:
    """A fresh browser session of the app; process-wide caches are reset for this test's settings."""
    st.cache_resource.clear()
    st.cache_data.clear()

    def make() -> AppTest:
        return AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=60)

    yield make
    st.cache_resource.clear()
    st.cache_data.clear()
