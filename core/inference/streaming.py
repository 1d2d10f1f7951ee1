"""The reply's text as tokens arrive: each token's text as soon as its characters are whole.

transformers' streamer holds symbols back until the next space, and a run of them without one to the
end of the reply (and with it the page's Stop, which acts when text arrives). This one sends every
token's text at once, as vLLM and TGI do; only a character still being spelled out byte by byte
waits for its last byte.
"""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING, Any

from core.inference.events import Reading

if TYPE_CHECKING:
    from core.inference.chat_tokenizer import ChatTokenizer

# A character split over byte tokens leaves at most 3 replacement characters at the end of the text;
# more than that were bytes that never make a character, and they go out as they are.
MAX_PARTIAL = 3


class ReplyStreamer:
    """Takes tokens as transformers' streamers do (`put`, `end`, for its generate too) and queues each
    token's text as soon as its characters are whole (and, before them, how far a long prompt was
    read: `reading`); `stop_signal` after the last text."""

    stop_signal = None

    def __init__(self, tokenizer: ChatTokenizer, skip_prompt: bool = False) -> None:
        self.tokenizer, self.skip_prompt = tokenizer, skip_prompt
        self.text_queue: queue.Queue[str | Reading | None] = queue.Queue()
        self.token_cache: list[int] = []
        self.print_len = 0
        self.next_tokens_are_prompt = True

    def put(self, value: Any) -> None:
        if len(value.shape) > 1:  # generate hands the prompt over as a batch of one
            value = value[0]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(value.tolist())
        # The whole line is decoded each time (as transformers does), so that what was sent never
        # changes: a tokenizer may spell the start of a text differently from its middle.
        text = self.tokenizer.decode(self.token_cache)
        if text.endswith("\n"):  # a line is done: the next is decoded after its last token (its spaces kept)
            printable, self.token_cache = text[self.print_len :], self.token_cache[-1:]
            self.print_len = len(self.tokenizer.decode(self.token_cache))
        else:
            end = len(text)
            while end > max(self.print_len, len(text) - MAX_PARTIAL) and text[end - 1] == "\ufffd":
                end -= 1
            printable, self.print_len = text[self.print_len : end], end
        if printable:
            self.text_queue.put(printable)

    def reading(self, done: int, total: int) -> None:
        """`done` of the prompt's `total` tokens are read (a part of a long prompt)."""
        self.text_queue.put(Reading(done, total))

    def end(self) -> None:
        """The reply is over: what is left of its text, then the stop signal."""
        if self.token_cache:
            rest = self.tokenizer.decode(self.token_cache)[self.print_len :]
            if rest:
                self.text_queue.put(rest)
        self.token_cache, self.print_len, self.next_tokens_are_prompt = [], 0, True
        self.text_queue.put(self.stop_signal)
