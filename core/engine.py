"""Local transformers engine: load, stream, stop, unload; one model per process, one reply at a time.

All torch work (loading, quantizing, generating) runs on one long-lived thread, the engine's torch
thread: OpenMP keeps a thread team per calling thread, and a second team beside an idle first one cost
a fifth of the decode speed on a 2-core machine (42 → 33 tokens/s). Text streams out through a
TextIteratorStreamer. A stop event is
read by a stopping criterion after every token, so Stop (or a reader that goes away) ends the
generation within a token. Requests wait in a FIFO queue and are told their place in it.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import psutil

from core.errors import (
    ContextLengthError,
    GenerationError,
    InsufficientMemoryError,
    ModelNotReadyError,
    NoChatTemplateError,
    QueueFullError,
)
from core.generation import GenerationParams
from core.hardware import (
    Precision,
    config_count,
    measure_bandwidth,
    model_memory,
    read_config,
    return_freed_memory_to_os,
)
from core.model_store import model_dir, read_manifest

T = TypeVar("T")
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
QUANTIZATIONS = ("int4", "int8", "none")  # applies on the CPU; GPUs keep the 16-bit weights
GIB = 1024**3


@dataclass(frozen=True)
class LoadedModel:
    key: str
    device: str
    dtype: str  # what activations and the KV cache are computed in
    weights: str  # how weights are stored: "int4" on the CPU by default, else the same as dtype
    memory_bytes: int
    context_length: int
    load_id: int
    load_s: float


@dataclass(frozen=True)
class PromptFit:
    """A prompt measured against the context window: its tokens and the reply's room (max new tokens)."""

    prompt_tokens: int
    max_new_tokens: int
    context_tokens: int


@dataclass(frozen=True)
class ReplyStats:
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None
    tokens_per_s: float | None
    finish_reason: str  # "stop", "length", "stopped", "error"
    model: str


@dataclass(frozen=True)
class Queued:
    """The request waits; `ahead` requests are before it (0: it is next)."""

    ahead: int


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    stats: ReplyStats


Event = Queued | TextDelta | Finished


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


def _kernel_available(scheme: str) -> bool:
    from core.quantize import kernel_supported

    return kernel_supported(scheme)


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


def _load_tokenizer(key: str, directory: Path) -> Any:
    _import_runtime()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    if not tokenizer.chat_template:
        raise NoChatTemplateError(f"{key} has no chat template, so it cannot be used for chat.", key=key)
    return tokenizer


_IMPORT_LOCK = threading.Lock()
_imported = False


def _import_runtime() -> None:
    """Import transformers, the catalog's model code and every transformers name the engine uses, once.

    transformers resolves its names lazily, and two threads resolving them at once can fail ("cannot
    import name AutoTokenizer"): a page counting tokens while the engine's thread still imports. So
    all of it happens here, under a lock; afterwards `from transformers import X` is a plain lookup.
    """
    global _imported
    with _IMPORT_LOCK:
        if _imported:
            return
        import transformers
        import transformers.models.llama.modeling_llama
        import transformers.models.qwen2.modeling_qwen2

        for name in (
            "AutoConfig", "AutoModelForCausalLM", "AutoTokenizer", "GenerationConfig", "LogitsProcessorList",
            "RepetitionPenaltyLogitsProcessor", "StoppingCriteriaList", "SuppressTokensLogitsProcessor",
            "TemperatureLogitsWarper",
            "TextIteratorStreamer", "TopKLogitsWarper", "TopPLogitsWarper",
        ):  # fmt: skip
            getattr(transformers, name)
        from core import attention, decoder, quantize  # noqa: F401

        _imported = True


def _weights_id(directory: Path) -> str:
    """Names the exact weights a quantized copy was made from (their verified sha256s)."""
    manifest = read_manifest(directory)
    hashes = sorted(f.sha256 for f in manifest.files if f.path.endswith(".safetensors")) if manifest else []
    return ",".join(hashes)


def _available_memory(device: str) -> int:
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0]
    return psutil.virtual_memory().available


COUNT_PIECE_CHARS = 16_384  # a long text is counted piece by piece, and only as far as the limit needs
COUNT_SLACK_PER_PIECE = 8  # tokens a cut between pieces may add (cut at whitespace: usually 0 or 1)


def _pieces(text: str) -> Iterator[str]:
    """`text` in pieces of about COUNT_PIECE_CHARS, cut at whitespace where there is some."""
    start = 0
    while start < len(text):
        end = min(len(text), start + COUNT_PIECE_CHARS)
        if end < len(text):
            space = max(text.rfind(" ", start + COUNT_PIECE_CHARS // 2, end), text.rfind("\n", start, end))
            end = space if space > start else end
        yield text[start:end]
        start = end


def count_prompt_tokens(tokenizer: Any, messages: Sequence[dict[str, str]], limit: int | None = None) -> int:
    """Tokens of `messages` under the chat template. Past `limit` the count may stop early and return a
    number that is still above the limit: the work is bounded by the limit, not by the text's length."""
    if limit is not None:
        rough = pieces = 0
        for message in messages:
            for piece in _pieces(message["content"]):
                rough += len(tokenizer(piece, add_special_tokens=False)["input_ids"])
                pieces += 1
                if rough - COUNT_SLACK_PER_PIECE * pieces > limit * 1.1:
                    return rough - COUNT_SLACK_PER_PIECE * pieces
    encoded = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, return_dict=True)
    return len(encoded["input_ids"])


class _StopOnEvent:
    """A stopping criterion that ends generation once `event` is set (checked after every token).

    Called after each generation step, it also records when the first token was produced.
    """

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.first_token_at: float | None = None

    def token_done(self) -> bool:
        """Note a generated token; True when generation should stop."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        return self.event.is_set()

    def __call__(self, input_ids: Any, scores: Any, **_kwargs: Any) -> Any:
        import torch

        stop = self.token_done()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class LocalEngine:
    """One loaded model per process, shared by every caller; replies one at a time in FIFO order."""

    def __init__(
        self,
        models_dir: Path,
        *,
        device: str = "auto",
        quantization: str = "int4",
        idle_unload_s: float = 900.0,
        max_waiting: int = 4,
        context_tokens_for_memory: int = 4096,
    ) -> None:
        self.models_dir = models_dir
        self.device_preference = device
        self.quantization = quantization
        self.idle_unload_s = idle_unload_s
        self.max_waiting = max_waiting
        self.context_tokens_for_memory = context_tokens_for_memory
        self._load_lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._loaded: LoadedModel | None = None
        self._load_ids = itertools.count(1)
        self._turn = threading.Condition()
        self._waiting: deque[int] = deque()
        self._busy = False
        self._tickets = itertools.count(1)
        self._last_used = time.monotonic()
        self._idle_thread: threading.Thread | None = None
        self._torch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-torch")
        self._decoder: Any = None
        self._tokenizer_only: tuple[str, Any] | None = None  # (key, tokenizer) of a model not loaded
        self._kernels: dict[str, Future[bool]] = {}
        self._bandwidth: Future[float] | None = None

    def prepare(self) -> Future[None]:
        """Ahead of the first load, on the torch thread: import transformers and the catalog's model code
        (about 1.5 s, paid while the user looks at the page, not after a click), check the quantized
        kernel and measure the memory bandwidth (about a second), so that pages never wait behind a reply."""
        self._kernel(self.quantization, wait=False)
        imported = self._torch.submit(_import_runtime)
        # Last: measured while the first pages load, the bandwidth read half of what it is.
        self._bandwidth = self._torch.submit(measure_bandwidth)
        return imported

    def memory_bandwidth(self, wait: bool = True) -> float | None:
        """Read bandwidth in bytes/s, measured once on the torch thread; None while not measured yet
        (without `wait`)."""
        if self._bandwidth is None:
            self._bandwidth = self._torch.submit(measure_bandwidth)
        if not wait and not self._bandwidth.done():
            return None
        return self._bandwidth.result()

    def on_torch_thread(self, work: Callable[[], T]) -> T:
        """Run `work` on the engine's torch thread and return its result (its exception is raised here)."""
        if threading.current_thread().name.startswith("engine-torch"):
            return work()
        return self._torch.submit(work).result()

    # -- loading --------------------------------------------------------------------------------
    @property
    def loaded(self) -> LoadedModel | None:
        return self._loaded

    def precision(self) -> Precision:
        """How a model would be stored: int4 weights on the CPU (unless set otherwise), else the dtype."""
        from core.quantize import BYTES_PER_WEIGHT

        device = detect_device(self.device_preference)
        dtype = choose_dtype(device)
        scheme = self.quantization
        if device == "cpu" and scheme in BYTES_PER_WEIGHT and self._kernel(scheme):
            return Precision(BYTES_PER_WEIGHT[scheme], BYTES_PER_WEIGHT["int8"], dtype.itemsize, scheme)
        label = str(dtype).removeprefix("torch.")
        return Precision(dtype.itemsize, dtype.itemsize, dtype.itemsize, label)

    def _kernel(self, scheme: str, wait: bool = True) -> bool:
        """Whether the CPU kernel of a quantization scheme runs here: checked once, on the torch thread."""
        if scheme == "none":
            return False
        if scheme not in self._kernels:
            self._kernels[scheme] = self._torch.submit(_kernel_available, scheme)
        return self._kernels[scheme].result() if wait else False

    def memory_check(self, key: str) -> tuple[int, int]:
        """(bytes needed, bytes available) on the device the model would load on."""
        device = detect_device(self.device_preference)
        estimate = model_memory(self._ready_dir(key), self.precision(), self.context_tokens_for_memory)
        return estimate.total_bytes, _available_memory(device)

    def _ready_dir(self, key: str) -> Path:
        directory = model_dir(self.models_dir, key)
        if read_manifest(directory) is None:
            raise ModelNotReadyError(f"{key} is not downloaded yet: download it on the Models page.", key=key)
        return directory

    def load(self, key: str, *, force: bool = False) -> LoadedModel:
        """Load `key` (unloading another model first); concurrent calls share one load."""
        with self._load_lock:
            if self._loaded and self._loaded.key == key:
                return self._loaded
            directory = self._ready_dir(key)
            needed, available = self.memory_check(key)
            if needed > available and not force:
                raise InsufficientMemoryError(
                    f"{key} needs {needed / GIB:.1f} GiB, {available / GIB:.1f} GiB available. "
                    "Close other programs or load it anyway.",
                    needed=needed,
                    available=available,
                )
            self._unload_locked()
            self._loaded = self.on_torch_thread(lambda: self._load_locked(key, directory))
            self._touch()
            self._start_idle_watch()
            return self._loaded

    def _load_locked(self, key: str, directory: Path) -> LoadedModel:
        _import_runtime()
        from transformers import AutoModelForCausalLM

        from core import attention, decoder, quantize

        started = time.perf_counter()
        device = detect_device(self.device_preference)
        dtype = choose_dtype(device)
        precision = self.precision()
        tokenizer = self.tokenizer(key)
        self._tokenizer_only = None
        options = {"attn_implementation": attention.NAME if device == "cpu" else None}
        model, mapped = None, False
        scheme = precision.label if precision.label in quantize.SCHEMES else None
        if scheme:  # quantized once, then mapped from disk: no 16-bit copy at load
            cache, source = quantize.cache_path(directory, scheme, dtype), _weights_id(directory)
            model = quantize.load_quantized(directory, cache, dtype, scheme, source, **options)
            mapped = model is not None
            if model is None:  # the first load: matrix by matrix from the checkpoint when it can
                model = quantize.quantize_checkpoint(directory, dtype, scheme, **options)
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(
                directory, dtype=dtype, local_files_only=True, trust_remote_code=False, **options
            )
            model.to(device).eval()
            if scheme:
                quantize.quantize_model(model, dtype, scheme)
            elif device == "cuda" and decoder.runs_architecture(model):
                quantize.fuse_projections(model)  # for core.decoder: fewer kernel launches a token
        if scheme and not mapped:
            with contextlib.suppress(OSError):  # a read-only folder: quantize again next time
                quantize.save_quantized(model, cache, source)
        if not mapped:
            gc.collect()  # 16-bit weights that were replaced or read (a full collection: ~0.2 s)
            return_freed_memory_to_os()
        self._model, self._tokenizer = model, tokenizer
        self._decoder = decoder.Decoder(model) if decoder.supports(model) else None
        config = read_config(directory)
        return LoadedModel(
            key=key,
            device=device,
            dtype=str(dtype).removeprefix("torch."),
            weights=precision.label,
            memory_bytes=quantize.stored_bytes(model),
            context_length=config_count(config, "max_position_embeddings") or int(tokenizer.model_max_length),
            load_id=next(self._load_ids),
            load_s=time.perf_counter() - started,
        )

    def unload(self) -> None:
        """Free the model's memory (CUDA cache emptied too)."""
        with self._load_lock:
            self._unload_locked()

    def _unload_locked(self) -> None:
        if self._loaded is None:
            return
        device = self._loaded.device
        self._model = self._tokenizer = self._loaded = self._decoder = None
        gc.collect()
        return_freed_memory_to_os()
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()

    # -- idle unload ----------------------------------------------------------------------------
    def _touch(self) -> None:
        self._last_used = time.monotonic()

    def idle_seconds_left(self) -> float | None:
        """Seconds until the idle unload, or None when nothing is loaded or it is off (0)."""
        if self._loaded is None or self.idle_unload_s <= 0:
            return None
        return max(0.0, self.idle_unload_s - (time.monotonic() - self._last_used))

    def _start_idle_watch(self) -> None:
        if self._idle_thread is None or not self._idle_thread.is_alive():
            self._idle_thread = threading.Thread(target=self._idle_watch, name="engine-idle", daemon=True)
            self._idle_thread.start()

    def _idle_watch(self) -> None:
        while self._loaded is not None:
            time.sleep(min(1.0, max(0.05, self.idle_unload_s / 4)) if self.idle_unload_s > 0 else 1.0)
            left = self.idle_seconds_left()
            with self._turn:
                idle = not self._busy and not self._waiting
            if left == 0.0 and idle:
                self.unload()

    # -- the queue ------------------------------------------------------------------------------
    def _enter_queue(self) -> int:
        with self._turn:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFullError(
                    f"{len(self._waiting)} requests are already waiting; please try again in a moment.",
                    waiting=len(self._waiting),
                )
            ticket = next(self._tickets)
            self._waiting.append(ticket)
            return ticket

    def _wait_for_turn(self, ticket: int, stop: threading.Event) -> Generator[Queued, None, bool]:
        """Yield the place in line whenever it changes; return True once this request may run."""
        last: int | None = None
        while not stop.is_set():
            with self._turn:
                ahead = self._waiting.index(ticket) + (1 if self._busy else 0)
                if ahead == 0:
                    self._waiting.popleft()
                    self._busy = True
                    return True
                if ahead == last:
                    self._turn.wait(0.25)
                    continue
            last = ahead
            yield Queued(ahead)
        return False

    def _leave(self, ticket: int, running: bool) -> None:
        with self._turn:
            if running:
                self._busy = False
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
            self._turn.notify_all()
        self._touch()

    @property
    def busy(self) -> bool:
        """A reply is being generated now."""
        with self._turn:
            return self._busy

    @property
    def waiting(self) -> int:
        with self._turn:
            return len(self._waiting)

    # -- generation -----------------------------------------------------------------------------
    def tokenizer(self, key: str) -> Any:
        """The model's tokenizer: the loaded model's, else one loaded alone (a fraction of a second)."""
        loaded, tokenizer = self._loaded, self._tokenizer
        if loaded is not None and loaded.key == key and tokenizer is not None:
            return tokenizer
        cached = self._tokenizer_only
        if cached is not None and cached[0] == key:
            return cached[1]
        tokenizer = _load_tokenizer(key, self._ready_dir(key))
        self._tokenizer_only = (key, tokenizer)
        return tokenizer

    def context_tokens(self, key: str) -> int:
        """The model's context window in tokens (its config's max_position_embeddings)."""
        loaded = self._loaded
        if loaded is not None and loaded.key == key:
            return loaded.context_length
        config = read_config(self._ready_dir(key))
        return config_count(config, "max_position_embeddings") or int(self.tokenizer(key).model_max_length)

    def count_tokens(self, key: str, messages: Sequence[dict[str, str]], limit: int | None = None) -> int:
        """Prompt tokens for `messages` with the model's chat template (the model need not be loaded);
        with a `limit`, counting may stop early above it (see count_prompt_tokens)."""
        return count_prompt_tokens(self.tokenizer(key), messages, limit)

    def fit_prompt(self, key: str, messages: Sequence[dict[str, str]], max_new_tokens: int) -> PromptFit:
        """Check the prompt against the context window before anything is allocated for it; the reply's
        room is `max_new_tokens` capped to what the context leaves. ContextLengthError when it cannot fit."""
        context = self.context_tokens(key)
        tokens = self.count_tokens(key, messages, limit=context - 1)
        if tokens >= context:
            at_least = "at least " if tokens > context * 1.1 else ""  # counting stopped early
            raise ContextLengthError(
                f"This model's maximum context length is {context} tokens, and the messages are "
                f"{at_least}{tokens} tokens, leaving no room for a reply. Shorten the messages.",
                tokens=tokens,
                budget=context - 1,
                context=context,
            )
        return PromptFit(tokens, min(max_new_tokens, context - tokens), context)

    def stream(
        self,
        key: str,
        messages: Sequence[dict[str, str]],
        params: GenerationParams,
        stop: threading.Event | None = None,
        *,
        ignore_eos: bool = False,
    ) -> Iterator[Event]:
        """Queue, load if needed, and stream a reply: Queued..., TextDelta..., then Finished.

        Setting `stop`, or closing the iterator, ends generation within a token and ends the thread.
        """
        stop = stop or threading.Event()
        ticket = self._enter_queue()
        running = False
        try:
            running = yield from self._wait_for_turn(ticket, stop)
            if not running:
                yield Finished(ReplyStats(0, 0, None, None, "stopped", key))
                return
            self.load(key)
            yield from self._generate(key, messages, params, stop, ignore_eos)
        finally:
            stop.set()  # a reader that goes away stops generation too
            self._leave(ticket, running)

    def _generate(
        self,
        key: str,
        messages: Sequence[dict[str, str]],
        params: GenerationParams,
        stop: threading.Event,
        ignore_eos: bool,
    ) -> Iterator[Event]:
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        model, tokenizer, loaded, decoder = self._model, self._tokenizer, self._loaded, self._decoder
        try:
            inputs = tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
            ).to(loaded.device)
        except Exception as exc:  # jinja's TemplateError and ValueError: the template refused these turns
            raise GenerationError(f"The model's chat template rejected this conversation: {exc}") from exc
        prompt_tokens = int(inputs["input_ids"].shape[1])
        if (
            prompt_tokens >= loaded.context_length
        ):  # callers check first (fit_prompt); the cache never grows past it
            raise ContextLengthError(
                f"This model's maximum context length is {loaded.context_length} tokens, and the messages "
                f"are {prompt_tokens} tokens. Shorten the messages.",
                tokens=prompt_tokens,
                budget=loaded.context_length - 1,
                context=loaded.context_length,
            )
        params = replace(
            params, max_new_tokens=min(params.max_new_tokens, loaded.context_length - prompt_tokens)
        )
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        criterion = _StopOnEvent(stop)
        sampling = params.temperature > 0
        options: dict[str, Any] = {
            **inputs,
            "streamer": streamer,
            "max_new_tokens": params.max_new_tokens,
            "do_sample": sampling,
            "repetition_penalty": params.repetition_penalty,
            "stopping_criteria": StoppingCriteriaList([criterion]),
            "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id,
        }
        if sampling:
            options.update(temperature=params.temperature, top_p=params.top_p)
        if ignore_eos:
            options["min_new_tokens"] = params.max_new_tokens
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                with torch.inference_mode():
                    if decoder is None:
                        outcome["completion"] = int(model.generate(**options).shape[1]) - prompt_tokens
                    else:
                        prompt = inputs["input_ids"][0]
                        outcome["completion"] = _decode(
                            decoder, model, prompt, params, streamer, criterion, ignore_eos
                        )
            except BaseException as exc:  # reaches the reader below
                outcome["error"] = exc
                streamer.on_finalized_text("", stream_end=True)

        started = time.perf_counter()
        worker = self._torch.submit(run)
        try:
            while True:
                try:
                    text = streamer.text_queue.get(timeout=0.1)
                except queue.Empty:
                    if worker.done() and streamer.text_queue.empty():
                        break
                    continue
                if text is streamer.stop_signal:
                    break
                if text:
                    yield TextDelta(text)
        finally:
            stop_requested = stop.is_set()
            stop.set()
            if not threading.current_thread().name.startswith("engine-torch"):
                worker.result()  # a collected generator may close anywhere; run() keeps its own errors
            # A prompt's temporaries (widened weights) are freed by now: hand them back to the OS, on
            # the torch thread and without making this reader (and the reply's final save) wait.
            self._torch.submit(return_freed_memory_to_os)
            self._touch()
        if "error" in outcome:
            raise GenerationError(f"Generation failed: {outcome['error']}") from outcome["error"]
        completion = outcome["completion"]
        first_token_at = criterion.first_token_at  # the first generated token, visible text or not
        decode_s = time.perf_counter() - first_token_at if first_token_at else 0.0
        if stop_requested:
            reason = "stopped"
        elif completion >= params.max_new_tokens:
            reason = "length"
        else:
            reason = "stop"
        yield Finished(
            ReplyStats(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion,
                ttft_s=(first_token_at - started) if first_token_at else None,
                tokens_per_s=(completion - 1) / decode_s if decode_s > 0 and completion > 1 else None,
                finish_reason=reason,
                model=key,
            )
        )


def _decode(
    decoder: Any,
    model: Any,
    prompt: Any,
    params: GenerationParams,
    streamer: Any,
    criterion: _StopOnEvent,
    ignore_eos: bool,
) -> int:
    """A reply through core.decoder, streamed as transformers' generate streams it; the token count."""
    from core.decoder import Sampling, generate

    config = model.generation_config
    end = config.eos_token_id
    end_ids = set(end if isinstance(end, list) else [] if end is None else [end])
    sampling = Sampling(params.temperature, params.top_p, int(config.top_k or 0), params.repetition_penalty)
    streamer.put(prompt)  # the streamer skips the prompt it is given first

    def on_token(token: int) -> bool:
        streamer.put(prompt.new_tensor([token]))
        return criterion.token_done()

    tokens = generate(
        decoder, prompt.tolist(), params.max_new_tokens, sampling, end_ids, on_token, ignore_end=ignore_eos
    )
    streamer.end()
    return len(tokens)
