"""How likely a text is under a model: each token's log-probability given the text before it, and the
perplexity. A user's way to see what a setting (int4, int8, 16-bit) costs in quality on their own
text, as llama.cpp's perplexity tool does; teacher-forced, on the weights as the engine runs them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import MessageError
from core.inference.loading import LoadedParts

if TYPE_CHECKING:
    from core.inference.sampler import LogprobEntry

CHUNK_TOKENS = 256  # logits for a chunk at a time: a whole text's would be tokens × vocabulary floats
CHARS_PER_TOKEN = 64  # more than any token covers: a text is cut to the window × this before tokenizing
MAX_TEXT_CHARS = 16 * 1024 * 1024  # what a caller reads of a file at most (a window of 256K tokens)


@dataclass(frozen=True)
class ScoredToken:
    id: int
    text: str
    logprob: float  # natural log of the probability the model gave this token after the ones before


@dataclass(frozen=True)
class TextScore:
    model: str
    weights: str
    tokens: tuple[ScoredToken, ...]  # every token after the first (the first has nothing before it)
    truncated: bool  # the text was longer than the context window: its first window was scored

    @property
    def mean_logprob(self) -> float:
        return sum(token.logprob for token in self.tokens) / len(self.tokens)

    @property
    def perplexity(self) -> float:
        return math.exp(-self.mean_logprob)


def score_text(parts: LoadedParts, text: str) -> TextScore:
    """Score `text` (run on the engine's torch thread)."""
    context = parts.info.context_length
    kept = text[: context * CHARS_PER_TOKEN]  # a book is not tokenized whole for its first window
    ids = parts.tokenizer.encode(kept, special=True)
    truncated = len(ids) > context or len(kept) < len(text)
    ids = ids[:context]
    if len(ids) < 2:
        raise MessageError("The text needs at least two tokens to be scored.")
    tokens = tuple(
        ScoredToken(token, parts.tokenizer.piece(token), logprob)
        for token, logprob, _ in logprobs_of(parts, ids)
    )
    return TextScore(parts.info.key, parts.info.weights, tokens, truncated)


def logprobs_of(parts: LoadedParts, ids: list[int], alternatives: int = 0) -> list[LogprobEntry]:
    """Each token's log-probability after the ones before it (the first has none), with the likeliest
    `alternatives` at its place: the sequence read a chunk at a time (run on the engine's torch thread)."""
    import torch

    from core.inference.sampler import logprob_entries

    sequence = torch.tensor(ids, device=parts.info.device)
    logits_of_each = _logits_reader(parts, len(ids))
    entries: list[LogprobEntry] = []
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, CHUNK_TOKENS):
            end = min(start + CHUNK_TOKENS, len(ids) - 1)
            entries += logprob_entries(
                logits_of_each(sequence[start:end]), ids[start + 1 : end + 1], alternatives
            )
    return entries


def _logits_reader(parts: LoadedParts, tokens: int) -> Callable[[Any], Any]:
    """A function that appends a chunk of ids (1-D) to one sequence and gives the logits after each:
    the lean decoder's, as replies run, else transformers' forward."""
    if parts.decoder is not None:
        from core.inference.decoder import KvCache

        cache = KvCache(parts.decoder, tokens)
        return lambda chunk: parts.decoder.logits_of_each(cache, chunk)
    from transformers import DynamicCache

    cache = DynamicCache()
    return lambda chunk: parts.model(chunk.unsqueeze(0), cache=cache, use_cache=True).logits[0]
