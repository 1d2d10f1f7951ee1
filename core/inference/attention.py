"""Attention for architectures that keep transformers' own forward, on the CPU.

- Decoding: one query token with grouped KV heads, packed into one SDPA call. transformers' SDPA path
  asks torch for `enable_gqa=True` when there is no mask; on the CPU that kernel takes ~90 µs per
  layer for one token, against ~13 µs for the same work with the query heads packed per KV head
  (measured on this project's 2-core machine).
- Prompts in bf16: padded to a few shapes (core.inference.padded_attention), as the lean decoder pads
  them, so that a server meeting every prompt length keeps a few attention kernels, not one a length.
  Anything else (float32, options such as a soft cap or attention sinks) keeps transformers' SDPA path.
- Masks: SDPA's (registered with transformers under the same name).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from core.inference.padded_attention import attend, causal_mask, padded_mask, pads

NAME = "localllm_decode"
# What the decoder architectures pass besides; any other option keeps transformers' own path.
PLAIN_OPTIONS = frozenset({"position_ids", "use_cache", "sliding_window", "is_causal", "output_attentions"})


def implementation(config: Any, device: str) -> str | None:
    """The attention for a model of `config`: this module's on the CPU where the architecture runs on
    SDPA, else transformers' own choice (eager for Gemma 2, whose soft cap SDPA does not take)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)  # its own `get` wants both
    return NAME if device == "cpu" and getattr(model_class, "_supports_sdpa", False) else None


def decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    batch, heads, length, dim = query.shape
    groups = heads // key.shape[1]
    plain = not dropout and kwargs.keys() <= PLAIN_OPTIONS and not kwargs.get("output_attentions")
    if length > 1 and plain and pads(query):
        return _padded_prompt(module, query, key, value, attention_mask, scaling, kwargs.get("is_causal"))
    if length != 1 or groups == 1 or dropout or kwargs.get("softcap") is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    packed = query.reshape(batch, key.shape[1], groups, dim)  # heads are grouped per KV head
    mask = attention_mask[..., : key.shape[-2]] if attention_mask is not None else None
    out = functional.scaled_dot_product_attention(packed, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, 1, heads, dim), None


def _padded_prompt(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    is_causal: bool | None,
) -> tuple[torch.Tensor, None]:
    """What `sdpa_attention_forward` computes for a prompt, in padded shapes."""
    count = query.shape[2]
    if attention_mask is not None:
        mask = padded_mask(attention_mask, key.shape[2])
    elif is_causal if is_causal is not None else getattr(module, "is_causal", True):
        # transformers' causal case: the first `count` keys (the rest are an empty static cache's)
        key, value = key[:, :, :count], value[:, :, :count]
        mask = causal_mask(0, count, query.device, pad=True)
    else:  # every query sees every key
        mask = padded_mask(query.new_ones(count, key.shape[2], dtype=torch.bool), key.shape[2])
    return attend(query, key, value, mask, scaling).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, decode_attention)
# SDPA's masks: without a mask function of its own, transformers passes no mask at all to an attention
# it does not know, so a prompt after cached tokens (scoring in chunks) saw only its own first keys.
AttentionMaskInterface.register(NAME, sdpa_mask)
