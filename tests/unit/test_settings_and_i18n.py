"""Settings from the environment, and the translation catalog's completeness."""

from __future__ import annotations

import re

import pytest

from core.hub.catalog import BUILTIN_MODELS
from core.settings import PROJECT_ROOT, load_settings
from ui.i18n import LANGUAGES, TEXTS, language_from_locale


def test_the_database_url_and_data_folder_come_from_the_environment() -> None:
    default = load_settings({})
    assert default.db_url == f"sqlite:///{PROJECT_ROOT / 'data' / 'localllm.db'}"
    assert load_settings({"LOCALLLM_DB_URL": "postgresql://u@h/db"}).db_url == "postgresql://u@h/db"
    assert load_settings({"LOCALLLM_DATA_DIR": "/srv/llm"}).db_url == "sqlite:////srv/llm/localllm.db"


@pytest.mark.parametrize(
    ("locale", "language"),
    [("zh-CN", "zh"), ("zh-TW", "zh"), ("ZH", "zh"), ("en-US", "en"), ("fr-FR", "en"), (None, "en")],
)
def test_browser_locale_picks_the_language(locale: str | None, language: str) -> None:
    assert language_from_locale(locale) == language


def test_both_languages_have_the_same_keys_and_placeholders() -> None:
    english, chinese = TEXTS["en"], TEXTS["zh"]
    assert set(english) == set(chinese), set(english) ^ set(chinese)
    assert set(TEXTS) == set(LANGUAGES)
    for key, text in english.items():
        placeholders = {lang: set(re.findall(r"{(\w+)}", TEXTS[lang][key])) for lang in LANGUAGES}
        if key.startswith("error."):  # a translation may leave out the English sentence, nothing else
            assert placeholders["en"] - {"message"} == placeholders["zh"] - {"message"}, key
        else:
            assert placeholders["en"] == placeholders["zh"], key
        assert text.strip() and chinese[key].strip(), key


def test_every_key_used_in_the_ui_exists() -> None:
    sources = [
        PROJECT_ROOT / "app.py",
        *(PROJECT_ROOT / "pages").glob("*.py"),
        *(PROJECT_ROOT / "ui").glob("*.py"),
    ]
    used = {key for path in sources for key in re.findall(r"""\bt\(\s*["']([\w.]+)["']""", path.read_text())}
    assert used, "the scan found no t() calls"
    assert used <= set(TEXTS["en"]), used - set(TEXTS["en"])


def test_every_catalog_model_is_described_in_both_languages() -> None:
    for spec in BUILTIN_MODELS:
        for part in ("strengths", "use"):
            assert all(f"catalog.{spec.key}.{part}" in TEXTS[lang] for lang in LANGUAGES), spec.key


def test_every_reason_an_error_gives_is_translated() -> None:
    """A file's failure to import or attach reads as a whole sentence in each language, not in English."""
    raised = {
        reason
        for path in (PROJECT_ROOT / "core" / "chat").rglob("*.py")
        for reason in re.findall(r"""\breason=["'](\w+)["']""", path.read_text())
    }
    assert {"attachment_too_large", "attachment_too_many", "archive_zip"} <= raised, "the scan missed reasons"
    for language in LANGUAGES:
        assert {f"reason.{reason}" for reason in raised} <= set(TEXTS[language]), language
