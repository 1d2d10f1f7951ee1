"""Process-wide objects shared by every browser session (st.cache_resource)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import streamlit as st

from core.access import SignInGate, load_access_policy
from core.chat import ChatService
from core.configs import ConfigStore
from core.engine import LocalEngine
from core.hardware import HardwareInfo, Precision, probe
from core.hosts import HostPolicy, load_host_policy
from core.library import ModelLibrary
from core.model_store import find_in_hf_cache
from core.providers import provider_for_config
from core.settings import Settings, load_settings
from core.storage import files, repo
from core.storage.db import Database, sqlite_file

MODELS_DIR_SETTING = "paths.models_dir"
PAGE_ICON = Path(__file__).parent / "assets" / "icon.svg"


@st.cache_resource
def settings() -> Settings:
    """The environment's settings, with the models directory chosen in Settings (if any)."""
    base = load_settings()
    with database().begin() as session:
        chosen = repo.get_setting(session, MODELS_DIR_SETTING)
    return replace(base, models_dir=Path(chosen)) if chosen else base


def change_models_dir(path: str) -> None:
    """Use another models directory: every process-wide object is rebuilt around it."""
    with database().begin() as session:
        repo.set_setting(session, MODELS_DIR_SETTING, path)
    engine().unload()
    st.cache_resource.clear()
    st.cache_data.clear()


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
    return probe(settings().models_dir)


@st.cache_resource
def library() -> ModelLibrary:
    """The process-wide model library and its download manager; resumes interrupted jobs at start."""
    instance = ModelLibrary(database(), settings())
    if instance.auto_resume:
        instance.resume_interrupted()
    return instance


@st.cache_data(ttl=60, show_spinner=False)
def hf_cache_snapshot(repo_id: str) -> str | None:
    """Where the user's Hugging Face cache holds this repo, rescanned at most once a minute."""
    snapshot = find_in_hf_cache(repo_id)
    return str(snapshot) if snapshot else None


IDLE_UNLOAD_SETTING = "engine.idle_unload_s"
DEVICE_SETTING = "engine.device"
QUANTIZATION_SETTING = "engine.quantization"


@st.cache_resource
def engine() -> LocalEngine:
    """The one loaded model of this process, shared by every browser session."""
    with database().begin() as session:
        idle = float(repo.get_setting(session, IDLE_UNLOAD_SETTING, 900))
        device = repo.get_setting(session, DEVICE_SETTING, "auto")
        quantization = repo.get_setting(session, QUANTIZATION_SETTING, "int4")
    instance = LocalEngine(
        settings().models_dir, device=device, quantization=quantization, idle_unload_s=idle
    )
    instance.prepare()  # imports in the background, so the first load is only the load
    return instance


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
