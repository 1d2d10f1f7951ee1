"""`localllm score`: each token's log-probability under the model as the engine runs it, and the
perplexity; the black-box form of the quality check, with each weight format within its bound."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.cli import main
from core.inference import scoring
from core.inference.engine import LocalEngine
from core.inference.events import Finished
from core.inference.params import GenerationParams
from tests.fixtures.tiny_models import build_tiny_model, install_ready

TEXT = (
    "def add(a, b):\n    return a + b\n" * 6
    + "Hello 你好 world, the quick brown fox jumps over the lazy dog."
)
# Mean |log-probability - fp32's| per token on this model and text (measured 12-04: 0.0010, 0.0022,
# 0.0046; int4 through the int8 copy kept for prompts 0.0048).
BOUNDS = {"none": 0.005, "int8": 0.01, "int4": 0.015}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("scored") / "m", "llama", hidden_size=128)


def fp32_logprobs(path: Path) -> torch.Tensor:
    ids = AutoTokenizer.from_pretrained(path)(TEXT)["input_ids"]
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.inference_mode():
        logits = reference(torch.tensor([ids])).logits[0, :-1]
    return logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1))[:, 0]


@pytest.mark.parametrize("quantization", ["none", "int8", "int4"])
def test_each_weight_format_stays_within_its_quality_bound(
    tmp_path: Path, model: Path, quantization: str
) -> None:
    install_ready(tmp_path / "models", "tiny", model)
    scored = LocalEngine(tmp_path / "models", quantization=quantization, idle_unload_s=0).score("tiny", TEXT)
    ours = torch.tensor([token.logprob for token in scored.tokens])
    expected = fp32_logprobs(model)
    assert len(ours) == len(expected)
    assert float((ours - expected).abs().mean()) < BOUNDS[quantization]
    assert scored.perplexity == pytest.approx(math.exp(-float(ours.mean())), rel=1e-6)


def test_prompts_through_the_copy_kept_for_them_stay_within_int4s_bound(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a model is loaded the engine keeps a copy of its int4 weights for prompts (int8 with 8-bit
    activations where oneDNN's int8 kernel runs): a scored text goes through it, within int4's bound."""
    from core.inference import engine as engine_module
    from core.inference import quantize

    monkeypatch.setattr(engine_module, "KEEP_UNPACKED_MIN_BYTES", 0)  # a real model's copy is ≥ 0.25 GB
    install_ready(tmp_path / "models", "tiny", model)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    engine.load("tiny")
    engine.settle()
    layers = quantize.unpackable_layers(engine.parts_of("tiny").model)
    assert layers and all(
        isinstance(layer.kept, quantize.PackedInt8) == quantize.packing_works() and layer.kept
        for layer in layers
    )
    scored = engine.score("tiny", TEXT)
    ours = torch.tensor([token.logprob for token in scored.tokens])
    assert float((ours - fp32_logprobs(model)).abs().mean()) < BOUNDS["int4"]


def test_the_cli_prints_every_token_and_the_perplexity(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "qwen2.5-0.5b", model)
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    assert main(["score", "qwen2.5-0.5b", "--text-file", str(text), "--quantization", "int8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["weights"] == "int8" and not result["truncated"]
    assert "".join(token["token"] for token in result["tokens"]) in TEXT
    assert result["perplexity"] == pytest.approx(math.exp(-result["mean_logprob"]))
    assert main(["score", "qwen2.5-0.5b", "--text-file", str(text)]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert main(["score", "qwen2.5-0.5b", "--text-file", str(tmp_path / "missing.txt")]) == 2
    capsys.readouterr()
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(128, 256)) * 8)
    assert main(["score", "qwen2.5-0.5b", "--text-file", str(binary)]) == 2  # one line, no traceback
    assert capsys.readouterr().err == f"error: {binary} is not UTF-8 text.\n"


def test_a_text_far_longer_than_the_window_is_not_tokenized_whole(tmp_path: Path, model: Path) -> None:
    install_ready(tmp_path / "models", "tiny", model)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    engine.load("tiny")
    tokenizer = engine.parts_of("tiny").tokenizer
    encoded: list[int] = []
    real_encode = tokenizer.encode
    tokenizer.encode = lambda text, **options: (
        encoded.append(len(text)) or real_encode(text, **options)
    )  # a spy
    book = TEXT * 20_000  # ~2 M characters; the tiny model's window is 512 tokens
    scored = engine.score("tiny", book)
    assert scored.truncated and len(scored.tokens) == engine.loaded.context_length - 1
    assert encoded == [engine.loaded.context_length * scoring.CHARS_PER_TOKEN]


@pytest.mark.parametrize("quantization", ["int8", "none"])  # the lean decoder; transformers' forward
def test_a_text_scored_in_chunks_gets_the_logprobs_of_one_pass(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch, quantization: str
) -> None:
    # Long texts are scored a chunk at a time through one cache: each chunk must see the ones before.
    install_ready(tmp_path / "models", "tiny", model)
    engine = LocalEngine(tmp_path / "models", quantization=quantization, idle_unload_s=0)
    whole = torch.tensor([token.logprob for token in engine.score("tiny", TEXT).tokens])
    monkeypatch.setattr(scoring, "CHUNK_TOKENS", 7)
    chunked = torch.tensor([token.logprob for token in engine.score("tiny", TEXT).tokens])
    assert len(whole) > 7 * 4
    assert float((chunked - whole).abs().mean()) < 0.005


@pytest.mark.parametrize("arch", ["gemma2", "mistral"])
def test_architectures_the_decoder_does_not_run_reply_and_score_as_transformers_computes(
    tmp_path: Path, arch: str
) -> None:
    # transformers' own forward: Gemma 2's attention has a soft cap (SDPA cannot take it: transformers'
    # eager attention), Mistral's a window of 16 tokens (the text is longer: SDPA's sliding mask).
    source = build_tiny_model(tmp_path / "source", arch, hidden_size=64)
    install_ready(tmp_path / "models", "tiny", source)
    for quantization in ("none", "int4"):
        engine = LocalEngine(tmp_path / "models", quantization=quantization, idle_unload_s=0)
        scored = engine.score("tiny", TEXT)
        ours = torch.tensor([token.logprob for token in scored.tokens])
        assert len(ours) > 16 * 3
        assert float((ours - fp32_logprobs(source)).abs().mean()) < BOUNDS[quantization]
        reply = engine.stream("tiny", [{"role": "user", "content": TEXT}], GenerationParams(max_new_tokens=3))
        assert isinstance(list(reply)[-1], Finished)
