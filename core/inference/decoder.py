"""A lean forward pass for Llama-family models (Llama, Qwen2/3, Mistral): quantized on a CPU, 16-bit on a GPU.

Decoding one token with transformers runs ~600 small tensor operations plus module, cache and mask
bookkeeping; on a 2-core CPU that was 8 ms of Qwen2.5-0.5B's 24 ms per token, beside 15 ms of
reading the weights. This decoder runs the same mathematics in ~16 operations per layer on the
model's own (quantized) tensors: fused projections called directly, one RMSNorm kernel, rotary
embedding on q and k at once, a preallocated KV cache written in place, and one SDPA call with the
query heads packed per KV head. Any other architecture keeps transformers' own forward.

On a GPU a small model's decoding waits on kernel launches, not on the GPU (transformers' forward
launched ~600 kernels a token): there a pass that adds one token to each of its sequences replays a
step recorded as a CUDA graph for those sequences' caches, recorded again when a reply joins or leaves
(a lone reply's own cache is reused from reply to reply, and so is its recording); several sequences'
caches are pooled into one tensor for it, so that each layer attends them all with one call.
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

from core.inference import native
from core.inference.padded_attention import attend, causal_mask, pads
from core.inference.quantize import Fused, QuantizedLinear
from core.inference.skeleton import decoder_architecture

GRAPH_CAPACITY_STEP = 512  # tokens
Projection = QuantizedLinear | nn.Linear
PROJECTIONS = ("qkv", "output", "gate_up", "down")  # a layer's, in `_Layer`


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
    qk_norm: torch.Tensor | None  # Qwen3: the q and k norms' weights, one row a head (heads + KV heads)


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
        self.pool: _Pool | None = None  # the pool its keys and values are a slot of (`pool`), if any
        self.slot = 0
        self.made_for = capacity  # a pool's slot may be longer: out of it, the cache is this long again

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def unpool(self) -> None:
        """Keys and values of its own again, out of a pool (which would stay in memory for it)."""
        if self.pool is not None:
            kept = max(self.made_for, self.length)
            self.keys, self.values = self.keys[:, :, :kept].clone(), self.values[:, :, :kept].clone()
            self.pool = None

    def copy_prefix(self, source: KvCache, count: int) -> None:
        """Copy `source`'s keys and values of its first `count` tokens (the length is left to the caller)."""
        self.keys[:, :, :count] = source.keys[:, :, :count]
        self.values[:, :, :count] = source.values[:, :, :count]


@dataclass(frozen=True, eq=False)
class _Pool:
    """Several sequences' caches in one tensor each (sequences × layers × KV heads × capacity ×
    head_dim, zeros beyond what each held), each cache's keys and values now its slot: a step writes
    every sequence's new key with one operation a layer and attends them all with one call."""

    keys: torch.Tensor
    values: torch.Tensor


def pool(caches: Sequence[KvCache]) -> _Pool:
    """The caches' pool, made (their contents copied in) unless they already are one, in this order."""
    found = caches[0].pool
    if (
        found is not None
        and len(found.keys) == len(caches)
        and all(cache.pool is found and cache.slot == slot for slot, cache in enumerate(caches))
    ):
        return found
    first = caches[0].keys
    shape = (len(caches), first.shape[0], first.shape[1], max(c.capacity for c in caches), first.shape[3])
    made = _Pool(first.new_zeros(shape), first.new_zeros(shape))
    for slot, cache in enumerate(caches):
        made.keys[slot, :, :, : cache.capacity] = cache.keys
        made.values[slot, :, :, : cache.capacity] = cache.values
        cache.keys, cache.values, cache.pool, cache.slot = made.keys[slot], made.values[slot], made, slot
    return made


@dataclass(frozen=True)
class Segment:
    """Tokens (1-D ids) to append to one sequence's cache in a pass: a prompt or a part of one, or the
    one token a decoding sequence chose last."""

    cache: KvCache
    ids: torch.Tensor


@dataclass(frozen=True)
class _Span:
    """Where a segment's rows sit in a pass (first:last), where they go in its cache (from start), and
    their causal mask (None for one token; padded in bf16 on a CPU: core.inference.padded_attention);
    the cache's slots for them and up to them, every layer's (layers × KV heads × tokens × head_dim),
    cut once a pass rather than once a layer."""

    first: int
    last: int
    start: int
    mask: torch.Tensor | None
    new_keys: torch.Tensor
    new_values: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor

    @classmethod
    def of(cls, cache: KvCache, first: int, last: int, start: int, *, pad: bool) -> _Span:
        count = last - first
        end = start + count
        mask = None if count == 1 else causal_mask(start, count, cache.keys.device, pad=pad)
        return cls(
            first, last, start, mask,
            cache.keys[:, :, start:end], cache.values[:, :, start:end],
            cache.keys[:, :, :end], cache.values[:, :, :end],
        )  # fmt: skip


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
        self.head: Projection = model.get_output_embeddings()
        self.vocabulary = self.head.out_features
        self.dtype, self.device = base.norm.weight.dtype, base.norm.weight.device
        self.final_norm = self._norm_weight(base.norm.weight)
        self.pad_prompts = pads(base.norm.weight)  # prompts' attention in a few shapes (padded_attention)
        self.layers = [
            _Layer(
                input_norm=self._norm_weight(layer.input_layernorm.weight),
                qkv=layer.self_attn.qkv_proj.linear,
                output=layer.self_attn.o_proj,
                post_norm=self._norm_weight(layer.post_attention_layernorm.weight),
                gate_up=layer.mlp.gate_up_proj.linear,
                down=layer.mlp.down_proj,
                qk_norm=self._head_norms(layer.self_attn),
            )
            for layer in base.layers
        ]
        self.cache = KvCache(self, 0, zeroed=True)  # the decoder's own sequence (`reset`, `forward`)
        # On CUDA a pass of one new token per sequence is recorded as a CUDA graph for those sequences'
        # caches and replayed: one launch a pass instead of hundreds (off again if recording fails).
        # Caches it attends must be zeroed (`step` reads every slot through a mask).
        self.use_graphs = self.device.type == "cuda"
        self.graphs_together = True  # replies decoding together replay theirs too (off if recording fails)
        self._graph: _Graph | None = None
        self._native: list[native.LayerWeights] | bool | None = None  # `_native_layers`; None: not asked yet

    def reset(self, capacity: int) -> KvCache:
        """Start the own sequence anew, for at most `capacity` tokens (its cache grows only when it must)."""
        if self.use_graphs:  # a recorded step holds on to its cache: grow it in steps, record less
            capacity = -(-capacity // GRAPH_CAPACITY_STEP) * GRAPH_CAPACITY_STEP
        if self.cache.capacity < capacity:
            # Zeros, not garbage: `step` attends over every slot, and a masked NaN still poisons it.
            self.cache = KvCache(self, capacity, zeroed=True)
        self.cache.length = 0
        return self.cache

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Append the token ids (1-D) to the own sequence; return the float logits after the last one."""
        return self.run([Segment(self.cache, ids)])[0]

    @torch.inference_mode()
    def run(self, segments: Sequence[Segment]) -> torch.Tensor:
        """Append each segment's tokens to its sequence, all in one pass over the weights; the float
        logits after each segment's last token (segments × vocabulary)."""
        if (
            self.use_graphs
            and (len(segments) == 1 or self.graphs_together)
            and all(s.ids.shape[0] == 1 and s.cache.length < s.cache.capacity for s in segments)
        ):
            logits = self._replay(segments)
            if logits is not None:
                return logits
        return self._logits(self._last_rows(segments))

    @torch.inference_mode()
    def logits_of_each(self, cache: KvCache, ids: torch.Tensor) -> torch.Tensor:
        """Append `ids` to `cache`'s sequence; the float logits after each of them (count × vocabulary)."""
        return self._logits(self._pass([Segment(cache, ids)])[0])

    @torch.inference_mode()
    def state_after(self, cache: KvCache, ids: torch.Tensor) -> torch.Tensor:
        """Append `ids` to `cache`'s sequence; the float hidden state after the last of them, through the
        final norm (what the head reads): an embedding's."""
        return self._norm(self._last_rows([Segment(cache, ids)]), self.final_norm).float()[0]

    def _last_rows(self, segments: Sequence[Segment]) -> torch.Tensor:
        """Each segment's last row after the last layer (segments × hidden), in one pass over the weights.
        Where the engine's own decoder layer runs (core.inference.native), it takes every pass whose rows
        its matmul kernels would take one by one (`QuantizedLinear.decoding_rows`), and in a longer one
        the sequences that add a token go in a pass of their own: a token's numbers are the same whether
        its prompt, a prompt that joined, or nothing else shared its pass."""
        layers = self._native_layers()
        rows = sum(segment.ids.shape[0] for segment in segments)
        if layers is not None and (rows == len(segments) or rows < self._decoding_rows()):
            return self._native_pass(segments, layers)
        decoding = [i for i, segment in enumerate(segments) if segment.ids.shape[0] == 1]
        if layers is None or not decoding:
            hidden, lasts = self._pass(segments)
            return hidden[-1:] if len(lasts) == 1 else hidden[lasts]
        prompts = sorted(set(range(len(segments))) - set(decoding))
        last = torch.empty(len(segments), self.hidden, dtype=self.dtype)
        last[decoding] = self._native_pass([segments[i] for i in decoding], layers)
        last[prompts] = self._last_rows([segments[i] for i in prompts])
        return last

    def _decoding_rows(self) -> int:
        """From how many rows on some layer's matmul leaves its decoding kernel."""
        parts = [getattr(layer, name) for layer in self.layers for name in PROJECTIONS]
        return min(part.decoding_rows() for part in parts if isinstance(part, QuantizedLinear))

    def _native_pass(self, segments: Sequence[Segment], layers: list[native.LayerWeights]) -> torch.Tensor:
        """The segments through `native.decode_layer`, a layer a call: each one's last row after the last."""
        counts, starts, (x, cos, sin) = self._tokens(segments)
        caches = (
            [segment.cache.keys for segment in segments],
            [segment.cache.values for segment in segments],
        )
        rotary = (cos[:, 0].float(), sin[:, 0].float())
        for index, weights in enumerate(layers):
            x = native.decode_layer(x, weights, rotary, caches, index, (starts, counts), self.heads, self.eps)
        for segment, count in zip(segments, counts, strict=True):
            segment.cache.length += count
        return x if len(x) == len(segments) else x[list(itertools.accumulate(counts, initial=-1))[1:]]

    def _pass(self, segments: Sequence[Segment]) -> tuple[torch.Tensor, list[int]]:
        """One pass over the weights for every segment: the last layer's rows and each segment's last row."""
        counts, starts, (x, cos, sin) = self._tokens(segments)
        bounds = itertools.pairwise(itertools.accumulate(counts, initial=0))
        spans = [
            _Span.of(segment.cache, first, last, start, pad=self.pad_prompts)
            for segment, start, (first, last) in zip(segments, starts, bounds, strict=True)
        ]
        if len(spans) == 1:  # one sequence (a lone reply): no slicing of rows
            store, attend = partial(self._store, spans[0]), partial(self._attend, spans[0])
        else:
            store, attend = partial(self._store_each, spans), partial(self._attend_each, spans)
        for index, layer in enumerate(self.layers):
            x = self._layer(layer, x, cos, sin, partial(store, index), partial(attend, index))
        for segment, count in zip(segments, counts, strict=True):
            segment.cache.length += count
        return x, [span.last - 1 for span in spans]

    def _tokens(self, segments: Sequence[Segment]) -> tuple[list[int], list[int], tuple[torch.Tensor, ...]]:
        """Each segment's count of tokens and first position (checked against its cache's room), and the
        tokens' embeddings and rotary cos and sin (`_embed`)."""
        counts = [segment.ids.shape[0] for segment in segments]
        starts = [segment.cache.length for segment in segments]
        for segment, start, count in zip(segments, starts, counts, strict=True):
            if start + count > segment.cache.capacity:
                raise ValueError(
                    f"the sequence would hold {start + count} tokens, the cache {segment.cache.capacity}"
                )
        # The ids and their positions reach the GPU in one copy (a pass's segments may come from the CPU).
        ids_positions = torch.cat(
            [segment.ids.cpu() for segment in segments]
            + [torch.arange(start, start + count) for start, count in zip(starts, counts, strict=True)]
        ).to(self.device)
        ids, positions = ids_positions.split(len(ids_positions) // 2)
        return counts, starts, self._embed(ids, positions.unsqueeze(0))

    def _native_layers(self) -> list[native.LayerWeights] | None:
        """Every layer as the engine's own decoding layer takes it (core.inference.native), or None where it
        does not run: not a CPU, a layer its kernels do not take, a head_dim it does not, or not built yet."""
        if self._native is None and native.ready():
            self._native = False
            if self.device.type == "cpu" and self.head_dim % 16 == 0 and self.head_dim <= 128:
                layers = [self._native_weights(layer) for layer in self.layers]
                self._native = all(layers) and layers
        return self._native or None

    def _native_weights(self, layer: _Layer) -> native.LayerWeights | None:
        projections = [
            part.native_parts() if isinstance(part, QuantizedLinear) else None
            for part in (getattr(layer, name) for name in PROJECTIONS)
        ]
        if None in projections:
            return None
        qkv, output, gate_up, down = projections
        # float32, as the layer computes (`_norm_weight` doubles them)
        norms = [layer.input_norm[: self.hidden].float(), layer.post_norm[: self.hidden].float()]
        qk_norm = None if layer.qk_norm is None else layer.qk_norm.float()
        return native.LayerWeights(norms[0], qkv, output, norms[1], gate_up, down, qk_norm)

    @staticmethod
    def _store(span: _Span, index: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keep a sequence's new keys and values (KV heads × count × head_dim) in its cache."""
        span.new_keys[index].copy_(keys)
        span.new_values[index].copy_(values)

    def _store_each(self, spans: list[_Span], index: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        for span in spans:
            self._store(span, index, keys[:, span.first : span.last], values[:, span.first : span.last])

    def _attend(self, span: _Span, index: int, query: torch.Tensor) -> torch.Tensor:
        """A sequence's queries (count × heads × head_dim) over its cache up to its newest token."""
        # 4-D (batch 1) tensors: with 3-D ones torch takes its slow reference ("math") attention.
        keys, values = span.keys[index : index + 1], span.values[index : index + 1]
        if span.mask is None:  # one query token: its heads packed per KV head, one plain SDPA call
            return functional.scaled_dot_product_attention(self._packed(query), keys, values)
        query = query.transpose(0, 1).unsqueeze(0)
        return attend(query, keys, values, span.mask)[0].transpose(0, 1)

    def _attend_each(self, spans: list[_Span], index: int, query: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self._attend(span, index, query[span.first : span.last]).reshape(span.last - span.first, -1)
                for span in spans
            ]
        )

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor, caches: Sequence[KvCache]) -> torch.Tensor:
        """One token (`tokens[i]`) for each sequence `caches[i]` at `positions[i]`, their logits
        (sequences × vocabulary): the same mathematics as `run` in shapes that do not change from token
        to token (each whole cache is attended, through a mask), so that a CUDA graph can record it.
        Several sequences are pooled first (`pool`): one cache write and one attention call a layer for
        all (on an H200 a recorded step for three replies cost 1.6 × one's with a call each, 12-04).
        Leaves the lengths alone."""
        count = len(caches)
        x, cos, sin = self._embed(tokens, positions.unsqueeze(0))
        if count == 1:
            keys, values = caches[0].keys.unsqueeze(0), caches[0].values.unsqueeze(0)
        else:
            pooled = pool(caches)
            keys, values = pooled.keys, pooled.values
        capacity = keys.shape[3]
        visible = (torch.arange(capacity, device=self.device) <= positions.view(-1, 1)).view(count, 1, 1, -1)
        sequences = torch.arange(count, device=self.device)

        def store(index: int, new_keys: torch.Tensor, new_values: torch.Tensor) -> None:
            """new: KV heads × sequences × head_dim, each into its sequence's slot at its position."""
            if count == 1:
                caches[0].keys[index].index_copy_(1, positions, new_keys)
                caches[0].values[index].index_copy_(1, positions, new_values)
                return
            keys[:, index].transpose(1, 2).index_put_((sequences, positions), new_keys.transpose(0, 1))
            values[:, index].transpose(1, 2).index_put_((sequences, positions), new_values.transpose(0, 1))

        def attend(index: int, query: torch.Tensor) -> torch.Tensor:
            packed = query.view(count, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
            attended = functional.scaled_dot_product_attention(
                packed, keys[:, index], values[:, index], attn_mask=visible
            )
            return attended.reshape(count, -1)

        for index, layer in enumerate(self.layers):
            x = self._layer(layer, x, cos, sin, partial(store, index), partial(attend, index))
        return self._logits(x)

    def release(self, cache: KvCache) -> None:
        """Drop the recording that attends `cache` (a reply's that ended), which would keep its memory;
        the own cache's stays (its next reply replays it)."""
        graph = self._graph
        if graph is not None and cache is not self.cache and any(cache is c for c in graph.caches):
            self._forget_graph()

    def _forget_graph(self) -> None:
        """Drop the recording; the caches it pooled get memory of their own again (a kept one, or the
        own cache, would otherwise hold the whole pool)."""
        graph, self._graph = self._graph, None
        for cache in graph.caches if graph is not None else ():
            cache.unpool()

    def _replay(self, segments: Sequence[Segment]) -> torch.Tensor | None:
        """The pass replayed from the graph recorded for these caches (recorded now if it is not); None
        if this pass cannot be recorded (graphs are then off)."""
        caches = tuple(segment.cache for segment in segments)
        graph = self._graph
        if graph is None or graph.caches != caches:
            graph = None
            self._forget_graph()  # its memory goes before the next one's is taken
            try:
                self._graph = graph = _Graph.record(self, caches)
            except RuntimeError:  # an operation CUDA graphs cannot hold (a host sync): run eagerly
                if len(caches) == 1:
                    self.use_graphs = False
                else:  # a lone reply's step has no pool: it keeps its graph
                    self.graphs_together = False
                for cache in caches:
                    cache.unpool()
                return None
        lengths = torch.tensor([cache.length for cache in caches])
        graph.inputs.copy_(torch.cat([segment.ids.cpu() for segment in segments] + [lengths]))  # one copy
        graph.graph.replay()
        for cache in caches:
            cache.length += 1
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
        qkv = _project(layer.qkv, self._norm(x, layer.input_norm))
        queries_keys = qkv[:, : (heads + kv_heads) * dim].view(count, heads + kv_heads, dim)
        if layer.qk_norm is not None:
            queries_keys = self._norm(queries_keys, None) * layer.qk_norm
        rotated = _rotate(queries_keys, cos, sin)
        store(
            rotated[:, heads:].transpose(0, 1),
            qkv[:, (heads + kv_heads) * dim :].view(count, kv_heads, dim).transpose(0, 1),
        )
        attended = attend(rotated[:, :heads]).reshape(count, heads * dim)
        x = x + _project(layer.output, attended)
        gate_up = _project(layer.gate_up, self._norm(x, layer.post_norm))
        activated = functional.silu(gate_up[:, : self.intermediate]) * gate_up[:, self.intermediate :]
        return x + _project(layer.down, activated)

    def _head_norms(self, attention: nn.Module) -> torch.Tensor | None:
        """Qwen3's q_norm and k_norm weights, one row for each query head and each KV head."""
        if not hasattr(attention, "q_norm"):
            return None
        q, k = attention.q_norm.weight, attention.k_norm.weight
        return torch.cat((q.expand(self.heads, -1), k.expand(self.kv_heads, -1)))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Float logits for each row of `x`."""
        return _project(self.head, self._norm(x, self.final_norm)).float()

    def _norm(self, x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """RMSNorm over x's last dimension, times `weight` as `_norm_weight` keeps it (None: 1)."""
        size = x.shape[-1]
        if self.device.type != "cpu":
            return functional.rms_norm(x, (size,), weight, self.eps)
        # One fused kernel: the layer norm of (x, -x), whose mean is 0 and whose variance is x's mean
        # square. On a CPU torch composes rms_norm of ~8 operations, and between matrices that stream
        # the weights through the caches each small operation costs ~4 times its own time: 2-5 % of a
        # decode step (docs/performance.md).
        both = torch.cat((x, x.neg()), dim=-1)
        return functional.layer_norm(both, (2 * size,), weight, None, self.eps)[..., :size].contiguous()

    def _norm_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """A norm's weight as `_norm` takes it: on a CPU twice over, for (x, -x)."""
        return torch.cat((weight, weight)) if self.device.type == "cpu" else weight


@dataclass(frozen=True)
class _Graph:
    """A decode step recorded for some caches: write the tokens and their positions, replay, read the
    logits."""

    graph: torch.cuda.CUDAGraph
    caches: tuple[KvCache, ...]
    inputs: torch.Tensor  # each sequence's token, then each one's position
    logits: torch.Tensor

    @classmethod
    def record(cls, decoder: Decoder, caches: tuple[KvCache, ...]) -> _Graph:
        # The warm-up and the recording write into each cache's next free slot, which the replay fills.
        lengths = [cache.length for cache in caches]
        inputs = torch.tensor([0] * len(caches) + lengths, device=decoder.device)
        tokens, positions = inputs.split(len(caches))
        if len(caches) > 1:
            pool(caches)  # on the stream that replays: the pool's memory is not the side stream's
        side = torch.cuda.Stream(decoder.device)
        side.wait_stream(torch.cuda.current_stream(decoder.device))
        with torch.cuda.stream(side):
            decoder.step(tokens, positions, caches)  # kernels chosen, workspaces allocated before recording
        torch.cuda.current_stream(decoder.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = decoder.step(tokens, positions, caches)
        return cls(graph, caches, inputs, logits)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding in transformers' half-split layout."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
