"""A thinking model's reply: its reasoning apart from its answer, while it streams and once done."""

from __future__ import annotations

import pytest

from core.chat.reasoning import SplitReply, split_reasoning


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris.", SplitReply(None, "Paris.", thinking=False)),
        ("<think>\nThe capital", SplitReply("The capital", "", thinking=True)),  # still thinking
        (
            "<think>\nThe capital of France.\n</think>\n\nParis.",
            SplitReply("The capital of France.", "Paris.", False),
        ),
        ("\n<think></think>Paris.", SplitReply("", "Paris.", thinking=False)),  # thinking switched off
        (
            "France's capital.</think>\n\nParis.",
            SplitReply("France's capital.", "Paris.", False),
        ),  # R1's distills
        (
            "Use `<think>` tags, then </think> them.",
            SplitReply(None, "Use `<think>` tags, then </think> them.", False),
        ),
        ("A tag: <think> in the middle.", SplitReply(None, "A tag: <think> in the middle.", thinking=False)),
    ],
)
def test_the_reasoning_is_split_from_the_answer(text: str, expected: SplitReply) -> None:
    assert split_reasoning(text) == expected
