"""What a reply streams to its reader, whoever produces it (the local engine or a remote server).

No torch here: the chat service, the API and the remote provider import these without the engine.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReplyStats:
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None
    tokens_per_s: float | None
    finish_reason: str  # "stop", "length", "stopped", "error"
    model: str
    cached_tokens: int = 0  # prompt tokens an earlier reply's kept cache held (not prefilled again)
    reasoning_tokens: int = 0  # of the completion, a thinking model's reasoning (where it was told apart)
    stop_sequence: str | None = None  # the request's stop sequence the reply ended before (finish "stop")


@dataclass(frozen=True)
class Queued:
    """The request waits; `ahead` requests are before it (0: it is next)."""

    ahead: int


@dataclass(frozen=True)
class Reading:
    """A long prompt is being read: `done` of its `total` tokens are in the cache (after each part
    read, before the reply's first token)."""

    done: int
    total: int


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    stats: ReplyStats


@dataclass(frozen=True)
class TokenLogprob:
    """A token of the reply (its id, text and bytes: a character may span tokens) and its log-probability
    under the model; `top`: the likeliest tokens at its place, likeliest first (OpenAI's top_logprobs)."""

    id: int
    token: str
    raw: bytes
    logprob: float | None  # None: a prompt's first token (nothing came before it)
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Logprobs:
    """The log-probabilities of the reply's tokens that arrived since the last (only where asked), sent
    before or with their text."""

    tokens: tuple[TokenLogprob, ...]


Event = Queued | Reading | TextDelta | Logprobs | Finished


@dataclass(frozen=True)
class PromptFit:
    """A prompt measured against the context window: its tokens and the reply's room (max new tokens)."""

    prompt_tokens: int
    max_new_tokens: int
    context_tokens: int
