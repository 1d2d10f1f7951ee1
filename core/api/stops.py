"""Stop sequences (OpenAI's `stop`): the reply ends before the first of them, which is not sent.

Text that could still turn out to be a stop sequence's beginning is held back until the next token
settles it, so a sequence split over tokens ("\\n\\nUs" + "er:") is caught and never half sent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace

from core.inference.events import Event, Finished, Logprobs, TextDelta


class StopSequences:
    """Feeds a reply's text through; `cut` is True once a stop sequence was found, and `rest` is the text
    from it on."""

    def __init__(self, sequences: tuple[str, ...]) -> None:
        self.sequences, self.cut, self.rest = sequences, False, ""
        self._held = ""

    @property
    def found(self) -> str | None:
        """The stop sequence the text was cut at (the first of those that begin there)."""
        return next((sequence for sequence in self.sequences if self.rest.startswith(sequence)), None)

    def feed(self, text: str) -> str:
        """What of the text so far can be sent: up to a stop sequence, or up to the longest ending
        that begins one (held for the next piece)."""
        text = self._held + text
        found = [at for sequence in self.sequences if (at := text.find(sequence)) >= 0]
        if found:
            self.cut, self._held, self.rest = True, "", text[min(found) :]
            return text[: min(found)]
        held = max((self._begins_sequence(text, sequence) for sequence in self.sequences), default=0)
        self._held = text[len(text) - held :] if held else ""
        return text[: len(text) - held]

    def flush(self) -> str:
        """At the reply's end: what was held back was no stop sequence after all."""
        held, self._held = self._held, ""
        return held

    @staticmethod
    def _begins_sequence(text: str, sequence: str) -> int:
        """The length of the longest ending of `text` that is a proper beginning of `sequence`: looked for
        only where `sequence`'s first character is (every token runs this, for every sequence)."""
        start = max(0, len(text) - len(sequence) + 1)
        while (start := text.find(sequence[0], start)) >= 0:
            if sequence.startswith(text[start:]):
                return len(text) - start
            start += 1
        return 0


def until_stop_sequence(
    events: Iterator[Event], sequences: tuple[str, ...], stop: threading.Event
) -> Iterator[Event]:
    """`events` with the text cut at the first stop sequence; generation is stopped there (`stop`) and
    the reply finishes as "stop"."""
    cutter = StopSequences(sequences)
    try:
        for event in events:
            if isinstance(event, TextDelta):
                if not cutter.cut and (text := cutter.feed(event.text)):
                    yield TextDelta(text)
                if cutter.cut:
                    stop.set()
            elif isinstance(event, Finished):
                if rest := cutter.flush():
                    yield TextDelta(rest)
                yield (
                    Finished(replace(event.stats, finish_reason="stop", stop_sequence=cutter.found))
                    if cutter.cut
                    else event
                )
            elif not (cutter.cut and isinstance(event, Logprobs)):  # none of tokens past the cut
                yield event
    finally:
        events.close()  # type: ignore[attr-defined]  # frees the engine's turn, however this ends
