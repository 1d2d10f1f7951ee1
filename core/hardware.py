"""What this machine has: CPU, RAM, GPUs and free disk (works without a GPU or a CUDA build)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import os
import platform
import shutil
import sys
from collections.abc import Callable
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
    versions: tuple[tuple[str, str], ...] = ()  # (name, version): Python, torch, transformers, CUDA if built


def cpu_name() -> str:
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
    if torch.version.cuda:  # absent: a CPU-only torch build (the UI says so in its language)
        found.append(("CUDA", torch.version.cuda))
    return tuple(found)


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def probe(models_dir: Path, devices: bool = True) -> HardwareInfo:
    """This machine now; without `devices`, no GPU and no versions (they import torch: seconds on a
    page's first visit while the engine's thread imports it too)."""
    memory = psutil.virtual_memory()
    gpus, mps = _gpus() if devices else ((), False)
    disk_path = _existing_parent(models_dir)
    return HardwareInfo(
        cpu_name=cpu_name(),
        physical_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        logical_cores=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        ram_total_bytes=memory.total,
        ram_available_bytes=memory.available,
        swap_total_bytes=psutil.swap_memory().total,
        gpus=gpus,
        mps_available=mps,
        disk_free_bytes=shutil.disk_usage(disk_path).free,
        disk_path=str(disk_path),
        versions=_versions() if devices else (),
    )


def measure_bandwidth(megabytes: int = 256, repeats: int = 3) -> float:
    """Read bandwidth in bytes/s: the best of a few sums (torch's threads) over a tensor far larger
    than the caches, read as decoding reads its weights.

    A copy (what this measured before 2026-12-04) also writes every byte it reads: on a 2-core AMD EPYC
    it gave 21-24 GB/s where reads alone reach 33-38, and the engine decoded above its "bound".
    """
    import time

    import torch

    source = torch.zeros(megabytes * 1024**2 // 4, dtype=torch.float32)  # written: real pages, not zero pages
    source.sum()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        source.sum()
        best = min(best, time.perf_counter() - started)
    return source.numel() * source.element_size() / best


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


def return_freed_memory_to_os() -> None:
    """glibc keeps freed heap memory for reuse; malloc_trim hands it back so RSS really drops."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache  # loaded once: the engine trims after every reply
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    with contextlib.suppress(OSError, AttributeError):  # another libc (musl): nothing to trim
        return ctypes.CDLL("libc.so.6").malloc_trim
    return None


@functools.cache  # once a process: what is alive then lives as long as the process
def keep_out_of_collections() -> None:
    """Move every object alive now (the imported modules: 250,000-350,000 with torch, and Streamlit or
    the API server) to the collector's permanent generation, once the imports are done and before a
    model loads. A full collection walked them with the GIL held for ~250 ms, a stall of every
    streaming reply: Streamlit runs one after every script run (each page poll), the automatic
    collector now and then. Frozen objects are still freed when their last reference goes; those in
    reference cycles stay (a one-time amount, from startup)."""
    gc.collect()
    gc.freeze()
