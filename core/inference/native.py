"""The engine's own CPU kernels (native.cpp): decoding's int4 and int8 matmuls, VNNI byte dot products.

torch's int4 kernel widens every weight to float32 before multiplying, so on a small CPU it is
compute-bound: ~20 GB/s of weights on the 2-core AMD EPYC where llama.cpp's Q4_K x Q8_K dot products
read ~30, and each row of a batch adds ~25 % to a step. `int4_rows` reads torch's own int4 layout (no
second copy of the weights) and meets 8-bit activations (a scale a group of 32 inputs, as llama.cpp's
Q8_0) in byte dot products: memory-bound, and a step for four rows costs ~1.2 of a step for one.
`int8_rows` does the same for int8 weights with the rows exact to 15 bits (two bytes a value), or, for
the output head, in 8 bits where a row's largest value is within 12 × its RMS (prompts' rule, PROMPT_PEAK:
at three rows the head's VNNI instructions, not its bytes, bound it), so the head needs no packed oneDNN
copy. `decode_layer` runs a whole decoder layer for a decoding step in
one call (native_layer.cpp): the ~35 small operations between a layer's matmuls cost ~4 ms of a step
when Python dispatched them one by one. `fit_groups` (native_fit.cpp) fits int4 groups for a first load's
quantizing, 16 groups at once in registers where torch's fit made ~90 passes over temporaries.

They are compiled for this machine with the C++ compiler beside torch's headers (~10 s, once: the
library is kept under torch's extension folder, keyed by the source and torch's version) on a thread of
its own when first asked for; until it is there, on CPUs without AVX512-VNNI and AVX512-VBMI, without a
compiler, or with LOCALLLM_NATIVE=0, torch's kernels run as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

SOURCES = tuple(
    Path(__file__).with_name(name) for name in ("native.cpp", "native_layer.cpp", "native_fit.cpp")
)
HEADER = Path(__file__).with_name("native.h")
BUILD_TIMEOUT_S = 600
logger = logging.getLogger(__name__)


class _Library:
    """native.cpp's library in this process: loaded, being built, or unavailable (and why)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loaded = False
        self.started = False  # a load or build was tried (or is under way)
        self.settled = threading.Event()  # set once loaded, or known not to be
        self.problem = ""

    def ready(self) -> bool:
        """Whether torch.ops.localllm runs here; the first call loads the kept library or starts its build."""
        if self.loaded or self.started:
            return self.loaded
        with self.lock:
            if self.started:
                return self.loaded
            self.started = True
            if os.environ.get("LOCALLLM_NATIVE", "1") == "0":
                self.problem = "LOCALLLM_NATIVE=0"
                self.settled.set()
            elif library_path().exists():
                self._load()
            else:
                threading.Thread(target=self._build, name="localllm-native-build", daemon=True).start()
        return self.loaded

    def prepare(self, timeout_s: float = BUILD_TIMEOUT_S) -> bool:
        """`ready`, once a build under way has ended (built, or not)."""
        self.ready()
        self.settled.wait(timeout_s)
        return self.loaded

    def _build(self) -> None:
        try:
            build(library_path())
        except (OSError, subprocess.SubprocessError) as exc:
            self.problem = f"not built: {_first_line(exc)}"
            logger.info("torch's kernels run: native.cpp %s", self.problem)
            self.settled.set()
            return
        with self.lock:
            self._load()

    def _load(self) -> None:
        try:
            torch.ops.load_library(str(library_path()))
            works = bool(torch.ops.localllm.supported())
        except (OSError, RuntimeError) as exc:
            self.problem = f"not loaded: {_first_line(exc)}"
        else:
            self.problem = "" if works else "this CPU lacks AVX512-VNNI or AVX512-VBMI"
            self.loaded = works
        self.settled.set()
        logger.info(
            "decoding kernels: %s", "the engine's own (VNNI)" if self.loaded else f"torch's ({self.problem})"
        )


LIBRARY = _Library()


def ready() -> bool:
    """Whether the kernels run on this machine now (the first call loads them or starts building them)."""
    return LIBRARY.ready()


def prepare() -> bool:
    """Whether the kernels run on this machine, building them first if need be (~10 s, once)."""
    return LIBRARY.prepare()


def int4_rows(
    rows: torch.Tensor, packed: torch.Tensor, codes: torch.Tensor, units: torch.Tensor
) -> torch.Tensor:
    """rows (n x in, contiguous) times int4 weights (codes in torch's CPU layout, scale and offset codes and
    their units: quantize.code_scales), the rows in 8 bits a group of 32: n x out in the rows' dtype."""
    return torch.ops.localllm.int4_rows(rows, packed, codes, units)


def best_scores(scores: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `count` best of each row of scores (rows x vocabulary, contiguous float32) and their ids, best
    first, equal ones by id: torch.topk's scores, in one read of each row."""
    return torch.ops.localllm.best_scores(scores, count)


def fit_groups(
    groups: torch.Tensor, levels: int, stretches: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each group's scale and offset as quantize.fit_groups fits them (groups: n x 32, contiguous float32;
    stretches: float32), 16 groups at once in registers."""
    return torch.ops.localllm.fit_groups(groups, levels, stretches)


def quantize_int4(
    weight: torch.Tensor, stretches: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """quantize.quantize_groups' (packed codes, scale codes, units) for float32 weights (outputs a multiple
    of 64): each output's super-block of 16 groups fitted, coded, fitted again and rounded in registers."""
    return torch.ops.localllm.quantize_int4(weight, stretches)


def int8_rows(
    rows: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    weight_sums: torch.Tensor,
    tame_peak: float = 0.0,
) -> torch.Tensor:
    """rows (n x in, contiguous; in a multiple of 64) times int8 weights (out x in) with a scale a row,
    each row exact to 15 bits of its largest (two bytes a value), or, `tame_peak` given, in 8 bits where
    its largest is within `tame_peak` × its RMS (quantize.PROMPT_PEAK's rule); `weight_sums` the weights'
    int32 row sums: n x out in the rows' dtype."""
    return torch.ops.localllm.int8_rows(rows, weight, scale, weight_sums, tame_peak)


@dataclass(frozen=True)
class LayerWeights:
    """A decoder layer as `decode_layer` takes it: the norms' weights, each projection's
    `QuantizedLinear.native_parts`, and Qwen3's per-head q and k norms (heads + KV heads rows), if any."""

    input_norm: torch.Tensor
    qkv: list[torch.Tensor]
    output: list[torch.Tensor]
    post_norm: torch.Tensor
    gate_up: list[torch.Tensor]
    down: list[torch.Tensor]
    qk_norm: torch.Tensor | None


def decode_layer(
    x: torch.Tensor,
    weights: LayerWeights,
    rotary: tuple[torch.Tensor, torch.Tensor],
    caches: tuple[list[torch.Tensor], list[torch.Tensor]],
    layer: int,
    segments: tuple[list[int], list[int]],
    heads: int,
    eps: float,
) -> torch.Tensor:
    """One decoder layer for rows x (tokens x hidden) of some sequences (native_layer.cpp): `segments` each
    one's first position and count of tokens (its rows, one sequence after the other), whose keys and
    values go into its cache (`caches`: each one's keys and values, layers x KV heads x capacity x
    head_dim); each token attends its cache up to itself; `rotary` their cos and sin (tokens x head_dim).
    The new x."""
    w = weights
    return torch.ops.localllm.decode_layer(
        x, w.input_norm, w.qkv, w.output, w.post_norm, w.gate_up, w.down, w.qk_norm, *rotary, *caches,
        layer, *segments, heads, eps,
    )  # fmt: skip


def library_path() -> Path:
    """Where the library for this source, torch version and C++ ABI is kept."""
    key = (
        b"".join(path.read_bytes() for path in (*SOURCES, HEADER))
        + f"{torch.__version__} {torch._C._GLIBCXX_USE_CXX11_ABI}".encode()
    )
    return _build_root() / "localllm" / f"native-{hashlib.sha256(key).hexdigest()[:16]}.so"


def _build_root() -> Path:
    """torch's folder for extensions built on this machine (cpp_extension's, without importing it)."""
    if root := os.environ.get("LOCALLLM_NATIVE_DIR") or os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions"


def build(path: Path) -> None:
    """Compile native.cpp into `path`: under another name first, so that a process building at the same
    time, or killed halfway, never leaves half a library where another would load it."""
    from torch.utils import cpp_extension

    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(descriptor)
    library_dir = cpp_extension.library_paths()[0]
    command = [
        os.environ.get("CXX", "c++"), "-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        *(f"-isystem{include}" for include in cpp_extension.include_paths()),
        *map(str, SOURCES), "-o", temporary,
        f"-L{library_dir}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{library_dir}",
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        return next((line for line in (exc.stderr or "").splitlines() if "error" in line), str(exc))[:300]
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


if __name__ == "__main__":  # `python -m core.inference.native`: build ahead (make run and make test do)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepare()
