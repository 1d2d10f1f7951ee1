"""Presets and each model's own sampling: what a conversation answers with when nothing is set (the
publisher's generation_config), what a preset fixes on top, per owner, and each model's default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.chat.presets import Preset, PresetStore
from core.chat.providers import LocalProvider
from core.chat.service import ChatService
from core.errors import ConfigError, NotFoundError
from core.inference.engine import LocalEngine
from core.inference.params import GenerationParams
from core.preferences import Preferences
from core.storage.db import Database
from tests.fixtures.tiny_models import install_ready

QWEN_LIKE = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}


@pytest.fixture
def chat(tmp_path: Path, tiny_models: dict[str, Path], database: Database) -> ChatService:
    directory = install_ready(tmp_path / "models", "tiny", tiny_models["qwen2"])
    (directory / "generation_config.json").write_text(json.dumps(QWEN_LIKE))
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    return ChatService(database, lambda: LocalProvider(engine, "tiny"))


def test_a_conversation_without_settings_samples_as_the_publisher_recommends(chat: ChatService) -> None:
    conversation = chat.new_conversation()
    params = chat.params(conversation.id)
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty) == (0.7, 0.8, 20, 1.05)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, GenerationParams()),
        ({"do_sample": False}, GenerationParams(temperature=0.0)),
        ({"temperature": 9, "top_p": 0.5}, GenerationParams(top_p=0.5)),  # out of range: left out
        ("not json", GenerationParams()),
    ],
)
def test_publisher_settings_are_read_defensively(
    tmp_path: Path, tiny_models: dict[str, Path], config, expected
) -> None:
    directory = install_ready(tmp_path / "models", "tiny", tiny_models["llama"])
    (directory / "generation_config.json").write_text(
        config if isinstance(config, str) else json.dumps(config)
    )
    assert LocalEngine(tmp_path / "models").default_params("tiny") == expected


def test_a_preset_fixes_its_settings_over_the_models_own(chat: ChatService, database: Database) -> None:
    store = PresetStore(database, "local")
    terse = store.save("Terse", "Answer in five words.", {"temperature": 0.2, "presence_penalty": 0.5})
    conversation = chat.new_conversation()
    params = chat.apply_preset(conversation.id, terse)
    assert (params.temperature, params.presence_penalty, params.top_k, params.top_p) == (0.2, 0.5, 20, 0.8)
    stored = chat.get(conversation.id)
    assert (stored.system_prompt, stored.preset) == ("Answer in five words.", terse.key)
    chat.set_options(conversation.id, "mine", params)  # edited by hand: no longer the preset
    assert chat.get(conversation.id).preset is None

    builtin = Preset("builtin:translator", "Translator", "Translate.", {"temperature": 0.3})
    assert chat.apply_preset(conversation.id, builtin).temperature == 0.3


def test_presets_belong_to_their_owner_and_are_checked(database: Database) -> None:
    alice, bob = PresetStore(database, "lan:alice"), PresetStore(database, "lan:bob")
    mine = alice.save("Mine", "", {"top_k": 5})
    assert [p.name for p in alice.list()] == ["Mine"] and bob.list() == []
    with pytest.raises(NotFoundError):
        bob.delete(mine.key)
    assert alice.save("Mine", "again", {}).key == mine.key  # the same name replaces
    with pytest.raises(ConfigError, match="needs a name"):
        alice.save("  ", "", {})
    with pytest.raises(ConfigError, match="temperature must be between 0 and 2"):
        alice.save("Hot", "", {"temperature": 5})
    with pytest.raises(ConfigError, match="not max_new_tokens"):
        alice.save("Long", "", {"max_new_tokens": 10})
    alice.delete(mine.key)
    assert alice.list() == []


def test_each_model_may_have_a_default_preset(database: Database) -> None:
    preferences = Preferences(database)
    preferences.set("model_presets", "qwen2.5-0.5b=builtin:translator,tiny=user:3")
    assert preferences.get("model_presets") == {"qwen2.5-0.5b": "builtin:translator", "tiny": "user:3"}
    with pytest.raises(ConfigError, match="builtin:NAME or user:ID"):
        preferences.set("model_presets", "tiny=evil")


def test_what_a_provider_config_changes_wins_over_the_publisher(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    directory = install_ready(tmp_path / "models", "tiny", tiny_models["qwen2"])
    (directory / "generation_config.json").write_text(json.dumps(QWEN_LIKE))
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    params = LocalProvider(engine, "tiny", GenerationParams(max_new_tokens=16)).default_params()
    assert (params.max_new_tokens, params.temperature, params.top_k) == (16, 0.7, 20)
