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

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from core.inference.quantize import Fused, QuantizedLinear
from core.inference.skeleton import decoder_architecture

GRAPH_CAPACITY_STEP = 512  # tokens
Projection = QuantizedLinear | nn.Linear


def runs_architecture(model: Any) -> bool:
    """Whether `model` is a pre-norm, rotary, grouped-KV, SwiGLU decoder of full attention."""
    return decoder_architecture(model.config) and bool(getattr(getattr(model, "model", None), "layers", None))


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


class KvCache:
    """One sequence's keys and values for every layer (layers × KV heads × capacity × head_dim) and how
    many tokens it holds."""

    def __init__(self, decoder: Decoder, capacity: int, *, zeroed: bool = False) -> None:
        shape = (len(decoder.layers), decoder.kv_heads, capacity, decoder.head_dim)
        make = torch.zeros if zeroed else torch.empty
        self.keys = make(shape, dtype=decoder.dtype, device=decoder.device)
        self.values = make(shape, dtype=decoder.dtype, device=decoder.device)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def copy_prefix(self, source: KvCache, count: int) -> None:
        """Copy `source`'s keys and values of its first `count` tokens (the length is left to the caller)."""
        self.keys[:, :, :count] = source.keys[:, :, :count]
        self.values[:, :, :count] = source.values[:, :, :count]


@dataclass(frozen=True)
class Segment:
    """Tokens (1-D ids) to append to one sequence's cache in a pass: a prompt or a part of one, or the
    one token a decoding sequence chose last."""

    cache: KvCache
    ids: torch.Tensor


@dataclass(frozen=True)
class _Span:
    """Where a segment's rows sit in a pass (first:last), where they go in its cache (from start), and
    their causal mask (None for one token)."""

    cache: KvCache
    first: int
    last: int
    start: int
    mask: torch.Tensor | None

    @classmethod
    def of(cls, cache: KvCache, first: int, last: int, start: int, device: torch.device) -> _Span:
        count = last - first
        return cls(cache, first, last, start, None if count == 1 else _causal_mask(start, count, device))

    @property
    def end(self) -> int:
        """The cache's length once the rows are in."""
        return self.start + self.last - self.first


class Decoder:
    """Runs a supported model: one pass over the weights appends tokens to one sequence or to several
    at once (each with its own KV cache), and gives each the logits after its last token."""

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
        self.vocabulary = self.head.out_features
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
        self.cache = KvCache(self, 0, zeroed=True)  # the decoder's own sequence (`reset`, `forward`)
        self._slots = torch.empty(0)
        # On CUDA a single-token step of the own sequence is recorded once as a CUDA graph and replayed:
        # one launch a token instead of hundreds (off again if recording fails).
        self.use_graphs = self.device.type == "cuda"
        self._graph: _Graph | None = None

    def reset(self, capacity: int) -> KvCache:
        """Start the own sequence anew, for at most `capacity` tokens (its cache grows only when it must)."""
        if self.use_graphs:  # a recorded step holds on to its cache: grow it in steps, record less
            capacity = -(-capacity // GRAPH_CAPACITY_STEP) * GRAPH_CAPACITY_STEP
        if self.cache.capacity < capacity:
            # Zeros, not garbage: `step` attends over every slot, and a masked NaN still poisons it.
            self.cache = KvCache(self, capacity, zeroed=True)
            self._slots = torch.arange(capacity, device=self.device)
            self._graph = None  # it recorded the old cache
        self.cache.length = 0
        return self.cache

    @property
    def length(self) -> int:
        """Tokens in the own sequence."""
        return self.cache.length

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Append the token ids (1-D) to the own sequence; return the float logits after the last one."""
        return self.run([Segment(self.cache, ids)])[0]

    @torch.inference_mode()
    def run(self, segments: Sequence[Segment]) -> torch.Tensor:
        """Append each segment's tokens to its sequence, all in one pass over the weights; the float
        logits after each segment's last token (segments × vocabulary)."""
        if self.use_graphs and self._replayable(segments):
            return self._replay(segments[0].ids).unsqueeze(0)
        hidden, spans = self._pass(segments)
        return self._logits(hidden[-1:] if len(spans) == 1 else hidden[[span.last - 1 for span in spans]])

    def _replayable(self, segments: Sequence[Segment]) -> bool:
        """Whether the pass is one new token of the own sequence, with room for it (the recorded step)."""
        own = self.cache
        return (
            len(segments) == 1
            and segments[0].cache is own
            and segments[0].ids.shape[0] == 1
            and own.length < own.capacity
        )

    @torch.inference_mode()
    def logits_of_each(self, cache: KvCache, ids: torch.Tensor) -> torch.Tensor:
        """Append `ids` to `cache`'s sequence; the float logits after each of them (count × vocabulary)."""
        return self._logits(self._pass([Segment(cache, ids)])[0])

    def _pass(self, segments: Sequence[Segment]) -> tuple[torch.Tensor, list[_Span]]:
        """One pass over the weights for every segment: the last layer's rows and where each segment's sit."""
        counts = [segment.ids.shape[0] for segment in segments]
        starts = [segment.cache.length for segment in segments]
        for segment, start, count in zip(segments, starts, counts, strict=True):
            if start + count > segment.cache.capacity:
                raise ValueError(
                    f"the sequence would hold {start + count} tokens, the cache {segment.cache.capacity}"
                )
        bounds = itertools.pairwise(itertools.accumulate(counts, initial=0))
        spans = [
            _Span.of(segment.cache, first, last, start, self.device)
            for segment, start, (first, last) in zip(segments, starts, bounds, strict=True)
        ]
        positions = torch.cat([torch.arange(span.start, span.end, device=self.device) for span in spans])
        ids = torch.cat([segment.ids for segment in segments])
        x, cos, sin = self._embed(ids, positions.unsqueeze(0))
        if len(spans) == 1:  # one sequence (a lone reply): no slicing of rows
            store, attend = partial(self._store, spans[0]), partial(self._attend, spans[0])
        else:
            store, attend = partial(self._store_each, spans), partial(self._attend_each, spans)
        for index, layer in enumerate(self.layers):
            x = self._layer(layer, x, cos, sin, partial(store, index), partial(attend, index))
        for segment, count in zip(segments, counts, strict=True):
            segment.cache.length += count
        return x, spans

    @staticmethod
    def _store(span: _Span, index: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keep a sequence's new keys and values (KV heads × count × head_dim) in its cache."""
        cache, start, end = span.cache, span.start, span.end
        cache.keys[index, :, start:end], cache.values[index, :, start:end] = keys, values

    def _store_each(self, spans: list[_Span], index: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        for span in spans:
            self._store(span, index, keys[:, span.first : span.last], values[:, span.first : span.last])

    def _attend(self, span: _Span, index: int, query: torch.Tensor) -> torch.Tensor:
        """A sequence's queries (count × heads × head_dim) over its cache up to its newest token."""
        # 4-D (batch 1) tensors: with 3-D ones torch takes its slow reference ("math") attention.
        keys = span.cache.keys[index : index + 1, :, : span.end]
        values = span.cache.values[index : index + 1, :, : span.end]
        if span.mask is None:  # one query token: its heads packed per KV head, one plain SDPA call
            return functional.scaled_dot_product_attention(self._packed(query), keys, values)
        return functional.scaled_dot_product_attention(
            query.transpose(0, 1).unsqueeze(0), keys, values, attn_mask=span.mask, enable_gqa=True
        )[0].transpose(0, 1)

    def _attend_each(self, spans: list[_Span], index: int, query: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self._attend(span, index, query[span.first : span.last]).reshape(span.last - span.first, -1)
                for span in spans
            ]
        )

    @torch.inference_mode()
    def step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """One token (1-D, one id) of the own sequence at `position` (1-D, one index), its logits: the
        same mathematics as `forward` in shapes that do not change from token to token (the whole cache
        is attended, through a mask), so that a CUDA graph can record it. Leaves `length` alone."""
        x, cos, sin = self._embed(token, position.unsqueeze(0))
        visible = (self._slots <= position).view(1, 1, 1, -1)
        cache = self.cache

        def store(index: int, keys: torch.Tensor, values: torch.Tensor) -> None:
            cache.keys[index].index_copy_(1, position, keys)
            cache.values[index].index_copy_(1, position, values)

        def attend(index: int, query: torch.Tensor) -> torch.Tensor:
            keys, values = cache.keys[index : index + 1], cache.values[index : index + 1]
            return functional.scaled_dot_product_attention(
                self._packed(query), keys, values, attn_mask=visible
            )

        for index, layer in enumerate(self.layers):
            x = self._layer(layer, x, cos, sin, partial(store, index), partial(attend, index))
        return self._logits(x)[0]

    def _replay(self, token: torch.Tensor) -> torch.Tensor:
        if self._graph is None:
            try:
                self._graph = _Graph.record(self)
            except RuntimeError:  # an operation CUDA graphs cannot hold (a host sync): run eagerly
                self.use_graphs = False
                return self.forward(token)
        graph = self._graph
        graph.token.copy_(token)
        graph.position.fill_(self.cache.length)
        graph.graph.replay()
        self.cache.length += 1
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
        """Float logits for each row of `x`."""
        last = functional.rms_norm(x, (self.hidden,), self.final_norm, self.eps)
        return _project(self.head, last).float()


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
