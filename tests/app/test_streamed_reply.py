"""A reply drawn as it streams (ui.replies.write_reply) ends up showing what the finished reply shows."""

from __future__ import annotations

import re

import pytest
from streamlit.testing.v1 import AppTest

from ui.markup import reply_markdown

REPLY = (
    "## Steps\n\nFirst a paragraph.\n\n1. one\n2. two\n\n3. three\n\n```python\nx = 1\n\ny = 2\n```\n\n"
    "| a | b |\n|---|---|\n| 1 | 2 |\n\nThe end."
)


def stream(text: str) -> AppTest:
    """Run write_reply on `text` arriving word by word (every piece drawn: REDRAW_S is 0)."""

    def script(pieces: list[str]) -> None:
        from ui.replies import write_reply

        write_reply(iter(pieces))

    at = AppTest.from_function(script, kwargs={"pieces": re.findall(r"\S+\s*|\s+", text)})
    at.run()
    assert not at.exception
    return at


@pytest.fixture(autouse=True)
def _every_piece_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ui.replies.REDRAW_S", 0.0)


def test_a_streamed_reply_shows_each_block_once_in_order() -> None:
    at = stream(REPLY)
    shown = [markdown.value for markdown in at.markdown]
    # nothing lost, nothing twice (each block without its blank line; its line breaks kept as breaks)
    assert "\n\n".join(shown) == reply_markdown(REPLY)
    assert len(shown) >= 5  # finished blocks were drawn as they came, not the whole reply every time


def test_reasoning_that_turns_out_to_be_reasoning_moves_into_its_fold() -> None:
    # DeepSeek-R1's distills open <think> in the prompt: the reply only closes it, so its reasoning
    # streams as if it were the answer until </think> arrives.
    at = stream("Let me think.\n\nThe user wants a list.\n</think>\n\nHere it is:\n\n- a\n- b")
    [fold] = at.expander
    assert [markdown.value for markdown in fold.markdown] == ["Let me think.\n\nThe user wants a list."]
    answer = [markdown.value for markdown in at.markdown if markdown not in fold.markdown]
    assert answer == ["Here it is:", reply_markdown("- a\n- b")]


def test_a_thinking_reply_keeps_its_reasoning_apart_while_it_thinks() -> None:
    at = stream("<think>\nFirst, the units.\n\nThen the sum.")
    [fold] = at.expander
    assert "\n\n".join(markdown.value for markdown in fold.markdown) == "First, the units.\n\nThen the sum."
    assert len(at.markdown) == len(fold.markdown)  # no answer yet
