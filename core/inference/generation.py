"""One reply: the prompt through the chat template, tokens generated on the engine's torch thread,
text streamed to the reader as it is decoded, and the reply's statistics at the end.

A stop event is read after every token (a stopping criterion for `model.generate`, each step of the
batch for the lean decoder), so Stop, or a reader that goes away, ends generation within a token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from core.errors import GenerationError
from core.inference import prompts
from core.inference.events import Event, Finished, Logprobs, Reading, ReplyStats, TextDelta, TokenLogprob
from core.inference.loading import LoadedParts
from core.inference.params import DEFAULT_TOP_K, GenerationParams, LogitBias
from core.inference.prompts import Prompt
from core.inference.scoring import logprobs_of

if TYPE_CHECKING:
    from core.inference.batching import Batcher, Request
    from core.inference.formats import FormatGuide, ReplyFormat
    from core.inference.sampler import LogprobEntry, Sampling
    from core.inference.streaming import ReplyStreamer

RunOnTorchThread = Callable[[Callable[[], Any]], Future[Any]]


class StopOnEvent:
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


def stream_reply(
    parts: LoadedParts,
    prompt: Prompt,
    params: GenerationParams,
    stop: threading.Event,
    ignore_eos: bool,
    context: int,
    run_on_torch: RunOnTorchThread,
    batcher: Batcher | None = None,
    owner: str = "",
    reply_format: ReplyFormat | None = None,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    generate: bool = True,
    bias: LogitBias = (),
) -> Iterator[Event]:
    """TextDelta events as the reply is decoded (prompt and reply within `context` tokens), then
    Finished with its statistics. With a `batcher` (the lean decoder) the reply joins the running
    batch, and a prompt read in parts says how far it is after each (Reading); otherwise
    `model.generate` runs it alone on the torch thread. `reply_format`: the JSON the reply is held to;
    `logprobs`: Logprobs events before the text of their tokens, with this many alternatives each;
    `prompt_logprobs`: first, the prompt's tokens' (the first has none), with this many alternatives.
    `generate` False: no reply, the prompt is only read (where its tokens' log-probabilities are asked);
    `bias`: added to those tokens' logits before sampling (OpenAI's logit_bias)."""
    from core.inference.streaming import ReplyStreamer

    inputs = _prompt(parts, prompt, params.thinking)
    prompt_tokens = int(inputs["input_ids"].shape[1])
    # Callers measured the prompt first (prompts.fit); measured again here, the cache never outgrows it.
    room = prompts.fit(prompt_tokens, context, params.max_new_tokens).max_new_tokens if generate else 0
    params = replace(params, max_new_tokens=max(room, 1))
    streamer = ReplyStreamer(parts.tokenizer, skip_prompt=True)
    criterion = StopOnEvent(stop)
    started = time.perf_counter()
    if not room and prompt_logprobs is None:  # nothing to read the prompt for
        yield Finished(_stats(parts.info.key, prompt_tokens, 0, 0, started, criterion, "length"))
        return
    request = None
    guide = _guide(parts, reply_format) if reply_format is not None else None
    if batcher is not None:
        request = _request(parts, inputs["input_ids"][0], params, streamer, criterion, ignore_eos, owner,
                           guide, logprobs, prompt_logprobs, room, bias)  # fmt: skip
        worker = batcher.submit(request)
        log, prompt_logged = request.chooser.logged, request.prompt_logged
    else:
        head = None if logprobs is None else _HeadLog(parts.model.get_output_embeddings(), logprobs)
        prompt_logged = Future()

        def work() -> list[int]:
            if prompt_logprobs is not None:
                ids = inputs["input_ids"][0].tolist()
                prompt_logged.set_result(logprobs_of(parts, ids, prompt_logprobs))
            return (
                _generate(parts, inputs, params, streamer, criterion, ignore_eos, guide, head, bias)
                if room
                else []
            )

        worker = run_on_torch(work)
        log = head.logged if head is not None else []
    logged = None
    if logprobs is not None or prompt_logprobs is not None:
        first = int(inputs["input_ids"][0, 0])
        logged = _Logged(parts, log, (first, prompt_logged) if prompt_logprobs is not None else None)
    try:
        yield from _text(streamer, worker, logged)
    finally:
        stop_requested = stop.is_set()
        stop.set()
        if not threading.current_thread().name.startswith("engine-torch"):
            wait([worker])  # a collected generator may close anywhere; the outcome is read below
    if (error := worker.exception()) is not None:
        raise GenerationError(f"Generation failed: {error}") from error
    completion = len(worker.result())
    reason = "stopped" if stop_requested else "length" if completion >= room else "stop"
    cached = request.cached if request else 0
    yield Finished(_stats(parts.info.key, prompt_tokens, cached, completion, started, criterion, reason))


def _prompt(parts: LoadedParts, prompt: Prompt, thinking: bool) -> dict[str, Any]:
    """The prompt's ids (a batch of one) and attention mask, as transformers' generate takes them."""
    import torch

    ids = prompts.prompt_ids(parts.tokenizer, prompt, thinking)
    input_ids = torch.tensor([ids], device=parts.info.device)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def _text(
    streamer: ReplyStreamer, worker: Future[Any], logged: _Logged | None = None
) -> Iterator[Reading | TextDelta | Logprobs]:
    ended = False  # the worker is done: one more empty wait, and it ended without a word (it failed)
    while (pieces := streamer.take(timeout=0.1)) is not None:
        if logged is not None and (chances := logged.of_prompt()):
            yield chances
        if not pieces:
            if ended:
                break
            ended = worker.done()
            continue
        if logged is not None and (chances := logged.upto(streamer.tokens)):
            yield chances
        for piece in pieces:
            yield piece if isinstance(piece, Reading) else TextDelta(piece)
    if logged is not None:
        yield from (chances for chances in (logged.of_prompt(), logged.upto(None)) if chances)


class _Logged:
    """The log-probabilities the reply's chooser keeps, as the reader hands them out (as far as its
    tokens have reached the streamer): each token's text and bytes, its end of turn left out; and where
    `prompt` (its first token, and the others' entries once read), the prompt's first."""

    def __init__(
        self, parts: LoadedParts, logged: list[LogprobEntry],
        prompt: tuple[int, Future[list[LogprobEntry]]] | None = None,
    ) -> None:  # fmt: skip
        from core.inference.formats import token_bytes

        ends = frozenset(_reply_end_ids(parts))
        self._logged, self._ends, self._sent, self._prompt = logged, ends, 0, prompt
        self._bytes = token_bytes(parts.tokenizer.backend, _width(parts), ends)

    def of_prompt(self) -> Logprobs | None:
        """The prompt's tokens, once read and not handed out yet (its first token has no log-probability:
        nothing came before it)."""
        if self._prompt is None or not self._prompt[1].done() or self._prompt[1].exception() is not None:
            return None
        (first, read), self._prompt = self._prompt, None
        rest = (self._entry(token, logprob, top) for token, logprob, top in read.result())
        return Logprobs((self._entry(first, None), *rest))

    def upto(self, count: int | None) -> Logprobs | None:
        """The entries not handed out yet, up to the `count`-th token (None: all)."""
        new = self._logged[self._sent : count]
        self._sent += len(new)
        tokens = tuple(
            self._entry(token, logprob, top) for token, logprob, top in new if token not in self._ends
        )
        return Logprobs(tokens) if tokens else None

    def _entry(
        self, token: int, logprob: float | None, top: tuple[tuple[int, float], ...] = ()
    ) -> TokenLogprob:
        raw = self._bytes(token)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # a piece of a character: spelled as its bytes (vLLM's "bytes:\\xe4")
            text = "bytes:" + "".join(f"\\x{byte:02x}" for byte in raw)
        return TokenLogprob(
            token, text, raw, logprob, tuple(self._entry(other, chance) for other, chance in top)
        )


def _stats(
    key: str, prompt_tokens: int, cached: int, completion: int, started: float, criterion: StopOnEvent,
    reason: str,
) -> ReplyStats:  # fmt: skip
    first_token_at = criterion.first_token_at  # the first generated token, visible text or not
    decode_s = time.perf_counter() - first_token_at if first_token_at else 0.0
    return ReplyStats(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        ttft_s=(first_token_at - started) if first_token_at else None,
        tokens_per_s=(completion - 1) / decode_s if decode_s > 0 and completion > 1 else None,
        finish_reason=reason,
        model=key,
        cached_tokens=cached,
    )


def _generate(
    parts: LoadedParts,
    inputs: Any,
    params: GenerationParams,
    streamer: Any,
    criterion: StopOnEvent,
    ignore_eos: bool,
    guide: FormatGuide | None = None,
    head: _HeadLog | None = None,
    bias: LogitBias = (),
) -> list[int]:
    """`model.generate` on the torch thread, for a model the lean decoder does not run; the new ids.
    `head`: each token's log-probability is logged."""
    import torch

    with torch.inference_mode():
        options = _generate_options(parts, inputs, params, streamer, criterion, ignore_eos, guide, bias)
        if head is not None:
            options["stopping_criteria"].append(head)
        try:
            return parts.model.generate(**options)[0, inputs["input_ids"].shape[1] :].tolist()
        finally:
            if head is not None:
                head.close()


class _HeadLog:
    """Log-probabilities for transformers' generate, as the chooser logs them: each step's raw logits
    as the model's head writes them (a forward hook: generate's processors would show them penalised),
    logged with the token chosen from them once the sequence holds it (a stopping criterion's place)."""

    def __init__(self, head: Any, alternatives: int) -> None:
        self.alternatives = alternatives
        self.logged: list[LogprobEntry] = []
        self._row: Any = None
        self._hook = head.register_forward_hook(self._written)

    def _written(self, _module: Any, _inputs: Any, output: Any) -> None:
        self._row = output[0, -1]

    def __call__(self, input_ids: Any, scores: Any, **_kwargs: Any) -> Any:
        import torch

        from core.inference.sampler import logprob_entry

        if self._row is not None:
            self.logged.append(logprob_entry(self._row, int(input_ids[0, -1]), self.alternatives))
            self._row = None
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def close(self) -> None:
        self._hook.remove()


def _generate_options(
    parts: LoadedParts, inputs: Any, params: GenerationParams, streamer: Any, criterion: StopOnEvent,
    ignore_eos: bool, guide: FormatGuide | None = None, bias: LogitBias = (),
) -> dict[str, Any]:  # fmt: skip
    """transformers' generate with the same sampling (for architectures the lean decoder does not run)."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    tokenizer = parts.tokenizer
    sampling = sampling_for(params, parts.model.generation_config)
    options: dict[str, Any] = {
        **inputs,
        "streamer": streamer,
        "max_new_tokens": params.max_new_tokens,
        "do_sample": not sampling.greedy,
        "repetition_penalty": sampling.repetition_penalty,
        "stopping_criteria": StoppingCriteriaList([criterion]),
        "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id,
        "eos_token_id": sorted(_reply_end_ids(parts)),
        "top_k": sampling.top_k,
    }
    if not sampling.greedy:
        options.update(temperature=sampling.temperature, top_p=sampling.top_p, min_p=sampling.min_p or None)
    processors: list[Any] = [_Biased(bias)] if bias else []  # first, as the engine's sampler adds it
    if sampling.presence_penalty or sampling.frequency_penalty:
        processors.append(
            _OpenAIPenalties(
                sampling.presence_penalty, sampling.frequency_penalty, inputs["input_ids"].shape[1]
            )
        )
    if guide is not None:
        processors.append(_Guided(guide, inputs["input_ids"].shape[1]))
    if processors:
        options["logits_processor"] = LogitsProcessorList(processors)
    if sampling.seed is not None:
        import torch

        torch.manual_seed(sampling.seed)  # generate draws from torch's global generator (this thread's)
    if ignore_eos:
        options["min_new_tokens"] = params.max_new_tokens
    return options


class _Biased:
    """OpenAI's logit_bias for transformers' generate: added to those tokens' logits."""

    def __init__(self, bias: LogitBias) -> None:
        self.ids, self.added = [token for token, _ in bias], [added for _, added in bias]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        added = scores.new_zeros(scores.shape[-1]).index_put_(
            (scores.new_tensor(self.ids, dtype=int),), scores.new_tensor(self.added), accumulate=True
        )
        return scores + added


class _OpenAIPenalties:
    """OpenAI's penalties for transformers' generate, as the engine's sampler applies them: presence
    once from each seen token, frequency once for each time the reply chose it."""

    def __init__(self, presence: float, frequency: float, prompt_tokens: int) -> None:
        self.presence, self.frequency, self.prompt_tokens = presence, frequency, prompt_tokens

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        seen = scores.new_zeros(scores.shape, dtype=bool).scatter_(1, input_ids, True)
        chosen = scores.new_zeros(scores.shape).scatter_add_(
            1, input_ids[:, self.prompt_tokens :], scores.new_ones(input_ids[:, self.prompt_tokens :].shape)
        )
        return scores - self.presence * seen - self.frequency * chosen


class _Guided:
    """A reply format for transformers' generate: the token chosen last is taken in, then the tokens that
    would break the format are masked (last, so no processor after it lifts one)."""

    def __init__(self, guide: FormatGuide, prompt_tokens: int) -> None:
        self.guide, self.prompt_tokens = guide, prompt_tokens

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if input_ids.shape[1] > self.prompt_tokens:
            self.guide.advance(int(input_ids[0, -1]))
        allowed = self.guide.allowed(scores.device)
        return scores if allowed is None else scores.masked_fill(~allowed[: scores.shape[-1]], float("-inf"))


def _guide(parts: LoadedParts, reply_format: ReplyFormat) -> FormatGuide:
    """The reply's place in its format, over the model's logits (their width) and its end tokens."""
    from core.inference.formats import FormatGuide

    return FormatGuide(reply_format, parts.tokenizer.backend, _width(parts), frozenset(_reply_end_ids(parts)))


def _width(parts: LoadedParts) -> int:
    """The model's logits' width."""
    return parts.decoder.vocabulary if parts.decoder is not None else parts.model.config.vocab_size


def sampling_for(params: GenerationParams, generation_config: Any) -> Sampling:
    """The reply's sampling: the request's settings, with the model's own top_k where none was asked, and
    DEFAULT_TOP_K where the model has none either."""
    from core.inference.sampler import Sampling  # imports torch: not before the first reply

    own = int(getattr(generation_config, "top_k", 0) or 0)
    top_k = params.top_k if params.top_k is not None else own or DEFAULT_TOP_K
    return Sampling(
        temperature=params.temperature, top_k=top_k, top_p=params.top_p, min_p=params.min_p,
        repetition_penalty=params.repetition_penalty, presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty, seed=params.seed,
    )  # fmt: skip


def end_ids(generation_config: Any) -> set[int]:
    end = generation_config.eos_token_id
    return set(end if isinstance(end, (list, tuple)) else [] if end is None else [end])


def _reply_end_ids(parts: LoadedParts) -> set[int]:
    """The tokens that end a reply: its generation_config's, and its chat template's end of turn."""
    return end_ids(parts.model.generation_config) | parts.tokenizer.turn_end_ids


def _request(
    parts: LoadedParts, prompt: Any, params: GenerationParams, streamer: ReplyStreamer,
    criterion: StopOnEvent, ignore_eos: bool, owner: str, guide: FormatGuide | None,
    logprobs: int | None, prompt_logprobs: int | None, room: int, bias: LogitBias,
) -> Request:  # fmt: skip
    """The reply as a request for the batch, streamed as generate streams it; `room`: its tokens at most
    (0: none, the prompt is only read)."""
    from core.inference.batching import Request
    from core.inference.sampler import TokenChooser

    config = parts.model.generation_config
    ends = _reply_end_ids(parts)
    prompt_ids = prompt.tolist()
    chooser = TokenChooser(sampling_for(params, config), parts.decoder.vocabulary, parts.info.device,
                           seen=prompt_ids, never=ends if ignore_eos else (), guide=guide,
                           logprobs=logprobs, bias=bias)  # fmt: skip
    streamer.put(prompt)  # the streamer skips the prompt it is given first

    def on_token(token: int) -> bool:
        streamer.put_token(token)
        return criterion.token_done()

    ends_reply = frozenset() if ignore_eos else frozenset(ends)
    request = Request(prompt_ids, room, chooser, ends_reply, on_token, stop=criterion.event, owner=owner,
                      on_read=lambda done: streamer.reading(done, len(prompt_ids)),
                      prompt_logprobs=prompt_logprobs)  # fmt: skip
    request.done.add_done_callback(lambda _done: streamer.end())
    return request
