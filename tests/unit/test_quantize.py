"""Int4/int8 weights, the decode attention and the decoder: close to the reference, used by the engine."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, DynamicCache

from core.hub.store import read_manifest, write_manifest
from core.inference import attention, native, quantize
from core.inference.batching import generate
from core.inference.decoder import Decoder, KvCache, Segment, supports
from core.inference.engine import LocalEngine
from core.inference.events import TextDelta
from core.inference.generation import end_ids
from core.inference.params import GenerationParams
from core.inference.quantize import (
    FIT_STRETCHES,
    INT4_GROUP,
    INT4_PROMPT_ROWS,
    INT4_SUPER,
    KEPT_PROMPT_ROWS,
    KEPT_PROMPT_ROWS_NATIVE,
    PROMPT_ROWS,
    UNPACK_BLOCK,
    Int4Linear,
    Int8Linear,
    fit_groups,
    fuse_projections,
    int8_matmul,
    quantize_checkpoint,
    quantize_groups,
    quantize_model,
    quantize_rows,
    stored_bytes,
    unpack_int4,
)
from core.inference.sampler import Sampling, TokenChooser
from core.inference.sizing import NARROW_HIDDEN, KvLayout
from tests.fixtures.tiny_models import build_tiny_model, install_ready

PROMPT = torch.tensor([[5, 17, 42, 99, 7, 230, 18, 64, 3, 150, 77, 12]])
CLOSE = {"atol": 0.01, "rtol": 0.01}  # bf16 logits of the tiny models (within ±0.3): a rounding or two


def load(path: Path, attn: str = "sdpa", dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn).eval()


def test_per_row_scales_keep_each_weight_within_half_a_step() -> None:
    torch.manual_seed(0)
    weight = torch.randn(64, 32) * torch.logspace(-3, 1, 64)[:, None]  # rows of very different sizes
    quantized, scale = quantize_rows(weight, torch.float32)
    error = (quantized.float() * scale[:, None] - weight).abs()
    assert (error <= scale[:, None] / 2 + 1e-7).all()  # per row: small rows keep their precision
    zero_rows, zero_scale = quantize_rows(torch.zeros(2, 4), torch.float32)
    assert zero_rows.abs().sum() == 0
    assert torch.isfinite(zero_scale).all()


def test_fitted_int4_groups_are_never_further_from_the_weights_than_min_max() -> None:
    torch.manual_seed(0)
    groups = torch.randn(64, 8, INT4_GROUP) * torch.logspace(-3, 1, 8)[:, None]
    groups[:8, :, 0] *= 12  # outliers, which stretch a min/max range
    codes, scale, low = fit_groups(groups)
    assert ((codes >= 0) & (codes <= 15) & (codes == codes.round())).all()
    lowest, step = (
        groups.amin(-1, keepdim=True),
        (groups.amax(-1, keepdim=True) - groups.amin(-1, keepdim=True)) / 15,
    )
    min_max = ((groups - lowest) / step).round().clamp(0, 15) * step + lowest
    importance = groups.square().mean(-1, keepdim=True).sqrt() + groups.abs()  # llama.cpp's weights

    def error(approximation: torch.Tensor) -> torch.Tensor:
        return (importance * (approximation - groups).square()).sum(-1)

    fitted = error(codes * scale[..., None] + low[..., None])
    assert (fitted <= error(min_max) * (1 + 1e-5)).all()  # never worse, group by group
    assert (fitted / error(min_max)).mean() < 0.9  # and clearly better overall


def test_fitted_int4_groups_take_the_best_of_their_ranges() -> None:
    # Each group keeps the least error among min/max and the least-squares fits of its stretched
    # ranges. A fit that ranks one rounding and stores another (the max element at exactly 14.5
    # levels rounded two ways) left 1 % of the groups up to 2 × further from their weights.
    torch.manual_seed(1)
    groups = torch.randn(256, 16, INT4_GROUP) * 0.02
    groups[::7, :, 3] *= 8  # outliers
    codes, scale, low = fit_groups(groups)
    importance = groups.square().mean(-1, keepdim=True).sqrt() + groups.abs()

    def error(levels: torch.Tensor, step: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return (importance * (levels * step[..., None] + offset[..., None] - groups).square()).sum(-1)

    lowest = groups.amin(-1)
    span = groups.amax(-1) - lowest
    shifted = groups - lowest[..., None]
    best = error((shifted * (15 / span)[..., None]).round().clamp(0, 15), span / 15, lowest)
    for stretch in FIT_STRETCHES:
        levels = (shifted * ((15 + torch.tensor(stretch)) / span)[..., None]).round().clamp(0, 15)
        design = torch.stack((levels, torch.ones_like(levels)), -1) * importance[..., None].sqrt()
        target = (groups * importance.sqrt())[..., None]
        fit = torch.linalg.lstsq(design.double(), target.double()).solution.float()[..., 0]
        fits = fit[..., 0] > 0
        candidate = error(levels, fit[..., 0], fit[..., 1])
        best = torch.where(fits & (candidate < best), candidate, best)
    assert (error(codes, scale, low) <= best * (1 + 1e-3)).all()


def test_the_int4_kernel_computes_with_the_coded_groups_about_as_close_as_the_fitted_ones() -> None:
    torch.manual_seed(0)
    rows, columns = 48, 40 * INT4_GROUP  # two super-blocks of groups and a part of one
    sizes = torch.logspace(-0.6, 0.6, columns // INT4_GROUP)[torch.randperm(columns // INT4_GROUP)]
    weight = torch.randn(rows, columns) * sizes.repeat_interleave(INT4_GROUP)
    weight[:, 5] += 3  # a group whose offset is far from the others'
    packed, codes, units = quantize_groups(weight)
    assert packed.numel() == weight.numel() // 2 and codes.numel() == 2 * weight.numel() // INT4_GROUP
    assert units.shape == (3, 2, rows) and units.dtype == torch.float32
    # torch's kernel times the identity matrix gives the weights back as the kernel sees them: whole
    # codes 0..15 times the coded scales plus the coded offsets.
    scales = quantize.torch_scales(codes, units, torch.float32)
    seen = torch._weight_int4pack_mm_for_cpu(torch.eye(columns), packed, INT4_GROUP, scales).t()
    scale, offset = (
        part.t().repeat_interleave(INT4_GROUP, 1) for part in quantize.decode_scales(codes, units)
    )
    levels = (seen - offset) / scale
    torch.testing.assert_close(levels, levels.round().clamp(0, 15), atol=1e-3, rtol=0)
    # 8-bit codes of a pair per 16 groups cost little against the groups' own fitted pairs (bf16 before):
    # 0.8 % more error here with the codes of the fitted pair, 0.3 % with the offset fitted again
    levels, fitted_scale, low = fit_groups(weight.view(rows, -1, INT4_GROUP))
    fitted = (levels * fitted_scale[..., None] + low[..., None]).view(rows, columns)
    coded_error, fitted_error = (seen - weight).square().mean(), (fitted - weight).square().mean()
    assert fitted_error < coded_error < 1.005 * fitted_error


def test_scale_codes_keep_each_group_within_half_a_unit_of_its_super_block() -> None:
    torch.manual_seed(1)
    groups, outputs = 2 * INT4_SUPER + 3, 8
    scale = torch.rand(groups, outputs) + 0.01
    offset = torch.randn(groups, outputs)
    scale[:, 0], offset[:, 0] = 0.5, 0.0  # every group alike, no offset
    codes, units = quantize.code_scales(scale, offset)
    assert (
        codes.dtype == torch.uint8 and codes.shape == (groups, 2, outputs) and units.shape == (3, 2, outputs)
    )
    got_scale, got_offset = quantize.decode_scales(codes, units)
    unit = units.repeat_interleave(INT4_SUPER, 0)[:groups]
    assert ((got_scale - scale).abs() <= unit[:, 0] / 2 * (1 + 1e-6)).all()
    assert ((got_offset - offset).abs() <= unit[:, 1] / 2 * (1 + 1e-6)).all()
    assert torch.equal(got_scale[:, 0], scale[:, 0]) and torch.equal(got_offset[:, 0], offset[:, 0])
    assert (codes[:, 1].view(torch.int8) < 0).any()  # offsets keep their sign
    picked = torch.tensor([0, INT4_SUPER + 1, groups - 1])
    some_scale, some_offset = quantize.decode_scales(codes, units, 2, 6, groups=picked)
    assert torch.equal(some_scale, got_scale[picked, 2:6]) and torch.equal(
        some_offset, got_offset[picked, 2:6]
    )


def test_int4_keeps_the_first_layers_attention_and_the_head_int8(tmp_path: Path) -> None:
    # A model wider than NARROW_HIDDEN (TinyLlama: 2048) keeps only these int8: q/k/v int4 everywhere
    # took TinyLlama's KL per token from 0.070 to 0.102, int8 in the first eighth of layers to 0.076.
    model = load(build_tiny_model(tmp_path / "wide", "llama", hidden_size=NARROW_HIDDEN + 128, layers=2))
    quantize_model(model, torch.bfloat16, "int4")
    for index, layer in enumerate(model.model.layers):
        first_eighth = index < 1
        assert isinstance(layer.self_attn.qkv_proj.linear, Int8Linear if first_eighth else Int4Linear)
        assert isinstance(layer.self_attn.o_proj, Int4Linear)
        assert isinstance(layer.mlp.gate_up_proj.linear, Int4Linear)
        assert isinstance(layer.mlp.down_proj, Int4Linear)
    assert isinstance(model.lm_head, Int8Linear)


def test_int4_keeps_more_int8_in_a_narrow_model(tmp_path: Path) -> None:
    # Qwen2.5-0.5B (896 wide, attention 12 % of a layer): KL per token 0.024 -> 0.0043 against the
    # 16-bit model (docs/performance.md). The tiny model's attention is 11 % of a layer, as Qwen's.
    directory = build_tiny_model(
        tmp_path / "narrow", "qwen2", hidden_size=64, intermediate_size=512, layers=8
    )
    model = load(directory)
    quantize_model(model, torch.bfloat16, "int4")
    for index, layer in enumerate(model.model.layers):
        assert isinstance(layer.self_attn.qkv_proj.linear, Int8Linear)
        assert isinstance(layer.self_attn.o_proj, Int8Linear)
        first_eighth = index < 1
        assert isinstance(layer.mlp.gate_up_proj.linear, Int8Linear if first_eighth else Int4Linear)
        assert isinstance(layer.mlp.down_proj, Int8Linear if first_eighth else Int4Linear)
        assert not layer.self_attn.qkv_proj.linear.tame_rows_in_8_bits  # attention's rows stay in 15 bits
    assert isinstance(model.lm_head, Int8Linear)
    assert model.lm_head.tame_rows_in_8_bits  # the head's tame rows in 8, as prompts' rows (PROMPT_PEAK)


def test_a_narrow_model_with_wide_attention_keeps_only_its_first_layers_int8(tmp_path: Path) -> None:
    # Qwen3-0.6B (1024 wide, attention 40 % of a layer): every q/k/v and o int8 would read 13 % more
    # bytes a token, for a KL of 0.0018 where the first eighth alone gives 0.0081 (Q4_K_M: 0.0134).
    model = load(build_tiny_model(tmp_path / "qwen3", "qwen3", hidden_size=64, layers=8))
    quantize_model(model, torch.bfloat16, "int4")
    for index, layer in enumerate(model.model.layers):
        kind = Int8Linear if index < 1 else Int4Linear
        for matrix in (layer.self_attn.qkv_proj.linear, layer.self_attn.o_proj, layer.mlp.down_proj):
            assert isinstance(matrix, kind)
        assert isinstance(layer.mlp.gate_up_proj.linear, kind)
    assert isinstance(model.lm_head, Int8Linear)


def test_a_shape_int4_groups_do_not_fit_stays_int8() -> None:
    odd = Int4Linear.from_linear(torch.nn.Linear(INT4_GROUP + 8, 16), torch.bfloat16)
    assert isinstance(odd, Int8Linear)
    assert isinstance(Int4Linear.from_linear(torch.nn.Linear(2 * INT4_GROUP, 16), torch.bfloat16), Int4Linear)


def test_prompt_rows_and_decode_rows_give_the_same_product(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    layer = Int8Linear.from_linear(torch.nn.Linear(64, 48, bias=True), torch.bfloat16)
    rows = torch.randn(PROMPT_ROWS + 9, 64, dtype=torch.bfloat16)  # padded to 48 rows for the GEMM
    monkeypatch.setattr(quantize, "UNPACK_WEIGHTS", 20 * 64)  # widened 20 outputs at a time: 20, 20, 8
    together = layer(rows)  # the prompt path: widened weights and a bf16 GEMM
    one_by_one = torch.cat([layer(row[None]) for row in rows])  # the decode path: the int8 kernel
    torch.testing.assert_close(together, one_by_one, atol=0.05, rtol=0.02)
    exact = rows.double() @ (layer.weight.double() * layer.scale.double()[:, None]).t() + layer.bias.double()
    torch.testing.assert_close(together.double(), exact, atol=0.02, rtol=0.01)  # every slice, bf16 rounding
    assert int8_matmul(rows[:1], layer.weight, layer.scale).shape == (1, 48)


def test_unpacking_int4_gives_the_weights_the_kernel_multiplies_with() -> None:
    torch.manual_seed(2)
    weight = torch.randn(3 * UNPACK_BLOCK, 4 * INT4_GROUP)
    packed, codes, units = quantize_groups(weight)
    scales = quantize.torch_scales(codes, units, torch.float32)
    seen = torch._weight_int4pack_mm_for_cpu(torch.eye(weight.shape[1]), packed, INT4_GROUP, scales)
    torch.testing.assert_close(unpack_int4(packed, codes, units, 0, weight.shape[0]), seen)
    torch.testing.assert_close(
        unpack_int4(packed, codes, units, UNPACK_BLOCK, 3 * UNPACK_BLOCK), seen[:, 64:192]
    )


def test_a_prompt_through_the_unpacked_int4_weights_gets_the_kernels_product(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(3)
    layer = Int4Linear.from_linear(torch.nn.Linear(4 * INT4_GROUP, 5 * UNPACK_BLOCK), torch.bfloat16)
    # slices of two blocks, the last of one
    monkeypatch.setattr(quantize, "UNPACK_WEIGHTS", 2 * UNPACK_BLOCK * layer.in_features)
    assert layer.unpackable(torch.bfloat16) and not layer.unpackable(torch.float32)
    rows = torch.randn(INT4_PROMPT_ROWS + 1, layer.in_features, dtype=torch.bfloat16)  # padded to 112
    prompt = layer(rows)  # unpacked weights and a bf16 GEMM
    kernel = (
        torch._weight_int4pack_mm_for_cpu(rows, layer.packed, INT4_GROUP, layer.torch_scales()) + layer.bias
    )
    assert (prompt.float() - kernel.float()).norm() < 0.01 * kernel.float().norm()  # bf16 rounding
    odd = Int4Linear.from_linear(torch.nn.Linear(4 * INT4_GROUP, UNPACK_BLOCK + 16), torch.bfloat16)
    assert not odd.unpackable(torch.bfloat16)  # a partial block: the kernel, whatever the rows
    odd_rows = rows[:, : odd.in_features]
    torch.testing.assert_close(
        odd.product(odd_rows),
        torch._weight_int4pack_mm_for_cpu(odd_rows, odd.packed, INT4_GROUP, odd.torch_scales()),
    )


@pytest.mark.parametrize("layout", ["int8", "slices"])
def test_weights_kept_unpacked_give_a_prompt_the_product_of_the_unpacked_weights(
    monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    torch.manual_seed(4)
    layer = Int4Linear.from_linear(torch.nn.Linear(4 * INT4_GROUP, 5 * UNPACK_BLOCK), torch.bfloat16)
    monkeypatch.setattr(quantize, "UNPACK_WEIGHTS", 2 * UNPACK_BLOCK * layer.in_features)  # equal slices
    if layout == "slices":  # CPUs without oneDNN's int8 kernel (VNNI)
        monkeypatch.setattr(quantize, "packing_works", lambda: False)
    elif not quantize.packing_works():
        pytest.skip("oneDNN's int8 kernel (VNNI)")
    rows = torch.randn(INT4_PROMPT_ROWS + 1, layer.in_features, dtype=torch.bfloat16)
    unpacked_each_time = layer(rows)
    if layout == "slices":  # multiplied as unpacked: the same product to the bit
        assert layer.keep_unpacked() == layer.in_features * layer.out_features * 2 == layer.unpacked_bytes()
        assert [tuple(part.shape) for part in layer.kept] == [(128, 64)] * 5
        assert torch.equal(layer(rows), unpacked_each_time)
    else:  # int8 weights and 8-bit activations: half the bytes, the product within ~1 % of it
        assert layer.keep_unpacked() == (layer.in_features + 8) * layer.out_features == layer.unpacked_bytes()
        assert isinstance(layer.kept, quantize.PackedInt8)
        error = (layer(rows).float() - unpacked_each_time.float()).norm() / unpacked_each_time.float().norm()
        assert 0 < error < 0.015
    # A short prompt takes them too, at once (fewer rows beside torch's int4 kernel than beside ours).
    assert layer.prompt_rows == (KEPT_PROMPT_ROWS_NATIVE if layer.native_runs() else KEPT_PROMPT_ROWS)
    kept_product, short = layer(rows), rows[: layer.prompt_rows]
    short_product = layer(short)
    layer.packed.zero_()  # from now on a prompt reads the kept weights only; one token, the kernel
    assert torch.equal(layer(rows), kept_product) and torch.equal(layer(short), short_product)
    assert not torch.equal(layer(rows[:1]), unpacked_each_time[:1])


def _kept_int8_layer(seed: int) -> Int4Linear:
    """A random int4 layer (512 inputs, 320 outputs) with its int8 copy kept for prompts."""
    if not quantize.packing_works():
        pytest.skip("oneDNN's int8 kernel (VNNI)")
    torch.manual_seed(seed)
    layer = Int4Linear.from_linear(
        torch.nn.Linear(16 * INT4_GROUP, 5 * UNPACK_BLOCK, bias=False), torch.bfloat16
    )
    layer.keep_unpacked()
    assert isinstance(layer.kept, quantize.PackedInt8)
    return layer


def test_a_prompt_row_with_a_peak_far_above_its_rms_goes_to_the_kept_int8_weights_exactly() -> None:
    """Activations meet the int8 weights kept for prompts as one byte a value; a row with an outlier (a
    massive activation, an outlier channel) would lose its other values to the outlier's scale, so it
    takes a second byte (exact to 15 bits), and only it: the other rows cost one row of the GEMM each."""
    layer = _kept_int8_layer(6)
    weight, scale = quantize.quantize_rows(
        unpack_int4(*layer.native_weights(), 0, 320, dtype=layer.dtype).t(), torch.float32
    )
    rows = torch.randn(40, layer.in_features)
    rows[7, 3] = 60.0  # ~21 × the row's RMS (with it)
    exact = rows.double() @ (weight.double() * scale.double()[:, None]).t()

    def errors(peak: float) -> torch.Tensor:
        with _Shapes("qlinear_pointwise") as calls:
            got = quantize.packed_matmul(rows, layer.kept, peak).double()
        assert {shapes[0][0] for shapes in calls.seen} == {quantize.gemm_rows(40 + (peak < 60))}
        return (got - exact).norm(dim=1) / exact.norm(dim=1)

    guarded, one_byte_each = errors(quantize.PROMPT_PEAK), errors(math.inf)
    assert guarded[7] < 1e-3 < 0.02 < one_byte_each[7]  # one byte would have cost the row 2 %+
    others = torch.ones(40, dtype=torch.bool)
    others[7] = False
    assert torch.equal(guarded[others], one_byte_each[others])
    assert 1e-4 < guarded[others].max() < 0.015


def test_an_outlier_channel_of_a_prompt_is_multiplied_in_16_bits_and_no_row_takes_a_second_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real checkpoints' activations carry a few channels far above the rest in every row: the row guard
    alone would give every row a second byte (a prompt at twice the cost); those columns are taken out
    and multiplied in 16 bits with their int4 weights instead (LLM.int8()'s decomposition)."""
    layer = _kept_int8_layer(7)
    unpacked = unpack_int4(*layer.native_weights(), 0, layer.out_features)  # in × out
    columns = torch.tensor([5, 100, 511])
    assert torch.equal(quantize.int4_columns(*layer.native_weights(), columns), unpacked[columns])
    rows = torch.randn(40, layer.in_features)
    rows[:, 5] *= 40  # an outlier channel: most rows' peak > PROMPT_PEAK × their RMS
    rows = rows.bfloat16()
    exact = rows.double() @ unpacked.double()

    def product() -> tuple[torch.Tensor, set[int]]:
        with _Shapes("qlinear_pointwise") as calls, torch.inference_mode():
            got = layer(rows).double()
        return got, {shapes[0][0] for shapes in calls.seen}

    (decomposed, kernel_rows), error = product(), lambda got: float((got - exact).norm() / exact.norm())
    assert kernel_rows == {40} and error(decomposed) < 0.015  # one byte a row, the channel in 16 bits
    monkeypatch.setattr(quantize, "outlier_columns", lambda _rows: None)
    guarded, kernel_rows = product()
    peaky = int(
        (rows.float().abs().amax(1) > quantize.PROMPT_PEAK * rows.float().square().mean(1).sqrt()).sum()
    )
    assert peaky > 20 and kernel_rows == {quantize.gemm_rows(40 + peaky)}  # most rows twice
    assert error(guarded) < 0.015


class _Shapes(TorchDispatchMode):
    """The shapes of the operations named `names` that run while it is on."""

    def __init__(self, *names: str) -> None:
        super().__init__()
        self.names, self.seen = names, set[tuple[tuple[int, ...], ...]]()

    def __torch_dispatch__(
        self, func: torch._ops.OpOverload, types: object, args: tuple = (), kwargs: dict | None = None
    ) -> object:
        if func.overloadpacket.__name__ in self.names:
            self.seen.add(tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)))
        return func(*args, **(kwargs or {}))


def test_prompts_of_every_length_share_a_few_gemm_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN compiles and keeps a kernel for each GEMM shape (~1 MB each): a prompt's rows are padded to
    four sizes an octave, and each matrix is widened in equal slices, so a server that meets every
    prompt length keeps its memory bounded."""
    assert all(count <= quantize.gemm_rows(count) <= 1.25 * count for count in range(1, 5000))
    torch.manual_seed(4)
    int4 = Int4Linear.from_linear(
        torch.nn.Linear(2 * INT4_GROUP, 5 * UNPACK_BLOCK, bias=False), torch.bfloat16
    )
    int8 = Int8Linear.from_linear(torch.nn.Linear(2 * INT4_GROUP, 48, bias=False), torch.bfloat16)
    # About two blocks of outputs a slice: 2, 2 and 1 blocks would be two shapes, five of one block are one.
    monkeypatch.setattr(quantize, "UNPACK_WEIGHTS", 2 * UNPACK_BLOCK * int4.in_features)
    for layer, first in ((int4, int4.prompt_rows), (int8, PROMPT_ROWS)):
        rows = torch.randn(520, layer.in_features, dtype=torch.bfloat16)
        exact = rows.double() @ layer(torch.eye(layer.in_features, dtype=torch.bfloat16)).double()
        with _Shapes("mm") as gemms, torch.inference_mode():
            for count in range(first, 520):
                product = layer(rows[:count])
                assert product.shape == (count, layer.out_features)
                torch.testing.assert_close(product.double(), exact[:count], atol=0.05, rtol=0.02)
        counts = {shapes[0][0] for shapes in gemms.seen}
        assert len(counts) <= 4 * 5, sorted(counts)  # 32 (or 96) to 519 rows: four octaves and a bit
        assert len({shapes[1] for shapes in gemms.seen}) == 1  # int8: 3 slices of 16 of its 48 outputs


def test_16_bit_weights_on_the_cpu_run_prompts_in_a_few_gemm_shapes_too(tiny_models: dict[str, Path]) -> None:
    """The 16-bit setting keeps transformers' own layers on the CPU; their rows are padded as well."""
    from core.inference.loading import _weights

    model, _ = _weights(tiny_models["qwen2"], "cpu", torch.bfloat16, None)
    reference = load(tiny_models["qwen2"], attention.NAME)
    # Where oneDNN runs bf16 the engine moves the weights into its own layout while no reply runs, a
    # matrix at a time (all but a head tied to the embeddings); a reply may find half of them moved.
    layers = [m for m in model.modules() if isinstance(m, quantize.PaddedLinear)]
    movable = quantize.movable_layers(model)
    assert len(movable) == (len(layers) - model.config.tie_word_embeddings) * quantize.prepacking_works()
    for layer in movable[::2]:
        assert layer.keep_unpacked() == 0  # no memory added: the plain weight goes
    assert quantize.stored_bytes(model) == quantize.stored_bytes(reference)  # the same bytes, counted
    ids = torch.randint(3, 300, (1, 300), generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        for count in (1, 37, 300):
            torch.testing.assert_close(
                model(ids[:, :count]).logits.float(), reference(ids[:, :count]).logits.float(), **CLOSE
            )
        with _Shapes("linear", "_linear_pointwise") as gemms:
            for count in range(32, 300):
                model(ids[:, :count], logits_to_keep=1)
    counts = {math.prod(shapes[0][:-1]) for shapes in gemms.seen}  # the rows of the input
    assert 3 <= len(counts) <= 4 * 4, sorted(counts)  # 32-299 rows: three octaves and a bit


def _cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not _cpu_flags() & {"avx512_vnni", "avx_vnni"}, reason="an x86 CPU with VNNI")
def test_a_cpu_with_vnni_packs_the_head_and_computes_it_exactly() -> None:
    # The tests of the packed head below skip where packing does not work; here it must.
    assert quantize.packing_works()


def test_the_packed_head_computes_the_int8_weights_times_the_activations_to_15_bits() -> None:
    if not quantize.packing_works():
        pytest.skip("this torch build has no oneDNN packing (the head keeps its own kernel)")
    torch.manual_seed(2)
    layer = Int8Linear.from_linear(torch.nn.Linear(96, 4000, bias=False), torch.bfloat16)
    layer.pack()
    # Rows six orders of magnitude apart, one with an outlier, as activations have them.
    rows = torch.randn(4, 96) * torch.tensor([[1.0], [500.0], [0.002], [1.0]])
    rows[3, 7] = 80.0
    exact = rows.double() @ (layer.weight.double() * layer.scale.double()[:, None]).t()
    packed = quantize.packed_matmul(rows, layer.packed).double()
    assert ((packed - exact).norm(dim=1) / exact.norm(dim=1)).max() < 1e-4
    # A row's product does not depend on the rows beside it: a reply gets the same logits alone.
    alone = torch.cat([quantize.packed_matmul(row[None], layer.packed) for row in rows])
    assert torch.equal(alone, quantize.packed_matmul(rows, layer.packed))
    assert torch.equal(quantize.packed_matmul(torch.zeros(1, 96), layer.packed), torch.zeros(1, 4000))
    decode_rows = rows[:2].bfloat16()  # a decode step's rows take the packed weights
    assert torch.equal(
        layer.matmul(decode_rows), quantize.packed_matmul(decode_rows, layer.packed).bfloat16()
    )


@pytest.fixture
def without_native(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's and oneDNN's kernels, as on CPUs where the engine's own (core.inference.native) does not run:
    there the head is packed for oneDNN."""
    monkeypatch.setattr(native, "ready", lambda: False)


def test_a_process_that_ends_while_the_head_is_packed_exits_cleanly() -> None:
    if not quantize.packing_works():
        pytest.skip("this torch build cannot pack int8 weights for oneDNN")
    # A head big enough that packing is still in oneDNN's C++ code when the script ends (a one-question
    # `core chat` does that): a daemon thread in fbgemm's code aborted the interpreter (status 134).
    script = (
        "import torch\n"
        "from core.inference.quantize import Int8Linear, pack_in_background\n"
        "layer = Int8Linear(torch.ones(131072, 1024, dtype=torch.int8), torch.full((131072,), 0.01), None)\n"
        "assert pack_in_background(layer) is not None\n"
    )
    env = {**os.environ, "LOCALLLM_NATIVE": "0"}  # where the engine's own kernel runs, nothing is packed
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr[-500:]


@pytest.mark.usefixtures("without_native")
def test_the_packing_thread_is_no_daemon_even_when_a_daemon_thread_asks() -> None:
    # The engine's thread is a daemon when a daemon thread (Streamlit's script runner) first gave it
    # work, and a thread inherits that: the packing thread was a daemon then, and a process that ended
    # while it packed aborted as the test above describes (1 test run in 3 or 4 ended with status 134).
    if not quantize.packing_works():
        pytest.skip("this torch build cannot pack int8 weights for oneDNN")
    layer = Int8Linear(torch.ones(4096, 256, dtype=torch.int8), torch.full((4096,), 0.01), None)
    started: list[threading.Thread | None] = []
    asker = threading.Thread(target=lambda: started.append(quantize.pack_in_background(layer)), daemon=True)
    asker.start()
    asker.join()
    [thread] = started
    assert thread is not None and not thread.daemon
    thread.join()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's idle scheduling class")
@pytest.mark.usefixtures("without_native")
def test_the_head_is_packed_only_on_cores_that_replies_leave_idle() -> None:
    # Packing takes a core right after a load, which is usually a first message's: at normal priority
    # fbgemm's packing (~1.5 s) slowed that reply's first token by ~0.4 s on 2 cores.
    if not quantize.packing_works():
        pytest.skip("this torch build cannot pack int8 weights for oneDNN")
    layer = Int8Linear(torch.ones(131072, 1024, dtype=torch.int8), torch.full((131072,), 0.01), None)
    thread = quantize.pack_in_background(layer)
    assert thread is not None
    policies = set()
    while thread.is_alive() and os.SCHED_IDLE not in policies:
        with contextlib.suppress(OSError):  # the thread ended between the check and the call
            policies.add(os.sched_getscheduler(thread.native_id))
    thread.join()
    assert os.SCHED_IDLE in policies and layer.packed is not None
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the caller (the engine's thread) is left alone


@pytest.mark.usefixtures("without_native")
def test_the_engine_packs_the_head_after_loading_and_replies_stay_the_same(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    if not quantize.packing_works():
        pytest.skip("this torch build has no oneDNN packing (the head keeps its own kernel)")
    install_ready(tmp_path, "tiny", tiny_models["qwen2"])
    engine = LocalEngine(tmp_path, device="cpu", idle_unload_s=0)
    engine.load("tiny")
    parts = engine.parts_of("tiny")
    assert parts is not None and parts.packing is not None
    parts.packing.join(60)
    head = parts.model.get_output_embeddings()
    assert head.packed is not None
    params = GenerationParams(temperature=0, max_new_tokens=24)
    messages = [{"role": "user", "content": "Hello"}]

    def reply() -> str:
        return "".join(e.text for e in engine.stream("tiny", messages, params) if isinstance(e, TextDelta))

    packed_reply = reply()
    head.packed = None  # the int8 kernel again
    assert reply() == packed_reply
    engine.unload()


# int4: 2.9 % (qwen2) and 3.1 % (llama) relative error; min/max groups with int4 attention gave 4.2 and 4.1 %.
@pytest.mark.parametrize(("scheme", "error", "agreement"), [("int8", 0.03, 0.9), ("int4", 0.036, 0.8)])
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_quantized_model_stays_close_to_the_bf16_reference(
    tiny_models: dict[str, Path], arch: str, scheme: str, error: float, agreement: float
) -> None:
    reference, quantized = load(tiny_models[arch]), load(tiny_models[arch])
    before = stored_bytes(quantized)
    assert quantize_model(quantized, torch.bfloat16, scheme) > 0
    assert stored_bytes(quantized) < 0.75 * before
    with torch.inference_mode():
        expected = reference(PROMPT).logits.float()
        got = quantized(PROMPT).logits.float()
    relative = (got - expected).norm() / expected.norm()
    assert relative < error, relative
    agreed = (got.argmax(-1) == expected.argmax(-1)).float().mean()
    assert agreed >= agreement, agreed  # teacher-forced top-1 agreement at every position


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


def prepare_for_decoder(model: torch.nn.Module, dtype: torch.dtype, scheme: str) -> None:
    """Quantized as on a CPU, or only its projections fused ("fused"), as the engine does on a GPU."""
    if scheme == "fused":
        fuse_projections(model)
    else:
        quantize_model(model, dtype, scheme)


@pytest.mark.parametrize("scheme", ["int4", "int8", "fused"])
@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3"])
def test_the_decoder_computes_what_transformers_computes_with_the_same_weights(
    tiny_models: dict[str, Path], arch: str, scheme: str
) -> None:
    model = load(tiny_models[arch], attention.NAME)
    assert not supports(model)  # transformers' own modules: generate, until they are fused
    prepare_for_decoder(model, torch.bfloat16, scheme)
    assert supports(model)
    decoder = Decoder(model)
    with torch.inference_mode():
        expected = model.generate(PROMPT, max_new_tokens=16, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True)  # fmt: skip
        decoder.reset(64)
        got = [decoder.forward(PROMPT[0])]  # the prompt at once, then teacher-forced token by token
        got += [decoder.forward(token.view(1)) for token in expected.sequences[0, PROMPT.shape[1] : -1]]
        decoder.reset(64)
        decoder.forward(PROMPT[0, :5])
        in_two_parts = decoder.forward(PROMPT[0, 5:])  # a cached prefix and a causal mask
    for mine, theirs in zip(got, expected.logits, strict=True):
        assert (mine - theirs[0].float()).norm() / theirs.float().norm() < 0.02  # bf16 rounding
    torch.testing.assert_close(in_two_parts, got[0], atol=0.02, rtol=0.02)
    small = Decoder(model)
    small.reset(4)
    with pytest.raises(ValueError, match="cache"):
        small.forward(PROMPT[0])


def test_prompt_attention_runs_in_a_few_shapes_and_computes_what_token_by_token_does(
    tiny_models: dict[str, Path],
) -> None:
    """torch's CPU attention in bf16 keeps compiled kernels for every shape it meets (~0.17 MB each, for
    ever): a prompt's queries and keys are padded to a few shapes, and the padding changes nothing."""
    model = load(tiny_models["llama"], attention.NAME)
    prepare_for_decoder(model, torch.bfloat16, "int4")
    decoder = Decoder(model)
    ids = torch.randint(3, 300, (200,), generator=torch.Generator().manual_seed(5))
    cache = KvCache(decoder, 200)
    with torch.inference_mode():
        decoder.run([Segment(cache, ids[:150])])  # the keys every start below reads
        one_by_one = []
        for start in (0, 63, 64, 120):
            cache.length = start
            one_by_one.append(torch.stack([decoder.run([Segment(cache, ids[i : i + 1])])[0]
                                           for i in range(start, start + 30)]))  # fmt: skip
        with _Shapes("scaled_dot_product_attention") as attended:
            for start in range(0, 150, 7):
                for count in range(2, 50, 3):
                    cache.length = start
                    decoder.run([Segment(cache, ids[start : start + count])])
            for index, start in enumerate((0, 63, 64, 120)):
                cache.length = start
                together = decoder.logits_of_each(cache, ids[start : start + 30])
                torch.testing.assert_close(together, one_by_one[index], atol=0.03, rtol=0.03)
    queries_keys = {(shapes[0][2], shapes[1][2]) for shapes in attended.seen}
    assert len(queries_keys) <= 4 * 4, sorted(queries_keys)  # 2-49 queries: 16-48; up to 198 keys: 64-192


def test_prompts_through_transformers_forward_attend_in_a_few_shapes_and_compute_what_sdpa_does(
    tiny_models: dict[str, Path],
) -> None:
    """Architectures the decoder does not run keep transformers' forward; their prompts' attention is
    padded too (every new length would keep a bf16 kernel), with transformers' causal and explicit masks."""
    ours, reference = load(tiny_models["llama"], attention.NAME), load(tiny_models["llama"], "sdpa")
    ids = torch.randint(3, 300, (1, 200), generator=torch.Generator().manual_seed(6))

    def logits(
        model: torch.nn.Module, start: int, count: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        cache = DynamicCache(config=model.config)
        if start:
            model(input_ids=ids[:, :start], cache=cache, use_cache=True)
        mask = mask if mask is not None else torch.ones(1, start + count, dtype=torch.long)
        out = model(input_ids=ids[:, start : start + count], attention_mask=mask, cache=cache)
        return out.logits.float()

    with torch.inference_mode():
        for start, count in ((0, 30), (0, 64), (63, 20), (120, 45)):  # causal (no mask), then masks
            torch.testing.assert_close(logits(ours, start, count), logits(reference, start, count), **CLOSE)
        left_padded = torch.ones(1, 37, dtype=torch.long)
        left_padded[0, :5] = 0  # an explicit mask: its hidden keys stay hidden
        torch.testing.assert_close(
            logits(ours, 0, 37, left_padded), logits(reference, 0, 37, left_padded), **CLOSE
        )
        seen: set[tuple[tuple[int, ...], ...]] = set()
        for start in range(7, 150, 7):
            cache = DynamicCache(config=ours.config)
            ours(input_ids=ids[:, :start], cache=cache, use_cache=True)
            with _Shapes("scaled_dot_product_attention") as attended:
                for count in range(2, 50, 3):
                    ours(input_ids=ids[:, start : start + count], cache=cache)
                    cache.crop(-count)  # back to the prefix
            seen |= attended.seen
    queries_keys = {(shapes[0][2], shapes[1][2]) for shapes in seen}
    assert len(queries_keys) <= 3 * 4, sorted(queries_keys)  # 2-49 queries: 16-48; 9-196 keys: 64-256


@pytest.mark.parametrize("scheme", ["int4", "fused"])
@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3"])
@pytest.mark.parametrize("replies", [1, 3])
def test_the_step_a_cuda_graph_records_computes_what_run_computes(
    tiny_models: dict[str, Path], arch: str, scheme: str, replies: int
) -> None:
    # On CUDA a pass of one new token per reply replays `step` (recorded as a CUDA graph for the
    # replies' caches); it is checked here on the CPU: a lone reply in the decoder's own cache, and three
    # replies of different lengths in caches of different sizes.
    model = load(tiny_models[arch], attention.NAME)
    prepare_for_decoder(model, torch.bfloat16, scheme)
    decoder = Decoder(model)
    assert not decoder.use_graphs  # CPUs run every pass eagerly
    # The engine's own int4 kernel takes activations in 8 bits: an input one bf16 rounding away can take
    # the next code (1/127 of its group's largest), which its product then carries.
    atol = 0.01 if scheme == "int4" and native.ready() else 0.005
    if replies == 1:
        caches = [decoder.reset(64)]
    else:
        caches = [KvCache(decoder, capacity, zeroed=True) for capacity in (24, 40, 64)]
    with torch.inference_mode():
        prompts = [Segment(cache, PROMPT[0, : 9 - 3 * i]) for i, cache in enumerate(caches)]
        tokens = decoder.run(prompts).argmax(-1)
        for _ in range(12):
            positions = torch.tensor([cache.length for cache in caches])
            stepped = decoder.step(tokens, positions, caches)
            written = [(cache.keys.clone(), cache.values.clone()) for cache in caches]
            # The same tokens into the same slots, the same logits.
            expected = decoder.run([Segment(cache, tokens[i : i + 1]) for i, cache in enumerate(caches)])
            torch.testing.assert_close(stepped, expected, atol=atol, rtol=0)  # bf16 rounding at most
            for cache, (keys, values) in zip(caches, written, strict=True):
                # Qwen3's normed keys are ~1, where a bf16 rounding is 0.008-0.016: two roundings.
                torch.testing.assert_close(keys, cache.keys, atol=atol, rtol=2**-6)
                torch.testing.assert_close(values, cache.values, atol=atol, rtol=0)
            tokens = expected.argmax(-1)


@pytest.mark.parametrize("scheme", ["int4", "fused"])
def test_decoder_replies_are_the_tokens_generate_chooses(tiny_models: dict[str, Path], scheme: str) -> None:
    # float32 activations: the two paths then agree to the last bit that can change a choice.
    model = load(tiny_models["llama"], attention.NAME, dtype=torch.float32)
    prepare_for_decoder(model, torch.float32, scheme)
    with torch.inference_mode():
        expected = model.generate(PROMPT, max_new_tokens=30, min_new_tokens=30, do_sample=False,
                                  repetition_penalty=1.3)[0, PROMPT.shape[1] :]  # fmt: skip
    end = model.config.eos_token_id
    seen: list[int] = []
    with torch.inference_mode():
        greedy = chooser(model, repetition_penalty=1.3, never=[end])  # min_new_tokens: the end never chosen
        got = generate(Decoder(model), PROMPT[0].tolist(), 30, greedy, {end}, seen.append)
    assert got == seen == expected.tolist()
    stopped = generate(Decoder(model), PROMPT[0].tolist(), 30, chooser(model), set(), lambda _t: True)
    assert len(stopped) == 1  # on_token asked to stop after the first token


def test_a_seeded_sampled_reply_repeats(tiny_models: dict[str, Path]) -> None:
    """Sampled replies follow transformers' distribution (tests/unit/test_sampler.py); with a seed,
    the decoder gives the same reply twice and another seed another one."""
    model = load(tiny_models["llama"], attention.NAME, dtype=torch.float32)
    prepare_for_decoder(model, torch.float32, "int4")

    def reply(seed: int) -> list[int]:
        sampling = {"temperature": 1.2, "top_p": 0.95, "top_k": 50, "repetition_penalty": 1.1, "seed": seed}
        with torch.inference_mode():
            return generate(Decoder(model), PROMPT[0].tolist(), 40, chooser(model, **sampling), set(),
                            lambda _t: False)  # fmt: skip

    assert reply(3) == reply(3)
    assert reply(3) != reply(4)


def chooser(model: torch.nn.Module, never: list[int] = (), **sampling: object) -> TokenChooser:
    vocabulary = model.get_output_embeddings().out_features
    return TokenChooser(Sampling(**sampling), vocabulary, "cpu", seen=PROMPT[0].tolist(), never=never)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3"])  # tied and untied vocabularies
def test_quantizing_from_the_checkpoint_matrix_by_matrix_gives_the_same_model(
    tiny_models: dict[str, Path], arch: str
) -> None:
    # The streamed model is core.inference.skeleton's tree, the whole one transformers' own.
    whole = load(tiny_models[arch], attention.NAME)
    quantize_model(whole, torch.bfloat16, "int4")
    streamed = quantize_checkpoint(tiny_models[arch], torch.bfloat16, "int4")
    assert type(streamed).__module__ == "core.inference.skeleton"
    expected = {**dict(whole.named_parameters()), **dict(whole.named_buffers())}
    got = {**dict(streamed.named_parameters()), **dict(streamed.named_buffers())}
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    assert end_ids(streamed.generation_config) == end_ids(whole.generation_config)
    decoders = [Decoder(streamed), Decoder(whole)]
    for decoder in decoders:
        decoder.reset(PROMPT.shape[1])
    assert torch.equal(*[decoder.forward(PROMPT[0]) for decoder in decoders])


@pytest.mark.parametrize(
    ("arch", "kept"),  # only an untied input table stays 16-bit; a tied one becomes the int8 head
    [("qwen2", set()), ("llama", {"model.embed_tokens.weight"})],
)
def test_each_16_bit_matrix_is_let_go_once_its_module_is_quantized(
    tiny_models: dict[str, Path], arch: str, kept: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first load's memory peak: a 16-bit matrix still referenced after its module (or the tied
    # vocabulary, read first for the head) is quantized stays resident while the rest is read.
    read = quantize._Checkpoint.read
    loaded: list[tuple[str, StorageWeakRef]] = []  # the memory itself, whatever wraps it
    held_while_reading: dict[str, list[str]] = {}

    def owner(name: str) -> str:  # the module whose linear layers are quantized together
        return name.rsplit(".", 2)[0] if name.count(".") >= 2 else ""

    def recording_read(checkpoint: quantize._Checkpoint, name: str) -> torch.Tensor:
        alive = [earlier for earlier, ref in loaded if not ref.expired() and owner(earlier) != owner(name)]
        held_while_reading[name] = [earlier for earlier in alive if earlier not in kept]
        tensor = read(checkpoint, name).to(torch.bfloat16)  # the very tensor the model is filled with
        if tensor.dim() == 2:
            loaded.append((name, StorageWeakRef(tensor.untyped_storage())))
        return tensor

    monkeypatch.setattr(quantize._Checkpoint, "read", recording_read)
    model = quantize_checkpoint(tiny_models[arch], torch.bfloat16, "int4")
    assert model is not None and len(loaded) > 10
    assert {name for name, ref in loaded if not ref.expired()} == kept
    assert {name: held for name, held in held_while_reading.items() if held} == {}


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_the_engine_uses_int4_on_the_cpu_and_the_reference_is_one_setting_away(
    tmp_path: Path, tiny_models: dict[str, Path], arch: str
) -> None:
    install_ready(tmp_path, "tiny", tiny_models[arch])
    fast = LocalEngine(tmp_path, device="cpu", idle_unload_s=0)
    assert fast.precision().weight_bytes < 1
    loaded = fast.load("tiny")
    assert (loaded.device, loaded.weights) == ("cpu", "int4")
    assert loaded.runner == "decoder"  # replies go through core.inference.decoder
    fast.unload()
    reference = LocalEngine(tmp_path, device="cpu", quantization="none", idle_unload_s=0)
    loaded_reference = reference.load("tiny")
    assert loaded_reference.weights == loaded_reference.dtype
    assert loaded.memory_bytes < loaded_reference.memory_bytes


def test_the_quantized_copy_is_kept_on_disk_and_reused_only_for_the_same_weights(
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
    [copy] = directory.glob(".localllm-int4-*.pt")
    written = copy.stat().st_mtime_ns
    assert reply() == first  # mapped from the copy: the same answer
    assert copy.stat().st_mtime_ns == written
    manifest = read_manifest(directory)
    changed = replace(manifest, files=tuple(replace(f, sha256="0" * 64) for f in manifest.files))
    write_manifest(directory, changed)  # other weights (a repair, a new revision): quantize again
    assert reply() == first
    assert copy.stat().st_mtime_ns != written


def test_a_copy_stored_under_another_rule_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wide model's copy from before its q/k/v went int4 past the first eighth: its tensors differ.
    directory = build_tiny_model(tmp_path / "wide", "llama", hidden_size=NARROW_HIDDEN + 128, layers=2)
    path = quantize.cache_path(directory, "int4", torch.bfloat16)
    with monkeypatch.context() as before:
        before.setattr(KvLayout, "int4_keeps_int8", lambda _, matrix, layer: matrix == "qkv_proj")
        quantize.save_quantized(quantize.quantize_checkpoint(directory, torch.bfloat16, "int4"), path, "v1")
    assert quantize.load_quantized(directory, path, torch.bfloat16, "int4", "v1") is None
    quantize.save_quantized(quantize.quantize_checkpoint(directory, torch.bfloat16, "int4"), path, "v1")
    model = quantize.load_quantized(directory, path, torch.bfloat16, "int4", "v1")
    assert isinstance(model.model.layers[1].self_attn.qkv_proj.linear, Int4Linear)
