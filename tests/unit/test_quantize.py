"""Int8 weights and the decode attention: close to the reference, and what the engine really uses."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from core import attention
from core.engine import LocalEngine, TextDelta
from core.generation import GenerationParams
from core.model_store import read_manifest, write_manifest
from core.quantize import PROMPT_ROWS, Int8Linear, int8_matmul, quantize_model, quantize_rows, stored_bytes
from tests.fixtures.tiny_models import install_ready

PROMPT = torch.tensor([[5, 17, 42, 99, 7, 230, 18, 64, 3, 150, 77, 12]])


def load(path: Path, attn: str = "sdpa") -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation=attn).eval()


def test_per_row_scales_keep_each_weight_within_half_a_step() -> None:
    torch.manual_seed(0)
    weight = torch.randn(64, 32) * torch.logspace(-3, 1, 64)[:, None]  # rows of very different sizes
    quantized, scale = quantize_rows(weight, torch.float32)
    error = (quantized.float() * scale[:, None] - weight).abs()
    assert (error <= scale[:, None] / 2 + 1e-7).all()  # per row: small rows keep their precision
    zero_rows, zero_scale = quantize_rows(torch.zeros(2, 4), torch.float32)
    assert zero_rows.abs().sum() == 0
    assert torch.isfinite(zero_scale).all()


def test_prompt_rows_and_decode_rows_give_the_same_product() -> None:
    torch.manual_seed(1)
    layer = Int8Linear.from_linear(torch.nn.Linear(64, 48, bias=True), torch.bfloat16)
    rows = torch.randn(PROMPT_ROWS + 8, 64, dtype=torch.bfloat16)
    together = layer(rows)  # the prompt path: widened weights and a bf16 GEMM
    one_by_one = torch.cat([layer(row[None]) for row in rows])  # the decode path: the int8 kernel
    torch.testing.assert_close(together, one_by_one, atol=0.05, rtol=0.02)
    assert int8_matmul(rows[:1], layer.weight, layer.scale).shape == (1, 48)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_int8_model_stays_close_to_the_bf16_reference(tiny_models: dict[str, Path], arch: str) -> None:
    reference, quantized = load(tiny_models[arch]), load(tiny_models[arch])
    before = stored_bytes(quantized)
    assert quantize_model(quantized, torch.bfloat16) > 0
    assert stored_bytes(quantized) < 0.75 * before
    with torch.inference_mode():
        expected = reference(PROMPT).logits.float()
        got = quantized(PROMPT).logits.float()
    relative = (got - expected).norm() / expected.norm()
    assert relative < 0.03, relative
    agreement = (got.argmax(-1) == expected.argmax(-1)).float().mean()
    assert agreement >= 0.9, agreement  # teacher-forced top-1 agreement at every position


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_decode_attention_matches_transformers_sdpa(tiny_models: dict[str, Path], arch: str) -> None:
    reference, ours = load(tiny_models[arch]), load(tiny_models[arch], attention.NAME)
    with torch.inference_mode():
        expected = reference.generate(PROMPT, max_new_tokens=24, do_sample=False, output_logits=True,
                                      return_dict_in_generate=True)  # fmt: skip
        got = ours.generate(PROMPT, max_new_tokens=24, do_sample=False, output_logits=True,
                            return_dict_in_generate=True)  # fmt: skip
    assert torch.equal(got.sequences, expected.sequences)
    for mine, theirs in zip(got.logits, expected.logits, strict=True):
        torch.testing.assert_close(mine, theirs, atol=0.02, rtol=0.02)


def test_the_engine_uses_int8_on_the_cpu_and_the_reference_is_one_setting_away(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    install_ready(tmp_path, "tiny", tiny_models["qwen2"])
    fast = LocalEngine(tmp_path, device="cpu", idle_unload_s=0)
    assert fast.precision().weight_bytes == 1
    loaded = fast.load("tiny")
    assert (loaded.device, loaded.weights) == ("cpu", "int8")
    fast.unload()
    reference = LocalEngine(tmp_path, device="cpu", quantization="none", idle_unload_s=0)
    loaded_reference = reference.load("tiny")
    assert loaded_reference.weights == loaded_reference.dtype
    assert loaded.memory_bytes < loaded_reference.memory_bytes


def test_the_int8_copy_is_kept_on_disk_and_reused_only_for_the_same_weights(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    directory = install_ready(tmp_path, "tiny", tiny_models["llama"])
    messages = [{"role": "user", "content": "hello"}]
    params = GenerationParams(temperature=0, max_new_tokens=16)

    def reply() -> str:
        engine = LocalEngine(tmp_path, device="cpu", idle_unload_s=0)
        text = "".join(e.text for e in engine.stream("tiny", messages, params) if isinstance(e, TextDelta))
        engine.unload()
        return text

    first = reply()  # quantizes and writes the copy
    [copy] = directory.glob(".localllm-int8-*.pt")
    written = copy.stat().st_mtime_ns
    assert reply() == first  # mapped from the copy: the same answer
    assert copy.stat().st_mtime_ns == written
    manifest = read_manifest(directory)
    changed = replace(manifest, files=tuple(replace(f, sha256="0" * 64) for f in manifest.files))
    write_manifest(directory, changed)  # other weights (a repair, a new revision): quantize again
    assert reply() == first
    assert copy.stat().st_mtime_ns != written
