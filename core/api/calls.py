"""A reply that may call tools, read as it streams: its text is sent until it starts a call (Hermes'
`<tool_call>`, text that could be its beginning held until the next token settles it; Llama's JSON
reply, which starts with `{`); from there it is held and read as calls when the reply ends. A reply
whose calls are no calls of the listed tools is sent as the text it is: nothing the model wrote is
lost. A streamed reply also says each call's name as soon as the model wrote it, then its arguments'
JSON in pieces as they come (as OpenAI's and vLLM's streams do); the calls' grammar (core.inference.
tool_calls) makes the text a call once it began, so only a reply cut inside a call (its length, a stop
sequence) ends one unfinished."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace

from core.api.stops import StopSequences
from core.inference.events import Event, Finished, TextDelta
from core.inference.tool_calls import CallStyle, ToolCall


@dataclass(frozen=True)
class CallBegun:
    """A streamed reply's call, named as soon as the model wrote its name: its arguments follow."""

    index: int
    name: str


@dataclass(frozen=True)
class CallArguments:
    """A piece of the JSON of a streamed call's arguments, as the model wrote it."""

    index: int
    text: str


@dataclass(frozen=True)
class CallsMade:
    """The calls a reply makes, read once it ended (before its Finished); `cut`: it ended inside a call
    already begun in its stream (its length, a stop sequence), and the calls begun end as they are."""

    calls: tuple[ToolCall, ...]
    cut: bool = False


# A call's beginning as the grammar writes it (the end of the call before it, Hermes' mark, the name),
# up to its arguments' first brace; a buffer longer than HEAD_MOST that is no beginning ends the reading.
_HEAD = re.compile(
    r'[\s}]*(?:</tool_call>\s*)?(?:<tool_call>\s*)?\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*'
    r'"(?:arguments|parameters)"\s*:\s*(?=\{)'
)
HEAD_MOST = 512


class _CallStream:
    """The calls' text read as it comes: each call's name once written, then its arguments in pieces up
    to the brace that closes them (strings' braces and escapes passed over). Text it cannot read as a
    call's beginning ends the reading: the calls not begun are then said whole at the reply's end."""

    def __init__(self) -> None:
        self.begun = 0
        self._buffer = ""
        self._depth: int | None = None  # within a call's arguments: the braces open; None between calls
        self._in_string = self._escaped = False
        self._lost = False

    def feed(self, text: str) -> list[CallBegun | CallArguments]:
        if self._lost:
            return []
        self._buffer += text
        read: list[CallBegun | CallArguments] = []
        while self._buffer:
            if self._depth is None:
                head = _HEAD.match(self._buffer)
                if head is None:
                    self._lost = len(self._buffer) > HEAD_MOST
                    break
                try:
                    name = json.loads(head.group(1))
                except ValueError:
                    self._lost = True
                    break
                read.append(CallBegun(self.begun, name))
                self.begun += 1
                self._buffer, self._depth = self._buffer[head.end() :], 0
            end = self._arguments_end()
            if piece := self._buffer[:end]:
                read.append(CallArguments(self.begun - 1, piece))
            self._buffer = self._buffer[end:]
        return read

    def _arguments_end(self) -> int:
        """How much of the buffer is the current call's arguments (all of it while they go on)."""
        assert self._depth is not None
        for place, char in enumerate(self._buffer):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._depth = None
                    return place + 1
        return len(self._buffer)


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
    events: Iterator[Event], style: CallStyle, names: frozenset[str], *, streamed: bool = False
) -> Iterator[Event | CallBegun | CallArguments | CallsMade]:
    """`events` with the reply's calls of `names`, as `style` writes them, read out of its text:
    CallsMade, then Finished with the finish reason "tool_calls"; `streamed`: each call's CallBegun and
    CallArguments as the model writes it, too."""
    watch = _CallWatch(style)
    stream = _CallStream() if streamed else None
    read_up_to = 0  # of the held pieces, those the stream has read
    try:
        for event in events:
            if isinstance(event, TextDelta):
                if text := watch.feed(event.text):
                    yield TextDelta(text)
                if stream is not None and watch.held is not None:
                    yield from stream.feed("".join(watch.held[read_up_to:]))
                    read_up_to = len(watch.held)
            elif isinstance(event, Finished):
                written = "".join(watch.held) if watch.held is not None else watch.flush()
                read = style.read(written, names) if watch.held is not None else None
                if read is None and stream is not None and stream.begun:
                    yield CallsMade((), cut=True)  # its calls' beginnings are out: the reply ends there
                    yield event
                elif read is None:
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
