"""A reply's reasoning apart from its answer. Models that think before they answer (Qwen3, the
DeepSeek-R1 distills, SmolLM3) write it between <think> and </think>; their chat templates drop it
from the history they are sent again, so the stored reply keeps it and the page folds it away."""

from __future__ import annotations

from dataclasses import dataclass

OPEN, CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class SplitReply:
    reasoning: str | None  # None: the reply has no reasoning
    answer: str
    thinking: bool  # the reasoning is still being written (no </think> yet)


def split_reasoning(text: str) -> SplitReply:
    """The reasoning of a reply that opens with <think> (or whose template opened it in the prompt, as
    DeepSeek-R1's distills do: the reply then only closes it), and the answer after it."""
    stripped = text.lstrip()
    if stripped.startswith(OPEN):
        reasoning, closed, answer = stripped[len(OPEN) :].partition(CLOSE)
        return SplitReply(reasoning.strip(), answer.lstrip(), thinking=not closed)
    before, closed, answer = text.partition(CLOSE)
    if closed and OPEN not in before:
        return SplitReply(before.strip(), answer.lstrip(), thinking=False)
    return SplitReply(None, text, thinking=False)


class ReasoningStream:
    """A streamed reply's reasoning apart from its answer, piece by piece, as split_reasoning splits a
    whole one (each part's blank edges dropped): `feed` gives each piece's (reasoning, answer) texts;
    text that may still turn out to be <think>, </think> or a blank edge is held until the next piece
    settles it. `inside`: the template opened the reasoning in the prompt (DeepSeek-R1's distills): the
    reply only closes it."""

    def __init__(self, inside: bool = False) -> None:
        self._state = "opened" if inside else "start"  # then "reasoning", "after" (</think> seen), "answer"
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        text, self._held = self._held + text, ""
        reasoning = ""
        if self._state == "start":
            begun = text.lstrip()
            if begun.startswith(OPEN):
                self._state, text = "opened", begun[len(OPEN) :]
            elif OPEN.startswith(begun):  # blank so far, or <think>'s beginning
                self._held = text
                return "", ""
            else:
                self._state = "answer"
        if self._state == "opened":
            text = text.lstrip()
            if not text:
                return "", ""
            self._state = "reasoning"
        if self._state == "reasoning":
            reasoning, closed, text = text.partition(CLOSE)
            if not closed:
                said = reasoning[: len(reasoning) - _tag_begun(reasoning, CLOSE)].rstrip()
                self._held = reasoning[len(said) :]  # a blank edge, or </think>'s beginning
                return said, ""
            reasoning, self._state = reasoning.rstrip(), "after"
        if self._state == "after":
            text = text.lstrip()
            if not text:
                return reasoning, ""
            self._state = "answer"
        return reasoning, text

    def flush(self) -> tuple[str, str]:
        """At the reply's end: what was held back, where it belongs (a blank edge: nowhere)."""
        held, self._held = self._held, ""
        if self._state in ("opened", "reasoning"):
            return held.rstrip(), ""
        return "", held if self._state == "answer" else held.strip()


def _tag_begun(text: str, tag: str) -> int:
    """The length of the longest ending of `text` that is a proper beginning of `tag`."""
    return next(
        (size for size in range(min(len(tag) - 1, len(text)), 0, -1) if tag.startswith(text[-size:])), 0
    )
