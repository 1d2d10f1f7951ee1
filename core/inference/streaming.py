"""The reply's text as tokens arrive: transformers' streamer, with a bound on how long text may wait."""

from __future__ import annotations

from typing import Any

from transformers import TextIteratorStreamer

# transformers' streamer holds symbols back until the next space (they may be half a character or the
# start of some markup). A run of symbols without a space (emoji, bytes that never make a character)
# would then wait to the end of the reply, and with it the page's Stop, which acts when text arrives.
HOLD_TOKENS = 8


class ReplyStreamer(TextIteratorStreamer):
    """A TextIteratorStreamer whose text never waits more than HOLD_TOKENS tokens."""

    def __init__(self, tokenizer: Any, **kwargs: Any) -> None:
        super().__init__(tokenizer, **kwargs)
        self.held = 0  # tokens put since text last went out

    def put(self, value: Any) -> None:
        super().put(value)
        self.held += 1
        if self.held >= HOLD_TOKENS and self.token_cache:
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            end = len(text)
            # A character still being spelled out byte by byte (at most 3 bytes of it) stays held.
            while end > max(self.print_len, len(text) - 3) and text[end - 1] == "\ufffd":
                end -= 1
            self.on_finalized_text(text[self.print_len : end])
            self.print_len = end

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.held = 0
        super().on_finalized_text(text, stream_end)
