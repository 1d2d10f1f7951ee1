"""What is measured once on this machine and kept beside its models: from how many prompt rows an int4
matrix is better unpacked for the bf16 GEMM than run through torch's int4 kernel
(`measure_int4_prompt_rows`: ~55 rows on an Intel Xeon with AMX, ~96 on an AMD EPYC). Kept
only when two measurements agree (within 16 rows): on a busy machine the default is used and the next
load measures again.

Kept, not measured at every start: a prompt near the crossing would otherwise take either path from one
start to the next, and the two paths' products differ in their last bits (a seeded reply could change).
Keyed by the CPU and torch's version, so another machine sharing the folder, or an update, measures
again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from core.hardware import cpu_name
from core.inference import quantize

FILE = ".localllm-calibration.json"
MAX_FILE_BYTES = 64 * 1024  # a handful of machines' figures: anything larger is not ours
CALIBRATION_ROWS = 48  # measure_int4_prompt_rows: prompts this long and twice as long, both paths


def int4_prompt_rows(models_dir: Path) -> int:
    """This machine's prompt rows for unpacking int4 weights: kept in `models_dir`, else measured once."""
    key = f"{cpu_name()} · torch {torch.__version__}"
    path = models_dir / FILE
    kept = _read(path)
    rows = kept.get(key)
    if isinstance(rows, int) and 16 <= rows <= 256:
        return rows
    first, second = measure_int4_prompt_rows(), measure_int4_prompt_rows()
    if first is None or second is None or abs(first - second) > 16:
        return quantize.INT4_PROMPT_ROWS  # a busy machine: nothing kept, measured at the next load
    rows = max(first, second)  # of two neighbours, the one nearer the kernel (the path before this)
    with contextlib.suppress(OSError):  # a read-only folder: measured again at the next load
        temporary = path.with_name(FILE + ".tmp")
        temporary.write_text(json.dumps({**kept, key: rows}, indent=1))
        os.replace(temporary, path)
    return rows


def measure_int4_prompt_rows(repeats: int = 5) -> int | None:
    """The prompt rows from which unpacking int4 weights for the bf16 GEMM beats torch's int4 kernel on
    this CPU, rounded up to a multiple of 16 (~0.15 s); None when the timings cannot tell (a busy
    machine). Both paths are timed at CALIBRATION_ROWS and twice that (the fastest of `repeats`: others'
    work only adds time); each is taken as a line (the kernel's time grows with the rows, the
    unpacking's hardly) and the rows where the lines cross are the answer, if within 16-256."""
    codes = torch.randint(0, 16, (2048, 2048), dtype=torch.int32)  # any weights: only the time counts
    groups = 2048 // quantize.INT4_GROUP
    scale_codes = torch.randint(0, 256, (groups, 2, 2048), dtype=torch.uint8)
    units = torch.rand(quantize.super_blocks(groups), 2, 2048)
    packed = torch._convert_weight_to_int4pack_for_cpu(codes, 2)
    layer = quantize.Int4Linear(packed, scale_codes, units, 2048, None, torch.bfloat16)
    if not layer.unpackable(torch.bfloat16):
        return quantize.INT4_PROMPT_ROWS
    few, more = CALIBRATION_ROWS, 2 * CALIBRATION_ROWS
    warm_up = torch.randn(few, 2048, dtype=torch.bfloat16)
    layer.kernel_product(warm_up), layer.unpacked_product(warm_up)  # first calls set their kernels up
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(repeats):  # alternating: both paths see the same moments of a busy machine
        for count in (few, more):
            rows = torch.randn(count, 2048, dtype=torch.bfloat16)
            for path, product in (("kernel", layer.kernel_product), ("unpacked", layer.unpacked_product)):
                times.setdefault((path, count), []).append(_seconds(product, rows))
    kernel_few, kernel_more, unpacked_few, unpacked_more = (
        min(times[path, count]) for path in ("kernel", "unpacked") for count in (few, more)
    )
    kernel_per_row = (kernel_more - kernel_few) / (more - few)
    unpacked_per_row = max(0.0, (unpacked_more - unpacked_few) / (more - few))
    if kernel_per_row <= unpacked_per_row:  # the kernel did not grow with the rows: timings disturbed
        return None
    crossing = few + (unpacked_few - kernel_few) / (kernel_per_row - unpacked_per_row)
    return math.ceil(crossing / 16) * 16 if 16 <= crossing <= 256 else None


def _seconds(product: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor) -> float:
    started = time.perf_counter()
    product(rows)
    return time.perf_counter() - started


def _read(path: Path) -> dict[str, object]:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return {}
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return kept if isinstance(kept, dict) else {}
