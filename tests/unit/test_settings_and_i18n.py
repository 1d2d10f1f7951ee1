"""Settings from the environment, and the translation catalog's completeness."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from core.chat.limits import checked_length
from core.errors import ContextLengthError, DiskSpaceError, InsufficientMemoryError, LocalLLMError
from core.hub.catalog import BUILTIN_MODELS
from core.hub.transfer import REASONS
from core.settings import PROJECT_ROOT, load_settings
from ui.i18n import LANGUAGES, TEXTS, error_text, language_from_locale, t


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
    singular = {key for key in english if key.endswith("_one")}  # English's "1 page" beside "{count} pages"
    assert set(english) - singular == set(chinese), (set(english) - singular) ^ set(chinese)
    assert set(TEXTS) == set(LANGUAGES)
    for key in singular:
        plural = key.removesuffix("_one")
        assert "{count}" in english[plural] and "{count}" not in english[key], key
        assert set(re.findall(r"{(\w+)}", english[key])) == set(re.findall(r"{(\w+)}", english[plural])) - {
            "count"
        }
    for key, text in english.items():
        if key in singular:
            continue
        placeholders = {lang: set(re.findall(r"{(\w+)}", TEXTS[lang][key])) for lang in LANGUAGES}
        if key.startswith("error."):  # a translation may leave out the English sentence, nothing else
            assert placeholders["en"] - {"message"} == placeholders["zh"] - {"message"}, key
        else:
            assert placeholders["en"] == placeholders["zh"], key
        assert text.strip() and chinese[key].strip(), key


def test_english_says_one_in_the_singular(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (t("chat.pages", count=1), t("chat.pages", count=2), t("chat.pages", count=0)) == (
        "1 page", "2 pages", "0 pages",
    )  # fmt: skip
    assert t("chat.show_earlier", count=1, left=1) == "Show 1 earlier message (1 not shown)"
    monkeypatch.setattr("ui.state.language", lambda: "zh")
    assert t("chat.pages", count=1) == "1 页"


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
    core = PROJECT_ROOT / "core"  # (core/access's reasons name sign-in texts: access.*)
    sources = [
        *(core / "chat").rglob("*.py"),
        *(core / "hub").rglob("*.py"),
        *(core / "storage").rglob("*.py"),
    ]
    raised = {
        reason
        for path in [*sources, core / "preferences.py"]
        for reason in re.findall(r"""\breason=["'](\w+)["']""", path.read_text())
    }
    assert {"attachment_too_large", "disk_full", "server_busy", "url_scheme", "folder_unusable"} <= raised, (
        "the scan missed reasons"
    )
    raised |= set(REASONS)  # why a transfer or a search failed (transfer.reason_of)
    for language in LANGUAGES:
        assert {f"reason.{reason}" for reason in raised} <= set(TEXTS[language]), language


def _raised(action: Callable[[], object]) -> LocalLLMError:
    try:
        action()
    except LocalLLMError as exc:
        return exc
    raise AssertionError("nothing was raised")


# The errors a user meets most, with the parameters their raise sites give (core/hub/transfer.py,
# core/inference/engine.py, core/errors.py); the English sentence is each one's own message, for the CLI.
COMMON_ERRORS = [
    ContextLengthError("English.", tokens=3700, budget=3584),
    ContextLengthError("English.", tokens=7273, budget=3584),  # counting stopped early: a lower bound
    InsufficientMemoryError("English.", key="qwen2.5-0.5b", needed_bytes=1_520_000_000, available_bytes=9**9),
    DiskSpaceError(
        "English.", reason="disk_short", needed_bytes=987_654_321, free_bytes=200_000_000,
        margin_bytes=500_000_000, folder="/data/models",
    ),
    DiskSpaceError("English.", reason="disk_full", file="model.safetensors", path="/data/models/x.part"),
    _raised(lambda: checked_length("x" * 200_001)),
]  # fmt: skip


@pytest.mark.parametrize("error", COMMON_ERRORS, ids=lambda e: e.params.get("reason", e.code))
def test_the_errors_users_meet_most_read_whole_in_each_language(
    error: LocalLLMError, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = {}
    for language in LANGUAGES:
        monkeypatch.setattr("ui.state.language", lambda language=language: language)
        shown[language] = error_text(error)
    for text in shown.values():
        assert "English." not in text and "{" not in text, text  # its own text, every value filled
    figures = re.findall(
        r"[\d.]+ [KMG]B|\d{1,3}(?:,\d{3})+|\d{4,}|/data/models|model\.safetensors", shown["en"]
    )
    assert figures and all(figure in shown["zh"] for figure in figures), shown
    assert not re.search(r"[A-Za-z]{3,} [a-z]{3,}", shown["zh"]), shown["zh"]  # no English phrase in Chinese
