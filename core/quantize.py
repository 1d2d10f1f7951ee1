"""Int8 weight-only quantization for CPU decoding: per-output-channel scales, activations untouched.

Decoding one token reads every weight once, so on a CPU its speed is set by memory bandwidth: int8
weights halve the bytes of bf16. Each output channel (row) gets its own scale (max |w| / 127), which
keeps the error far below per-tensor schemes. Matrix products run in torch's `_weight_int8pack_mm`
kernel, the one torchao and gpt-fast use for the same scheme on CPU, when decoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

PROMPT_ROWS = 32  # from this many rows on (a prompt), dequantizing + a bf16 GEMM beats the int8 kernel


def int8_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (rows × in) times the int8 weight (out × in) with per-row scales, in the scale's dtype.

    Decoding (a few rows) reads int8 straight from memory; a prompt (many rows) is compute-bound, so
    the weight is widened once and multiplied with the dtype's fast GEMM.
    """
    if x.shape[0] < PROMPT_ROWS:
        return torch._weight_int8pack_mm(x, weight, scale)
    return functional.linear(x, weight.to(scale.dtype) * scale[:, None])


def int8_supported() -> bool:
    """Whether this torch build has the int8 weight-only CPU kernel."""
    try:
        probe = torch.ones(1, 8, dtype=torch.bfloat16)
        torch._weight_int8pack_mm(
            probe, torch.ones(8, 8, dtype=torch.int8), torch.ones(8, dtype=torch.bfloat16)
        )
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def quantize_rows(
    weight: torch.Tensor, dtype: torch.dtype, chunk_rows: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, per-row scale in `dtype`) for a 2-D weight; rows that are all zero get scale 1.

    Works through the rows in chunks, so the float32 temporaries stay small (a vocabulary of 150k
    rows would otherwise need two more copies of itself in float32).
    """
    quantized = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    for start in range(0, weight.shape[0], chunk_rows):
        rows = weight[start : start + chunk_rows].detach().float()
        row_scale = rows.abs().amax(dim=1) / 127.0
        row_scale = torch.where(row_scale > 0, row_scale, torch.ones_like(row_scale))
        quantized[start : start + chunk_rows] = torch.round(rows / row_scale[:, None]).clamp_(-127, 127)
        scale[start : start + chunk_rows] = row_scale
    return quantized, scale.to(dtype)


class Int8Linear(nn.Module):
    """nn.Linear with int8 weights and a scale per output channel."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(scale.dtype), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype) -> Int8Linear:
        weight, scale = quantize_rows(linear.weight, dtype)
        return cls(weight, scale, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = int8_matmul(x.reshape(-1, self.in_features).to(self.scale.dtype), self.weight, self.scale)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


class FusedInt8(nn.Module):
    """Sibling projections of one input (q/k/v, gate/up) as one int8 matrix: one kernel call, not three.

    Each sibling becomes an Int8Slice of it. The first slice called computes every sibling's output
    and keeps it for the others, which are called next with the very same input tensor.
    """

    def __init__(self, parts: list[Int8Linear]) -> None:
        super().__init__()
        self.in_features = parts[0].in_features
        self.register_buffer("weight", torch.cat([p.weight for p in parts]).contiguous())
        self.register_buffer("scale", torch.cat([p.scale for p in parts]))
        biases = [p.bias if p.bias is not None else torch.zeros_like(p.scale) for p in parts]
        has_bias = any(p.bias is not None for p in parts)
        self.bias = nn.Parameter(torch.cat(biases), requires_grad=False) if has_bias else None
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def output(self, x: torch.Tensor) -> torch.Tensor:
        if self._last is not None and self._last[0] is x:
            return self._last[1]
        out = int8_matmul(x.reshape(-1, self.in_features).to(self.scale.dtype), self.weight, self.scale)
        if self.bias is not None:
            out = out + self.bias
        out = out.reshape(*x.shape[:-1], -1)
        self._last = (x, out)
        return out


class Int8Slice(nn.Module):
    """One sibling's rows of a FusedInt8."""

    def __init__(self, fused: FusedInt8, start: int, stop: int) -> None:
        super().__init__()
        self.fused = [fused]  # a list: owned by the parent, not registered once per slice
        self.start, self.stop = start, stop
        self.in_features, self.out_features = fused.in_features, stop - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused[0].output(x)[..., self.start : self.stop]


SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _fuse_siblings(model: Any) -> None:
    for parent in list(model.modules()):
        for names in SIBLINGS:
            parts = [getattr(parent, name, None) for name in names]
            if not all(isinstance(part, Int8Linear) for part in parts):
                continue
            fused = FusedInt8(parts)
            parent.register_module("fused_" + names[0].removesuffix("_proj"), fused)
            start = 0
            for name, part in zip(names, parts, strict=True):
                setattr(parent, name, Int8Slice(fused, start, start + part.out_features))
                start += part.out_features


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


def quantize_model(model: Any, dtype: torch.dtype) -> int:
    """Swap every nn.Linear (the output head included) for Int8Linear in place; return the layers swapped.

    With tied input/output embeddings the input table becomes a view of the int8 head, so the
    vocabulary is stored once, in int8.
    """
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear.from_linear(child, dtype))
                swapped += 1
    _fuse_siblings(model)
    if tied:
        head = model.get_output_embeddings()
        embedding = model.get_input_embeddings()
        model.set_input_embeddings(Int8Embedding(head, embedding.padding_idx))
    # What is left (norms, biases, an untied input table) may still view the memory-mapped checkpoint;
    # copies let the mapping go, so the 16-bit file stops counting as resident memory.
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                module._parameters[name] = nn.Parameter(param.detach().clone(), requires_grad=False)
    return swapped


def stored_bytes(model: Any) -> int:
    """Bytes held by the model's parameters and buffers (int8 weights, scales, the rest)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


CACHE_FORMAT = "1"


def cache_path(model_dir: Path, dtype: torch.dtype) -> Path:
    return model_dir / f".localllm-int8-{str(dtype).removeprefix('torch.')}.pt"


def _all_tensors(model: Any) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name, non-persistent buffers (rotary tables) included."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def save_quantized(model: Any, path: Path, source: str) -> None:
    """Keep the quantized model on disk, so the next load maps int8 instead of quantizing again.

    torch.save aligns every tensor to 64 bytes, which the int8 kernel's vector loads need, and
    torch.load(mmap=True) maps the file for exactly as long as the tensors live.
    """
    tensors = {name: t.detach().contiguous() for name, t in _all_tensors(model).items()}
    partial = path.with_name(path.name + ".tmp")
    torch.save({"format": CACHE_FORMAT, "source": source, "tensors": tensors}, partial)
    partial.replace(path)


def load_quantized(model_dir: Path, path: Path, dtype: torch.dtype, source: str, **options: Any) -> Any:
    """The model rebuilt from its int8 file (memory-mapped), or None when the file is missing or stale."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not path.exists():
        return None
    try:
        saved = torch.load(path, mmap=True, weights_only=True)
    except (OSError, RuntimeError, ValueError):  # damaged or from another torch: quantize again
        return None
    if saved.get("format") != CACHE_FORMAT or saved.get("source") != source:
        return None
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **options)
    quantize_model(model, dtype)  # the same module structure, still without data
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
