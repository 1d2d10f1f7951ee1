"""Every saved setting, with one owner: name, type, default, environment variable, validation.

The dashboard, every CLI command and `core serve` read the same values from here. A value comes from,
in order: what was saved (Settings page, `python -m core settings set`), the environment, the default.
Where the database itself lives (LOCALLLM_DB_URL, LOCALLLM_DATA_DIR) cannot be saved in it: that stays
in core.settings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.settings import DEFAULT_ENDPOINT, DEFAULT_MIRRORS, default_models_dir
from core.storage import repo
from core.storage.db import Database
from core.storage.records import is_http_address
from core.storage.schema import DownloadJobRow

DEVICES = ("auto", "cuda", "mps", "cpu")
QUANTIZATIONS = ("int4", "int8", "none")  # applies on the CPU; GPUs keep the 16-bit weights
LANGUAGES = ("zh", "en")
API_SERVING = ("off", "local", "lan")  # the dashboard's own API: none, this machine's programs, the LAN's
SOURCES = ("saved", "environment", "default")


def _models_dir(value: Any) -> Path:
    if not str(value).strip():
        raise ConfigError("The models directory cannot be empty.", reason="folder_required")
    return Path(str(value).strip()).expanduser().absolute()


def _create_folder(path: Path) -> None:
    """A folder chosen for models must be one this app can create and write to."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"Cannot use {path} for models: {exc.strerror or exc}.",
            reason="folder_unusable",
            path=str(path),
            cause=exc.strerror or str(exc),
        ) from exc


def _endpoints(value: Any) -> list[str]:
    items = value.replace("\n", ",").split(",") if isinstance(value, str) else list(value)
    cleaned = list(dict.fromkeys(str(item).strip().rstrip("/") for item in items if str(item).strip()))
    limit = DownloadJobRow.__table__.c.endpoint.type.length  # a download's job keeps the endpoint it uses
    for url in cleaned:
        if len(url) > limit:
            raise ConfigError(
                f"A download endpoint's address is too long: {len(url)} characters, at most {limit}.",
                reason="endpoint_too_long", length=len(url), limit=limit,
            )  # fmt: skip
        if not is_http_address(url):  # a broken address ("http://[::1") failed the download midway
            raise ConfigError(f"{url!r} is not an http(s) URL.", reason="endpoint_not_url", url=url)
    if not cleaned:
        raise ConfigError("Keep at least one download endpoint.", reason="endpoint_required")
    return cleaned


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{value!r} is not on or off (use true or false).")


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ConfigError(f"{value!r} is not one of {', '.join(choices)}.", choices=", ".join(choices))
        return text

    return check


def _seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{value!r} is not a number of seconds.") from None
    if not 0 <= seconds <= 7 * 24 * 3600:
        raise ConfigError("The idle unload must be between 0 (off) and 604800 seconds (a week).")
    return seconds


MIN_CONTEXT, MAX_CONTEXT = 256, 1024 * 1024


def _context(value: Any) -> int:
    try:
        tokens = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{value!r} is not a number of tokens.") from None
    if not MIN_CONTEXT <= tokens <= MAX_CONTEXT:
        raise ConfigError(f"A context length must be between {MIN_CONTEXT} and {MAX_CONTEXT} tokens.")
    return tokens


MAX_PARALLEL = 16
MAX_LOADED = 8


def _port(value: Any) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{value!r} is not a port number.") from None
    if not 1 <= port <= 65535:
        raise ConfigError("A port is a number from 1 to 65535.")
    return port


def _count(things: str, what: str, most: int) -> Callable[[Any], int]:
    """A check of a whole number of `things` from 1 to `most`; `what` names it in the sentence."""

    def check(value: Any) -> int:
        try:
            count = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{value!r} is not a number of {things}.") from None
        if not 1 <= count <= most:
            raise ConfigError(f"{what} must be between 1 and {most}.")
        return count

    return check


def _model_contexts(value: Any) -> dict[str, int]:
    """Per-model context lengths: a mapping, or `key=tokens,key=tokens` from the command line."""
    if isinstance(value, str):
        pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ConfigError("Write per-model context lengths as key=tokens, separated by commas.")
        value = {key.strip(): tokens for key, tokens in pairs}
    if not isinstance(value, dict):
        raise ConfigError("Per-model context lengths are a mapping of model keys to tokens.")
    return {str(key): _context(tokens) for key, tokens in value.items()}


def _model_presets(value: Any) -> dict[str, str]:
    """Each model's default preset: a mapping, or `key=preset,key=preset` from the command line."""
    if isinstance(value, str):
        value = dict(item.split("=", 1) for item in value.split(",") if "=" in item)
    if not isinstance(value, dict) or not all(
        re.match(r"^(builtin:[a-z]+|user:\d+)$", str(preset)) for preset in value.values()
    ):
        raise ConfigError("Default presets are model keys mapped to presets (builtin:NAME or user:ID).")
    return {str(key): str(preset) for key, preset in value.items()}


def _environment_endpoints(env: Mapping[str, str]) -> list[str] | None:
    """HF_ENDPOINT first, then LOCALLLM_MIRRORS; None when neither is set."""
    if "HF_ENDPOINT" not in env and "LOCALLLM_MIRRORS" not in env:
        return None
    first = env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    mirrors = env["LOCALLLM_MIRRORS"].split(",") if "LOCALLLM_MIRRORS" in env else list(DEFAULT_MIRRORS)
    return [first, *mirrors]


@dataclass(frozen=True)
class FromEnvironment:
    """The environment variables that give a setting: `read` returns the value, or None when unset."""

    names: str  # as a user sets them: "LOCALLLM_PARALLEL", "HF_ENDPOINT, LOCALLLM_MIRRORS"
    read: Callable[[Mapping[str, str]], Any]


@dataclass(frozen=True)
class Preference:
    name: str
    help: str
    check: Callable[[Any], Any]  # validates a value (typed, or text from the CLI) and returns it typed
    default: Any
    key: str  # the row in the settings table (names kept from before this module existed)
    env: FromEnvironment | None = None
    prepare: Callable[[Any], None] | None = None  # run before a value is saved (make the folder)


def _from_env(name: str) -> FromEnvironment:
    return FromEnvironment(name, lambda env: env.get(name) or None)


PREFERENCES: dict[str, Preference] = {
    preference.name: preference
    for preference in (
        Preference("models_dir", "where models are stored (one folder per model)", _models_dir,
                   default_models_dir(), "paths.models_dir", _from_env("LOCALLLM_MODELS_DIR"),
                   _create_folder),
        Preference("endpoints", "download endpoints, tried in order (comma-separated)", _endpoints,
                   [DEFAULT_ENDPOINT, *DEFAULT_MIRRORS], "downloads.endpoints",
                   FromEnvironment("HF_ENDPOINT, LOCALLLM_MIRRORS", _environment_endpoints)),
        Preference("auto_resume", "resume interrupted downloads when the dashboard starts", _flag, True,
                   "downloads.auto_resume"),
        Preference("device", "where models run: auto (CUDA, then Apple MPS, then CPU), cuda, mps or cpu",
                   _one_of(DEVICES), "auto", "engine.device", _from_env("LOCALLLM_DEVICE")),
        Preference("quantization", "weights on the CPU: int4 (fastest), int8, or none (16-bit reference)",
                   _one_of(QUANTIZATIONS), "int4", "engine.quantization", _from_env("LOCALLLM_QUANTIZATION")),
        Preference("idle_unload_s", "unload the model after this many idle seconds (0: never)", _seconds,
                   900.0, "engine.idle_unload_s"),
        Preference("prompt_copy", "after a first reply, keep int4 weights unpacked for prompts where memory "
                   "allows (first tokens ~2x sooner, ~3x the int4 weights' memory)", _flag, True,
                   "engine.prompt_copy"),
        Preference("parallel_replies", "replies the local model generates together (batched; fewer when "
                   "their KV caches do not fit in memory); more requests wait in line",
                   _count("replies", "Replies generated together", MAX_PARALLEL), 4,
                   "engine.parallel_replies", _from_env("LOCALLLM_PARALLEL")),
        Preference("loaded_models", "models kept loaded at once where memory holds them (a switch back finds "
                   "its model loaded); the least recently used makes room",
                   _count("models", "Models kept loaded", MAX_LOADED), 3,
                   "engine.loaded_models", _from_env("LOCALLLM_MAX_LOADED_MODELS")),
        Preference("language", "the dashboard's language for this machine's browser: zh or en (unset: the "
                   "browser's)", _one_of(LANGUAGES), None, "ui.language"),
        Preference("context_tokens", "context length of every model without its own (tokens; at most the "
                   "model's window): the KV cache, the history kept and the memory planned", _context, 4096,
                   "engine.context_tokens", _from_env("LOCALLLM_CONTEXT_TOKENS")),
        Preference("model_context", "context lengths of single models: key=tokens,key=tokens",
                   _model_contexts, {}, "engine.model_context"),
        Preference("model_presets", "the preset new conversations with a model start from: key=preset",
                   _model_presets, {}, "chat.model_presets"),
        Preference("api_serving", "the dashboard serves the OpenAI- and Ollama-compatible API itself, on its "
                   "own model: off, local (this machine's programs) or lan (with a bearer key)",
                   _one_of(API_SERVING), "off", "api.serving"),
        Preference("api_port", "the port of the dashboard's own API", _port, 8000, "api.port"),
    )
}  # fmt: skip


@dataclass(frozen=True)
class PreferenceValue:
    name: str
    value: Any
    source: str  # "saved", "environment" or "default"
    help: str


class Preferences:
    """The saved settings of one database, with the environment's and the defaults beneath them."""

    def __init__(self, db: Database, env: Mapping[str, str] | None = None) -> None:
        self.db = db
        self.env = os.environ if env is None else env

    @staticmethod
    def preference(name: str) -> Preference:
        try:
            return PREFERENCES[name]
        except KeyError:
            raise ConfigError(
                f"There is no setting {name!r}; the settings are {', '.join(PREFERENCES)}.", name=name
            ) from None

    def value(self, name: str) -> PreferenceValue:
        preference = self.preference(name)
        with self.db.begin() as session:
            saved = repo.get_setting(session, preference.key)
        if saved is not None:
            try:
                return PreferenceValue(name, preference.check(saved), "saved", preference.help)
            except ConfigError:
                pass  # a value saved by an older version that no longer passes: fall back
        if preference.env is None or (from_env := preference.env.read(self.env)) is None:
            return PreferenceValue(name, preference.default, "default", preference.help)
        try:
            return PreferenceValue(name, preference.check(from_env), "environment", preference.help)
        except ConfigError as exc:
            raise ConfigError(
                f"A setting from the environment ({preference.env.names}) is not valid: {exc.message} Fix or "
                "unset it, then start again.",
                reason="environment_invalid",
                variables=preference.env.names,
                problem=exc.message,
            ) from None

    def check_environment(self) -> None:
        """Every setting read once: the first one the environment gives wrong raises its ConfigError."""
        for name in PREFERENCES:
            self.value(name)

    def get(self, name: str) -> Any:
        return self.value(name).value

    def set(self, name: str, value: Any) -> Any:
        """Validate and save; returns the value as stored (a ConfigError says what is wrong)."""
        preference = self.preference(name)
        checked = preference.check(value)
        if preference.prepare is not None:
            preference.prepare(checked)
        stored = str(checked) if isinstance(checked, Path) else checked
        with self.db.begin() as session:
            repo.set_setting(session, preference.key, stored)
        return checked

    def reset(self, name: str) -> None:
        """Forget the saved value: the environment's or the default applies again."""
        preference = self.preference(name)
        with self.db.begin() as session:
            repo.delete_setting(session, preference.key)

    def context_for(self, key: str) -> int:
        """The context length chosen for model `key` (the engine clamps it to the model's window)."""
        return self.get("model_context").get(key) or self.get("context_tokens")

    def set_context_for(self, key: str, tokens: int | None) -> None:
        """Give model `key` a context length of its own, or (None) the default again."""
        contexts = dict(self.get("model_context"))
        if tokens is None:
            contexts.pop(key, None)
        else:
            contexts[key] = _context(tokens)
        self.set("model_context", contexts)

    def values(self) -> list[PreferenceValue]:
        return [self.value(name) for name in PREFERENCES]
