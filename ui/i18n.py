"""Every visible text, from one file per language (ui/locales/en.toml, zh.toml), catalog texts included.

`t(key, **params)` returns the text in the session's language with its placeholders filled in.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from core.errors import LocalLLMError
from core.settings import command_line
from core.units import format_bytes
from ui import state
from ui.markup import as_text, urls_as_code

LANGUAGES: dict[str, str] = {"zh": "中文", "en": "English"}
DEFAULT_LANGUAGE = "en"
LOCALES = Path(__file__).parent / "locales"


def dotted(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A TOML document's values by dotted name ({"a": {"b": 1}} → {"a.b": 1})."""
    flat: dict[str, Any] = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        flat.update(dotted(value, f"{key}.") if isinstance(value, dict) else {key: value})
    return flat


def load_texts(language: str) -> dict[str, str]:
    """One language's texts, keyed `section.name` (`[models]` `title = ...` is `models.title`)."""
    with (LOCALES / f"{language}.toml").open("rb") as handle:
        return dotted(tomllib.load(handle))


TEXTS: dict[str, dict[str, str]] = {language: load_texts(language) for language in LANGUAGES}


def current_language() -> str:
    return state.language() or DEFAULT_LANGUAGE


def has(message_id: str) -> bool:
    return message_id in TEXTS[DEFAULT_LANGUAGE]


def t(message_id: str, /, **params: Any) -> str:
    """The text in the session's language, in the singular where `count` is 1 and the language has one;
    `{cli}` in it is the command line as this installation runs it from a terminal (`localllm`, or
    this venv's python -m core)."""
    texts = TEXTS[current_language()]
    if params.get("count") == 1 and f"{message_id}_one" in texts:  # English's singular ("1 page")
        message_id += "_one"
    text = texts[message_id]
    if "{cli}" in text:
        params.setdefault("cli", command_line())
    return text.format(**params) if params else text


def language_from_locale(locale: str | None) -> str:
    """The browser's language (`zh-CN`, `en-US`...) mapped to one the dashboard speaks."""
    return "zh" if (locale or "").lower().startswith("zh") else DEFAULT_LANGUAGE


def error_text(exc: LocalLLMError) -> str:
    """A core error in the session's language."""
    return failure_text(exc.code, exc.params, exc.message)


def failure_text(code: str | None, params: dict[str, Any], message: str) -> str:
    """A product error (raised now, or stored with a download job) in the session's language: its own
    text filled with its parameters where the locale has one, else the English sentence inside a
    generic one; the addresses in it as code (`urls_as_code`). Its parameters and the English sentence
    quote the outside (a mirror's file names, a server's own words): shown as text, never as a link, an
    image or emphasis (`as_text`)."""
    return urls_as_code(_failure_sentence(code, params, as_text(message)))


def _failure_sentence(code: str | None, params: dict[str, Any], message: str) -> str:
    if not code or not has(code):
        return t("error.generic", message=message)
    shown = {name: as_text(value) if isinstance(value, str) and name != "reason" else value
             for name, value in params.items()}  # fmt: skip
    values = {**shown, "message": message}
    values.update((name, format_bytes(value)) for name, value in params.items() if name.endswith("_bytes"))
    if "file" in params:
        values["what"] = shown["file"] or t("reason.file_list")
    try:
        if "reason" in params and has(f"reason.{params['reason']}"):
            # A reason's text: a part of the code's sentence ({reason_text}), or its whole translated
            # message where the code's text says {message}.
            values["reason_text"] = values["message"] = t(f"reason.{params['reason']}", **values)
        return t(code, **values)
    except KeyError:  # an error raised without a parameter its text names: say it in English
        return t("error.generic", message=message)


def ordinal(position: int) -> str:
    """A place in line: '2nd' in English, '第 2' in Chinese."""
    if current_language() == "zh":
        return f"第 {position} "
    suffix = "th" if 10 <= position % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(position % 10, "th")
    return f"{position}{suffix}"
