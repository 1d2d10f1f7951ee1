"""A thinking model's reasoning sent apart from its answer: the text between <think> and </think> (Qwen3,
the DeepSeek-R1 distills, SmolLM3) as ReasoningDelta events, which a chat completion sends as
`reasoning_content` (DeepSeek's field, as llama.cpp's server does by default and vLLM with its
reasoning parser), a response as a reasoning item and Ollama as `message.thinking`; the answer alone
stays the reply's content."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from core.chat.reasoning import ReasoningStream
from core.inference.events import Event, Finished, TextDelta


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


def with_reasoning(
    events: Iterator[Event], inside: bool, count: Callable[[str], int]
) -> Iterator[Event | ReasoningDelta]:
    """`events` with the reply's reasoning apart; `inside`: the template opened it in the prompt. Its
    tokens are counted from its text (`count`: the model's tokenizer) for the reply's statistics."""
    stream, reasoning = ReasoningStream(inside), []
    try:
        for event in events:
            if isinstance(event, TextDelta):
                parts = stream.feed(event.text)
            elif isinstance(event, Finished):
                parts = stream.flush()
            else:
                yield event
                continue
            reasoning.append(parts[0])
            yield from _parts(*parts)
            if isinstance(event, Finished):
                tokens = min(count("".join(reasoning)), event.stats.completion_tokens)
                yield Finished(replace(event.stats, reasoning_tokens=tokens))
    finally:
        events.close()  # type: ignore[attr-defined]  # frees the engine's turn, however this ends


def _parts(reasoning: str, answer: str) -> Iterator[ReasoningDelta | TextDelta]:
    if reasoning:
        yield ReasoningDelta(reasoning)
    if answer:
        yield TextDelta(answer)
