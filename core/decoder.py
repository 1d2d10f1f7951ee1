"""A lean forward pass for Llama-family models (Llama, Qwen2, Mistral): quantized on a CPU, 16-bit on a GPU.

Decoding one token with transformers runs ~600 small tensor operations plus module, cache and mask
bookkeeping; on a 2-core CPU that was 8 ms of Qwen2.5-0.5B's 24 ms per token, beside 15 ms of
reading the weights. This decoder runs the same mathematics in ~16 operations per layer on the
model's own (quantized) tensors: fused projections called directly, one RMSNorm kernel, rotary
embedding on q and k at once, a preallocated KV cache written in place, and one SDPA call with the
query heads packed per KV head. Any other architecture keeps transformers' own forward.

On a GPU the same few operations mean few kernel launches, which is what a small model's decoding
waits on there (transformers' forward launched ~600 kernels a token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from core.quantize import Fused, QuantizedLinear

ARCHITECTURES = ("llama", "qwen2", "mistral")
Projection = QuantizedLinear | nn.Linear


def runs_architecture(model: Any) -> bool:
    """Whether `model` is a pre-norm, rotary, grouped-KV, SwiGLU decoder of full attention."""
    config = model.config
    sliding = getattr(config, "sliding_window", None) is not None and getattr(
        config, "use_sliding_window", True
    )
    layers = getattr(getattr(model, "model", None), "layers", None)
    return bool(
        config.model_type in ARCHITECTURES
        and not sliding
        and getattr(config, "hidden_act", "silu") == "silu"
        and getattr(config, "pretraining_tp", 1) == 1
        and set(getattr(config, "layer_types", None) or ["full_attention"]) == {"full_attention"}
        and layers
    )


def supports(model: Any) -> bool:
    """Whether this module runs `model`: an architecture it knows, with fused projections
    (core.quantize: quantized, or joined in the model's dtype)."""
    if not runs_architecture(model):
        return False
    layer = model.model.layers[0]
    return (
        isinstance(getattr(layer.self_attn, "qkv_proj", None), Fused)
        and isinstance(getattr(layer.mlp, "gate_up_proj", None), Fused)
        and isinstance(model.get_output_embeddings(), Projection)
    )


@dataclass(frozen=True)
class _Layer:
    input_norm: torch.Tensor
    qkv: Projection
    output: Projection
    post_norm: torch.Tensor
    gate_up: Projection
    down: Projection


def _project(layer: Projection, rows: torch.Tensor) -> torch.Tensor:
    """rows (n × in) through a linear layer, quantized or not."""
    if isinstance(layer, QuantizedLinear):
        return layer.matmul(rows)
    return functional.linear(rows, layer.weight, layer.bias)


class Decoder:
    """Runs a supported model token by token with its own KV cache (one sequence at a time)."""

    def __init__(self, model: Any) -> None:
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.hidden = config.hidden_size
        self.intermediate = config.intermediate_size
        self.eps = config.rms_norm_eps
        base = model.model
        self.embed = model.get_input_embeddings()
        self.rotary = base.rotary_emb
        self.final_norm = base.norm.weight
        self.head: Projection = model.get_output_embeddings()
        self.dtype, self.device = self.final_norm.dtype, self.final_norm.device
        self.layers = [
            _Layer(
                input_norm=layer.input_layernorm.weight,
                qkv=layer.self_attn.qkv_proj.linear,
                output=layer.self_attn.o_proj,
                post_norm=layer.post_attention_layernorm.weight,
                gate_up=layer.mlp.gate_up_proj.linear,
                down=layer.mlp.down_proj,
            )
            for layer in base.layers
        ]
        self._keys = self._values = torch.empty(0)
        self.length = 0  # tokens in the cache

    def reset(self, capacity: int) -> None:
        """Start a new sequence of at most `capacity` tokens (the cache grows only when it must)."""
        if self._keys.dim() < 3 or self.capacity < capacity:
            shape = (len(self.layers), self.kv_heads, capacity, self.head_dim)
            self._keys = torch.empty(shape, dtype=self.dtype, device=self.device)
            self._values = torch.empty(shape, dtype=self.dtype, device=self.device)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self._keys.shape[2]

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Append the token ids (1-D) to the sequence; return the float logits after the last one."""
        count = ids.shape[0]
        start, end = self.length, self.length + count
        if end > self.capacity:
            raise ValueError(f"the sequence would hold {end} tokens, the cache {self.capacity}")
        positions = torch.arange(start, end, device=self.device).unsqueeze(0)
        x = self.embed(ids).to(self.dtype)
        cos, sin = self.rotary(x, positions)
        cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)  # count × 1 × head_dim
        mask = None if count == 1 else _causal_mask(start, count, self.device)
        for index, layer in enumerate(self.layers):
            x = self._layer(index, layer, x, cos, sin, mask, start, end)
        self.length = end
        last = functional.rms_norm(x[-1:], (self.hidden,), self.final_norm, self.eps)
        return _project(self.head, last)[0].float()

    def _layer(
        self,
        index: int,
        layer: _Layer,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        start: int,
        end: int,
    ) -> torch.Tensor:
        count, heads, kv_heads, dim = x.shape[0], self.heads, self.kv_heads, self.head_dim
        qkv = _project(layer.qkv, functional.rms_norm(x, (self.hidden,), layer.input_norm, self.eps))
        rotated = _rotate(qkv[:, : (heads + kv_heads) * dim].view(count, heads + kv_heads, dim), cos, sin)
        self._keys[index, :, start:end] = rotated[:, heads:].transpose(0, 1)
        self._values[index, :, start:end] = (
            qkv[:, (heads + kv_heads) * dim :].view(count, kv_heads, dim).transpose(0, 1)
        )
        # 4-D (batch 1) tensors: with 3-D ones torch takes its slow reference ("math") attention.
        keys, values = self._keys[index : index + 1, :, :end], self._values[index : index + 1, :, :end]
        if count == 1:  # one query token: its heads packed per KV head, one plain SDPA call
            query = rotated[0, :heads].view(1, kv_heads, heads // kv_heads, dim)
            attended = functional.scaled_dot_product_attention(query, keys, values).reshape(1, heads * dim)
        else:
            query = rotated[:, :heads].transpose(0, 1).unsqueeze(0)
            attended = functional.scaled_dot_product_attention(
                query, keys, values, attn_mask=mask, enable_gqa=True
            )
            attended = attended[0].transpose(0, 1).reshape(count, heads * dim)
        x = x + _project(layer.output, attended)
        gate_up = _project(layer.gate_up, functional.rms_norm(x, (self.hidden,), layer.post_norm, self.eps))
        activated = functional.silu(gate_up[:, : self.intermediate]) * gate_up[:, self.intermediate :]
        return x + _project(layer.down, activated)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding in transformers' half-split layout."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _causal_mask(start: int, count: int, device: torch.device) -> torch.Tensor:
    """count × (start + count): each new token sees the cached ones and those up to itself."""
    seen = torch.arange(start + count, device=device)
    return seen.unsqueeze(0) <= (start + torch.arange(count, device=device)).unsqueeze(1)


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy when temperature is 0, else top-k/top-p sampling."""

    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float


def generate(
    decoder: Decoder,
    prompt: list[int],
    max_new_tokens: int,
    sampling: Sampling,
    end_ids: set[int],
    on_token: Any,
    *,
    ignore_end: bool = False,
) -> list[int]:
    """Decode up to `max_new_tokens` after `prompt`, calling `on_token(id)` after each; stop early at an
    id in `end_ids` (kept, as transformers' generate keeps it) or when `on_token` returns True.
    With `ignore_end` the end ids are never chosen (transformers' `min_new_tokens`).

    Token choice uses transformers' own logits processors, so a reply follows the same rules as
    `model.generate` with the same parameters.
    """
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        SuppressTokensLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if ignore_end:
        processors.append(SuppressTokensLogitsProcessor(sorted(end_ids)))
        end_ids = set()
    if sampling.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
    sample = sampling.temperature > 0
    if sample:
        processors.extend([TemperatureLogitsWarper(sampling.temperature), TopPLogitsWarper(sampling.top_p)])
        if sampling.top_k > 0:
            processors.insert(-1, TopKLogitsWarper(sampling.top_k))
    history = torch.empty(1, len(prompt) + max_new_tokens, dtype=torch.long, device=decoder.device)
    history[0, : len(prompt)] = torch.tensor(prompt)
    decoder.reset(len(prompt) + max_new_tokens)
    logits = decoder.forward(history[0, : len(prompt)])
    generated: list[int] = []
    for length in range(len(prompt), len(prompt) + max_new_tokens):
        scores = processors(history[:, :length], logits.unsqueeze(0))
        token = int(torch.multinomial(scores.softmax(dim=-1), 1)) if sample else int(scores.argmax())
        generated.append(token)
        history[0, length] = token
        if on_token(token) or token in end_ids or len(generated) == max_new_tokens:
            break
        logits = decoder.forward(history[0, length : length + 1])
    return generated
