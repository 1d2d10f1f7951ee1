"""The module tree of a Llama-family model (Llama, Qwen2, Qwen3, Mistral) without transformers' model code.

The lean decoder (core.inference.decoder) reads only a model's tensors, but building transformers'
model classes imports their masking, compilation and distributed-tensor support first: ~1.5–2.5 s of
a one-question `core chat` on a 2-core machine, for code a quantized model never runs. This tree has
the same module names and tensor shapes as transformers' (tests/unit/test_skeleton.py holds them
equal), so a quantized copy kept beside the model loads into either; it is built on the meta device
and filled from the checkpoint or the copy (core.inference.quantize).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral")
# Rotary tables fixed at load; "dynamic" and "longrope" change them with the length: transformers' code.
FIXED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def decoder_architecture(config: Any) -> bool:
    """Whether `config` describes a pre-norm, rotary, grouped-KV, SwiGLU decoder of full attention."""
    sliding = getattr(config, "sliding_window", None) is not None and getattr(
        config, "use_sliding_window", True
    )
    return bool(
        config.model_type in ARCHITECTURES
        and not sliding
        and getattr(config, "hidden_act", "silu") == "silu"
        and getattr(config, "pretraining_tp", 1) == 1
        and set(getattr(config, "layer_types", None) or ["full_attention"]) == {"full_attention"}
    )


def builds(config: Any) -> bool:
    """Whether this module builds the model of `config` (else transformers' classes do)."""
    rope = getattr(config, "rope_parameters", None) or {}
    return decoder_architecture(config) and rope.get("rope_type", "default") in FIXED_ROPE_TYPES


@dataclass(frozen=True)
class Architecture:
    """What this tree and the lean decoder read of a model's config, in transformers' names, as its
    configuration class resolved it (defaults, rope parameters); kept in the quantized copy, so that a
    later load reads no config through transformers."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    pad_token_id: int | None
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    inv_freq: tuple[float, ...]  # the rotary frequencies, float32 values
    attention_scaling: float
    qk_norm: bool = False  # Qwen3: each head's query and key RMS-normed before the rotary embedding

    @classmethod
    def of(cls, config: Any) -> Architecture:
        """The architecture of transformers' `config` (one that `builds`)."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        rope_type = config.rope_parameters["rope_type"]
        if rope_type == "default":
            exponents = torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim
            inv_freq, scaling = 1.0 / config.rope_parameters["rope_theta"] ** exponents, 1.0
        else:
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config)
        qkv_bias = config.model_type == "qwen2" or bool(getattr(config, "attention_bias", False))
        return cls(
            model_type=config.model_type, vocab_size=config.vocab_size, hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=heads, num_key_value_heads=config.num_key_value_heads, head_dim=head_dim,
            rms_norm_eps=float(config.rms_norm_eps), pad_token_id=config.pad_token_id,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)), qkv_bias=qkv_bias,
            o_bias=qkv_bias and config.model_type != "qwen2",
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            inv_freq=tuple(inv_freq.float().tolist()), attention_scaling=float(scaling),
            qk_norm=config.model_type == "qwen3",
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Architecture:
        return cls(**{**values, "inv_freq": tuple(values["inv_freq"])})


@dataclass(frozen=True)
class GenerationDefaults:
    """What the engine reads of a model's generation config: the ids that end a reply, its own top_k."""

    eos_token_id: tuple[int, ...]
    top_k: int | None

    @classmethod
    def of(cls, generation: Any) -> GenerationDefaults:
        end = generation.eos_token_id
        ends = tuple(end) if isinstance(end, (list, tuple)) else () if end is None else (end,)
        return cls(tuple(int(i) for i in ends), generation.top_k)


META = torch.device("meta")


def _linear(inputs: int, outputs: int, bias: bool, dtype: torch.dtype) -> nn.Linear:
    return nn.Linear(inputs, outputs, bias=bias, device=META, dtype=dtype)


class RMSNorm(nn.Module):
    """The norm's weight (the decoder computes the norm itself)."""

    def __init__(self, hidden: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden, device=META, dtype=dtype), requires_grad=False)


class Rotary(nn.Module):
    """Rotary cos and sin for positions, as transformers' Llama/Qwen rotary embedding computes them."""

    def __init__(self, config: Architecture) -> None:
        super().__init__()
        inv_freq = torch.tensor(config.inv_freq, dtype=torch.float)
        self.attention_scaling = config.attention_scaling
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        angles = torch.cat((freqs, freqs), dim=-1)
        cos, sin = angles.cos() * self.attention_scaling, angles.sin() * self.attention_scaling
        return cos.to(x.dtype), sin.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: Architecture, dtype: torch.dtype) -> None:
        super().__init__()
        heads, kv_heads, hidden = config.num_attention_heads, config.num_key_value_heads, config.hidden_size
        dim, bias = config.head_dim, config.qkv_bias
        self.q_proj = _linear(hidden, heads * dim, bias, dtype)
        self.k_proj = _linear(hidden, kv_heads * dim, bias, dtype)
        self.v_proj = _linear(hidden, kv_heads * dim, bias, dtype)
        self.o_proj = _linear(heads * dim, hidden, config.o_bias, dtype)
        if config.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(dim, dtype), RMSNorm(dim, dtype)


class MLP(nn.Module):
    def __init__(self, config: Architecture, dtype: torch.dtype) -> None:
        super().__init__()
        hidden, inner = config.hidden_size, config.intermediate_size
        bias = config.mlp_bias
        self.gate_proj = _linear(hidden, inner, bias, dtype)
        self.up_proj = _linear(hidden, inner, bias, dtype)
        self.down_proj = _linear(inner, hidden, bias, dtype)


class Layer(nn.Module):
    def __init__(self, config: Architecture, dtype: torch.dtype) -> None:
        super().__init__()
        self.self_attn = Attention(config, dtype)
        self.mlp = MLP(config, dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, dtype)


class Body(nn.Module):
    def __init__(self, config: Architecture, dtype: torch.dtype) -> None:
        super().__init__()
        # Given its (meta) table: a table of its own would be initialised, which imports torch._dynamo (1 s).
        table = torch.empty(config.vocab_size, config.hidden_size, device=META, dtype=dtype)
        self.embed_tokens = nn.Embedding(*table.shape, config.pad_token_id, _weight=table)
        self.layers = nn.ModuleList(Layer(config, dtype) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, dtype)
        self.rotary_emb = Rotary(config)


class CausalLM(nn.Module):
    """What the engine asks of transformers' *ForCausalLM: `config`, `generation_config`, `model`
    (embeddings, layers, norm, rotary) and the output head; tensors on the meta device, the rotary
    tables computed."""

    def __init__(
        self, config: Architecture, generation_config: GenerationDefaults, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.config, self.generation_config = config, generation_config
        self.model = Body(config, dtype)
        self.lm_head = _linear(config.hidden_size, config.vocab_size, False, dtype)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, embeddings: nn.Module) -> None:
        self.model.embed_tokens = embeddings

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head
