"""Weight-only quantization for CPU decoding: int4 in groups of 32 (default) or int8 per channel.

Decoding one token reads every weight once, so on a CPU its speed is set by memory bandwidth: fewer
bytes per weight, more tokens per second. Activations stay in the model's dtype.

- int4: each group of 32 weights along a row gets a scale and an offset (asymmetric), fitted to the
  group by least squares as llama.cpp's K-quants are and kept as 8-bit codes of a float32 pair per 16
  groups (4.625 bits a weight; `code_scales`), the 4-bit codes in the layout of torch's kernel
  (`_weight_int4pack_mm_for_cpu`, as torchao and gpt-fast use it); the attention
  projections of the first eighth of the layers stay int8, and in narrow models (hidden size <= 1024)
  the whole first eighth of the layers, and every attention and o projection where they are a small
  part of a layer (core.inference.sizing.KvLayout.int4_keeps_int8).
- int8: one scale per output channel (`_weight_int8pack_mm`, or the engine's own kernel), close to lossless.

Either way the output head (the tied vocabulary) stays int8, as llama.cpp's Q4_K_M keeps its output at
6 bits, and sibling projections of one input (q/k/v, gate/up) are concatenated before quantizing, so
each is one kernel call.

The head is most of a decode step (136 M of Qwen2.5-0.5B's 494 M weights), and `_weight_int8pack_mm` is
compute-bound on a small CPU with several rows (one per reply decoding together). Once the model is
loaded the head is packed for oneDNN's int8 kernel (VNNI dot products) on a thread of its own, and used
from then on (`pack_in_background`). That kernel multiplies int8 weights by 8-bit activations;
`packed_matmul` splits each activation row exactly into two 8-bit parts, so what it computes is the
int8 weights times the activations to 15 bits of their row's largest value (relative error ~3e-5,
well below the bf16 rounding of the logits), not an 8-bit approximation of them.

Where AVX512-VNNI and VBMI run, decoding's matmuls are the engine's own (core.inference.native, built
once a machine): int4 weights in torch's layout meet rows in 8 bits a group of 32 (llama.cpp's Q8_0
activations; KL +0.6 %), int8 weights meet rows split exactly as `packed_matmul` splits them (the head:
one byte a value where a row is tame, as PROMPT_PEAK rules prompts' rows), both in
VNNI byte dot products reading the weights as they are stored (memory-bound: ~1.3-1.7 × torch's
kernels, and the head needs no packed copy).

A prompt is compute-bound where decoding is bound by memory: from PROMPT_ROWS rows on (int8) or
an int4 layer's `prompt_rows` (bf16 activations; where the two paths cross on this CPU, measured once:
core.inference.calibration) the weights are unpacked to the activation dtype a slice at a time and
multiplied with its GEMM (bf16 dot products on CPUs with AVX512-BF16 or AMX), which outruns both
weight-only kernels there. Where memory allows, the engine keeps an int4 model's weights unpacked
(`Int4Linear.keep_unpacked`, between replies): prompts then skip the unpacking, from KEPT_PROMPT_ROWS.
Where oneDNN's int8 kernel runs (VNNI) the kept copy is int8, and a prompt's activations go in as one
byte a value (two for a row with an outlier: `packed_matmul` with PROMPT_PEAK; outlier channels in 16
bits: `outlier_columns`), twice the bf16 GEMM's rate, as llama.cpp's K-quants meet 8-bit activations
in their dot products.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from core.hardware import return_freed_memory_to_os
from core.inference import native
from core.inference.sizing import KvLayout

INT4_GROUP = 32
INT4_SUPER = 16  # groups whose scale and offset codes share a float32 pair (code_scales)
PROMPT_ROWS = 32  # from this many rows on (a prompt), dequantizing + a GEMM beats the int8 kernel
# The same for int4 in bf16 until this CPU's crossing is measured (docs/performance.md, "Prompts"):
# unpacking costs more, so it pays later; 96 on the AMD EPYC, ~55 on an Intel Xeon with AMX.
INT4_PROMPT_ROWS = 96
# Once a model's int4 weights are kept for prompts (`keep_unpacked`: no unpacking left to pay), their GEMM
# outruns the int4 kernel from ~10 rows on in bf16, from 5 (TinyLlama's shapes) to 12 (Qwen2.5-0.5B's)
# in int8 on the AMD EPYC (the int4 kernel's time doubles from 4 rows to 5; docs/performance.md, "Prompts").
KEPT_PROMPT_ROWS = 12
# The same beside the engine's own int4 kernel (core.inference.native), which a row costs ~1/3 of what it
# costs torch's: the kept int8 copy outruns it from ~20 rows (TinyLlama's shapes) to ~32 (Qwen2.5-0.5B's).
KEPT_PROMPT_ROWS_NATIVE = 24
UNPACK_NEVER = 1 << 30  # prompt rows: the engine's own kernel outran unpacking at 48-384 rows (AMD EPYC)
PREPACK_ROWS = 128  # the row count oneDNN lays kept weights out for (any count works; 64-512 measured alike)
UNPACK_BLOCK = 64  # output features per block of torch's CPU int4 layout (two nibbles: n and n + 32)
UNPACK_WEIGHTS = 2**21  # weights unpacked at a time (4 MiB in bf16): bounds the temporary copies
# Stored bytes per weight, for memory and speed estimates: nibbles, a scale and an offset code a group
# and a float32 pair a super-block (code_scales).
BYTES_PER_WEIGHT = {"int4": 0.5 + 2 / INT4_GROUP + 8 / (INT4_GROUP * INT4_SUPER), "int8": 1.0}
# What torch's int4 kernel reads besides, where the engine's own does not run: a bf16 scale and zero a group.
TORCH_SCALES_BYTES = 4 / INT4_GROUP
SCHEMES = tuple(BYTES_PER_WEIGHT)
# The ranges fit_groups tries besides min/max: levels + stretch steps across it. llama.cpp tries -1 to +1
# by 0.1; by 0.25 gives most of the gain (bench/quality.py) for 40 % of the quantizing time.
FIT_STRETCHES = tuple(step / 4 for step in range(-4, 5))
_STRETCHES = torch.tensor(FIT_STRETCHES, dtype=torch.float32)  # as the engine's fit takes them
SPLIT = 254  # packed_matmul: an activation's second 8-bit part counts 1/SPLIT of its first
# A prompt's rows meet the int8 weights kept for prompts as one byte a value (an RMS error of at most
# ~PROMPT_PEAK / 440 of the row's RMS), and as two where a row's peak exceeds PROMPT_PEAK × its RMS;
# the engine's own int8 kernel takes the output head's decoding rows by the same rule (`tame_peak`).
PROMPT_PEAK = 12.0
# Input features that reach this × a prompt's typical row RMS (a few at most: `outlier_columns`) are taken
# out of the 8-bit rows and multiplied in 16 bits, so that they neither coarsen nor split every row.
OUTLIER_COLUMN = 8.0
_FLOAT_OUTPUT = (None, 1.0, 0, torch.float32, "none", [], "")  # oneDNN: no bias, float32 out, no post-op
logger = logging.getLogger(__name__)


def gemm_rows(count: int) -> int:
    """The rows a prompt's GEMM runs for `count` rows: rounded up to one of four sizes an octave (at most
    25 % more, ~2-6 % of a prompt's time). oneDNN compiles and keeps a kernel (~1 MB) for each shape it
    meets, up to 1024 of them: a server that saw every prompt length grew by ~9 MB a length
    (TinyLlama), beyond its planned memory (docs/performance.md, "Memory")."""
    step = 1 << max(0, count.bit_length() - 3)
    return -(-count // step) * step


@functools.cache
def slice_width(outputs: int, most: int, unit: int = 1) -> int:
    """The width of the equal slices (whole `unit`s, about `most` wide) in which a prompt's GEMM widens
    a matrix of `outputs` output features: one GEMM shape a matrix where slices of `most` and the rest
    made two (each compiled and kept for each row count, see `gemm_rows`)."""
    units = outputs // unit
    per_slice = max(1, most // unit)
    wanted = -(-units // per_slice)
    counts = [count for count in range(-(-wanted // 2), 2 * wanted + 1) if units % count == 0]
    if not counts:
        return per_slice * unit
    return units // min(counts, key=lambda count: max(count / wanted, wanted / count)) * unit


def _padded(rows: torch.Tensor) -> torch.Tensor:
    """rows with zero rows below them up to `gemm_rows` (the rows themselves if that is their count)."""
    count = rows.shape[0]
    padding = gemm_rows(count) - count
    return functional.pad(rows, (0, 0, 0, padding)) if padding else rows


def onednn_linear(rows: torch.Tensor, kept: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """rows (n × in) times a weight kept in oneDNN's own layout (`_reorder_linear_weight`), plus bias."""
    return torch.ops.mkldnn._linear_pointwise(rows, kept, bias, "none", [None], "")


class PaddedLinear(nn.Linear):
    """nn.Linear whose rows reach the GEMM padded to `gemm_rows`: 16-bit weights on a CPU, where oneDNN
    keeps a kernel for every row count it meets (`pad_gemm_rows`). Its weight may live in oneDNN's own
    layout instead (`packed`, the plain `weight` then gone)."""

    packed: torch.Tensor | None = None

    def keep_unpacked(self) -> int:
        """Move the weight into oneDNN's own layout, which its GEMM reads as it is (`movable_layers`):
        a decoding step's matrices ~1.7 × sooner on the AMD EPYC; no memory added (0)."""
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), PREPACK_ROWS)
        del self.weight
        return 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        count = x.numel() // self.in_features
        rows = _padded(x.reshape(count, self.in_features))
        if self.packed is None:
            out = functional.linear(rows, self.weight, self.bias)
        else:
            out = onednn_linear(rows, self.packed, self.bias)
        return out[:count].reshape(*x.shape[:-1], self.out_features)


def pad_gemm_rows(model: nn.Module) -> None:
    """Every nn.Linear of `model` becomes a PaddedLinear (same weights)."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = PaddedLinear


def movable_layers(model: nn.Module) -> list[PaddedLinear]:
    """The PaddedLinear layers whose bf16 weight can move into oneDNN's own layout (where oneDNN runs
    bf16; not a head tied to the embeddings): the engine moves them while no reply runs, a matrix at a
    time (`PaddedLinear.keep_unpacked`; reordering TinyLlama's 2.2 GB took 2-5 s here)."""
    if not prepacking_works():
        return []
    shared = {id(model.get_input_embeddings().weight)}
    return [
        m
        for m in model.modules()
        if isinstance(m, PaddedLinear) and m.packed is None and m.weight.dtype == torch.bfloat16
        and id(m.weight) not in shared
    ]  # fmt: skip


def int8_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (rows × in) times the int8 weight (out × in) with per-row scales, in the scale's dtype.

    Decoding (a few rows) reads int8 straight from memory; a prompt (many rows) is compute-bound, so
    the weight is widened and scaled ~UNPACK_WEIGHTS at a time (`slice_width`) into one reused buffer
    (it stays in the cache; the whole matrix at once came back as fresh pages every pass) for the
    dtype's fast GEMM.
    """
    count = x.shape[0]
    if count < PROMPT_ROWS:
        return torch._weight_int8pack_mm(x, weight, scale)
    x = _padded(x)
    outputs, inputs = weight.shape
    out = x.new_empty(x.shape[0], outputs)
    step = slice_width(outputs, UNPACK_WEIGHTS // inputs)
    widened = torch.empty(step, inputs, dtype=scale.dtype, device=weight.device)
    for start in range(0, outputs, step):
        stop = min(start + step, outputs)
        part = widened[: stop - start].copy_(weight[start:stop]).mul_(scale[start:stop, None])
        torch.mm(x, part.t(), out=out[:, start:stop])
    return out[:count]


def kernel_supported(scheme: str, dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether this torch build runs `scheme`'s CPU kernel for activations in `dtype`."""
    try:
        probe = torch.ones(1, INT4_GROUP * 2, dtype=dtype)
        layer = QUANTIZERS[scheme](nn.Linear(INT4_GROUP * 2, 16, bias=False), dtype)
        layer(probe)
    except (AttributeError, RuntimeError, NotImplementedError, KeyError):
        return False
    return True


def quantize_rows(
    weight: torch.Tensor, dtype: torch.dtype, chunk_rows: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, per-row scale in `dtype`) for a 2-D weight; rows that are all zero get scale 1.

    Works through the rows in chunks, so the float32 temporaries stay small (a vocabulary of 150k
    rows would otherwise need two more copies of itself in float32).
    """
    if weight.is_meta:  # the layout only, for a model rebuilt around a saved copy
        return torch.empty(weight.shape, dtype=torch.int8, device="meta"), torch.empty(
            weight.shape[0], dtype=dtype, device="meta"
        )
    quantized = torch.empty(weight.shape, dtype=torch.int8)
    scale = torch.empty(weight.shape[0], dtype=torch.float32)
    for start in range(0, weight.shape[0], chunk_rows):
        rows = weight[start : start + chunk_rows].detach().float()
        row_scale = rows.abs().amax(dim=1) / 127.0
        row_scale = torch.where(row_scale > 0, row_scale, torch.ones_like(row_scale))
        quantized[start : start + chunk_rows] = torch.round(rows / row_scale[:, None]).clamp_(-127, 127)
        scale[start : start + chunk_rows] = row_scale
    return quantized, scale.to(dtype)


def quantize_columns(transposed: torch.Tensor, chunk_rows: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_rows` for a weight given transposed (in × out, as `unpack_int4` gives it): (int8 weight
    out × in, float32 scale per output feature), chunk_rows of its inputs at a time in float32 (~3 × as
    fast as `quantize_rows` reading the transposed rows)."""
    largest = transposed.abs().amax(0).float()
    scale = torch.where(largest > 0, largest / 127, torch.ones_like(largest))
    inverse = 1 / scale
    codes = torch.empty(transposed.shape, dtype=torch.int8)
    for start in range(0, transposed.shape[0], chunk_rows):
        codes[start : start + chunk_rows] = (transposed[start : start + chunk_rows] * inverse).round_()
    return codes.t().contiguous(), scale


def fit_groups(groups: torch.Tensor, levels: int = 15) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, low) for each group of the last dimension: weight ≈ code × scale + low.

    As llama.cpp's make_qkx2_quants does: besides mapping [min, max] onto 0..levels, try scales that
    stretch or squeeze the range a little, fit scale and low to each rounding by weighted least squares
    and keep whichever error (weighted to favour large weights, as llama.cpp weighs without an
    importance matrix) is least. Never worse than min/max, which is checked last, group by group.
    """
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    span = (high - low).clamp_(min=1e-8)
    weight = importance(groups)
    shifted, weighted_x = groups - low[..., None], weight * groups
    sum_w, sum_x, sum_x2 = weight.sum(dim=-1), weighted_x.sum(dim=-1), (weighted_x * groups).sum(dim=-1)

    def rounded(stretch: torch.Tensor | float) -> torch.Tensor:
        # One division for a stretch and for a group's chosen one (a Python number over a tensor is a
        # reciprocal times it: another rounding, which flips ties such as the max at 14.5 levels).
        factor = (levels + torch.as_tensor(stretch, dtype=span.dtype)) / span
        return (shifted * factor[..., None]).round_().clamp_(0, levels)

    def error(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return (weight * torch.addcmul(offset[..., None] - groups, codes, scale[..., None]).square_()).sum(-1)

    min_max_codes, min_max_scale = rounded(0.0), span / levels
    best = torch.full_like(span, float("inf"))
    stretches, scale, offset = torch.zeros_like(span), min_max_scale, low
    for stretch in FIT_STRETCHES:
        trial = rounded(stretch)
        weighted = weight * trial
        sum_l, sum_l2, sum_xl = weighted.sum(-1), (weighted * trial).sum(-1), (weighted_x * trial).sum(-1)
        det = sum_w * sum_l2 - sum_l * sum_l
        safe = torch.where(det > 0, det, torch.ones_like(det))
        trial_scale = (sum_w * sum_xl - sum_x * sum_l) / safe
        trial_offset = (sum_l2 * sum_x - sum_l * sum_xl) / safe
        # Σ w (code × scale + offset - x)², expanded over the sums: no pass over the weights for it
        trial_error = (
            trial_scale * (trial_scale * sum_l2 + 2 * trial_offset * sum_l - 2 * sum_xl)
            + trial_offset * (trial_offset * sum_w - 2 * sum_x)
            + sum_x2
        )
        better = (det > 0) & (trial_scale > 0) & (trial_error < best)
        stretches = torch.where(better, stretch, stretches)
        scale = torch.where(better, trial_scale, scale)
        offset = torch.where(better, trial_offset, offset)
        best = torch.where(better, trial_error, best)
    codes = rounded(stretches)
    fitted = error(codes, scale, offset) < error(min_max_codes, min_max_scale, low)
    return (
        torch.where(fitted[..., None], codes, min_max_codes),
        torch.where(fitted, scale, min_max_scale),
        torch.where(fitted, offset, low),
    )


def fitted_pairs(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`fit_groups`' scale and offset of each group (contiguous float32, ... × INT4_GROUP): through the
    engine's own kernel where its library is loaded (core.inference.native: 16 groups at once in
    registers; a first load asks for it), else torch's."""
    if native.LIBRARY.loaded:
        scale, offset = native.fit_groups(groups.view(-1, INT4_GROUP), 15, _STRETCHES)
        return scale.view(groups.shape[:-1]), offset.view(groups.shape[:-1])
    _, scale, offset = fit_groups(groups)
    return scale, offset


def importance(groups: torch.Tensor) -> torch.Tensor:
    """How much each weight's error counts in its group's fit: the group's RMS plus its size (llama.cpp's
    weights without an importance matrix: large weights matter more)."""
    return groups.square().mean(dim=-1, keepdim=True).sqrt_() + groups.abs()


def quantize_groups(
    weight: torch.Tensor, chunk: int = 2**20
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed int4 weight, scale codes, units) for a 2-D weight: `code_scales`' compact layout.

    Each group of INT4_GROUP weights along a row gets codes 0..15 with a scale and an offset fitted by
    `fit_groups`, both then rounded to `code_scales`' 8-bit codes, and the group's codes rounded again
    to the coded pair; then the offset is fitted once more to the coded scale and those codes, and
    coded (its code costs most of what coding does: on random weights the coded groups' error was
    1.75 % above the fitted ones', 1.2 % with this). A weight comes back as q × scale + offset. Works
    through about `chunk` weights at a time, so the float32 temporaries stay a few MB; in the engine's
    kernel where it runs (core.inference.native.quantize_int4: the same steps in registers, sums in
    another order), else in torch operations.
    """
    rows, columns = weight.shape
    groups = columns // INT4_GROUP
    if weight.is_meta:  # the layout only, for a model rebuilt around a saved copy
        packed = torch.empty(rows, columns // 2, dtype=torch.uint8, device="meta")
        codes = torch.empty(groups, 2, rows, dtype=torch.uint8, device="meta")
        return packed, codes, torch.empty(super_blocks(groups), 2, rows, dtype=torch.float32, device="meta")
    codes = torch.empty(groups, 2, rows, dtype=torch.uint8)
    units = torch.empty(super_blocks(groups), 2, rows, dtype=torch.float32)
    if native.LIBRARY.loaded and rows % UNPACK_BLOCK == 0:  # a first load asks for the library
        packed = torch.empty(rows, columns // 2, dtype=torch.uint8)
        step = max(1, chunk // columns // UNPACK_BLOCK) * UNPACK_BLOCK
        for start in range(0, rows, step):
            values = weight[start : start + step].detach().float().contiguous()
            part = slice(start, start + step)
            packed[part], codes[..., part], units[..., part] = native.quantize_int4(values, _STRETCHES)
        return packed, codes, units
    levels = torch.empty(rows, columns, dtype=torch.int32)
    step = max(1, chunk // columns)
    for start in range(0, rows, step):
        values = weight[start : start + step].detach().float().contiguous().view(-1, groups, INT4_GROUP)
        scale, offset = fitted_pairs(values)
        part_codes, part_units = code_scales(scale.t(), offset.t())
        level, scale = _coded_levels(values, part_codes, part_units)
        weights = importance(values)
        tiny = torch.finfo(torch.float32).tiny  # a zero group's offset stays 0
        offset = (weights * (values - level * scale)).sum(-1) / weights.sum(-1).clamp_(min=tiny)
        part_codes, part_units = code_scales(scale[..., 0].t(), offset.t())
        level, _ = _coded_levels(values, part_codes, part_units)
        levels[start : start + step] = level.view(-1, columns).to(torch.int32)
        codes[..., start : start + step], units[..., start : start + step] = part_codes, part_units
    return torch._convert_weight_to_int4pack_for_cpu(levels, 2), codes, units


def _coded_levels(
    values: torch.Tensor, codes: torch.Tensor, units: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each weight of `values` (rows × groups × INT4_GROUP) rounded to its group's coded pair: (codes
    0..15, the coded scales rows × groups × 1)."""
    scale, offset = (part.t()[..., None] for part in decode_scales(codes, units))
    step_size = torch.where(scale > 0, scale, torch.ones_like(scale))  # a scale coded 0: every code 0
    return ((values - offset) / step_size).round_().clamp_(0, 15), scale


def super_blocks(groups: int) -> int:
    """The super-blocks of INT4_SUPER groups (the last one may hold fewer) that `groups` groups make."""
    return -(-groups // INT4_SUPER)


def code_scales(scale: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Groups' float scales and offsets (groups × outputs) as 8-bit codes of a float32 pair a super-block
    (llama.cpp's Q4_K keeps 6-bit ones under a 16-bit pair): (codes: groups × 2 × outputs bytes, the
    scale's unsigned and the offset's signed; units: super-blocks × 2 × outputs float32, each
    super-block's largest scale / 255 and largest |offset| / 127 of an output). 4.625 bits a weight
    with the 4-bit codes, where a bf16 pair a group made 5: the bytes a decoding step reads."""
    groups, outputs = scale.shape
    padding = super_blocks(groups) * INT4_SUPER - groups

    def coded(values: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
        padded = functional.pad(values, (0, 0, 0, padding)).view(-1, INT4_SUPER, outputs)
        unit = padded.abs().amax(1) / limit
        unit = torch.where(unit > 0, unit, torch.ones_like(unit))
        codes = (padded / unit[:, None]).round_().clamp_(-limit, limit).view(-1, outputs)[:groups]
        return codes, unit

    scale_codes, scale_unit = coded(scale, 255)
    offset_codes, offset_unit = coded(offset, 127)
    codes = torch.stack((scale_codes.to(torch.uint8), offset_codes.to(torch.int8).view(torch.uint8)), dim=1)
    return codes, torch.stack((scale_unit, offset_unit), dim=1)


def decode_scales(
    codes: torch.Tensor,
    units: torch.Tensor,
    start: int = 0,
    stop: int | None = None,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, offset), float32 groups × outputs, of outputs start:stop (of `groups` only, if given) from
    `code_scales`' layout: a code times its super-block's unit, as the engine's kernel computes them."""
    codes, units = codes[..., start:stop], units[..., start:stop]
    blocks = torch.arange(codes.shape[0]) // INT4_SUPER if groups is None else groups // INT4_SUPER
    if groups is not None:
        codes = codes[groups]
    units = units[blocks]
    scale = codes[:, 0].float() * units[:, 0]
    offset = codes[:, 1].view(torch.int8).float() * units[:, 1]
    return scale, offset


def torch_scales(codes: torch.Tensor, units: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`code_scales`' layout as torch's int4 kernel takes it: groups × outputs × (scale, zero) in
    `dtype`, the zero the weight of code 8 (torch computes (q - 8) × scale + zero)."""
    scale, offset = decode_scales(codes, units)
    return torch.stack((scale, offset + 8 * scale), dim=-1).to(dtype)


class QuantizedLinear(nn.Module):
    """What the int4 and int8 layers share: shapes, an optional bias, `matmul` on 2-D rows."""

    def __init__(self, out_features: int, in_features: int, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)

    def product(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def native_weights(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def native_parts(self) -> list[torch.Tensor] | None:
        """The weights (and the bias, in float32) as the engine's own decoding layer takes them
        (core.inference.native's `decode_layer`), or None where its kernels do not run this layer."""
        if not self.native_runs():
            return None
        return self.native_weights() + ([] if self.bias is None else [self.bias.float()])

    def native_runs(self) -> bool:
        raise NotImplementedError

    def decoding_rows(self) -> int:
        """From how many rows on `product` leaves the decoding kernel for a prompt's."""
        raise NotImplementedError

    def matmul(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (n × in, the activation dtype) times the weight, plus the bias: n × out."""
        out = self.product(rows)
        return out if self.bias is None else out + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(self.dtype)
        return self.matmul(rows).reshape(*x.shape[:-1], self.out_features)


@dataclass(frozen=True)
class PackedInt8:
    """int8 weights in oneDNN's blocked layout, with the float32 scales and zero points its kernel takes."""

    weight: torch.Tensor
    scale: torch.Tensor
    zero_points: torch.Tensor

    @classmethod
    def of(cls, weight: torch.Tensor, scale: torch.Tensor) -> PackedInt8:
        zero_points = torch.zeros(weight.shape[0], dtype=torch.int32)
        return cls(torch.ops.onednn.qlinear_prepack(weight, None), scale.float(), zero_points)


class Int8Linear(QuantizedLinear):
    """nn.Linear with int8 weights and a scale per output channel (and, once `pack` ran, the same weights
    packed for oneDNN, used for a few rows at a time)."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(*weight.shape, bias, scale.dtype)
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self.packed: PackedInt8 | None = None
        self.packing = False  # a packed copy is being made or is there (memory: stored_bytes)
        # The output head's rows go in as one byte a value where tame (`native.int8_rows`): quantize_model.
        self.tame_rows_in_8_bits = False
        # For the engine's own kernel: the int32 row sums and the scales in float32 (`native_weights`).
        self.kernel_extras: tuple[torch.Tensor, torch.Tensor] | None = None

    def pack(self) -> None:
        """Pack the weights for oneDNN (~0.3 s for Qwen2.5-0.5B's vocabulary); `product` uses them after."""
        self.packing = True
        try:
            self.packed = PackedInt8.of(self.weight, self.scale)
        except BaseException:
            self.packing = False  # no second copy after all
            raise

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype) -> Int8Linear:
        weight, scale = quantize_rows(linear.weight, dtype)
        return cls(weight, scale, linear.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.scale.dtype

    def product(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.shape[0] < PROMPT_ROWS and self.native_runs():
            peak = PROMPT_PEAK if self.tame_rows_in_8_bits else 0.0
            return native.int8_rows(rows.contiguous(), *self.native_weights(), peak)
        packed = self.packed
        if packed is not None and rows.shape[0] < PROMPT_ROWS:
            return packed_matmul(rows, packed).to(self.dtype)
        return int8_matmul(rows, self.weight, self.scale)

    def native_weights(self) -> list[torch.Tensor]:
        if self.kernel_extras is None:  # computed on the torch thread at the first decoding row
            self.kernel_extras = (self.scale.float(), self.weight.sum(1, dtype=torch.int32))
        return [self.weight, *self.kernel_extras]

    def decoding_rows(self) -> int:
        return PROMPT_ROWS

    def native_runs(self) -> bool:
        """Whether a few rows go to the engine's own int8 kernel (core.inference.native: the rows exact to
        15 bits, as `packed_matmul`'s, or the head's as prompts' where tame; ~1.6 ×
        `_weight_int8pack_mm`'s speed, ~1.5 × the packed head's)."""
        return self.weight.device.type == "cpu" and self.in_features % 64 == 0 and native.ready()


def packed_matmul(rows: torch.Tensor, packed: PackedInt8, peak: float | None = None) -> torch.Tensor:
    """rows (n × in) times oneDNN-packed int8 weights, in float32, the activations exact to 15 bits
    (`peak` None) or to 8 bits where a row's largest value is within `peak` × its RMS.

    Each row is scaled to ±127 and rounded (high); rows to be exact also get their remainder as a second
    whole number (low, the product counting it 1/SPLIT). The kernel gets them as bytes with zero point
    128 and scale 1, so it takes every whole number as it is (rows do not change each other's rounding),
    and its int32 sums are exact. One byte a value errs by at most 1/254 of the row's largest (RMS
    error ~largest / 440): a row whose peak is `peak` × its RMS errs by ~peak / 440 of its RMS, and a row
    with a larger peak (an outlier channel, a massive activation) takes the second byte.
    """
    count, inputs = rows.shape
    largest = rows.abs().amax(1, keepdim=True).float().clamp_(min=1e-30)  # 127 / it stays finite for 0
    scaled = rows * (127.0 / largest)  # float32
    if peak is None:
        exact = torch.arange(count)
    else:  # peak > largest / RMS = 127 / RMS of the scaled row
        exact = (torch.linalg.vector_norm(scaled, dim=1) * peak < 127 * inputs**0.5).nonzero()[:, 0]
    low = scaled[exact]
    high = scaled.round_()
    low.sub_(high[exact]).mul_(SPLIT).round_()
    total = count + len(exact)
    # A prompt: one kernel a few row counts (see gemm_rows), zero rows below.
    codes = torch.empty(total if peak is None else gemm_rows(total), inputs, dtype=torch.uint8)
    codes[:count].copy_(high.add_(128))
    codes[count:total].copy_(low.add_(128))
    codes[total:].fill_(128)
    out = torch.ops.onednn.qlinear_pointwise(
        codes, 1.0, 128, packed.weight, packed.scale, packed.zero_points, *_FLOAT_OUTPUT
    )
    return out[:count].index_add_(0, exact, out[count:total], alpha=1.0 / SPLIT).mul_(largest / 127.0)


@functools.cache
def packing_works() -> bool:
    """Whether this torch build packs int8 weights for oneDNN and `packed_matmul` is exact with them (a
    CPU without VNNI adds byte products in pairs to 16 bits: 255 × 127 twice does not fit)."""
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randint(-127, 128, (64, 96), dtype=torch.int8, generator=generator)
        weight[0] = 127
        layer = Int8Linear(weight, torch.full((64,), 0.01), None)
        layer.pack()
        rows = torch.randn(4, 96, generator=generator) * torch.tensor([[1.0], [300.0], [0.001], [1.0]])
        rows[3] = 2.0  # every byte 255, against weights of 127
        got = packed_matmul(rows, layer.packed).double()
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    expected = rows.double() @ (weight.double() * 0.01).t()
    return bool(((got - expected).norm(dim=1) <= 1e-4 * expected.norm(dim=1)).all())


def _only_on_idle_cores() -> None:
    """Put the calling thread in Linux's idle scheduling class: it runs only where no other thread wants
    the core (elsewhere nothing changes)."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def pack_in_background(layer: nn.Module) -> threading.Thread | None:
    """Pack an int8 layer (the output head) for oneDNN on a thread of its own, where this build can; the
    layer keeps its own kernel until the packing is done.

    The thread runs only on idle cores: packing takes a core (~0.3 s for Qwen2.5-0.5B's head, ~1.5 s when
    it was fbgemm's), and beside the first reply (loading is usually a first message's) fbgemm's packing
    slowed that reply's first token from 0.63-0.82 s to 0.95-1.33 s on 2 cores (a one-question
    `core chat`, alternating runs).
    """
    if not isinstance(layer, Int8Linear) or layer.weight.device.type != "cpu" or not packing_works():
        return None
    if layer.native_runs():  # the engine's own kernel reads the weights as they are: no second copy
        return None

    def pack() -> None:
        _only_on_idle_cores()
        try:
            layer.pack()
        except (RuntimeError, MemoryError):  # out of memory, say: the layer keeps its own kernel
            logger.exception("packing the output head for oneDNN failed")

    layer.packing = True  # counted from now on (the load reports its memory before the thread is done)
    # Not a daemon: a script that ends while oneDNN packs waits for it (the CLI ends with os._exit);
    # killed inside the C++ call at exit, the interpreter aborted ("terminate called", status 134).
    # Said outright: a thread started by a daemon thread (the engine's, when a daemon thread such as
    # Streamlit's script runner first asked it for work) is a daemon too unless told otherwise.
    thread = threading.Thread(target=pack, name="pack-head", daemon=False)
    thread.start()
    return thread


class Int4Linear(QuantizedLinear):
    """nn.Linear with int4 weights, a scale and an offset per group of INT4_GROUP along each row (as
    8-bit codes: `code_scales`)."""

    def __init__(
        self,
        packed: torch.Tensor,
        scale_codes: torch.Tensor,
        scale_units: torch.Tensor,
        in_features: int,
        bias: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> None:
        super().__init__(packed.shape[0], in_features, bias, dtype)
        self.register_buffer("packed", packed)
        self.register_buffer("scale_codes", scale_codes)  # code_scales' layout
        self.register_buffer("scale_units", scale_units)
        self._dtype = dtype
        self._torch_scales: torch.Tensor | None = None  # kept where torch's kernel multiplies
        self.prompt_rows = INT4_PROMPT_ROWS  # from this many rows on, `unpacked_product` (set at load)
        # The weights unpacked once (`keep_unpacked`), if kept: int8 packed for oneDNN's VNNI kernel where
        # it runs here, else as the slices `unpacked_product` unpacks.
        self.kept: PackedInt8 | tuple[torch.Tensor, ...] = ()

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype) -> QuantizedLinear:
        """An Int4Linear, or an Int8Linear where the shape does not fit int4 groups."""
        if linear.in_features % INT4_GROUP:
            return Int8Linear.from_linear(linear, dtype)
        return cls(*quantize_groups(linear.weight), linear.in_features, linear.bias, dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def torch_scales(self) -> torch.Tensor:
        """The scales in torch's int4 layout (`torch_scales`), for its kernel: made once and kept while
        the engine's own kernels are not loaded (`TORCH_SCALES_BYTES` more; let go once they run this
        layer: `native_parts`, `kernel_product`), made each time where they are."""
        if self._torch_scales is not None:
            return self._torch_scales
        scales = torch_scales(self.scale_codes, self.scale_units, self.dtype)
        if not self.native_runs():
            self._torch_scales = scales
        return scales

    def native_parts(self) -> list[torch.Tensor] | None:
        parts = super().native_parts()
        if parts is not None:
            self._torch_scales = None  # torch's kernel ran while the engine's was being built
        return parts

    def torch_scales_bytes(self) -> int:
        """The bytes of the torch-layout scales kept (`torch_scales`)."""
        scales = self._torch_scales
        return 0 if scales is None else scales.numel() * scales.element_size()

    def product(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.shape[0] >= self.prompt_rows and self.unpackable(rows.dtype):
            return self.unpacked_product(rows)
        return self.kernel_product(rows)

    def kernel_product(self, rows: torch.Tensor) -> torch.Tensor:
        """rows times the int4 weights as they are stored: the engine's own kernel where it runs
        (core.inference.native: 8-bit activations, VNNI), else torch's."""
        if self.native_runs():
            self._torch_scales = None  # torch's kernel ran while the engine's was being built
            return native.int4_rows(rows.contiguous(), *self.native_weights())
        return torch._weight_int4pack_mm_for_cpu(rows, self.packed, INT4_GROUP, self.torch_scales())

    def native_weights(self) -> list[torch.Tensor]:
        return [self.packed, self.scale_codes, self.scale_units]

    def decoding_rows(self) -> int:
        return self.prompt_rows

    def native_runs(self) -> bool:
        """Whether `kernel_product` runs the engine's own kernel (bf16 on the CPU, whole blocks)."""
        return (
            self.dtype == torch.bfloat16
            and self.out_features % UNPACK_BLOCK == 0
            and self.packed.device.type == "cpu"
            and native.ready()
        )

    def unpackable(self, dtype: torch.dtype) -> bool:
        """Whether `unpacked_product` serves rows in `dtype`: a fast GEMM (bf16), whole layout blocks,
        and this torch build's layout as `unpack_int4` reads it."""
        return (
            dtype == torch.bfloat16 == self.dtype
            and self.out_features % UNPACK_BLOCK == 0
            and self.packed.device.type == "cpu"
            and unpacking_works()
        )

    def unpacked_product(self, rows: torch.Tensor) -> torch.Tensor:
        """rows times the weights unpacked to the activation dtype a slice of outputs at a time: for a
        prompt the GEMM's speed (bf16 dot products) outweighs unpacking, where the int4 kernel is
        compute-bound. Kept weights (`keep_unpacked`) are multiplied as they are kept: an int8 copy by
        oneDNN's int8 kernel, the rows in bytes (`packed_matmul` with PROMPT_PEAK)."""
        if isinstance(self.kept, PackedInt8):
            columns = outlier_columns(rows)
            if columns is None:
                return packed_matmul(rows, self.kept, PROMPT_PEAK).to(rows.dtype)
            rest = rows.clone()
            rest[:, columns] = 0  # the outlier columns' products in 16 bits, with their int4 weights
            out = packed_matmul(rest, self.kept, PROMPT_PEAK)
            weights = int4_columns(self.packed, self.scale_codes, self.scale_units, columns)  # columns × out
            return out.addmm_(rows[:, columns].float(), weights.float()).to(rows.dtype)
        count = rows.shape[0]
        rows = _padded(rows)
        out = rows.new_empty(rows.shape[0], self.out_features)
        buffer = None if self.kept else rows.new_empty(self.in_features * self._unpack_step())  # reused
        for index, (start, stop) in enumerate(self._unpack_slices()):
            weights = (
                self.kept[index]
                if self.kept
                else unpack_int4(*self.native_weights(), start, stop, buffer, self.dtype)
            )
            torch.mm(rows, weights, out=out[:, start:stop])
        return out[:count]

    def keep_unpacked(self) -> int:
        """Unpack the weights once and keep them for prompts; the bytes they take. Where oneDNN's int8
        kernel runs (VNNI: `packing_works`) they are kept as int8 with a scale per output feature, packed
        for it, and a prompt's rows go in as bytes (`packed_matmul` with PROMPT_PEAK): ~1.7 × the bf16
        GEMM's speed on the AMD EPYC in half its memory (docs/performance.md, "Prompts"); elsewhere as
        the slices `unpacked_product` unpacks."""
        if packing_works():
            unpacked = unpack_int4(*self.native_weights(), 0, self.out_features, dtype=self.dtype)  # in × out
            self.kept = PackedInt8.of(*quantize_columns(unpacked))
        else:
            self.kept = tuple(
                unpack_int4(*self.native_weights(), a, b, dtype=self.dtype) for a, b in self._unpack_slices()
            )
        # From now on, whether the others are kept yet or not.
        self.prompt_rows = KEPT_PROMPT_ROWS_NATIVE if self.native_runs() else KEPT_PROMPT_ROWS
        return self.unpacked_bytes()

    def unpacked_bytes(self) -> int:
        """The bytes of the weights kept for prompts (`keep_unpacked`)."""
        if packing_works():  # int8 weights, a float32 scale and an int32 zero point per output feature
            return (self.in_features + 8) * self.out_features
        return self.in_features * self.out_features * self.dtype.itemsize

    def _unpack_step(self) -> int:
        return slice_width(self.out_features, UNPACK_WEIGHTS // self.in_features, UNPACK_BLOCK)

    def _unpack_slices(self) -> list[tuple[int, int]]:
        step = self._unpack_step()
        return [(start, min(start + step, self.out_features)) for start in range(0, self.out_features, step)]


def unpack_int4(
    packed: torch.Tensor,
    scale_codes: torch.Tensor,
    scale_units: torch.Tensor,
    start: int,
    stop: int,
    into: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Output features start:stop (multiples of UNPACK_BLOCK) of an int4 layer, dequantized and
    transposed: in × (stop - start), in `dtype` (written into the front of `into` if given).

    torch's CPU layout keeps each block of 64 output features as in × 32 bytes, byte j holding feature
    j in its low nibble and feature j + 32 in its high one (`unpacking_works` checks it).
    """
    inputs, width = packed.shape[1] * 2, stop - start
    half = UNPACK_BLOCK // 2
    blocks = packed.view(-1, inputs, half)[start // UNPACK_BLOCK : stop // UNPACK_BLOCK].permute(1, 0, 2)
    if into is None:
        into = torch.empty(inputs * width, dtype=dtype, device=packed.device)
    # Each nibble converted on its way to its place (in × blocks × 2 × 32: features in order), then
    # q × scale + offset in one pass, rounded once.
    codes = into[: inputs * width].view(inputs, width // UNPACK_BLOCK, 2, half)
    codes[:, :, 0].copy_(blocks & 15)
    codes[:, :, 1].copy_(blocks >> 4)
    scale, offset = (part.to(into.dtype) for part in decode_scales(scale_codes, scale_units, start, stop))
    groups = codes.view(inputs // INT4_GROUP, INT4_GROUP, width)
    return torch.addcmul(offset.unsqueeze(1), groups, scale.unsqueeze(1), out=groups).view(inputs, width)


def int4_columns(
    packed: torch.Tensor, scale_codes: torch.Tensor, scale_units: torch.Tensor, columns: torch.Tensor
) -> torch.Tensor:
    """Input features `columns` of an int4 layer, dequantized as `unpack_int4` does: columns × out."""
    inputs, half = packed.shape[1] * 2, UNPACK_BLOCK // 2
    blocks = packed.view(-1, inputs, half)[:, columns]  # output blocks × columns × 32 bytes
    codes = torch.stack((blocks & 15, blocks >> 4), dim=2).permute(1, 0, 2, 3).reshape(len(columns), -1)
    scale, offset = decode_scales(scale_codes, scale_units, groups=columns // INT4_GROUP)
    return torch.addcmul(offset, codes.float(), scale)


def outlier_columns(rows: torch.Tensor) -> torch.Tensor | None:
    """The input features of a prompt's rows that reach OUTLIER_COLUMN × the rows' median RMS or more
    (outlier channels, as LLM.int8() takes them out), where there are some but few (at most 1/32 of
    them); else None."""
    peaks = rows.abs().amax(0).float()
    rms = torch.linalg.vector_norm(rows, dim=1, dtype=torch.float32).median() / rows.shape[1] ** 0.5
    columns = (peaks > OUTLIER_COLUMN * rms).nonzero()[:, 0]
    return columns if 0 < len(columns) <= rows.shape[1] // 32 else None


def set_int4_prompt_rows(model: nn.Module, rows: int) -> None:
    """Every int4 layer of `model` unpacks its weights for prompts of `rows` rows or more."""
    for module in model.modules():
        if isinstance(module, Int4Linear):
            module.prompt_rows = rows


def unpackable_layers(model: nn.Module) -> list[Int4Linear]:
    """The int4 layers whose prompts go through unpacked weights (bf16 on a CPU): those that
    `Int4Linear.keep_unpacked` can keep."""
    return [m for m in model.modules() if isinstance(m, Int4Linear) and m.unpackable(m.dtype)]


@functools.cache
def prepacking_works() -> bool:
    """Whether this torch build and CPU run oneDNN's bf16 linear on weights kept in its own layout."""
    try:
        weight = torch.randn(UNPACK_BLOCK, INT4_GROUP, generator=torch.Generator().manual_seed(0))
        rows = torch.randn(3, INT4_GROUP, generator=torch.Generator().manual_seed(1)).bfloat16()
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
        kept = torch.ops.mkldnn._reorder_linear_weight(weight.bfloat16(), PREPACK_ROWS)
        got = onednn_linear(rows, kept).float()
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    expected = rows.float() @ weight.bfloat16().float().t()
    return bool((got - expected).norm() <= 0.01 * expected.norm())


@functools.cache
def unpacking_works() -> bool:
    """Whether `unpack_int4` reads this torch build's int4 layout: the kernel and the unpacked weights
    give the same product for a random layer."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(UNPACK_BLOCK * 3, INT4_GROUP * 4, generator=generator)
    try:
        packed, codes, units = quantize_groups(weight)
        rows = torch.randn(5, weight.shape[1], generator=generator).bfloat16()
        scales = torch_scales(codes, units, torch.bfloat16)
        expected = torch._weight_int4pack_mm_for_cpu(rows, packed, INT4_GROUP, scales).float()
        got = (rows @ unpack_int4(packed, codes, units, 0, weight.shape[0], dtype=torch.bfloat16)).float()
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return bool((got - expected).norm() <= 0.02 * expected.norm())


QUANTIZERS = {"int4": Int4Linear.from_linear, "int8": Int8Linear.from_linear}


class Fused(nn.Module):
    """Sibling projections of one input (q/k/v, gate/up) as one matrix: one kernel call, not three.

    Each sibling becomes a Slice of it. The first slice called computes every sibling's output and
    keeps it for the others, which are called next with the very same input tensor.
    """

    def __init__(self, linear: nn.Module) -> None:
        super().__init__()
        self.linear = linear
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def output(self, x: torch.Tensor) -> torch.Tensor:
        if self._last is not None and self._last[0] is x:
            return self._last[1]
        out = self.linear(x)
        self._last = (x, out)
        return out


class Slice(nn.Module):
    """One sibling's rows of a Fused projection."""

    def __init__(self, fused: Fused, start: int, stop: int) -> None:
        super().__init__()
        self.fused = [fused]  # a list: owned by the parent, not registered once per slice
        self.start, self.stop = start, stop
        self.out_features = stop - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused[0].output(x)[..., self.start : self.stop]


SIBLINGS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
Loader = Callable[[str], torch.Tensor]  # a checkpoint tensor by name


def _concatenated(parts: list[nn.Linear]) -> nn.Linear:
    first = parts[0]
    joined = nn.Linear(first.in_features, sum(p.out_features for p in parts), bias=False, device="meta")
    joined.weight = nn.Parameter(_stacked([p.weight for p in parts]), requires_grad=False)
    if any(p.bias is not None for p in parts):
        biases = [p.bias if p.bias is not None else first.weight.new_zeros(p.out_features) for p in parts]
        joined.bias = nn.Parameter(_stacked(biases), requires_grad=False)
    return joined


def _stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat along rows; on the meta device a new empty tensor (torch.cat of meta tensors imports
    torch._dynamo, a second of a cold start)."""
    if not tensors[0].is_meta:
        return torch.cat(tensors)
    rows = sum(tensor.shape[0] for tensor in tensors)
    return torch.empty(rows, *tensors[0].shape[1:], dtype=tensors[0].dtype, device="meta")


def _materialize(module: nn.Module, prefix: str, load: Loader | None) -> None:
    """Fill a module's meta parameters from the checkpoint (nothing to do without a loader)."""
    if load is None:
        return
    for name, param in module.named_parameters(recurse=False):
        if param.is_meta:
            tensor = load(f"{prefix}{name}")
            if tensor.shape != param.shape:  # a checkpoint of another shape: not this model's weights
                raise KeyError(f"{prefix}{name}")
            module._parameters[name] = nn.Parameter(tensor, requires_grad=False)


def _fuse_and_quantize(
    parent: nn.Module, prefix: str, quantize: Callable[[nn.Linear, str], nn.Module], load: Loader | None
) -> None:
    """Replace each q/k/v and gate/up trio or pair of `parent` by one Fused matrix (`qkv_proj`,
    `gate_up_proj`) that `quantize` makes of their concatenation, its members by Slices of it."""
    for fused_name, names in SIBLINGS.items():
        parts = [getattr(parent, name, None) for name in names]
        if not all(type(part) is nn.Linear for part in parts):
            continue
        for name, part in zip(names, parts, strict=True):
            _materialize(part, f"{prefix}{name}.", load)
        fused = Fused(quantize(_concatenated(parts), f"{prefix}{fused_name}"))
        parent.register_module(fused_name, fused)
        start = 0
        for name, part in zip(names, parts, strict=True):
            setattr(parent, name, Slice(fused, start, start + part.out_features))
            start += part.out_features


def _quantize_children(
    parent: nn.Module, prefix: str, quantize: Callable[[nn.Linear, str], nn.Module], load: Loader | None
) -> None:
    """Swap `parent`'s linear layers for quantized ones: fused siblings first, then the others.

    A function of its own, so that no local still holds a 16-bit layer once it returns."""
    _fuse_and_quantize(parent, prefix, quantize, load)
    for name, child in list(parent.named_children()):
        if isinstance(child, nn.Linear):
            _materialize(child, f"{prefix}{name}.", load)
            setattr(parent, name, quantize(child, f"{prefix}{name}"))


def fuse_projections(model: Any) -> None:
    """Join each q/k/v trio and gate/up pair into one matrix, in the model's own dtype (for
    core.inference.decoder on a GPU, where weights stay 16-bit)."""
    for prefix, parent in list(model.named_modules()):
        _fuse_and_quantize(parent, f"{prefix}." if prefix else "", lambda linear, _name: linear, None)


class Int8Embedding(nn.Module):
    """An embedding table read from int8 rows (shared with a tied Int8Linear output head)."""

    def __init__(self, head: Int8Linear, padding_idx: int | None) -> None:
        super().__init__()
        self.head = [head]  # a list: not registered twice as a submodule
        self.padding_idx = padding_idx

    @property
    def weight(self) -> torch.Tensor:
        return self.head[0].weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        head = self.head[0]
        return head.weight[ids].to(head.scale.dtype) * head.scale[ids].unsqueeze(-1)


def matrix_scheme(name: str, scheme: str, head_name: str, layout: KvLayout) -> str:
    """How one matrix (its name in the model) is stored under `scheme`: the output head is int8, and
    within int4 what `int4_keeps_int8` names for a model of this layout."""
    if name == head_name:
        return "int8"
    if scheme == "int4":
        layer = re.search(r"\.layers\.(\d+)\.", name)
        index = int(layer.group(1)) if layer else None
        if layout.int4_keeps_int8(name.rsplit(".", 1)[-1], index):
            return "int8"
    return scheme


def quantize_model(model: Any, dtype: torch.dtype, scheme: str = "int4", load: Loader | None = None) -> int:
    """Fuse siblings and swap every nn.Linear for a quantized one in place; return the matrices made.

    The output head is int8 whatever the scheme (matrix_scheme: under int4 also what
    `KvLayout.int4_keeps_int8` names). With tied input/output embeddings the input table becomes a view of the
    int8 head, so the vocabulary is stored once, in int8. A model built on the meta device is filled
    tensor by tensor through `load` as it goes, so the 16-bit weights never exist all at once.
    """
    # By name: a reference to the head module would keep its 16-bit matrix (the whole vocabulary, read
    # first) alive until every layer is done.
    head_name = next(name for name, m in model.named_modules() if m is model.get_output_embeddings())
    layout = KvLayout.of(model.config)
    made = 0

    def quantize(linear: nn.Linear, name: str) -> nn.Module:
        nonlocal made
        made += 1
        return QUANTIZERS[matrix_scheme(name, scheme, head_name, layout)](linear, dtype)

    # Parents only: a list that also held the leaf layers would keep each 16-bit matrix alive to the end.
    parents = [
        (name, m) for name, m in model.named_modules() if any(type(c) is nn.Linear for c in m.children())
    ]
    for prefix, parent in parents:
        before = made
        _quantize_children(parent, f"{prefix}." if prefix else "", quantize, load)
        if load is not None and made > before:
            # The 16-bit matrices just read are garbage now; left in glibc's heap they added up to
            # twice the model (fragments it did not reuse).
            return_freed_memory_to_os()
    if getattr(model.config, "tie_word_embeddings", False):
        embedding = model.get_input_embeddings()
        model.set_input_embeddings(Int8Embedding(model.get_output_embeddings(), embedding.padding_idx))
    for prefix, module in model.named_modules():  # what is left: norms, biases, an untied input table
        _materialize(module, f"{prefix}." if prefix else "", load)
        if load is None:
            _copy_out_of_the_file(module)
    if isinstance(head := model.get_output_embeddings(), Int8Linear):
        head.tame_rows_in_8_bits = True  # decoding's rows meet it as prompts' rows meet the kept copy
    return made


def _copy_out_of_the_file(module: nn.Module) -> None:
    """Own copies of a module's parameters: ones that view a memory-mapped checkpoint keep the 16-bit
    file counted as resident memory."""
    for name, param in module._parameters.items():
        if param is not None and not param.is_meta:
            module._parameters[name] = nn.Parameter(param.detach().clone(), requires_grad=False)


STORED_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


class _Checkpoint:
    """Tensors of a model's safetensors files, each read on demand with plain file reads: a memory map's
    touched pages would count as resident memory until the file is closed."""

    def __init__(self, model_dir: Path) -> None:
        from core.hub.store import read_safetensors_header

        self.tensors: dict[str, tuple[Path, int, dict[str, Any]]] = {}
        for path in sorted(model_dir.glob("*.safetensors")):
            header, data_start = read_safetensors_header(path)
            self.tensors.update({name: (path, data_start, info) for name, info in header.items()})

    def read(self, name: str) -> torch.Tensor:
        path, data_start, info = self.tensors[name]
        tensor = torch.empty(info["shape"], dtype=STORED_DTYPES[info["dtype"]])
        start, end = info["data_offsets"]
        with path.open("rb") as handle:
            handle.seek(data_start + start)
            handle.readinto(tensor.view(-1).view(torch.uint8).numpy())
        if tensor.numel() * tensor.element_size() != end - start:
            raise KeyError(name)
        return tensor


def _skeleton(model_dir: Path, dtype: torch.dtype) -> Any:
    """The model's modules on the meta device (no memory), with its own generation config (end ids,
    top-k): core.inference.skeleton's tree where it builds the architecture, else transformers'."""
    from core.inference import skeleton
    from core.inference.loading import declared_model_types, import_runtime

    import_runtime(declared_model_types(model_dir))
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    if (model_dir / "generation_config.json").exists():
        generation = GenerationConfig.from_pretrained(model_dir, local_files_only=True)
    else:
        generation = GenerationConfig.from_model_config(config)
    if skeleton.builds(config):
        architecture, defaults = skeleton.Architecture.of(config), skeleton.GenerationDefaults.of(generation)
        return skeleton.CausalLM(architecture, defaults, dtype)
    model = _transformers_skeleton(config, dtype)
    model.generation_config = generation  # from_config alone would put defaults there
    return model


def _kept_skeleton(saved: dict[str, Any], dtype: torch.dtype) -> Any:
    """core.inference.skeleton's tree from the architecture kept in a quantized copy."""
    from core.inference import skeleton

    generation = saved["generation"]
    defaults = skeleton.GenerationDefaults(tuple(generation["eos_token_id"]), generation["top_k"])
    return skeleton.CausalLM(skeleton.Architecture.from_dict(saved["architecture"]), defaults, dtype)


def _transformers_skeleton(config: Any, dtype: torch.dtype) -> Any:
    from core.inference import attention
    from core.inference.loading import import_model_code

    import_model_code()  # before the meta device is the default: imports may make tensors
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=attention.implementation(config, "cpu")
        )


def quantize_checkpoint(model_dir: Path, dtype: torch.dtype, scheme: str) -> Any:
    """The model quantized matrix by matrix straight from its safetensors files, or None when the
    checkpoint's names do not map onto the model (then load it whole and call quantize_model).

    Built on the meta device: resident memory peaks at the quantized model plus one 16-bit matrix
    (~1.2× the steady state), where loading the 16-bit model first peaked at 2-4×.
    """
    model = _skeleton(model_dir, dtype)
    config = model.config
    input_table = next(n for n, m in model.named_modules() if m is model.get_input_embeddings()) + ".weight"
    head = next(n for n, m in model.named_modules() if m is model.get_output_embeddings()) + ".weight"
    checkpoint = _Checkpoint(model_dir)

    def load(name: str) -> torch.Tensor:
        if name == head and name not in checkpoint.tensors and getattr(config, "tie_word_embeddings", False):
            name = input_table  # a tied output head is stored as the input table
        return checkpoint.read(name).to(dtype)

    try:
        quantize_model(model, dtype, scheme, load)
        for name, module in list(model.named_modules()):  # rotary tables are computed, not stored
            if any(buffer.is_meta for buffer in module.buffers(recurse=False)):
                model.set_submodule(name, type(module)(config=config))
    except (KeyError, TypeError):  # other names, another dtype, another rotary module
        return None
    if any(t.is_meta for t in _all_tensors(model).values()):
        return None
    return model.eval()


def stored_bytes(model: Any) -> int:
    """Bytes held by the model's parameters and buffers (quantized weights, scales, the rest), and by
    int8 weights packed for oneDNN (or being packed)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    packed = sum(m.weight.numel() for m in model.modules() if isinstance(m, Int8Linear) and m.packing)
    in_onednn = sum(
        m.in_features * m.out_features * 2
        for m in model.modules()
        if isinstance(m, PaddedLinear) and m.packed is not None
    )  # bf16 weights moved into oneDNN's layout (`movable_layers`)
    torch_scales = sum(m.torch_scales_bytes() for m in model.modules() if isinstance(m, Int4Linear))
    return sum(t.numel() * t.element_size() for t in tensors.values()) + packed + in_onednn + torch_scales


# 3: int4 fitted, int8 q/k/v; 4: the architecture kept; 5: narrow models' more int8; 6: int4 scales as
# 8-bit codes (code_scales). A copy whose
# matrices are stored otherwise than the code stores them now (a wide model's q/k/v int4 past the first
# eighth) has other tensor names and is made again (load_quantized); one that matches is kept.
CACHE_FORMAT = "6"


def cache_path(model_dir: Path, scheme: str, dtype: torch.dtype) -> Path:
    return model_dir / f".localllm-{scheme}-{str(dtype).removeprefix('torch.')}.pt"


def _all_tensors(model: Any) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name, non-persistent buffers (rotary tables) included."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def save_quantized(model: Any, path: Path, source: str) -> None:
    """Keep the quantized model on disk, so the next load maps it instead of quantizing again.

    torch.save aligns every tensor to 64 bytes, which the kernels' vector loads need, and
    torch.load(mmap=True) maps the file for exactly as long as the tensors live.
    """
    from core.inference import skeleton

    tensors = {name: t.detach().contiguous() for name, t in _all_tensors(model).items()}
    kept: dict[str, Any] = {"format": CACHE_FORMAT, "source": source, "tensors": tensors}
    if isinstance(model, skeleton.CausalLM):  # the next load builds it without transformers' config
        defaults = model.generation_config
        kept["architecture"] = model.config.as_dict()
        kept["generation"] = {"eos_token_id": list(defaults.eos_token_id), "top_k": defaults.top_k}
    partial = path.with_name(path.name + ".tmp")
    torch.save(kept, partial)
    partial.replace(path)


def load_quantized(model_dir: Path, path: Path, dtype: torch.dtype, scheme: str, source: str) -> Any:
    """The model rebuilt from its quantized file (memory-mapped), or None when it is missing or stale."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, mmap=True, weights_only=True)
    except (OSError, RuntimeError, ValueError):  # damaged or from another torch: quantize again
        return None
    if saved.get("format") != CACHE_FORMAT or saved.get("source") != source:
        return None
    try:
        model = _kept_skeleton(saved, dtype) if "architecture" in saved else _skeleton(model_dir, dtype)
    except (KeyError, TypeError, ValueError):  # a kept architecture this code does not read
        return None
    quantize_model(model, dtype, scheme)  # the same module structure, still without data
    stored = saved["tensors"]
    if stored.keys() != _all_tensors(model).keys():
        return None
    for name, tensor in stored.items():
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
        else:
            owner._buffers[attr] = tensor
    # Slices and the tied embedding refer to the module objects that were just filled in place.
    return model.eval()
