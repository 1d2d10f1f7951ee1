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
