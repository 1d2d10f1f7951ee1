"""The context length: one default and one per model, never beyond the model's window, used alike by the
engine's cache and prompt check, the chat's history, the memory estimates and `localllm hardware`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.cli import main
from core.errors import ConfigError, ContextLengthError
from core.hub.library import ModelLibrary
from core.inference.engine import LocalEngine
from core.inference.events import Finished
from core.inference.params import GenerationParams
from core.inference.sizing import Precision
from core.preferences import Preferences
from core.storage.db import Database
from tests.fixtures.tiny_models import install_ready


def test_a_default_and_per_model_lengths(database: Database) -> None:
    preferences = Preferences(database, env={})
    assert preferences.context_for("qwen2.5-0.5b") == 4096
    preferences.set("context_tokens", "2048")
    preferences.set_context_for("qwen2.5-0.5b", 8192)
    assert (preferences.context_for("qwen2.5-0.5b"), preferences.context_for("tinyllama-1.1b")) == (
        8192,
        2048,
    )
    preferences.set_context_for("qwen2.5-0.5b", None)
    assert preferences.context_for("qwen2.5-0.5b") == 2048
    for bad in ("lots", 10, 10**9):
        with pytest.raises(ConfigError, match=r"context length|number of tokens"):
            preferences.set("context_tokens", bad)
    with pytest.raises(ConfigError, match="key=tokens"):
        preferences.set("model_context", "qwen2.5-0.5b:8192")


def test_the_estimate_follows_the_length_and_stops_at_the_window(database: Database) -> None:
    library = ModelLibrary(database)
    precision = Precision(0.625, 1.0, 2, "int4")
    small = library.memory_estimate("qwen2.5-0.5b", precision, 1024)
    large = library.memory_estimate("qwen2.5-0.5b", precision, 32768)
    assert large.kv_cache_bytes == 32 * small.kv_cache_bytes  # 2 × layers × KV heads × head dim × tokens
    library.preferences.set_context_for("tinyllama-1.1b", 65536)
    assert library.context_tokens("tinyllama-1.1b") == 2048  # its window
    assert library.memory_estimate("tinyllama-1.1b", precision).kv_cache_bytes == (
        library.memory_estimate("tinyllama-1.1b", precision, 2048).kv_cache_bytes
    )


def test_the_engine_keeps_prompt_and_reply_within_the_chosen_length(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    install_ready(tmp_path / "models", "tiny", tiny_models["qwen2"])  # a 512-token window
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0, context_setting=lambda _key: 64)
    assert (engine.window("tiny"), engine.context_tokens("tiny")) == (512, 64)
    with pytest.raises(ContextLengthError, match="maximum context length is 64 tokens"):
        engine.fit_prompt("tiny", [{"role": "user", "content": "word " * 80}], 10)
    params = GenerationParams(temperature=0, max_new_tokens=500)
    events = engine.stream("tiny", [{"role": "user", "content": "hi"}], params, ignore_eos=True)
    stats = next(e.stats for e in events if isinstance(e, Finished))
    assert stats.prompt_tokens + stats.completion_tokens == 64


def test_hardware_json_gives_each_models_context(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["settings", "set", "model_context", "qwen2.5-0.5b=8192"]) == 0
    capsys.readouterr()
    assert main(["hardware", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["models"]["qwen2.5-0.5b"]["context_tokens"] == 8192
    assert report["models"]["tinyllama-1.1b"]["context_tokens"] == 2048  # the default 4096, its window 2048


def test_hardware_json_says_how_many_people_fit_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["settings", "set", "parallel_replies", "2"]) == 0
    capsys.readouterr()
    assert main(["hardware", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parallel_replies"] == 2
    assert report["models"]["qwen2.5-0.5b"]["people_at_once"] == 2  # ~0.1 GB a cache: the setting decides
    assert main(["settings", "set", "parallel_replies", "17"]) == 2  # refused with a sentence
    assert "between 1 and 16" in capsys.readouterr().err


def test_hardware_json_estimates_decode_speed_on_a_cpu_only(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["hardware", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"] == "cpu" and report["models"]["qwen2.5-0.5b"]["est_tokens_per_s"] > 0
    # No GPU here: the engine is told it would run on one. A model this small on a GPU waits on
    # launching its work, not on memory: the CPU's bandwidth says nothing about its speed there.
    monkeypatch.setattr("core.inference.engine.LocalEngine.runs_on", lambda engine: "cuda")
    assert main(["hardware", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"] == "cuda"
    assert [model["est_tokens_per_s"] for model in report["models"].values()] == [None, None]
    assert report["models"]["qwen2.5-0.5b"]["memory_needed_bytes"] > 0  # the memory still estimated
    assert main(["hardware"]) == 0
    assert capsys.readouterr().out.count("speed measured with the first reply (GPU)") == 2
