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
