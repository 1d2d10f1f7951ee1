"""Stop sequences cut a reply's text however the tokens split it."""

from __future__ import annotations

import pytest

from core.api.stops import StopSequences


@pytest.mark.parametrize(
    ("pieces", "sequences", "sent"),
    [
        (["Hello", "\n\nUs", "er: hi"], ("\n\nUser:",), "Hello"),  # split over tokens
        (["a\n", "\nb"], ("\n\nUser:",), "a\n\nb"),  # began like one, was not: all of it is sent
        (["one END two STOP"], ("STOP", "END"), "one "),  # the earliest of several
        (["你好", "。用户", "：再见"], ("用户：",), "你好。"),
        (["xxab", "abc"], ("abcd", "b"), "xxa"),
    ],
)
def test_the_text_before_the_first_stop_sequence_is_sent_and_nothing_of_it(
    pieces: list[str], sequences: tuple[str, ...], sent: str
) -> None:
    cutter = StopSequences(sequences)
    out = []
    for piece in pieces:
        if not cutter.cut:
            out.append(cutter.feed(piece))
    out.append(cutter.flush() if not cutter.cut else "")
    assert "".join(out) == sent
    assert cutter.cut is (sent != "".join(pieces))
