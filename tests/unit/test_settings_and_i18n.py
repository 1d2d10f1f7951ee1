"""Settings from the environment, and the translation catalog's completeness."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT, load_settings
from ui.i18n import LANGUAGES, MESSAGES, language_from_locale


def test_endpoint_order_hf_endpoint_then_mirrors() -> None:
    settings = load_settings(
        {"HF_ENDPOINT": "http://a.test/", "LOCALLLM_MIRRORS": "http://b.test, http://a.test"}
    )
    assert settings.endpoints == ("http://a.test", "http://b.test")
    default = load_settings({})
    assert default.endpoints == ("https://huggingface.co", "https://hf-mirror.com")
    assert default.models_dir == PROJECT_ROOT / "assets" / "models"
    assert default.db_url == f"sqlite:///{PROJECT_ROOT / 'data' / 'localllm.db'}"


def test_database_url_and_models_dir_come_from_the_environment() -> None:
    settings = load_settings({"LOCALLLM_DB_URL": "postgresql://u@h/db", "LOCALLLM_MODELS_DIR": "/srv/models"})
    assert settings.db_url == "postgresql://u@h/db"
    assert settings.models_dir == Path("/srv/models")


@pytest.mark.parametrize(
    ("locale", "language"),
    [("zh-CN", "zh"), ("zh-TW", "zh"), ("ZH", "zh"), ("en-US", "en"), ("fr-FR", "en"), (None, "en")],
)
def test_browser_locale_picks_the_language(locale: str | None, language: str) -> None:
    assert language_from_locale(locale) == language


def test_every_message_has_every_language_and_the_same_placeholders() -> None:
    for key, texts in MESSAGES.items():
        assert set(texts) == set(LANGUAGES), key
        placeholders = {lang: set(re.findall(r"{(\w+)}", text)) for lang, text in texts.items()}
        if key.startswith("error."):  # a translation may leave out the English detail, nothing else
            assert placeholders["zh"] <= {"message"}, key
            assert placeholders["en"] <= {"message"}, key
        else:
            assert placeholders["en"] == placeholders["zh"], key


def test_every_key_used_in_the_ui_exists() -> None:
    sources = [
        PROJECT_ROOT / "app.py",
        *(PROJECT_ROOT / "pages").glob("*.py"),
        *(PROJECT_ROOT / "ui").glob("*.py"),
    ]
    used = {key for path in sources for key in re.findall(r"""\bt\(\s*["']([\w.]+)["']""", path.read_text())}
    assert used, "the scan found no t() calls"
    assert used <= set(MESSAGES), used - set(MESSAGES)
