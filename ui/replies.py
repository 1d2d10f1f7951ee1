"""A model's reply on the Chat page, finished or streaming: Markdown that fetches no image
(ui.markup.reply_markdown), a thinking model's reasoning folded away above its answer.

A streaming reply is drawn block by block. Redrawn whole for every token, its text was sent to the
browser and rendered there again each time, a cost that grows with the reply: for a Markdown reply
the browser and the server then took over half a core of a 2-core machine from the model, a fifth
now (docs/performance.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import streamlit as st

from core.chat.reasoning import SplitReply, split_reasoning
from ui import state
from ui.i18n import t
from ui.markup import reply_markdown, settled_length

REDRAW_S = 0.1  # the block still being written is redrawn at most this often
SETTLE_S = 5.0  # how long a run waits for the reply it interrupted to be saved


@contextmanager
def streaming(stop: threading.Event) -> Iterator[None]:
    """While a reply streams in this run: the session's next run stops it (`stop`) and waits until
    the reply is saved, which happens once this block is left."""
    saved = threading.Event()
    st.session_state[state.REPLYING] = (stop, saved)
    try:
        yield
    finally:
        saved.set()


def settle_interrupted_reply() -> None:
    """A run that interrupts a streaming reply (Stop, Esc, any click) stops it and waits, SETTLE_S at
    most, until it is saved: Streamlit starts this run before the interrupted one has ended, and the
    conversation drawn too soon showed the reply cut further back and marked "interrupted"."""
    if (replying := st.session_state.get(state.REPLYING)) is not None:
        stop, saved = replying
        stop.set()  # (a reply already saved no longer reads it)
        saved.wait(SETTLE_S)  # returns at once once it is saved


def reasoning_fold(parent: Any, split: SplitReply) -> Any:
    """The expander that holds a reply's reasoning, in `parent`: open while the model still thinks."""
    label = t("chat.thinking") if split.thinking else t("chat.thought")
    return parent.expander(label, icon=":material/psychology:", expanded=split.thinking)


def reply_body(split: SplitReply) -> None:
    """A finished reply: its reasoning folded away (open while still being written) above its answer."""
    if split.reasoning or split.thinking:
        with reasoning_fold(st, split):
            st.markdown(reply_markdown(split.reasoning or "", t("chat.image")))
    if split.answer:
        st.markdown(reply_markdown(split.answer, t("chat.image")))


class _GrowingMarkdown:
    """Markdown that grows at its end, drawn into a slot: each whole top-level block once, as it is
    finished, and the last one redrawn. Drawn anew if the text stops extending what was drawn."""

    def __init__(self, slot: Any) -> None:
        self._slot = slot
        self._restart()

    def _restart(self) -> None:
        with self._slot.container():
            self._blocks, self._tail = st.container(), st.empty()
        self._settled = ""  # the text drawn as finished blocks

    def show(self, text: str) -> None:
        if not text.startswith(self._settled):
            self._restart()
        rest = text[len(self._settled) :]
        if finished := rest[: settled_length(rest)]:
            self._blocks.markdown(reply_markdown(finished, t("chat.image")))
            self._settled += finished
            rest = rest[len(finished) :]
        if rest:
            self._tail.markdown(reply_markdown(rest, t("chat.image")))
        else:
            self._tail.empty()


class StreamedReply:
    """A reply as it streams, looking as `reply_body` will draw it once finished."""

    def __init__(self) -> None:
        self._reasoning_slot, self._answer = st.empty(), _GrowingMarkdown(st.empty())
        self._reasoning: _GrowingMarkdown | None = None
        self._thinking: bool | None = None  # the state the reasoning's expander was drawn in
        self._text, self._drawn, self._drawn_at = "", "", 0.0

    def add(self, piece: str) -> None:
        self._text += piece
        if time.monotonic() - self._drawn_at >= REDRAW_S:
            self.draw()

    def draw(self) -> None:
        """Bring the page up to the text received (called by `add` at most every REDRAW_S, and at the end)."""
        if self._text == self._drawn:
            return
        split = split_reasoning(self._text)
        if split.reasoning or split.thinking:
            if self._reasoning is None or split.thinking != self._thinking:
                fold = reasoning_fold(self._reasoning_slot, split)
                self._reasoning, self._thinking = _GrowingMarkdown(fold.empty()), split.thinking
            self._reasoning.show(split.reasoning or "")
        self._answer.show(split.answer)
        self._drawn, self._drawn_at = self._text, time.monotonic()


def write_reply(pieces: Iterable[str]) -> None:
    """A reply's text as it streams, drawn as the finished one will be."""
    shown = StreamedReply()
    for piece in pieces:
        shown.add(piece)
    shown.draw()
