"""Process-wide objects shared by every browser session (st.cache_resource)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from core.access.hosts import HostPolicy, load_host_policy
from core.access.policy import load_access_policy
from core.access.sign_in import SignInGate
from core.chat.configs import ConfigStore
from core.chat.providers import provider_for_config
from core.chat.service import ChatService
from core.errors import ConfigError
from core.hardware import HardwareInfo, keep_out_of_collections, probe
from core.hub.library import ModelLibrary
from core.hub.store import find_in_hf_cache
from core.inference.engine import LocalEngine
from core.inference.sizing import Precision
from core.preferences import Preferences
from core.settings import load_settings
from core.storage import files
from core.storage.db import Database, sqlite_file

if TYPE_CHECKING:
    from core.api.served import DashboardApi

PAGE_ICON = Path(__file__).parent / "assets" / "icon.svg"


@st.cache_resource
def preferences() -> Preferences:
    """The saved settings: the same values every CLI command and `core serve` read."""
    return Preferences(database())


@st.cache_resource
def settings_checked() -> bool:
    """Every setting read once a process (a failure is not cached: it is raised again at each run)."""
    preferences().check_environment()
    return True


def change_models_dir(path: str) -> Path:
    """Use another models directory (checked as `settings set models_dir` checks it): every
    process-wide object is rebuilt around it."""
    chosen = preferences().set("models_dir", path)
    dashboard_api().serve(None, 0)  # started again around the new library, as saved
    engine().unload()
    st.cache_resource.clear()
    st.cache_data.clear()
    return chosen


@st.cache_resource
def database() -> Database:
    """The database (its URL comes from the environment only); a SQLite file is backed up at start and
    daily (data/backups/, the last 7 kept)."""
    db = Database(load_settings().db_url)
    if (path := sqlite_file(db.url)) is not None:
        files.keep_daily_backups(path)
    return db


@st.cache_resource
def config_store() -> ConfigStore:
    return ConfigStore(database())


@st.cache_data(ttl=5, show_spinner=False)
def hardware() -> HardwareInfo:
    return probe(library().models_dir)


@st.cache_data(ttl=5, show_spinner=False)
def memory_and_disk() -> HardwareInfo:
    """`hardware()` without its GPUs and versions: what a page's first draw can read without torch."""
    return probe(library().models_dir, devices=False)


@st.cache_resource
def library() -> ModelLibrary:
    """The process-wide model library and its download manager; resumes interrupted jobs at start."""
    instance = ModelLibrary(database(), preferences())
    if instance.auto_resume:
        instance.resume_interrupted()
    return instance


@st.cache_data(ttl=60, show_spinner=False)
def hf_cache_snapshot(repo_id: str) -> str | None:
    """Where the user's Hugging Face cache holds this repo, rescanned at most once a minute."""
    snapshot = find_in_hf_cache(repo_id)
    return str(snapshot) if snapshot else None


@st.cache_resource
def engine() -> LocalEngine:
    """The one loaded model of this process, shared by every browser session."""
    instance = LocalEngine.from_preferences(preferences())
    # Imports in the background, so the first load is only the load; then out of the collector's sight.
    instance.prepare().add_done_callback(lambda _imported: keep_out_of_collections())
    return instance


@st.cache_resource
def dashboard_api() -> DashboardApi:
    """The API this process serves with its own engine, started as saved (the Settings page moves it);
    a saved port another program took since is said there (`problem`). Imported here: most starts of
    the dashboard serve no API (0.4 s of imports)."""
    from core.api.served import DashboardApi

    api = DashboardApi(engine(), library().ready_keys, database(), load_settings().data_dir, library())
    with contextlib.suppress(ConfigError):
        api.serve_as(preferences().get("api_serving"), preferences().get("api_port"))
    return api


@st.cache_resource
def chat_service(owner: str) -> ChatService:
    """One person's conversations, answered by the current provider config."""
    store = config_store()
    return ChatService(
        database(), lambda: provider_for_config(store.get_current_config(), engine()), owner=owner
    )


@st.cache_resource
def host_policy() -> HostPolicy:
    return load_host_policy()


@st.cache_resource
def sign_in_gate() -> SignInGate:
    """The LAN sign-in check and its limiter (shared by every browser session); accounts and sessions
    live in the database."""
    return SignInGate(load_access_policy(), database())


def memory_bandwidth() -> float | None:
    """Read bandwidth in bytes/s, measured once per process on the engine's torch thread; None until
    that measurement (a second or two after the app starts) is done: pages never wait for it."""
    return engine().memory_bandwidth(wait=False)


def engine_precision() -> Precision:
    """How the engine would store a model on this machine's device (int4 weights on the CPU)."""
    return engine().precision()
