"""The local engine: the models loaded in this process (up to the setting, as memory holds; the least
recently used makes room), shared by every caller; a model's replies generated together (continuous
batching, up to the parallel setting and what memory holds), beside those of the other loaded models
(each batch a step in turn) and of a model whose load is quick (its int4 copy kept), the rest waiting
in FIFO order; each model unloaded on demand or when idle.

All torch work (imports, loading, quantizing, generating, the bandwidth measurement) runs on one
long-lived thread, the engine's torch thread: OpenMP keeps a thread team per calling thread, and a
second team beside an idle first one cost a fifth of the decode speed on a 2-core machine (42 → 33
tokens/s). Readers iterate `stream()` on their own threads.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from core.errors import InsufficientMemoryError, LocalLLMError, ModelNotReadyError
from core.hardware import measure_bandwidth, return_freed_memory_to_os
from core.hub.store import model_dir, read_config, read_manifest
from core.inference import prompts
from core.inference.device import available_memory, choose_dtype, detect_device
from core.inference.embedding import embed_ids
from core.inference.events import Event, Finished, PromptFit, ReplyStats
from core.inference.formats import ReplyFormat
from core.inference.generation import stream_reply
from core.inference.loading import (
    LoadedModel,
    LoadedParts,
    context_length,
    import_ahead,
    kernel_available,
    load_model,
    load_tokenizer,
    publisher_params,
)
from core.inference.params import GenerationParams, LogitBias
from core.inference.prompts import Prompt
from core.inference.scoring import TextScore, score_text
from core.inference.sizing import (
    CONTEXT_FOR_ESTIMATES,
    MemoryEstimate,
    Precision,
    cpu_decode_efficiency,
    model_memory,
    replies_that_fit,
)
from core.inference.turns import TurnQueue
from core.preferences import MAX_PARALLEL, Preferences

if TYPE_CHECKING:
    from core.inference.batching import Batcher

T = TypeVar("T")
GIB = 1024**3
# The bandwidth read while the app starts (pages and a browser loading beside it) can be half the
# machine's: it is read again while the engine is idle, a few times, far enough apart, and the best kept.
BANDWIDTH_READINGS = 3
BANDWIDTH_READING_GAP_S = 20.0
# Keeping a model's int4 weights unpacked for prompts (`_keep_prompt_weights`) is worth its memory from
# this many bytes of copy on: below it, unpacking at each prompt costs a few milliseconds.
KEEP_UNPACKED_MIN_BYTES = 64 * 2**20
logger = logging.getLogger(__name__)


def native_loaded() -> bool:
    """Whether the engine's own CPU kernels are loaded in this process (core.inference.native), asked
    from any thread: the module is imported on the torch thread, never here."""
    native = sys.modules.get("core.inference.native")
    return bool(native and native.LIBRARY.loaded)


@dataclass(eq=False)
class Resident:
    """A loaded model and what the engine keeps beside it."""

    parts: LoadedParts
    batcher: Batcher | None  # None: transformers' generate, one reply at a time
    memory_fit: int  # replies whose KV caches fit beside the model (measured as it loaded)
    to_keep: list[Any] | None = None  # layers still to keep unpacked (int4) or in oneDNN's layout
    copy_bytes: int = 0  # the unpacked copy for prompts, kept or planned
    last_used: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> str:
        return self.parts.info.key

    def touch(self) -> None:
        """Used now (the idle clock and the least-recently-used order start again)."""
        self.last_used = time.monotonic()

    @property
    def held_bytes(self) -> int:
        """The memory it holds: its weights as loaded and its prompt copy."""
        return self.parts.info.memory_bytes + self.copy_bytes


class LocalEngine:
    """The loaded models, shared by every caller; replies batched, the rest in FIFO order."""

    def __init__(
        self,
        models_dir: Path,
        *,
        device: str = "auto",
        quantization: str = "int4",
        idle_unload_s: float = 900.0,
        max_waiting: int = 4,
        parallel: int = 4,
        max_loaded: int = 3,
        context_setting: Callable[[str], int] = lambda _key: CONTEXT_FOR_ESTIMATES,
        keep_prompt_weights: bool = True,
    ) -> None:
        """`parallel`: replies generated together at most; `max_loaded`: models kept loaded at most (a
        switch back to one finds it loaded); `context_setting(key)`: the context length chosen for a
        model (clamped to its window); `keep_prompt_weights`: keep int4 weights unpacked between replies
        where memory allows (not for a process that ends after its replies)."""
        self.models_dir = models_dir
        self.device_preference = device
        self.quantization = quantization
        self.idle_unload_s = idle_unload_s
        self.context_setting = context_setting
        self._parallel = parallel
        self._max_loaded = max_loaded
        self.keep_prompt_weights = keep_prompt_weights
        # A loaded model's replies run beside another's (their batches in turn), as do those of a model
        # whose load is quick; one to quantize waits.
        self._turns = TurnQueue(max_waiting, beside=self._may_start_beside)
        self._load_lock = threading.Lock()
        self._warm_lock = threading.Lock()
        self._warm_asked: set[str] = set()  # `warm` loads each model once per engine at most
        # Replaced, never changed in place (under the load lock): read from any thread without a lock.
        self._residents: tuple[Resident, ...] = ()
        self._loading: str | None = None  # the model a load is under way for
        self._tokenizer_only: tuple[str, Any] | None = None  # (key, tokenizer) of a model not loaded
        self._load_ids = itertools.count(1)
        self._kept_for: dict[str, float] = {}  # clients' keep-alive for models (Ollama's), until unloaded
        self._idle_thread: threading.Thread | None = None
        self._torch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-torch")
        self._kernels: dict[str, Future[bool]] = {}
        self._bandwidths: list[Future[float]] = []
        self._bandwidth_asked_at = 0.0  # when the latest reading was asked for (monotonic seconds)

    @classmethod
    def from_preferences(cls, preferences: Preferences, **options: Any) -> LocalEngine:
        """The engine as the saved settings ask (models folder, device, CPU weights, idle unload);
        `options` override them for this engine only (a CLI flag)."""
        settings = {
            "device": preferences.get("device"),
            "quantization": preferences.get("quantization"),
            "idle_unload_s": preferences.get("idle_unload_s"),
            "parallel": preferences.get("parallel_replies"),
            "max_loaded": preferences.get("loaded_models"),
            "keep_prompt_weights": preferences.get("prompt_copy"),
            "context_setting": preferences.context_for,
        }
        return cls(preferences.get("models_dir"), **{**settings, **options})

    def prepare(self) -> Future[None]:
        """Ahead of the first load, on the torch thread: import transformers' tokenizers and configs
        (about 1 s, paid while the user looks at the page, not after a click), check the quantized
        kernel and measure the memory bandwidth (about a second), so that pages never wait behind a reply."""
        self._kernel(self.quantization, wait=False)
        imported = self._torch.submit(import_ahead)
        self._read_bandwidth()  # last: the pages' own work comes first
        return imported

    def decode_efficiency(self) -> float:
        """Decode speed / its bandwidth bound on this CPU (sizing.cpu_decode_efficiency): with the
        engine's own kernels where the layers run on them (loaded, and bf16 activations for int4)."""
        return cpu_decode_efficiency(self.precision())

    def _read_bandwidth(self) -> None:
        self._bandwidth_asked_at = time.monotonic()
        self._bandwidths.append(self._torch.submit(measure_bandwidth))

    def memory_bandwidth(self, wait: bool = True) -> float | None:
        """Read bandwidth in bytes/s: the best reading so far, taken on the torch thread (read again
        while idle, BANDWIDTH_READINGS times at most); None while none is done (without `wait`)."""
        readings = self._bandwidths
        again = (
            len(readings) < BANDWIDTH_READINGS
            and all(reading.done() for reading in readings)
            and time.monotonic() - self._bandwidth_asked_at >= BANDWIDTH_READING_GAP_S
            and self._turns.idle
            and not self._load_lock.locked()
        )
        if not readings or again:
            self._read_bandwidth()
        done = [reading.result() for reading in readings if reading.done()]
        if not done and wait:
            done = [readings[0].result()]
        return max(done) if done else None

    def on_torch_thread(self, work: Callable[[], T]) -> T:
        """Run `work` on the engine's torch thread and return its result (its exception is raised here)."""
        if threading.current_thread().name.startswith("engine-torch"):
            return work()
        return self._torch.submit(work).result()

    # -- loading --------------------------------------------------------------------------------
    def _resident(self, key: str) -> Resident | None:
        return next((resident for resident in self._residents if resident.key == key), None)

    def _by_use(self) -> list[Resident]:
        """The loaded models, the one used last first."""
        return sorted(self._residents, key=lambda resident: resident.last_used, reverse=True)

    @property
    def loaded(self) -> LoadedModel | None:
        """The loaded model used last (`loaded_models`: all of them), else None."""
        residents = self._by_use()
        return residents[0].parts.info if residents else None

    @property
    def loaded_models(self) -> tuple[LoadedModel, ...]:
        """The loaded models, the one used last first."""
        return tuple(resident.parts.info for resident in self._by_use())

    def parts_of(self, key: str) -> LoadedParts | None:
        """`key`'s model, tokenizer and decoder while it is loaded, else None."""
        resident = self._resident(key)
        return resident.parts if resident else None

    @property
    def loading(self) -> str | None:
        """The model a load is under way for (the page's own, a reply's or a command's), else None."""
        return self._loading

    def runs_on(self) -> str:
        """The device a model would run on now: the setting's where it exists, else the best found."""
        return detect_device(self.device_preference)

    def precision(self) -> Precision:
        """How a model would be stored: int4 weights on the CPU (unless set otherwise), else the dtype."""
        from core.inference.quantize import BYTES_PER_WEIGHT, TORCH_SCALES_BYTES

        device = self.runs_on()
        dtype = choose_dtype(device)
        scheme = self.quantization
        if device == "cpu" and scheme in BYTES_PER_WEIGHT and self._kernel(scheme):
            # the head, and what int4 keeps int8 (sizing.KvLayout.int4_keeps_int8)
            int8 = BYTES_PER_WEIGHT["int8"]
            # the head packed for oneDNN too where the engine's own kernels are not loaded, and int4
            # scales in torch's layout where its int4 kernel multiplies: there, and for activations other
            # than bf16 (Int4Linear.native_runs)
            packed = not native_loaded()
            torch_int4 = scheme == "int4" and (packed or str(dtype) != "torch.bfloat16")
            layers = BYTES_PER_WEIGHT[scheme] + (TORCH_SCALES_BYTES if torch_int4 else 0)
            own = not (packed or torch_int4)
            return Precision(
                layers, int8, dtype.itemsize, scheme, int8, packed_head=packed, engine_kernels=own
            )
        label = str(dtype).removeprefix("torch.")
        return Precision(dtype.itemsize, dtype.itemsize, dtype.itemsize, label)

    def _kernel(self, scheme: str, wait: bool = True) -> bool:
        """Whether the CPU kernel of a quantization scheme runs here: checked once, on the torch thread."""
        if scheme == "none":
            return False
        if scheme not in self._kernels:
            self._kernels[scheme] = self._torch.submit(kernel_available, scheme)
        return self._kernels[scheme].result() if wait else False

    def memory_estimate(self, key: str) -> MemoryEstimate:
        """The memory a model needs here: weights at the precision, one KV cache at its context length."""
        return model_memory(self._ready_dir(key), self.precision(), self.context_tokens(key))

    def at_once(self, key: str) -> int | None:
        """Replies of `key`'s model that run together now: the setting, fewer where their caches do not
        fit beside it, one with transformers' generate; None while it is not loaded."""
        return self._turns.capacity(key) if self._resident(key) else None

    @property
    def parallel(self) -> int:
        """Replies generated together at most (the setting)."""
        return self._parallel

    @parallel.setter
    def parallel(self, replies: int) -> None:
        self._parallel = replies
        for resident in self._residents:
            if resident.batcher is not None:
                self._turns.set_capacity(resident.key, min(replies, resident.memory_fit))

    @property
    def max_loaded(self) -> int:
        """Models kept loaded at most (the setting)."""
        return self._max_loaded

    @max_loaded.setter
    def max_loaded(self, models: int) -> None:
        """From now on; the least recently used models beyond it go at once (not one a reply runs on)."""
        self._max_loaded = models
        with self._load_lock:
            running, by_use = self._turns.running_models(), [resident.key for resident in self._by_use()]
            for key in by_use[models:]:
                if key not in running:
                    self._unload_locked(key)

    def _ready_dir(self, key: str) -> Path:
        directory = model_dir(self.models_dir, key)
        if read_manifest(directory) is None:
            raise ModelNotReadyError(
                f"{key} is not downloaded yet: download it on the Models page, or with "
                f"`localllm download {key}`.",
                key=key,
            )
        return directory

    def load(self, key: str, *, force: bool = False) -> LoadedModel:
        """Load `key` (unloading the least recently used models first where the setting or memory asks);
        concurrent calls share one load."""
        return self._loaded(key, force).parts.info

    def _loaded(self, key: str, force: bool = False) -> Resident:
        if resident := self._touch(key):  # not behind another model's load
            return resident
        with self._load_lock:
            return self._load_locked(key, force)

    def warm(self, key: str) -> Future[LoadedModel | None] | None:
        """Once per model and engine, as the Chat page opens with `key` downloaded or `key` is chosen
        there: load it in the background where it fits beside the models loaded (none unloaded for it)
        and no reply runs (or its load is quick: `_may_start_beside`), so that the first message finds
        it loaded and its prompt weights kept (a session's first reply, or the first after a switch, as
        quick as the next). An unload stays an unload.
        Returns the load's future (its result None: nothing loaded), or None once asked before."""
        with self._warm_lock:
            if key in self._warm_asked or read_manifest(model_dir(self.models_dir, key)) is None:
                return None
            self._warm_asked.add(key)
        done: Future[LoadedModel | None] = Future()
        # Not the torch thread: a load waits for work there. Not a daemon: an exit waits for the load
        # rather than stopping it inside torch.
        threading.Thread(target=self._warm, args=(key, done), name="engine-warm", daemon=False).start()
        return done

    def _warm(self, key: str, done: Future[LoadedModel | None]) -> None:
        loaded = None
        if self._load_lock.acquire(blocking=False):  # else a load is under way: nothing to do
            self._loading = key  # from the estimate on (it may wait for the kernels' check)
            try:
                estimate, device = self.memory_estimate(key), self.runs_on()
                # Over no one's model, not while replies run unless it is quick (a load freezes their steps).
                quiet = not self._turns.busy or self._loads_quickly(key)
                if self._resident(key) is None and self._room_for(estimate, device) and quiet:
                    loaded = self._load_locked(key, force=False).parts.info
            except Exception as exc:  # short of memory, damaged files: the first message says so
                logger.info("%s not loaded ahead of a message: %s", key, exc)
            finally:
                self._loading = None
                self._load_lock.release()
        done.set_result(loaded)

    def _load_locked(self, key: str, force: bool) -> Resident:
        if resident := self._touch(key):
            return resident
        self._loading = key
        try:
            return self._load_new(key, force)
        finally:
            self._loading = None

    def _load_new(self, key: str, force: bool) -> Resident:
        directory = self._ready_dir(key)
        device = self.runs_on()
        estimate = self.memory_estimate(key)
        self._make_room(key, estimate, device, force)
        # The KV caches that fit beside the weights, measured before the weights take their memory.
        available = available_memory(device)
        fit = replies_that_fit(estimate, available, MAX_PARALLEL)
        tokenizer, precision, load_id = self.tokenizer(key), self.precision(), next(self._load_ids)
        parts = self.on_torch_thread(
            lambda: load_model(key, directory, device, choose_dtype(device), precision, tokenizer, load_id)
        )
        self._tokenizer_only = None
        if parts.decoder is not None:
            from core.inference.batching import Batcher

            # Finished replies' caches are kept for the next turn, within the replies planned for.
            batcher = Batcher(
                parts.decoder, self._torch.submit, caches_at_most=lambda: self._turns.capacity(key),
                others_decoding=lambda: self._others_decoding(key),
            )  # fmt: skip
            resident = Resident(parts, batcher, fit)
            # On the torch thread: which layers unpack is checked with torch operations, and a
            # second OpenMP team beside the torch thread's slows every decode step (see above).
            self.on_torch_thread(lambda: self._plan_prompt_copy(resident, estimate, available))
            self._turns.set_capacity(key, min(self._parallel, resident.memory_fit))
        else:  # transformers' generate: one reply at a time
            from core.inference.quantize import movable_layers

            resident = Resident(parts, None, 1)
            # 16-bit weights on a CPU: moved into oneDNN's own layout while no reply runs (no memory added).
            resident.to_keep = self.on_torch_thread(lambda: movable_layers(parts.model)) or None
            self._turns.set_capacity(key, 1)
        self._residents = (*self._residents, resident)
        logger.info(
            "loaded %s on %s (%s) in %.1f s, %d replies at once; %d models loaded",
            key, device, precision.label, parts.info.load_s, self._turns.capacity(key), len(self._residents),
        )  # fmt: skip
        self._start_idle_watch()
        if resident.to_keep:  # in the first quiet moment: now, unless a reply or a score waits for this load
            self._torch.submit(self._keep_prompt_weights)
        return resident

    def _make_room(self, key: str, estimate: MemoryEstimate, device: str, force: bool) -> None:
        """Unload the least recently used models no reply runs on (a running reply holds its model's
        memory until it ends) while the setting's count is reached or `key`'s model with its replies'
        caches would not fit beside them; raise InsufficientMemoryError, unloading none, when it does not
        fit even beside the running ones alone (unless `force`)."""
        needed, available = estimate.total_bytes, available_memory(device)
        idle = self._idle_by_use()
        freeable = sum(resident.held_bytes for resident in idle)
        others = [resident.key for resident in idle]  # keys only: an unloaded model's memory is freed
        del idle
        if needed > available + freeable and not force:
            raise InsufficientMemoryError(
                f"{key} needs {needed / GIB:.1f} GiB, {available / GIB:.1f} GiB available. "
                "Close other programs or load it anyway.",
                key=key,
                needed_bytes=needed,
                available_bytes=available,
            )
        for other in others:
            if self._room_for(estimate, device):
                return
            self._unload_locked(other)

    def _others_decoding(self, key: str) -> bool:
        """Another loaded model's batch has replies decoding (on the torch thread, between steps): a long
        prompt of `key`'s is then read in parts between their tokens, not in one pass that stops them."""
        return any(
            resident.batcher is not None and resident.batcher.decoding
            for resident in self._residents
            if resident.key != key
        )

    def _idle_by_use(self) -> list[Resident]:
        """The loaded models no reply runs on, the least recently used first."""
        running = self._turns.running_models()
        idle = [resident for resident in self._residents if resident.key not in running]
        return sorted(idle, key=lambda resident: resident.last_used)

    def _may_start_beside(self, key: str) -> bool:
        """Whether a reply of `key`'s model may start beside the running replies (of other models): each
        runs a step at a time (`_runs_in_steps`: a reply of transformers' generate holds the torch
        thread to its end, so it runs alone), and `key`'s model is loaded, or its load is quick (its
        quantized copy kept by an earlier load: ~0.2 s of their steps, against waiting for their
        replies to end) and it fits beside them, no other load under way. A model to quantize or read
        in 16 bits waits for them (its load would freeze their steps for seconds)."""
        if not all(self._runs_in_steps(other) for other in (key, *self._turns.running_models())):
            return False
        if self._resident(key) is not None:
            return True
        if self._load_lock.locked():
            return False
        try:
            estimate, device = self.memory_estimate(key), self.runs_on()
        except (LocalLLMError, OSError, ValueError):  # not downloaded, damaged: said in its turn
            return False
        idle = self._idle_by_use()
        staying = len(self._residents) - len(idle)
        freeable = sum(resident.held_bytes for resident in idle)
        planned = estimate.with_caches(self._parallel)
        return staying < self._max_loaded and planned <= 0.8 * (available_memory(device) + freeable)

    def _runs_in_steps(self, key: str) -> bool:
        """Whether `key`'s replies run a step at a time on the torch thread (the lean decoder's batch):
        loaded with a batcher, or to load quickly (`_loads_quickly`) as an architecture the decoder
        runs (read from config.json)."""
        if resident := self._resident(key):
            return resident.batcher is not None
        if not self._loads_quickly(key):  # a file's presence: before reading the config
            return False
        from types import SimpleNamespace

        from core.inference.skeleton import decoder_architecture

        try:
            return decoder_architecture(SimpleNamespace(**read_config(model_dir(self.models_dir, key))))
        except (LocalLLMError, AttributeError):  # no readable config, no model_type: said in its turn
            return False

    def _loads_quickly(self, key: str) -> bool:
        """Whether `key`'s load maps a quantized copy kept by an earlier load (CPU, int4 or int8), known
        without waiting for the torch thread (the turn queue asks under its lock, which work on that
        thread may wait for): the scheme's kernel checked already."""
        from core.inference.quantize import cache_path

        scheme, device = self.quantization, self.runs_on()
        checked = self._kernels.get(scheme)  # none for "none"
        if device != "cpu" or checked is None or not checked.done() or not checked.result():
            return False
        return cache_path(model_dir(self.models_dir, key), scheme, choose_dtype(device)).is_file()

    def _room_for(self, estimate: MemoryEstimate, device: str) -> bool:
        """Whether a model fits beside those loaded: under the setting's count, and with its replies'
        caches within 80 % of the free memory."""
        planned = estimate.with_caches(self._parallel)
        return len(self._residents) < self._max_loaded and planned <= 0.8 * available_memory(device)

    def _plan_prompt_copy(self, resident: Resident, estimate: MemoryEstimate, available: int) -> None:
        """Which of a new model's int4 layers to keep unpacked for prompts (`_keep_prompt_weights`): all
        of them if their copy leaves room for as many replies at once as without it (within the 80 % of
        free memory that `replies_that_fit` plans with), else none."""
        from core.inference.quantize import unpackable_layers

        if not self.keep_prompt_weights:
            return
        layers = unpackable_layers(resident.parts.model)
        copy = sum(layer.unpacked_bytes() for layer in layers)
        at_once = min(self._parallel, resident.memory_fit)
        if copy < KEEP_UNPACKED_MIN_BYTES or estimate.with_caches(at_once) + copy > 0.8 * available:
            return
        with_copy = dataclasses.replace(estimate, runtime_bytes=estimate.runtime_bytes + copy)
        resident.memory_fit = replies_that_fit(with_copy, available, MAX_PARALLEL)  # at least `at_once`
        resident.to_keep, resident.copy_bytes = layers, copy
        logger.info("will keep %.2f GB of unpacked weights for prompts", copy / 1e9)

    def _keep_prompt_weights(self) -> None:
        """On the torch thread while no reply runs: keep the loaded models' int4 weights unpacked for
        prompts (16-bit ones: move them into oneDNN's layout), a matrix at a time (a reply that arrives
        meanwhile waits for one matrix, ~30-300 ms, and the rest waits for the next quiet moment). Each
        matrix kept takes prompts of KEPT_PROMPT_ROWS rows and more from then on (an int4 prompt's
        first token ~2 × sooner once all are: docs/performance.md, "Prompts")."""
        for resident in self._by_use():
            started, layers = time.perf_counter(), resident.to_keep
            while layers and self._turns.idle and resident in self._residents:
                layers.pop().keep_unpacked()
            if layers == [] and resident in self._residents:
                resident.to_keep = None
                return_freed_memory_to_os()  # the unpacking's temporaries: ~190 MB of TinyLlama's heap
                logger.info(
                    "%s's weights are kept for prompts (the last part in %.1f s)",
                    resident.key, time.perf_counter() - started,
                )  # fmt: skip

    @property
    def prompt_copies(self) -> dict[str, int]:
        """The memory each loaded model's weights kept unpacked for prompts take, or will once made
        (models with none left out): beyond `memory_estimate`, within the memory the engine plans with."""
        return {resident.key: resident.copy_bytes for resident in self._residents if resident.copy_bytes}

    def settle(self) -> None:
        """Wait for the work the engine does between replies (keeping weights unpacked for prompts):
        what a user's reading and typing give it; the benches wait here before timing."""
        self.on_torch_thread(lambda: None)

    def unload(self, key: str | None = None) -> None:
        """Free `key`'s model's memory, or every loaded model's (CUDA cache emptied too)."""
        with self._load_lock:
            for loaded in [resident.key for resident in self._residents]:
                if key is None or loaded == key:
                    self._unload_locked(loaded)

    def _unload_locked(self, key: str) -> None:
        """Unload `key`'s model: the caller holds no reference to its Resident, so its memory goes here."""
        resident = self._resident(key)
        if resident is None:
            return
        device = resident.parts.info.device
        logger.info("unloading %s", key)
        self._kept_for.pop(key, None)  # its next load keeps to the setting
        self._turns.set_capacity(key, None)
        self._residents = tuple(other for other in self._residents if other is not resident)
        del resident
        gc.collect()
        return_freed_memory_to_os()
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()

    # -- idle unload ----------------------------------------------------------------------------
    def _touch(self, key: str) -> Resident | None:
        """`key`'s model, marked used now, where it is loaded."""
        if resident := self._resident(key):
            resident.touch()
        return resident

    def keep_alive(self, key: str, seconds: float) -> None:
        """Keep `key`'s model loaded `seconds` after its last reply instead of the idle setting, until it
        is unloaded (Ollama's `keep_alive`, the latest request's: 0 unloads it as soon as nothing runs or
        waits for it, math.inf keeps it)."""
        self._kept_for[key] = seconds

    def unload_if_idle(self, key: str) -> bool:
        """Unload `key`'s model now, unless a reply runs or waits for it (then it goes once they end,
        where a keep-alive of 0 was asked); True when it is not loaded afterwards."""
        with self._load_lock:
            loaded = self._resident(key) is not None
            if loaded and not self._turns.wanted(key):
                self._unload_locked(key)
                loaded = False
        return not loaded

    def _idle_unload_after(self, key: str) -> float:
        """Idle seconds before `key`'s model is unloaded: a client's keep-alive for it, else the setting
        (0 there: never)."""
        if (kept := self._kept_for.get(key)) is not None:
            return kept
        return self.idle_unload_s if self.idle_unload_s > 0 else math.inf

    def idle_seconds_left(self, key: str) -> float | None:
        """Seconds until `key`'s model is unloaded for idleness, or None when it is not loaded or never
        will be."""
        after, resident = self._idle_unload_after(key), self._resident(key)
        if resident is None or after == math.inf:
            return None
        return max(0.0, after - (time.monotonic() - resident.last_used))

    def _start_idle_watch(self) -> None:
        if self._idle_thread is None or not self._idle_thread.is_alive():
            self._idle_thread = threading.Thread(target=self._idle_watch, name="engine-idle", daemon=True)
            self._idle_thread.start()

    def _idle_watch(self) -> None:
        while keys := [resident.key for resident in self._residents]:
            time.sleep(min(1.0, max(0.05, min(self._idle_unload_after(key) for key in keys) / 4)))
            for key in keys:
                if self.idle_seconds_left(key) == 0.0 and not self._turns.wanted(key):
                    self.unload(key)

    # -- the queue ------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A reply is being generated now."""
        return self._turns.busy

    @property
    def running(self) -> int:
        """Replies being generated now."""
        return self._turns.running

    @property
    def waiting(self) -> int:
        return self._turns.waiting

    # -- prompts --------------------------------------------------------------------------------
    def tokenizer(self, key: str) -> Any:
        """The model's tokenizer: the loaded model's, else one loaded alone (a fraction of a second)."""
        if parts := self.parts_of(key):
            return parts.tokenizer
        cached = self._tokenizer_only
        if cached is not None and cached[0] == key:
            return cached[1]
        tokenizer = load_tokenizer(key, self._ready_dir(key))
        self._tokenizer_only = (key, tokenizer)
        return tokenizer

    def window(self, key: str) -> int:
        """The model's own context window in tokens (its config's max_position_embeddings)."""
        if parts := self.parts_of(key):
            return parts.info.context_length
        return context_length(self._ready_dir(key), lambda: self.tokenizer(key))

    def context_tokens(self, key: str) -> int:
        """The context a reply of this model gets: the length chosen for it, at most its window."""
        return min(self.window(key), self.context_setting(key))

    def count_tokens(self, key: str, prompt: Prompt, limit: int | None = None) -> int:
        """Prompt tokens (a conversation with the model's chat template, or raw text; the model need not
        be loaded); with a `limit`, counting may stop early above it (prompts.count_prompt_tokens)."""
        return prompts.count_prompt_tokens(self.tokenizer(key), prompt, limit)

    def default_params(self, key: str) -> GenerationParams:
        """The sampling the model's publisher recommends (its generation_config.json), else the product's."""
        return publisher_params(self._ready_dir(key))

    def fit_prompt(self, key: str, prompt: Prompt, max_new_tokens: int) -> PromptFit:
        """Check the prompt against the context window before anything is allocated for it; the reply's
        room is `max_new_tokens` capped to what the context leaves. ContextLengthError when it cannot fit."""
        context = self.context_tokens(key)
        return prompts.fit(self.count_tokens(key, prompt, limit=context - 1), context, max_new_tokens)

    def score(self, key: str, text: str) -> TextScore:
        """Each token's log-probability under the model as loaded (int4, int8 or 16-bit), and the
        perplexity; waits for its turn like a reply."""
        return self._alone(key, lambda parts: score_text(parts, text))

    def embed(self, key: str, inputs: list[list[int]]) -> list[list[float]]:
        """Each input's (token ids) embedding under the model as loaded (core.inference.embedding); waits
        for its turn like a reply."""
        return self._alone(key, lambda parts: embed_ids(parts, inputs))

    def load_in_turn(self, key: str) -> LoadedModel:
        """Load `key` when a reply of it could start (Ollama's load request): at once where it is loaded,
        nothing runs or its load is quick, else once the running replies end (a long load on the torch
        thread would freeze their steps)."""
        if resident := self._touch(key):  # nothing to wait for, even with its batch full
            return resident.parts.info
        return self._in_turn(key, lambda: self._loaded(key).parts.info)

    def _alone(self, key: str, work: Callable[[LoadedParts], T]) -> T:
        """`work` on `key`'s model, loaded, on the torch thread, once its turn comes: alone, as no reply
        shares its passes."""

        def loaded_work() -> T:
            parts = self._loaded(key).parts
            return self.on_torch_thread(lambda: work(parts))

        return self._in_turn(key, loaded_work, exclusive=True)

    def _in_turn(self, key: str, work: Callable[[], T], *, exclusive: bool = False) -> T:
        """`work` once a turn for `key`'s model comes, as a reply's would (`exclusive`: alone)."""
        ticket = self._turns.enter(key, exclusive=exclusive)
        running = False
        try:
            running = self._turns.wait_quietly(ticket, threading.Event())
            return work()
        finally:
            self._turns.leave(ticket, running)
            self._touch(key)

    # -- replies --------------------------------------------------------------------------------
    def stream(
        self,
        key: str,
        prompt: Prompt,
        params: GenerationParams,
        stop: threading.Event | None = None,
        *,
        ignore_eos: bool = False,
        owner: str = "",
        reply_format: ReplyFormat | None = None,
        logprobs: int | None = None,
        prompt_logprobs: int | None = None,
        generate: bool = True,
        bias: LogitBias = (),
    ) -> Iterator[Event]:
        """Queue, load if needed, and stream a reply to `prompt` (a conversation, or raw text to continue):
        Queued..., TextDelta..., then Finished; `reply_format`: the JSON it is held to; `logprobs`: the
        tokens' log-probabilities (Logprobs events) with this many alternatives each; `prompt_logprobs`:
        the prompt's first; `generate` False: no reply, the prompt only; `bias`: OpenAI's logit_bias
        (generation.stream_reply).

        Setting `stop`, or closing the iterator, ends generation within a token and ends the thread.
        `owner` (a conversation, an API client): the prompt may start from the KV cache of an earlier
        reply of the same owner only (core.inference.reuse).
        """
        stop = stop or threading.Event()
        ticket = self._turns.enter(key)
        running = False
        try:
            running = yield from self._turns.wait(ticket, stop)
            if not running:
                yield Finished(ReplyStats(0, 0, None, None, "stopped", key))
                return
            resident = self._loaded(key)
            context = self.context_tokens(key)
            yield from stream_reply(
                resident.parts, prompt, params, stop, ignore_eos, context, self._torch.submit,
                resident.batcher, owner, reply_format, logprobs=logprobs, prompt_logprobs=prompt_logprobs,
                generate=generate, bias=bias,
            )  # fmt: skip
        finally:
            stop.set()  # a reader that goes away stops generation too
            self._turns.leave(ticket, running)
            self._touch(key)
            if running and not self._turns.busy:
                # The prompts' temporaries (widened weights) are freed by now: hand them back to the OS on
                # the torch thread, between no reply's steps, without making this reader (and the reply's
                # final save) wait.
                self._torch.submit(return_freed_memory_to_os)
            if any(resident.to_keep for resident in self._residents):
                self._torch.submit(self._keep_prompt_weights)
