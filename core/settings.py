"""Paths, database URL and endpoints, read from the environment with defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_MIRRORS = ("https://hf-mirror.com",)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    models_dir: Path
    db_url: str
    endpoints: tuple[str, ...]


def _split_urls(value: str) -> tuple[str, ...]:
    return tuple(u.strip().rstrip("/") for u in value.split(",") if u.strip())


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    data_dir = Path(env.get("LOCALLLM_DATA_DIR") or PROJECT_ROOT / "data")
    models_dir = Path(env.get("LOCALLLM_MODELS_DIR") or PROJECT_ROOT / "assets" / "models")
    db_url = env.get("LOCALLLM_DB_URL") or f"sqlite:///{data_dir / 'localllm.db'}"
    first = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    mirrors = _split_urls(env["LOCALLLM_MIRRORS"]) if "LOCALLLM_MIRRORS" in env else DEFAULT_MIRRORS
    endpoints = tuple(dict.fromkeys((first, *mirrors)))
    return Settings(
        data_dir=data_dir,
        models_dir=models_dir,
        db_url=db_url,
        endpoints=endpoints,
    )
