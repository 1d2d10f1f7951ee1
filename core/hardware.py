"""What this machine has: CPU, RAM, GPUs and free disk (works without a GPU or a CUDA build)."""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil


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
    )


RUNTIME_OVERHEAD_BYTES = 512 * 1024**2


@dataclass(frozen=True)
class MemoryVerdict:
    verdict: str  # "fits_gpu", "fits_ram", "tight", "too_large"
    needed_bytes: int
    available_bytes: int  # on the device the verdict names (GPU memory for fits_gpu, RAM otherwise)


def memory_verdict(weight_bytes: int, info: HardwareInfo) -> MemoryVerdict:
    """Weights as stored (bf16/fp16 safetensors) plus 20 % for activations and KV cache, plus runtime."""
    needed = int(weight_bytes * 1.2) + RUNTIME_OVERHEAD_BYTES
    best_gpu = max(info.gpus, key=lambda g: g.memory_free_bytes, default=None)
    if best_gpu and best_gpu.memory_free_bytes >= needed:
        return MemoryVerdict("fits_gpu", needed, best_gpu.memory_free_bytes)
    if info.ram_available_bytes >= needed:
        return MemoryVerdict("fits_ram", needed, info.ram_available_bytes)
    if info.ram_total_bytes >= needed:
        return MemoryVerdict("tight", needed, info.ram_available_bytes)
    return MemoryVerdict("too_large", needed, info.ram_available_bytes)


def weight_count(model_dir: Path) -> int:
    """Parameters in the safetensors files, read from their headers (no weights are loaded)."""
    import json
    import struct

    total = 0
    for path in model_dir.glob("*.safetensors"):
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, tensor in header.items():
            if name != "__metadata__":
                count = 1
                for dim in tensor["shape"]:
                    count *= dim
                total += count
    return total


def kv_cache_bytes(config: dict, context_tokens: int, dtype_bytes: int) -> int:
    """Keys and values for every layer over `context_tokens` positions."""
    layers = int(config.get("num_hidden_layers", 0))
    heads = int(config.get("num_attention_heads", 1))
    kv_heads = int(config.get("num_key_value_heads", heads))
    head_dim = int(config.get("head_dim") or config.get("hidden_size", 0) // max(heads, 1))
    return 2 * layers * kv_heads * head_dim * context_tokens * dtype_bytes


def load_memory_needed(model_dir: Path, dtype_bytes: int, context_tokens: int) -> int:
    """Memory a loaded model needs: weights at the engine's dtype, KV cache, runtime overhead."""
    import json

    config = json.loads((model_dir / "config.json").read_text())
    weights = weight_count(model_dir) * dtype_bytes
    return weights + kv_cache_bytes(config, context_tokens, dtype_bytes) + RUNTIME_OVERHEAD_BYTES
