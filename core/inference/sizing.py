"""How much memory a model needs and how fast it can decode here: weights at the engine's precision,
the KV cache for a context, the runtime; the bandwidth bound of decoding."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.hardware import HardwareInfo
from core.hub.store import config_count, read_config

# torch + transformers' tokenizers in a process: about 290 MiB resident measured on CPU here with a
# quantized model (core.inference.skeleton), ~345 MiB with transformers' model classes (16-bit).
RUNTIME_OVERHEAD_BYTES = 320 * 1024**2
CONTEXT_FOR_ESTIMATES = 4096  # tokens of KV cache planned for: a long chat, not the model's maximum
# int4 keeps the q/k/v projections of the first eighth of the layers int8: most of the error int4
# adds there (TinyLlama-1.1B: KL 0.102 with every q/k/v int4, 0.076 with the first eighth int8, 0.070
# with all int8, which read 6 % more bytes a token and decode ~10 % slower), as llama.cpp's Q4_K_M
# spends more bits on the first layers. A model this narrow or narrower keeps the whole first eighth
# of its layers int8 (Qwen2.5-0.5B, 896 wide: KL 0.024 -> 0.0043 with the next rule, for 3.6 % more
# bytes; Qwen3-0.6B, 1024 wide: 0.0146 -> 0.0081; llama.cpp's Q4_K_M 0.0091 and 0.0134), and where
# attention is at most a third of a layer's weights, every q/k/v and o projection too (Qwen2.5: 12 %,
# 0.0084 -> 0.0043; SmolLM2-360M: 25 %, 0.0077 -> 0.0025, Q4_K_M 0.0066). Where it is more
# (Qwen3-0.6B: 40 %), that reads 13 % more bytes a token, for a KL already below Q4_K_M's. See
# docs/performance.md.
NARROW_HIDDEN = 1024
CHEAP_ATTENTION = 1 / 3  # of a layer's weights
ATTENTION_PROJECTIONS = ("qkv_proj", "q_proj", "k_proj", "v_proj")
NARROW_INT8 = ("o_proj",)


@dataclass(frozen=True)
class KvLayout:
    """What the KV cache size depends on, and the size of the q/k/v projections that fill it."""

    layers: int
    kv_heads: int
    head_dim: int
    hidden_size: int = 0  # 0: unknown (a layout saved before it was recorded)
    heads: int = 0
    intermediate_size: int = 0  # 0: unknown (as above)

    @classmethod
    def from_config(cls, config: dict) -> KvLayout:
        heads = config_count(config, "num_attention_heads", 1)
        hidden = config_count(config, "hidden_size")
        head_dim = config_count(config, "head_dim") or hidden // max(heads, 1)
        return cls(
            config_count(config, "num_hidden_layers"),
            config_count(config, "num_key_value_heads", heads),
            head_dim,
            hidden,
            heads,
            config_count(config, "intermediate_size"),
        )

    def bytes_for(self, tokens: int, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * tokens * dtype_bytes

    @classmethod
    def of(cls, config: Any) -> KvLayout:
        """The layout of a loaded model's config object (transformers' or core.inference.skeleton's)."""
        names = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_size")
        return cls.from_config({name: getattr(config, name, None) for name in (*names, "intermediate_size")})

    @property
    def attention_weights(self) -> int:
        """Weights of the q, k and v projections in all layers."""
        return self.layers * self.layer_weights["qkv_proj"]

    @property
    def layer_weights(self) -> dict[str, int]:
        """Weights of each of a layer's matrices (as core.inference.quantize fuses them)."""
        mlp = self.hidden_size * self.intermediate_size  # down; gate and up are one each
        return {"qkv_proj": self.hidden_size * (self.heads + 2 * self.kv_heads) * self.head_dim,
                "o_proj": self.hidden_size * self.heads * self.head_dim,
                "down_proj": mlp, "gate_up_proj": 2 * mlp}  # fmt: skip

    def int4_keeps_int8(self, matrix: str, layer: int | None) -> bool:
        """Whether int4 stores a layer's `matrix` (its name in the layer: "qkv_proj", "down_proj", ...)
        as int8 in a model of this layout."""
        first_eighth = layer is not None and layer < max(1, self.layers // 8)
        if not 0 < self.hidden_size <= NARROW_HIDDEN:
            return first_eighth and matrix in ATTENTION_PROJECTIONS
        return first_eighth or (matrix in ATTENTION_PROJECTIONS + NARROW_INT8 and self._cheap_attention)

    @property
    def _cheap_attention(self) -> bool:
        sizes = self.layer_weights
        return sizes["qkv_proj"] + sizes["o_proj"] <= CHEAP_ATTENTION * sum(sizes.values())

    @property
    def int4_int8_weights(self) -> int:
        """Weights that int4 keeps int8 (int4_keeps_int8) in all layers."""
        return sum(
            size
            for layer in range(self.layers)
            for matrix, size in self.layer_weights.items()
            if self.int4_keeps_int8(matrix, layer)
        )


@dataclass(frozen=True)
class Vocabulary:
    """A model's vocabulary table (vocab × hidden weights), and whether the output head is that same
    table (tied) or a second one."""

    weights: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict) -> Vocabulary:
        weights = config_count(config, "vocab_size") * config_count(config, "hidden_size")
        return cls(weights, config.get("tie_word_embeddings") is True)


@dataclass(frozen=True)
class Precision:
    """How the engine stores a model: bytes per weight of the layers, of the output head, and of what
    stays in the model's dtype (the KV cache, norms, an untied input table)."""

    weight_bytes: float  # 1 for int8, 0.578 for int4 with its scale codes (0.703 beside torch's kernel)
    head_bytes: float  # the output head: int8 (1) whenever the layers are quantized
    dtype_bytes: int
    label: str  # shown to users: "int8", "bfloat16", "float32", ...
    int8_kept_bytes: float | None = None  # what int4 keeps int8 (int4_keeps_int8); None: as the layers
    packed_head: bool = True  # an int8 head is kept packed for oneDNN too (not beside the engine's kernels)
    engine_kernels: bool = False  # the layers decode on the engine's own kernels (core.inference.native)


# The most a model's weights take here (16-bit): for a choice made without asking the engine how it
# stores them (that imports torch and checks its kernels).
SIXTEEN_BIT = Precision(2, 2, 2, "bfloat16")


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    kv_cache_bytes: int
    runtime_bytes: int
    read_per_token_bytes: int  # weights read to decode one token: all but an untied input table

    @property
    def total_bytes(self) -> int:
        return self.with_caches(1)

    @property
    def after_load_bytes(self) -> int:
        """Resident right after loading: the KV cache grows only while a reply is generated."""
        return self.weights_bytes + self.runtime_bytes

    def with_caches(self, caches: int) -> int:
        """What is planned with `caches` KV caches at the context length (replies running or kept)."""
        return self.after_load_bytes + caches * self.kv_cache_bytes


def estimate_memory(
    parameters: int,
    layout: KvLayout,
    precision: Precision,
    vocabulary: Vocabulary | None = None,
    context_tokens: int = CONTEXT_FOR_ESTIMATES,
) -> MemoryEstimate:
    """Weights at the precision's bytes (the vocabulary apart, when known), the KV cache for
    `context_tokens`, and the runtime."""
    input_table = 0 if vocabulary is None or vocabulary.tied else vocabulary.weights
    if vocabulary is None or vocabulary.weights + input_table > parameters:  # unknown, or not this model's
        vocabulary, input_table = Vocabulary(0, tied=True), 0
    layers = parameters - vocabulary.weights - input_table
    kept = 0 if precision.int8_kept_bytes is None else min(layout.int4_int8_weights, layers)
    read = (
        (layers - kept) * precision.weight_bytes
        + kept * (precision.int8_kept_bytes or 0)
        + vocabulary.weights * precision.head_bytes
    )
    # A quantized head is kept twice, int8 and packed for oneDNN (quantize.pack_in_background), where
    # the engine's own kernels do not run.
    packed_head = vocabulary.weights if precision.head_bytes == 1 and precision.packed_head else 0
    return MemoryEstimate(
        int(read + input_table * precision.dtype_bytes + packed_head),
        layout.bytes_for(context_tokens, precision.dtype_bytes),
        RUNTIME_OVERHEAD_BYTES,
        int(read),
    )


@dataclass(frozen=True)
class MemoryVerdict:
    verdict: str  # "fits_gpu", "fits_ram", "tight", "too_large"
    needed_bytes: int
    available_bytes: int  # on the device the verdict names (GPU memory for fits_gpu, RAM otherwise)


def memory_verdict(needed: int, info: HardwareInfo) -> MemoryVerdict:
    """Fits when the need is within 80 % of what is free; tight when only total RAM could hold it."""
    best_gpu = max(info.gpus, key=lambda g: g.memory_free_bytes, default=None)
    if best_gpu and needed <= 0.8 * best_gpu.memory_free_bytes:
        return MemoryVerdict("fits_gpu", needed, best_gpu.memory_free_bytes)
    if needed <= 0.8 * info.ram_available_bytes:
        return MemoryVerdict("fits_ram", needed, info.ram_available_bytes)
    if needed <= info.ram_total_bytes:
        return MemoryVerdict("tight", needed, info.ram_available_bytes)
    return MemoryVerdict("too_large", needed, info.ram_available_bytes)


def weight_count(model_dir: Path) -> int:
    """Parameters in the safetensors files, read from their headers (no weights are loaded)."""
    from core.hub.store import read_safetensors_header

    total = 0
    for path in model_dir.glob("*.safetensors"):
        for tensor in read_safetensors_header(path)[0].values():
            count = 1
            for dim in tensor["shape"]:
                count *= dim
            total += count
    return total


def model_memory(
    model_dir: Path, precision: Precision, context_tokens: int = CONTEXT_FOR_ESTIMATES
) -> MemoryEstimate:
    """The estimate for a downloaded model, from its config and safetensors headers."""
    config = read_config(model_dir)
    return estimate_memory(
        weight_count(model_dir),
        KvLayout.from_config(config),
        precision,
        Vocabulary.from_config(config),
        context_tokens,
    )


def replies_that_fit(estimate: MemoryEstimate, available_bytes: int, limit: int) -> int:
    """How many replies can run together: the weights and runtime once and a KV cache at the context
    for each, within 80 % of the free memory; at least 1 (a single reply is checked on its own), at
    most `limit`."""
    room = 0.8 * available_bytes - estimate.after_load_bytes
    if estimate.kv_cache_bytes <= 0:
        return limit
    return max(1, min(limit, int(room // estimate.kv_cache_bytes)))


# Decode speed with the default sampling / the bound (reads measured as a sum: hardware.measure_bandwidth):
# the lower of the catalog models' "sampled" ratios in bench/speed.py (2026-12-04, int4 at 4.625 bits a
# weight), with torch's CPU kernels (Qwen2.5-0.5B 0.46 and 0.53 in two runs, TinyLlama-1.1B 0.58) and with
# the engine's own (core.inference.native: 0.95 and 0.88, and 0.93).
CPU_DECODE_EFFICIENCY = 0.46
NATIVE_DECODE_EFFICIENCY = 0.88


def cpu_decode_efficiency(precision: Precision) -> float:
    """Decode speed with the default sampling / its bandwidth bound, on the engine's kernels or torch's."""
    return NATIVE_DECODE_EFFICIENCY if precision.engine_kernels else CPU_DECODE_EFFICIENCY


def decode_tokens_per_s_bound(estimate: MemoryEstimate, bandwidth_bytes_per_s: float) -> float:
    """Each new token reads every weight once: bandwidth / bytes read per token bounds decode speed."""
    read = estimate.read_per_token_bytes
    return bandwidth_bytes_per_s / read if read else 0.0
