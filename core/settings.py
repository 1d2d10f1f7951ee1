"""Where the data lives, from the environment: the data folder and the database URL.

These cannot be saved in the database they point at. Every other setting has its owner in
core.preferences (saved, else the environment, else the default).

Run from a checkout, data and models stay inside it (`data/`, `assets/models/`); installed with pip,
they go to the user's data folder (%LOCALAPPDATA%\\LocalLLM on Windows, ~/Library/Application
Support/LocalLLM on macOS, $XDG_DATA_HOME/localllm or ~/.local/share/localllm elsewhere).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_MIRRORS = ("https://hf-mirror.com",)


def is_checkout() -> bool:
    """Whether the code runs from its source folder (not from an installed package)."""
    return (PROJECT_ROOT / "pyproject.toml").is_file()


def user_data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or env.get("USERPROFILE") or Path.home())
    if sys.platform == "win32":
        return Path(env.get("LOCALAPPDATA") or env.get("APPDATA") or home / "AppData" / "Local") / "LocalLLM"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "LocalLLM"
    return Path(env.get("XDG_DATA_HOME") or home / ".local" / "share") / "localllm"


def command_line() -> str:
    """How a user runs the command line of this installation from a terminal: `localllm` when that is
    on the PATH and belongs to this environment, else its full path, else this Python with `-m core`."""
    beside = Path(sys.executable).parent / ("localllm.exe" if sys.platform == "win32" else "localllm")
    found = shutil.which("localllm")
    if found and Path(found).resolve() == beside.resolve():
        return "localllm"

    def quoted(path: str) -> str:
        return f'"{path}"' if " " in path else path

    return quoted(str(beside)) if beside.exists() else f"{quoted(sys.executable)} -m core"


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    return PROJECT_ROOT / "data" if is_checkout() else user_data_dir(env)


def default_models_dir(env: Mapping[str, str] | None = None) -> Path:
    return PROJECT_ROOT / "assets" / "models" if is_checkout() else user_data_dir(env) / "models"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    db_url: str


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    data_dir = Path(env.get("LOCALLLM_DATA_DIR") or default_data_dir(env))
    db_url = env.get("LOCALLLM_DB_URL") or f"sqlite:///{data_dir / 'localllm.db'}"
    return Settings(data_dir=data_dir, db_url=db_url)
