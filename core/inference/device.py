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


def prepare_attention(device: str) -> None:
    """Process-wide attention settings before a model runs on `device`. On CUDA: no cuDNN attention.

    torch's CUDA 13 builds try cuDNN's SDPA first on sm 9.x and 10.x (H100/H200, B200; cuDNN > 9.15:
    `check_prefer_cudnn_attention` in torch's sdp_utils.cpp), and cuDNN builds an execution plan for
    every new shape, ~0.4 s each (FunASR#3704, sglang#4650). A prompt attends shapes a server has not
    seen, and a reply decoding alone without its CUDA graph attends one key more each step: on an H200
    (12-04) every user of a round waited 0.7-1.0 s for the first text at times, and the eager step for
    one reply took 46 ms against 8 ms for two. Flash and memory-efficient attention build nothing."""
    if device == "cuda":
        import torch

        torch.backends.cuda.enable_cudnn_sdp(False)


def available_memory(device: str) -> int:
    """Bytes free on the device a model would load on."""
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0]
    return psutil.virtual_memory().available
