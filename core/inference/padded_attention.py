"""Prompt attention in a few shapes: torch's CPU attention in bf16 compiles a kernel for every shape it
meets and keeps it for ever (~0.17 MB each), and nearly every prompt and chat turn is a new shape
(queries × keys). Padded to multiples of QUERY_STEP queries and KEY_STEP keys, with a mask that keeps
the padding apart, prompts of any length share a few kernels (docs/performance.md, "Memory").
float32 and CUDA keep no kernels, so there nothing is padded (`pads`)."""

from __future__ import annotations

import torch
from torch.nn import functional

QUERY_STEP, KEY_STEP = 16, 64


def pads(tensor: torch.Tensor) -> bool:
    """Whether attention over `tensor`'s device and dtype keeps a kernel per shape (bf16 on a CPU)."""
    return tensor.device.type == "cpu" and tensor.dtype == torch.bfloat16


def _round_up(count: int, step: int) -> int:
    return -(-count // step) * step


def causal_mask(start: int, count: int, device: torch.device, *, pad: bool = False) -> torch.Tensor:
    """count × (start + count): each new token sees the `start` earlier ones and those up to itself.

    `pad`: rows up to a multiple of QUERY_STEP and columns of KEY_STEP, the padding queries seeing every
    real key and the padding keys seen by none."""
    end = start + count
    rows, width = (_round_up(count, QUERY_STEP), _round_up(end, KEY_STEP)) if pad else (count, end)
    seen = torch.arange(width, device=device)
    visible = seen.unsqueeze(0) <= (start + torch.arange(rows, device=device)).unsqueeze(1)
    return visible & (seen < end) if width > end else visible


def padded_mask(mask: torch.Tensor, keys: int) -> torch.Tensor:
    """An attention mask (… × queries × keys, bool or additive float) padded as `causal_mask` pads."""
    mask = mask[..., :keys]
    hidden, seen = (False, True) if mask.dtype == torch.bool else (torch.finfo(mask.dtype).min, 0.0)
    count = mask.shape[-2]
    mask = functional.pad(mask, (0, _round_up(keys, KEY_STEP) - keys), value=hidden)
    return functional.pad(mask, (0, 0, 0, _round_up(count, QUERY_STEP) - count), value=seen)


def attend(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """SDPA of query (batch × heads × count × dim) over keys and values (batch × KV heads × length ×
    dim), each padded with zero rows to the mask's last two sizes: batch × heads × count × dim."""
    count, length = query.shape[2], keys.shape[2]
    rows, width = mask.shape[-2:]
    if rows > count:
        query = functional.pad(query, (0, 0, 0, rows - count))
    if width > length:
        keys, values = (functional.pad(t, (0, 0, 0, width - length)) for t in (keys, values))
    out = functional.scaled_dot_product_attention(
        query, keys, values, attn_mask=mask, scale=scale, enable_gqa=True
    )
    return out[:, :, :count]
