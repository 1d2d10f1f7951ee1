"""Replies held to a format: JSON (OpenAI's `response_format`: any object, or a value that fits a JSON
schema) or a regular expression (vLLM's guided_regex and guided_choice).

At each step the tokens that would break the format are masked before the sampler chooses (llguidance,
the constraint engine of llama.cpp's and vLLM's structured outputs, computes the mask from the model's
own tokenizer: ~0.1 ms a token with its unpacking for a 151k vocabulary here, `bench/formats.py`); once
the value is whole, only the reply's end is left. The JSON is compact (no whitespace between its
tokens): a small model held to a format otherwise tends to write blank lines until its token limit.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from copy import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import MessageError

if TYPE_CHECKING:
    import torch

MAX_SCHEMA_CHARS = 64_000  # a schema's JSON text; llguidance's own limits bound its grammar's size
_OPTIONS = {"whitespace_flexible": False}
_TOKENIZER: list[tuple[Any, int, frozenset[int], Any]] = []  # the last one built, with what it was built of
_TOKENIZER_LOCK = threading.Lock()


@dataclass(frozen=True)
class ReplyFormat:
    """What the reply must be: a JSON object (none given), a value that fits `schema` (JSON text), text
    that `regex` matches whole (vLLM's guided_regex, and its guided_choice as an alternation), or what a
    `lark` grammar (llguidance's syntax) accepts. With a `trigger` the format holds only once the reply
    writes it (llama.cpp's lazy grammars: a tool call after free text), from the trigger on; where it
    may come (`anywhere`) or only as the reply's start (after blank space: else the reply stays free),
    and only after `after` where that is given (a thinking model's reasoning may name a call freely).
    """

    schema: str | None = None
    regex: str | None = None
    lark: str | None = None
    trigger: str | None = None
    anywhere: bool = True
    after: str | None = None  # the trigger counts only once the reply has written this (</think>)

    def as_openai(self) -> dict[str, Any]:
        """A JSON format as OpenAI's API asks it (`response_format`), for a model on a server."""
        if self.schema is None:
            return {"type": "json_object"}
        return {"type": "json_schema", "json_schema": {"name": "reply", "schema": json.loads(self.schema)}}

    @property
    def grammar(self) -> str:
        from llguidance import LLMatcher

        if self.lark is not None:
            return self.lark
        if self.regex is not None:
            return LLMatcher.grammar_from_regex(self.regex)
        schema = json.loads(self.schema) if self.schema is not None else {"type": "object"}
        return LLMatcher.grammar_from_json_schema(schema, overrides=_OPTIONS)


def checked_format(schema: dict[str, Any] | None) -> ReplyFormat:
    """A reply format for `schema` (None: any JSON object); MessageError, naming the fault in a sentence,
    where the schema is too long or is not one llguidance can hold a reply to."""
    text = None if schema is None else json.dumps(schema, ensure_ascii=False)
    if text is not None and len(text) > MAX_SCHEMA_CHARS:
        raise MessageError(f"The JSON schema is longer than {MAX_SCHEMA_CHARS:,} characters.",
                           reason="schema_too_long", limit=MAX_SCHEMA_CHARS)  # fmt: skip
    return _compiled(ReplyFormat(text), "The JSON schema")


def checked_pattern(regex: str) -> ReplyFormat:
    """A reply format for text that `regex` (Rust's syntax, as vLLM's) matches whole; MessageError where it
    is not one."""
    return _compiled(ReplyFormat(regex=regex), "The regular expression")


def checked_grammar(
    lark: str, trigger: str | None = None, *, anywhere: bool = True, after: str | None = None
) -> ReplyFormat:
    """A reply format for a Lark grammar (held once `trigger` is written, where one is given);
    MessageError where llguidance cannot compile it (its words in the `said` parameter)."""
    return _compiled(ReplyFormat(lark=lark, trigger=trigger, anywhere=anywhere, after=after), "The grammar")


def choice_pattern(choices: list[str]) -> str:
    """The regular expression that matches exactly one of `choices` (vLLM's guided_choice)."""
    return "|".join(re.escape(choice) for choice in choices)


def _compiled(reply_format: ReplyFormat, what: str) -> ReplyFormat:
    from llguidance import LLMatcher

    try:
        failed, said = LLMatcher.validate_grammar_with_warnings(reply_format.grammar)
    except ValueError as exc:
        failed, said = True, [str(exc)]
    if failed:
        first = " ".join(str(said[0]).split())[:300] if said else "it cannot be read"
        raise MessageError(f"{what} cannot hold a reply: {first}.", reason="format_invalid", said=first)
    return reply_format


class FormatGuide:
    """One reply's place in its format: which tokens may come next, and each token chosen taken in."""

    def __init__(
        self, reply_format: ReplyFormat, backend: Any, vocabulary: int, ends: frozenset[int]
    ) -> None:
        """`backend`: the model's tokenizers.Tokenizer; `vocabulary`: its logits' width; `ends`: the tokens
        that end a reply (allowed once the value is whole)."""
        from llguidance import LLMatcher

        self.vocabulary = vocabulary
        self.ends = ends
        self._backend = backend
        self._matcher = LLMatcher(_tokenizer(backend, vocabulary, ends), reply_format.grammar, log_level=0)
        self._waiting = reply_format.trigger  # None: the format holds (or never will: `_free`)
        self._anywhere = reply_format.anywhere
        self._free = False  # a trigger that had to start the reply did not
        self._after = reply_format.after if reply_format.trigger else None  # still to come before it
        self._written = ""  # while waiting: the reply's last characters, where the trigger is looked for

    @property
    def holding(self) -> bool:
        """Whether the format holds the reply now (a lazy one once its trigger was written)."""
        return self._waiting is None and not self._free

    def allowed(self, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """A boolean mask over the vocabulary: True where a token keeps the reply in its format (only the
        ends where the matcher failed, which a masked choice never makes it do); None while a lazy
        format waits for its trigger (any token may come)."""
        import torch

        if not self.holding:
            return None
        if self._matcher.is_error():
            mask = torch.zeros(self.vocabulary, dtype=torch.bool)
            mask[sorted(self.ends)] = True
            return mask.to(device)
        words = torch.frombuffer(bytearray(self._matcher.compute_bitmask()), dtype=torch.uint8)
        bits = (words.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1  # little-endian bit order
        return bits.flatten()[: self.vocabulary].bool().to(device)

    def advance(self, token: int) -> None:
        if self._free:
            return
        if self._waiting is None:
            self._matcher.consume_token(token)
            return
        trigger, written = (
            self._waiting,
            self._written + self._backend.decode([token], skip_special_tokens=False),
        )
        if self._after is not None:
            at = written.find(self._after)
            if at < 0:
                self._written = written[-len(self._after) :]
                return
            written, self._after = written[at + len(self._after) :], None
        if self._anywhere:
            at = written.find(trigger)
            self._written = written[-len(trigger) :]  # enough to find a trigger cut across tokens
        else:
            start = written.lstrip()
            if not start.startswith(trigger) and trigger.startswith(start):  # blank, or the trigger's start
                self._written = written
                return
            at = len(written) - len(start) if start.startswith(trigger) else -1
            self._free = at < 0
        if at >= 0:  # the format holds from the trigger on (the text it was written in, read again)
            self._waiting = None
            self._matcher.consume_tokens(self._backend.encode(written[at:], add_special_tokens=False).ids)


def token_bytes(backend: Any, vocabulary: int, ends: frozenset[int]) -> Callable[[int], bytes]:
    """A token's bytes as the model writes them (a character may be spelled over several tokens), from
    llguidance's view of the tokenizer (built once a load, as for a format)."""
    decode = _tokenizer(backend, vocabulary, ends).decode_bytes
    return lambda token: decode([token]).removeprefix(b"\xff")  # llguidance marks special tokens so


def _tokenizer(backend: Any, vocabulary: int, ends: frozenset[int]) -> Any:
    """llguidance's view of the model's tokenizer (1 s to build for a 151k vocabulary here: the last one
    is kept, beside the backend it was built of; one model is loaded at a time)."""
    from llguidance import LLTokenizer

    with _TOKENIZER_LOCK:
        kept = _TOKENIZER[0] if _TOKENIZER else None
        if kept is None or kept[0] is not backend or kept[1:3] != (vocabulary, ends):
            plain = copy(backend)
            plain.no_padding()
            plain.no_truncation()
            built = LLTokenizer(plain.to_str(), n_vocab=vocabulary, eos_token=sorted(ends))
            _TOKENIZER[:] = [(backend, vocabulary, ends, built)]
        return _TOKENIZER[0][3]
