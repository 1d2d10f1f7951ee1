"""The engine's own decoder layer (core/inference/native_layer.cpp): a layer a call computes what the
layer in torch operations computes, a token gets the same numbers whichever pass it shares, and the
op checks what it is given before it writes into a cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch

from core.inference import attention, native
from core.inference.decoder import Decoder, KvCache, Segment
from core.inference.quantize import Int4Linear, Int8Linear
from tests.fixtures.tiny_models import build_tiny_model
from tests.unit.test_quantize import load, prepare_for_decoder

PROMPT = torch.tensor([5, 17, 42, 99, 7, 230, 18, 64, 3, 150, 77, 12])
FOLLOWING = torch.tensor([31, 8, 190, 44, 2, 120, 61, 9])


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    if not native.prepare():  # built here if `make` did not (~10 s)
        pytest.skip(f"the engine's own kernels do not run here ({native.LIBRARY.problem})")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """qwen2: int8 attention (with q/k/v biases) and int4 MLPs; llama; qwen3 (q and k norms)."""
    root = tmp_path_factory.mktemp("layer")
    return {
        "qwen2": build_tiny_model(root / "qwen2", "qwen2", hidden_size=64, intermediate_size=512, layers=8),
        "llama": build_tiny_model(root / "llama", "llama", hidden_size=64),
        "qwen3": build_tiny_model(root / "qwen3", "qwen3", hidden_size=64),
    }


def decoder(path: Path, dtype: torch.dtype = torch.bfloat16, scheme: str = "int4") -> Decoder:
    model = load(path, attention.NAME, dtype=dtype)
    prepare_for_decoder(model, dtype, scheme)
    return Decoder(model)


def decode(lean: Decoder) -> tuple[torch.Tensor, KvCache]:
    """The prompt in one pass, then the following tokens one by one: every pass's logits, and the cache."""
    cache = KvCache(lean, 64)
    with torch.inference_mode():
        logits = [lean.run([Segment(cache, PROMPT)])]
        logits += [lean.run([Segment(cache, token.view(1))]) for token in FOLLOWING]
    return torch.cat(logits), cache


def in_torch_operations() -> Any:
    return mock.patch.object(Decoder, "_native_layers", return_value=None)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3"])
def test_a_layer_a_call_decodes_what_the_layer_in_torch_operations_decodes(
    models: dict[str, Path], arch: str
) -> None:
    lean = decoder(models[arch])
    assert lean._native_layers() is not None
    if arch == "qwen2":
        kinds = {type(getattr(layer, name)) for layer in lean.layers for name in ("qkv", "gate_up")}
        assert kinds == {Int4Linear, Int8Linear} and lean.layers[0].qkv.bias is not None
    with mock.patch.object(torch.ops.localllm, "decode_layer", wraps=torch.ops.localllm.decode_layer) as op:
        got, cache = decode(lean)
    assert op.call_count == len(lean.layers) * (1 + len(FOLLOWING))
    with in_torch_operations():
        expected, expected_cache = decode(lean)
    # bf16 between a layer's operations there, float32 here: bf16 roundings apart (as the decoder and
    # transformers are: test_quantize); in float32 the two agree to its rounding (below)
    assert ((got - expected).norm() / expected.norm()).item() < 0.02
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.8
    length = len(PROMPT) + len(FOLLOWING)
    for mine, theirs in ((cache.keys, expected_cache.keys), (cache.values, expected_cache.values)):
        mine, theirs = mine[:, :, :length].float(), theirs[:, :, :length].float()
        assert ((mine - theirs).norm() / theirs.norm()).item() < 0.02


def test_in_float32_the_two_agree_to_float32_rounding(models: dict[str, Path]) -> None:
    lean = decoder(models["llama"], torch.float32, "int8")  # int8 weights, float32 activations
    assert lean._native_layers() is not None
    got, _ = decode(lean)
    with in_torch_operations():
        expected, _ = decode(lean)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_a_token_gets_the_same_numbers_whatever_shares_its_pass(models: dict[str, Path]) -> None:
    lean = decoder(models["qwen2"])
    alone, _ = decode(lean)
    cache, other = KvCache(lean, 64), KvCache(lean, 128)
    with torch.inference_mode():
        by_token = [lean.run([Segment(cache, token.view(1))]) for token in PROMPT][-1:]
        long_prompt = torch.arange(3, 3 + 2 * lean._decoding_rows())  # a prompt too long for the layer
        for index, token in enumerate(FOLLOWING):
            # beside another reply's token, or a prompt through torch operations in a pass of its own
            ids = long_prompt if index == 0 else FOLLOWING[index : index + 1]
            by_token.append(lean.run([Segment(other, ids), Segment(cache, token.view(1))])[1:])
    assert torch.equal(torch.cat(by_token), alone)


def test_the_op_refuses_what_does_not_fit_before_writing(models: dict[str, Path]) -> None:
    lean = decoder(models["llama"])
    weights = lean._native_layers()[0]
    cache = KvCache(lean, 8, zeroed=True)
    x = torch.randn(2, lean.hidden, dtype=lean.dtype)
    rotary = (torch.ones(2, lean.head_dim), torch.zeros(2, lean.head_dim))
    caches = ([cache.keys], [cache.values])
    for segments, message in (
        (([7], [2]), "outside the cache"),  # tokens 7 and 8 of 8
        (([0], [3]), "add up to 3"),  # 3 tokens for 2 rows
        (([0, 0], [1, 1]), "for each segment"),  # two segments, one cache
    ):
        with pytest.raises(RuntimeError, match=message):
            native.decode_layer(x, weights, rotary, caches, 0, segments, lean.heads, lean.eps)
    with pytest.raises(RuntimeError, match="no layer"):
        native.decode_layer(x, weights, rotary, caches, len(lean.layers), ([0], [2]), lean.heads, lean.eps)
    assert not cache.keys.any() and not cache.values.any()
