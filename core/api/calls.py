"""A reply that may call tools, read as it streams: its text is sent until it starts a call (Hermes'
`<tool_call>`, text that could be its beginning held until the next token settles it; Llama's JSON
reply, which starts with `{`); from there it is held and read as calls when the reply ends. A reply
whose calls are no calls of the listed tools is sent as the text it is: nothing the model wrote is
lost."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from core.api.stops import StopSequences
from core.inference.events import Event, Finished, TextDelta
from core.inference.tool_calls import CallStyle, ToolCall


@dataclass(frozen=True)
class CallsMade:
    """The calls a reply makes, read once it ended (before its Finished)."""

    calls: tuple[ToolCall, ...]


class _CallWatch:
    """Feeds a reply's text through: what may be sent now; `held` once a call began (its text since)."""

    def __init__(self, style: CallStyle) -> None:
        self.style = style
        self.held: list[str] | None = None
        self._marks = StopSequences((style.mark,))
        self._start: str | None = ""  # a reply's blank start (Llama: a call only starts a reply); None: text

    def feed(self, text: str) -> str:
        if self.held is not None:
            self.held.append(text)
            return ""
        if self.style.after_text:
            sent = self._marks.feed(text)
            if self._marks.cut:
                self.held = [self._marks.rest]
            return sent
        if self._start is None:
            return text
        start = self._start + text
        begun = start.lstrip()
        if begun.startswith(self.style.mark):
            self.held, self._start = [start], None
        elif begun and not self.style.mark.startswith(begun):
            self._start = None
            return start
        else:  # blank so far, or the mark's beginning
            self._start = start
        return ""

    def flush(self) -> str:
        """At the reply's end: what was held back and began no call."""
        if self.style.after_text:
            return self._marks.flush()
        rest, self._start = self._start or "", None
        return rest


def with_calls(
    events: Iterator[Event], style: CallStyle, names: frozenset[str]
) -> Iterator[Event | CallsMade]:
    """`events` with the reply's calls of `names`, as `style` writes them, read out of its text:
    CallsMade, then Finished with the finish reason "tool_calls"."""
    watch = _CallWatch(style)
    try:
        for event in events:
            if isinstance(event, TextDelta):
                if text := watch.feed(event.text):
                    yield TextDelta(text)
            elif isinstance(event, Finished):
                written = "".join(watch.held) if watch.held is not None else watch.flush()
                read = style.read(written, names) if watch.held is not None else None
                if read is None:
                    if written:
                        yield TextDelta(written)
                    yield event
                else:
                    yield CallsMade(read[1])
                    yield Finished(replace(event.stats, finish_reason="tool_calls"))
            else:
                yield event
    finally:
        events.close()  # type: ignore[attr-defined]  # frees the engine's turn, however this ends
