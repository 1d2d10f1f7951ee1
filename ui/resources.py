"""Process-wide objects shared by every browser session (st.cache_resource)."""

from __future__ import annotations

import streamlit as st

from core.configs import ConfigStore
from core.hardware import HardwareInfo, probe
from core.settings import Settings, load_settings
from core.storage.db import Database


@st.cache_resource
def settings() -> Settings:
    return load_settings()


@st.cache_resource
def database() -> Database:
    return Database(settings().db_url)


@st.cache_resource
def config_store() -> ConfigStore:
    return ConfigStore(database())


@st.cache_data(ttl=5, show_spinner=False)
def hardware() -> HardwareInfo:
    return probe(settings().models_dir)
