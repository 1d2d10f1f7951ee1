"""A reply that may call tools, read as it streams: its text is sent until it starts a `<tool_call>`
block (text that could be the block's beginning is held until the next token settles it); what
follows is held and read as calls when the reply ends. A reply whose blocks are no calls of the listed
tools is sent as the text it is: nothing the model wrote is lost."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from core.api.stops import StopSequences
from core.inference.events import Event, Finished, TextDelta
from core.inference.tool_calls import CALL_MARK, ToolCall, read_calls


@dataclass(frozen=True)
class CallsMade:
    """The calls a reply makes, read once it ended (before its Finished)."""

    calls: tuple[ToolCall, ...]


def with_calls(
    events: Iterator[Event], names: frozenset[str], opening: str = ""
) -> Iterator[Event | CallsMade]:
    """`events` with the reply's calls of `names` read out of its text: CallsMade, then Finished with
    the finish reason "tool_calls". `opening`: the text the reply was started with (a call that must be
    made: every word is held)."""
    watch = StopSequences((CALL_MARK,))
    held: list[str] | None = [opening] if opening else None  # None: text, sent as it comes
    try:
        for event in events:
            if isinstance(event, TextDelta):
                if held is not None:
                    held.append(event.text)
                elif text := watch.feed(event.text):
                    yield TextDelta(text)
                if held is None and watch.cut:
                    held = [watch.rest]
            elif isinstance(event, Finished):
                written = "".join(held) if held is not None else watch.flush()
                read = read_calls(written, names) if held is not None else None
                if read is None:
                    if shown := written.removeprefix(opening):
                        yield TextDelta(shown)
                    yield event
                else:
                    yield CallsMade(read[1])
                    yield Finished(replace(event.stats, finish_reason="tool_calls"))
            else:
                yield event
    finally:
        events.close()  # type: ignore[attr-defined]  # frees the engine's turn, however this ends
