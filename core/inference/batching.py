"""Continuous batching: every running reply advances in the same pass over the weights.

Decoding a small model is bound by reading its weights, once per step whatever the number of
sequences: a step for three replies costs about 1.5 of a step for one on a 2-core CPU (int4). A reply
joins the running batch at the next step: its prompt goes in by parts beside the others' tokens
(PREFILL_BESIDE tokens a step, so a long prompt does not freeze them, nor another model's replies
whose batch steps in turn; PREFILL_ALONE when nobody else waits for a token), prompts in the order
they came, and it leaves when it ends or is stopped. Each keeps its own sampling, seed, stop and
statistics (vLLM's scheduler and llama.cpp's server slots work alike). Prompts that arrive together
go in together, in one pass up to the budget: a prompt costs the same by parts (compute-bound), so the
last of three users waits for three prompts either way, but not also for the first user's tokens
between them. A prompt that starts like a finished reply's tokens (the next turn of a conversation)
starts from its kept cache (core.inference.reuse).

`Batch` is the synchronous heart (one `step` at a time, on the calling thread); `Batcher` runs it on
the engine's torch thread for as long as replies are in it, a step at a time: between two steps the
thread takes what else waits for it, another loaded model's step among them (two models' batches
advance in turn).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from core.inference.decoder import Decoder, KvCache, Segment
from core.inference.reuse import KeptCaches
from core.inference.sampler import Best, LogprobEntry, TokenChooser, best_of_each, logprob_entries

PREFILL_ALONE = 512  # prompt tokens a step when no other reply is decoding (bounds a long prompt's memory)
# Prompt tokens a step beside decoding replies (~0.2 s on 2 cores for Qwen2.5-0.5B, ~0.5 s for TinyLlama).
PREFILL_BESIDE = 64
# Prompt tokens a step of a prompt whose tokens' log-probabilities are asked (every row's logits, not only
# the last: 64 × 151,936 floats, 39 MB, for Qwen's vocabulary).
SCORED_PART = 64
# A batch that starts from idle waits while requests keep arriving, each within GATHER_GAP_S of the last
# (GATHER_MAX_S at most): requests sent together reach the server a few milliseconds apart (parsing,
# the chat template), and their prompts then go in one pass instead of one after another. Four clients
# at once reached the batch 1.3-9.6 ms apart on 2 cores; a gap of 10 ms missed the last ones in one round
# of nine (their first text 3.5-5.6 s instead of ~2.2 s). A lone request waits one gap more than it would.
GATHER_GAP_S = 0.02
GATHER_MAX_S = 0.1
logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Request:
    """One reply in the batch: its prompt, how it chooses and ends, and where it stands."""

    prompt: list[int]
    max_new_tokens: int
    chooser: TokenChooser
    end_ids: frozenset[int]
    on_token: Callable[[int], bool]  # called after each token; True stops the reply
    on_read: Callable[[int], None] = lambda _done: None  # after each part of the prompt but the last
    stop: threading.Event = field(default_factory=threading.Event)
    done: Future[list[int]] = field(default_factory=Future)  # the generated ids, or the error
    generated: list[int] = field(default_factory=list)
    owner: str = ""  # whose kept caches it may start from (core.inference.reuse)
    cache: KvCache | None = None
    prefilled: int = 0  # prompt tokens in the cache
    cached: int = 0  # of them, those a kept cache held when it started
    # The prompt's tokens' log-probabilities are read, with this many alternatives each (an echoed
    # completion's): the prompt is read whole, in passes of its own; `prompt_logged` resolves once read.
    prompt_logprobs: int | None = None
    prompt_logged: Future[list[LogprobEntry]] = field(default_factory=Future)
    scored: list[LogprobEntry] = field(default_factory=list)

    @property
    def decoding(self) -> bool:
        return self.prefilled == len(self.prompt)


class Batch:
    """The replies being generated together; `step` advances all of them by one pass."""

    def __init__(
        self,
        decoder: Decoder,
        caches_at_most: Callable[[], int] = lambda: 0,
        *,
        overlap: bool | None = None,
        others_decoding: Callable[[], bool] = lambda: False,
    ) -> None:
        """`caches_at_most()`: running and kept caches together (the replies memory was planned for);
        `overlap`: tokens go to their readers while the next pass runs (default: on a GPU);
        `others_decoding()`: another model's batch, stepping between this one's, has replies decoding
        (a prompt is then read in parts, as beside this batch's own)."""
        self.decoder = decoder
        self.active: list[Request] = []
        self.kept = KeptCaches()
        self._caches_at_most = caches_at_most
        self._others_decoding = others_decoding
        # On a GPU a pass runs while the host goes on: each token chosen is handed to its reader once the
        # next pass is under way, so that readers (decoding text, writing to sockets, holding Python's
        # lock) work while the GPU does, not between passes. On a CPU the pass is the host's own work.
        self._overlap = decoder.device.type != "cpu" if overlap is None else overlap
        self._unsent: dict[Request, int] = {}

    def add(self, request: Request) -> None:
        """Start a reply from the longest prefix of its prompt that a kept cache of the same owner holds:
        in the decoder's own cache when it starts alone on CUDA (only that one is replayed as a CUDA
        graph), else in the kept cache itself when it is large enough, else in a new one."""
        capacity = len(request.prompt) + request.max_new_tokens
        source, shared = self.kept.best(request.owner, request.prompt)
        if request.prompt_logprobs is not None:  # every token's logits are needed
            source, shared = None, 0
        if not self.active and self.decoder.use_graphs:
            self.kept.discard(self.decoder.cache)  # rewritten from here on
            cache = self.decoder.reset(capacity)
        elif source is not None and source.cache.capacity >= capacity:
            self.kept.discard(source.cache)
            cache = source.cache
        else:
            cache = KvCache(self.decoder, capacity, zeroed=self.decoder.use_graphs)  # see Decoder.step
        if source is not None:
            if source.cache is not cache:
                cache.copy_prefix(source.cache, shared)
                if shared == len(source.tokens):
                    # All it held is in the new cache (a conversation's next turn): kept on, it would take
                    # another owner's place (one conversation of 60 turns held four copies of itself).
                    self.kept.discard(source.cache)
            logger.info("prompt of %d tokens: %d from a kept cache", len(request.prompt), shared)
        cache.length = request.prefilled = request.cached = shared
        request.cache = cache
        self.active.append(request)
        self._trim()

    @property
    def decoding(self) -> bool:
        """A reply of this batch is decoding (read on the torch thread, between steps)."""
        return any(request.decoding for request in self.active)

    def _trim(self) -> None:
        """Keep at most as many caches as planned for, running ones first (the oldest kept go)."""
        most = self._caches_at_most() - len(self.active)
        own = self.decoder.cache
        if own.capacity and not self.kept.holds(own) and all(r.cache is not own for r in self.active):
            most -= 1  # the decoder's own cache, idle, still holds its memory
        self.kept.trim(most)

    def step(self) -> None:
        """Drop stopped replies, then one pass: a token for each decoding reply, a part of waiting
        prompts; choose the next token of each reply that has its logits."""
        for request in [r for r in self.active if r.stop.is_set()]:
            self._finish(request)
        if not self.active:
            return
        decoding = [r for r in self.active if r.decoding]
        reading = [r for r in self.active if not r.decoding]
        for request in (r for r in reading if r.prompt_logprobs is not None):
            self._read_scored(request)
        # Token ids on the CPU: the decoder moves a pass's ids to the GPU in one copy.
        segments = [Segment(r.cache, torch.tensor(r.generated[-1:])) for r in decoding]
        served = list(decoding)
        budget = PREFILL_BESIDE if decoding or self._others_decoding() else PREFILL_ALONE
        for request in (r for r in reading if r.prompt_logprobs is None):
            part = request.prompt[request.prefilled : request.prefilled + budget]
            segments.append(Segment(request.cache, torch.tensor(part)))
            request.prefilled += len(part)
            budget -= len(part)
            served.append(request)
            if budget <= 0:
                break
        if not segments:  # only scored prompts were read
            return
        try:
            logits = self.decoder.run(segments)
        except Exception as exc:  # every reply in this pass fails with it
            for request in served:
                self._finish(request, exc)
            return
        self._send_unsent()  # the GPU computes the pass meanwhile
        for request in served:
            if not request.decoding:
                request.on_read(request.prefilled)
        rows = [index for index, request in enumerate(served) if request.decoding]
        choosing = [served[index] for index in rows]
        logits = logits[rows] if len(rows) < len(served) else logits
        best = best_of_each([request.chooser for request in choosing], logits)
        for request, row, row_best in zip(choosing, logits, best, strict=True):
            self._choose(request, row, row_best)

    def _read_scored(self, request: Request) -> None:
        """A part of a prompt whose tokens' log-probabilities are asked, in a pass of its own (the logits
        after each token, not only the last); once read whole, its first token is chosen from the last."""
        start = request.prefilled
        part = request.prompt[start : start + SCORED_PART]
        try:
            logits = self.decoder.logits_of_each(request.cache, torch.tensor(part))
        except Exception as exc:
            self._finish(request, exc)
            return
        request.prefilled += len(part)
        targets = request.prompt[start + 1 : request.prefilled + 1]
        request.scored += logprob_entries(logits[: len(targets)], targets, request.prompt_logprobs or 0)
        if not request.decoding:
            request.on_read(request.prefilled)
            return
        request.prompt_logged.set_result(request.scored)
        if request.max_new_tokens:
            self._choose(request, logits[-1], None)
        else:
            self._finish(request)

    def _choose(self, request: Request, logits: torch.Tensor, best: Best | None) -> None:
        if request.stop.is_set():  # stopped while this pass ran (its reader said so): no more tokens
            self._finish(request)
            return
        token = request.chooser.choose(logits, best)
        request.generated.append(token)
        if token in request.end_ids or len(request.generated) >= request.max_new_tokens:
            self._send(request, token)
            self._finish(request)
        elif self._overlap:
            self._unsent[request] = token
        elif self._send(request, token):
            self._finish(request)

    def _send(self, request: Request, token: int) -> bool:
        """Hand a token to its reader; True when the reply is to stop (then marked stopped)."""
        if request.on_token(token):
            request.stop.set()
            return True
        return False

    def _send_unsent(self) -> None:
        unsent, self._unsent = self._unsent, {}
        for request, token in unsent.items():
            self._send(request, token)

    def _finish(self, request: Request, error: BaseException | None = None) -> None:
        if (token := self._unsent.pop(request, None)) is not None:
            request.on_token(token)
        self.active.remove(request)
        cache, request.cache = request.cache, None
        if cache is not None:
            self.decoder.release(cache)
        if error is None:
            if cache is not None:  # it holds the prompt and the reply but the last token chosen
                self.kept.keep(request.owner, (request.prompt + request.generated)[: cache.length], cache)
                self._trim()
            request.done.set_result(request.generated)
        else:
            request.done.set_exception(error)


class Batcher:
    """A `Batch` run on the engine's torch thread while it holds replies; `submit` from any thread."""

    def __init__(
        self,
        decoder: Decoder,
        run_on_torch: Callable[[Callable[[], None]], object],
        gather: tuple[float, float] = (GATHER_GAP_S, GATHER_MAX_S),
        caches_at_most: Callable[[], int] = lambda: 0,
        others_decoding: Callable[[], bool] = lambda: False,
    ) -> None:
        self._batch = Batch(decoder, caches_at_most, others_decoding=others_decoding)
        self._gather_gap_s, self._gather_max_s = gather
        self._run_on_torch = run_on_torch
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._joining: list[Request] = []
        self._looping = False

    @property
    def decoding(self) -> bool:
        """A reply of its batch is decoding (read on the torch thread, between steps)."""
        return self._batch.decoding

    def submit(self, request: Request) -> Future[list[int]]:
        """Add a reply to the batch at its next step; its `done` resolves when it ends."""
        with self._lock:
            self._joining.append(request)
            self._arrived.notify()
            if self._looping:
                return request.done
            self._looping = True
        # The batch starts from idle: gather on the caller's thread, not on the torch thread, where
        # another model's batch keeps stepping meanwhile.
        self._gather()
        self._run_on_torch(self._loop)
        return request.done

    def _gather(self) -> None:
        """Wait while requests keep arriving close together (see GATHER_GAP_S), so that they start as one."""
        deadline = time.monotonic() + self._gather_max_s
        with self._arrived:
            while (left := min(self._gather_gap_s, deadline - time.monotonic())) > 0:
                waiting = len(self._joining)
                self._arrived.wait(left)
                if len(self._joining) == waiting:
                    return

    @torch.inference_mode()
    def _loop(self) -> None:
        """One step, then the next one queued behind what else waits for the torch thread."""
        try:
            with self._lock:
                joining, self._joining = self._joining, []
                if not joining and not self._batch.active:
                    self._looping = False
                    return
            for request in joining:
                self._batch.add(request)
            self._batch.step()
            self._run_on_torch(self._loop)
        except BaseException as exc:  # a bug here must not leave readers waiting forever
            logger.exception("the batch loop failed")
            with self._lock:
                self._looping = False
                stranded, self._joining = self._joining + self._batch.active, []
                self._batch.active.clear()
            for request in stranded:
                if not request.done.done():
                    request.done.set_exception(exc)


def generate(
    decoder: Decoder,
    prompt: list[int],
    max_new_tokens: int,
    chooser: TokenChooser,
    end_ids: Iterable[int],
    on_token: Callable[[int], bool | None],
) -> list[int]:
    """One reply alone, on this thread: the generated ids (the end id kept, as transformers keeps it);
    `on_token(id)` after each, True stops it."""
    batch = Batch(decoder)
    request = Request(
        prompt, max_new_tokens, chooser, frozenset(end_ids), lambda token: bool(on_token(token))
    )
    batch.add(request)
    while batch.active:
        batch.step()
    return request.done.result()
