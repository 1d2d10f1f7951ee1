"""A thinking model's reply: its reasoning apart from its answer, while it streams and once done."""

from __future__ import annotations

import pytest

from core.chat.reasoning import ReasoningStream, SplitReply, split_reasoning


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


REPLIES = [
    "Paris.", "  Paris, with its spaces.  ", "<think>\nThe capital of France.\n</think>\n\nParis.",
    "\n<think></think>Paris.", "<think>\nStill thinking  \n",
    "<think>a < b, and </thin is no tag</think>Yes.",
    "Use `<think>` tags, then </think> them.", "<thi", "", "<think>\n\n</think>\n\n",
]  # fmt: skip


@pytest.mark.parametrize("text", REPLIES)
def test_a_streamed_reply_splits_as_the_whole_one_however_it_is_cut(text: str) -> None:
    """The server sends reasoning and answer apart as they stream: the same parts as the whole reply's,
    whether the text comes in two pieces cut anywhere or a character at a time."""
    whole = split_reasoning(text)
    for pieces in ([text[:cut], text[cut:]] for cut in range(len(text) + 1)):
        assert _streamed(pieces) == (whole.reasoning or "", whole.answer), pieces
    assert _streamed(list(text)) == (whole.reasoning or "", whole.answer)


def test_a_reply_whose_template_opened_the_reasoning_only_closes_it() -> None:
    """DeepSeek-R1's distills: the prompt ends with <think>, the reply with its reasoning and </think>."""
    text = "France's capital.</think>\n\nParis."
    for cut in range(len(text) + 1):
        assert _streamed([text[:cut], text[cut:]], inside=True) == ("France's capital.", "Paris.")
    assert _streamed(["Still going"], inside=True) == ("Still going", "")


def _streamed(pieces: list[str], inside: bool = False) -> tuple[str, str]:
    stream = ReasoningStream(inside)
    parts = [stream.feed(piece) for piece in pieces] + [stream.flush()]
    return "".join(reasoning for reasoning, _ in parts), "".join(answer for _, answer in parts)
