"""A lean forward pass for Llama-family models (Llama, Qwen2, Mistral): quantized on a CPU, 16-bit on a GPU.

Decoding one token with transformers runs ~600 small tensor operations plus module, cache and mask
bookkeeping; on a 2-core CPU that was 8 ms of Qwen2.5-0.5B's 24 ms per token, beside 15 ms of
reading the weights. This decoder runs the same mathematics in ~16 operations per layer on the
model's own (quantized) tensors: fused projections called directly, one RMSNorm kernel, rotary
embedding on q and k at once, a preallocated KV cache written in place, and one SDPA call with the
query heads packed per KV head. Any other architecture keeps transformers' own forward.

On a GPU a small model's decoding waits on kernel launches, not on the GPU (transformers' forward
launched ~600 kernels a token): there each new token replays the step recorded once as a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from core.inference.quantize import Fused, QuantizedLinear
from core.inference.sampler import TokenChooser

ARCHITECTURES = ("llama", "qwen2", "mistral")
GRAPH_CAPACITY_STEP = 512  # tokens
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
    (core.inference.quantize: quantized, or joined in the model's dtype)."""
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
        self._keys = self._values = self._slots = torch.empty(0)
        self.length = 0  # tokens in the cache
        # On CUDA a single-token step is recorded once as a CUDA graph and replayed: one launch a
        # token instead of hundreds (off again if recording fails).
        self.use_graphs = self.device.type == "cuda"
        self._graph: _Graph | None = None

    def reset(self, capacity: int) -> None:
        """Start a new sequence of at most `capacity` tokens (the cache grows only when it must)."""
        if self.use_graphs:  # a recorded step holds on to its cache: grow it in steps, record less
            capacity = -(-capacity // GRAPH_CAPACITY_STEP) * GRAPH_CAPACITY_STEP
        if self._keys.dim() < 3 or self.capacity < capacity:
            shape = (len(self.layers), self.kv_heads, capacity, self.head_dim)
            # Zeros, not garbage: `step` attends over every slot, and a masked NaN still poisons it.
            self._keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self._values = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self._slots = torch.arange(capacity, device=self.device)
            self._graph = None  # it recorded the old cache
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
        if count == 1 and self.use_graphs:
            return self._replay(ids)
        positions = torch.arange(start, end, device=self.device).unsqueeze(0)
        x, cos, sin = self._embed(ids, positions)
        mask = None if count == 1 else _causal_mask(start, count, self.device)

        def store(index: int, keys: torch.Tensor, values: torch.Tensor) -> None:
            self._keys[index, :, start:end], self._values[index, :, start:end] = keys, values

        def attend(index: int, query: torch.Tensor) -> torch.Tensor:
            # 4-D (batch 1) tensors: with 3-D ones torch takes its slow reference ("math") attention.
            keys, values = self._keys[index : index + 1, :, :end], self._values[index : index + 1, :, :end]
            if count == 1:  # one query token: its heads packed per KV head, one plain SDPA call
                return functional.scaled_dot_product_attention(self._packed(query), keys, values)
            return functional.scaled_dot_product_attention(
                query.transpose(0, 1).unsqueeze(0), keys, values, attn_mask=mask, enable_gqa=True
            )[0].transpose(0, 1)

        for index, layer in enumerate(self.layers):
            x = self._layer(layer, x, cos, sin, partial(store, index), partial(attend, index))
        self.length = end
        return self._logits(x[-1:])

    @torch.inference_mode()
    def step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """One token (1-D, one id) at `position` (1-D, one index), its logits: the same mathematics as
        `forward` in shapes that do not change from token to token (the whole cache is attended,
        through a mask), so that a CUDA graph can record it. Leaves `length` alone."""
        x, cos, sin = self._embed(token, position.unsqueeze(0))
        visible = (self._slots <= position).view(1, 1, 1, -1)

        def store(index: int, keys: torch.Tensor, values: torch.Tensor) -> None:
            self._keys[index].index_copy_(1, position, keys)
            self._values[index].index_copy_(1, position, values)

        def attend(index: int, query: torch.Tensor) -> torch.Tensor:
            keys, values = self._keys[index : index + 1], self._values[index : index + 1]
            return functional.scaled_dot_product_attention(
                self._packed(query), keys, values, attn_mask=visible
            )

        for index, layer in enumerate(self.layers):
            x = self._layer(layer, x, cos, sin, partial(store, index), partial(attend, index))
        return self._logits(x)

    def _replay(self, token: torch.Tensor) -> torch.Tensor:
        if self._graph is None:
            try:
                self._graph = _Graph.record(self)
            except RuntimeError:  # an operation CUDA graphs cannot hold (a host sync): run eagerly
                self.use_graphs = False
                return self.forward(token)
        graph = self._graph
        graph.token.copy_(token)
        graph.position.fill_(self.length)
        graph.graph.replay()
        self.length += 1
        return graph.logits.clone()  # the next replay overwrites it

    def _packed(self, query: torch.Tensor) -> torch.Tensor:
        """One token's query heads (1 × heads × head_dim) grouped per KV head: 1 × KV heads × group × dim."""
        return query.view(1, self.kv_heads, self.heads // self.kv_heads, self.head_dim)

    def _embed(self, ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tokens' embeddings and their rotary cos and sin (count × 1 × head_dim)."""
        x = self.embed(ids).to(self.dtype)
        cos, sin = self.rotary(x, positions)
        return x, cos[0].unsqueeze(1), sin[0].unsqueeze(1)

    def _layer(
        self,
        layer: _Layer,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        store: Callable[[torch.Tensor, torch.Tensor], None],
        attend: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """One decoder layer on `x` (count × hidden): `store` keeps the new keys and values (KV heads ×
        count × head_dim), `attend` turns the queries (count × heads × head_dim) into attention output."""
        count, heads, kv_heads, dim = x.shape[0], self.heads, self.kv_heads, self.head_dim
        qkv = _project(layer.qkv, functional.rms_norm(x, (self.hidden,), layer.input_norm, self.eps))
        rotated = _rotate(qkv[:, : (heads + kv_heads) * dim].view(count, heads + kv_heads, dim), cos, sin)
        store(
            rotated[:, heads:].transpose(0, 1),
            qkv[:, (heads + kv_heads) * dim :].view(count, kv_heads, dim).transpose(0, 1),
        )
        attended = attend(rotated[:, :heads]).reshape(count, heads * dim)
        x = x + _project(layer.output, attended)
        gate_up = _project(layer.gate_up, functional.rms_norm(x, (self.hidden,), layer.post_norm, self.eps))
        activated = functional.silu(gate_up[:, : self.intermediate]) * gate_up[:, self.intermediate :]
        return x + _project(layer.down, activated)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        last = functional.rms_norm(x, (self.hidden,), self.final_norm, self.eps)
        return _project(self.head, last)[0].float()


@dataclass(frozen=True)
class _Graph:
    """A recorded decode step: write the token and its position, replay, read the logits."""

    graph: torch.cuda.CUDAGraph
    token: torch.Tensor
    position: torch.Tensor
    logits: torch.Tensor

    @classmethod
    def record(cls, decoder: Decoder) -> _Graph:
        token = torch.zeros(1, dtype=torch.long, device=decoder.device)
        # The warm-up and the recording write into the next free slot, which the replay then fills.
        position = torch.full((1,), decoder.length, dtype=torch.long, device=decoder.device)
        side = torch.cuda.Stream(decoder.device)
        side.wait_stream(torch.cuda.current_stream(decoder.device))
        with torch.cuda.stream(side):
            decoder.step(token, position)  # kernels chosen and workspaces allocated before recording
        torch.cuda.current_stream(decoder.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = decoder.step(token, position)
        return cls(graph, token, position, logits)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding in transformers' half-split layout."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _causal_mask(start: int, count: int, device: torch.device) -> torch.Tensor:
    """count × (start + count): each new token sees the cached ones and those up to itself."""
    seen = torch.arange(start + count, device=device)
    return seen.unsqueeze(0) <= (start + torch.arange(count, device=device)).unsqueeze(1)


def generate(
    decoder: Decoder,
    prompt: list[int],
    max_new_tokens: int,
    chooser: TokenChooser,
    end_ids: set[int],
    on_token: Any,
) -> list[int]:
    """Decode up to `max_new_tokens` after `prompt`, calling `on_token(id)` after each; stop early at an
    id in `end_ids` (kept, as transformers' generate keeps it) or when `on_token` returns True. The
    chooser picks each token (core.inference.sampler)."""
    history = torch.tensor(prompt, dtype=torch.long, device=decoder.device)
    decoder.reset(len(prompt) + max_new_tokens)
    logits = decoder.forward(history)
    generated: list[int] = []
    for _ in range(max_new_tokens):
        token = chooser.choose(logits)
        generated.append(token)
        if on_token(token) or token in end_ids or len(generated) == max_new_tokens:
            break
        logits = decoder.forward(history.new_tensor([token]))
    return generated
