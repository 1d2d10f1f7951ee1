"""What this machine has: CPU, RAM, GPUs and free disk (works without a GPU or a CUDA build)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from core.errors import UnsupportedModelError


@dataclass(frozen=True)
class GpuInfo:
    name: str
    memory_total_bytes: int
    memory_free_bytes: int


@dataclass(frozen=True)
class HardwareInfo:
    cpu_name: str
    physical_cores: int
    logical_cores: int
    ram_total_bytes: int
    ram_available_bytes: int
    swap_total_bytes: int
    gpus: tuple[GpuInfo, ...]
    mps_available: bool
    disk_free_bytes: int
    disk_path: str
    versions: tuple[tuple[str, str], ...] = ()  # (name, version): Python, torch, transformers, CUDA


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> tuple[tuple[GpuInfo, ...], bool]:
    import torch  # deferred: importing torch costs seconds

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            gpus.append(GpuInfo(torch.cuda.get_device_name(index), total, free))
    return tuple(gpus), bool(torch.backends.mps.is_available())


def _versions() -> tuple[tuple[str, str], ...]:
    import torch
    import transformers

    found = [
        ("Python", platform.python_version()),
        ("torch", torch.__version__),
        ("transformers", transformers.__version__),
    ]
    found.append(("CUDA", torch.version.cuda or "not in this torch build"))
    return tuple(found)


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def probe(models_dir: Path) -> HardwareInfo:
    memory = psutil.virtual_memory()
    gpus, mps = _gpus()
    disk_path = _existing_parent(models_dir)
    return HardwareInfo(
        cpu_name=_cpu_name(),
        physical_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        logical_cores=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        ram_total_bytes=memory.total,
        ram_available_bytes=memory.available,
        swap_total_bytes=psutil.swap_memory().total,
        gpus=gpus,
        mps_available=mps,
        disk_free_bytes=shutil.disk_usage(disk_path).free,
        disk_path=str(disk_path),
        versions=_versions(),
    )


MAX_CONFIG_COUNT = 2**40  # no layer count, width or vocabulary of a real model comes near this


def config_count(config: dict, name: str, default: int = 0) -> int:
    """A count from a model's config.json (a file a server chose): a non-negative integer, or the
    default when absent; anything else is refused with a sentence."""
    value = config.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CONFIG_COUNT:
        raise UnsupportedModelError(
            f"config.json gives {name} as {str(value)[:40]!r}, which is not a count this app can use.",
            field=name,
        )
    return value


def read_config(model_dir: Path) -> dict:
    """A downloaded model's config.json as a dict, or a sentence when it is not a JSON object."""
    import json

    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except OSError as exc:
        raise UnsupportedModelError(
            f"{model_dir.name} has no readable config.json ({exc.strerror})."
        ) from exc
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise UnsupportedModelError(f"The config.json of {model_dir.name} is not a valid JSON object.")
    return config


# torch + transformers loaded in a process: about 345 MiB of resident memory measured on CPU here.
RUNTIME_OVERHEAD_BYTES = 400 * 1024**2
CONTEXT_FOR_ESTIMATES = 4096  # tokens of KV cache planned for: a long chat, not the model's maximum


@dataclass(frozen=True)
class KvLayout:
    """What the KV cache size depends on."""

    layers: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: dict) -> KvLayout:
        heads = config_count(config, "num_attention_heads", 1)
        head_dim = config_count(config, "head_dim") or config_count(config, "hidden_size") // max(heads, 1)
        return cls(
            config_count(config, "num_hidden_layers"),
            config_count(config, "num_key_value_heads", heads),
            head_dim,
        )

    def bytes_for(self, tokens: int, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * tokens * dtype_bytes


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

    weight_bytes: float  # 1 for int8, 0.625 for int4 with its group scales and zeros
    head_bytes: float  # the output head: int8 (1) whenever the layers are quantized
    dtype_bytes: int
    label: str  # shown to users: "int8", "bfloat16", "float32", ...


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    kv_cache_bytes: int
    runtime_bytes: int
    read_per_token_bytes: int  # weights read to decode one token: all but an untied input table

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.runtime_bytes

    @property
    def after_load_bytes(self) -> int:
        """Resident right after loading: the KV cache grows only while a reply is generated."""
        return self.weights_bytes + self.runtime_bytes


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
    read = layers * precision.weight_bytes + vocabulary.weights * precision.head_bytes
    return MemoryEstimate(
        int(read + input_table * precision.dtype_bytes),
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
    from core.model_store import read_safetensors_header

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


def measure_bandwidth(megabytes: int = 256, repeats: int = 3) -> float:
    """Read bandwidth in bytes/s: the best of a few copies of a tensor far larger than the caches.

    Only the bytes read are counted: decoding reads the weights and writes little.
    """
    import time

    import torch

    source = torch.empty(megabytes * 1024**2, dtype=torch.uint8)
    target = torch.empty_like(source)
    target.copy_(source)  # touch the pages first
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - started)
    return source.numel() / best


def peak_rss_bytes() -> int:
    """The most resident memory this process has used so far (the kernel's own high-water mark)."""
    status = Path("/proc/self/status")
    if status.exists():  # Linux: VmHWM starts afresh at exec (getrusage's maximum is inherited)
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    try:
        import resource
    except ImportError:  # Windows
        return int(getattr(psutil.Process().memory_info(), "peak_wset", 0))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS


CPU_DECODE_EFFICIENCY = 0.65  # decode speed / the bound: the lower of the catalog models' in bench/speed.py


def decode_tokens_per_s_bound(estimate: MemoryEstimate, bandwidth_bytes_per_s: float) -> float:
    """Each new token reads every weight once: bandwidth / bytes read per token bounds decode speed."""
    read = estimate.read_per_token_bytes
    return bandwidth_bytes_per_s / read if read else 0.0


def return_freed_memory_to_os() -> None:
    """glibc keeps freed heap memory for reuse; malloc_trim hands it back so RSS really drops."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # another libc (musl): nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)
