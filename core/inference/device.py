"""Where a model runs and in which dtype: CUDA, then Apple MPS, then the CPU; what memory is free there."""

from __future__ import annotations

from typing import Any

import psutil


def detect_device(preference: str = "auto") -> str:
    """CUDA, then Apple MPS, then CPU; an explicit preference is used when that device exists."""
    import torch

    available = {
        "cuda": torch.cuda.is_available(),
        "mps": bool(torch.backends.mps.is_available()),
        "cpu": True,
    }
    if preference != "auto" and available.get(preference):
        return preference
    return next(device for device in ("cuda", "mps", "cpu") if available[device])


def choose_dtype(device: str) -> Any:
    """The fastest dtype that keeps quality: bf16 where the hardware computes it natively, else fp16/fp32."""
    import torch

    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    native_bf16 = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    return torch.bfloat16 if native_bf16 else torch.float32


def available_memory(device: str) -> int:
    """Bytes free on the device a model would load on."""
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0]
    return psutil.virtual_memory().available
