"""What is measured once on this machine and kept beside its models: from how many prompt rows an int4
matrix is better unpacked for the bf16 GEMM than run through torch's int4 kernel
(`quantize.measure_int4_prompt_rows`: ~55 rows on an Intel Xeon with AMX, ~96 on an AMD EPYC). Kept
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
import os
from pathlib import Path

import torch

from core.hardware import cpu_name
from core.inference import quantize

FILE = ".localllm-calibration.json"
MAX_FILE_BYTES = 64 * 1024  # a handful of machines' figures: anything larger is not ours


def int4_prompt_rows(models_dir: Path) -> int:
    """This machine's prompt rows for unpacking int4 weights: kept in `models_dir`, else measured once."""
    key = f"{cpu_name()} · torch {torch.__version__}"
    path = models_dir / FILE
    kept = _read(path)
    rows = kept.get(key)
    if isinstance(rows, int) and 16 <= rows <= 256:
        return rows
    first, second = quantize.measure_int4_prompt_rows(), quantize.measure_int4_prompt_rows()
    if first is None or second is None or abs(first - second) > 16:
        return quantize.INT4_PROMPT_ROWS  # a busy machine: nothing kept, measured at the next load
    rows = max(first, second)  # of two neighbours, the one nearer the kernel (the path before this)
    with contextlib.suppress(OSError):  # a read-only folder: measured again at the next load
        temporary = path.with_name(FILE + ".tmp")
        temporary.write_text(json.dumps({**kept, key: rows}, indent=1))
        os.replace(temporary, path)
    return rows


def _read(path: Path) -> dict[str, object]:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return {}
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return kept if isinstance(kept, dict) else {}
