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
    """Takes tokens as transformers' streamers do (`put`, `end`, for its generate too) on the thread that
    generates, and gives the reader each token's text as soon as its characters are whole, and before
    them how far a long prompt was read (`take`). The generating thread only queues ids: the reader
    decodes them, off the path of the next token, and what arrived while it was busy goes out as one
    piece."""

    def __init__(self, tokenizer: ChatTokenizer, skip_prompt: bool = False) -> None:
        self.tokenizer, self.skip_prompt = tokenizer, skip_prompt
        self._arrived: queue.SimpleQueue[list[int] | Reading | None] = queue.SimpleQueue()  # None: the end
        self._prompt_next = skip_prompt
        self._token_cache: list[int] = []
        self._print_len = 0
        self._ended = False
        self.tokens = 0  # of the reply, taken so far

    def put(self, value: Any) -> None:
        if len(value.shape) > 1:  # generate hands the prompt over as a batch of one
            value = value[0]
        if self._prompt_next:
            self._prompt_next = False
            return
        self._arrived.put(value.tolist())

    def put_token(self, token: int) -> None:
        """One new token of the reply (the batch's way: no tensor)."""
        self._arrived.put([token])

    def reading(self, done: int, total: int) -> None:
        """`done` of the prompt's `total` tokens are read (a part of a long prompt)."""
        self._arrived.put(Reading(done, total))

    def end(self) -> None:
        """The reply is over (the rest of its text goes out with the last piece)."""
        self._arrived.put(None)
        self._prompt_next = self.skip_prompt

    def take(self, timeout: float | None = None) -> list[str | Reading] | None:
        """The texts and Readings that arrived since the last call, waiting up to `timeout` seconds for
        one ([] when none came); None once the reply ended and all of it was taken."""
        if self._ended:
            return None
        try:
            arrived = [self._arrived.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                arrived.append(self._arrived.get_nowait())
            except queue.Empty:
                break
        pieces: list[str | Reading] = []
        ids: list[int] = []
        for item in arrived:
            if isinstance(item, list):
                ids.extend(item)
                self.tokens += len(item)
                continue
            pieces += self._texts(ids)
            ids = []
            if item is None:
                pieces += self._rest()
                self._ended = True
                break
            pieces.append(item)
        return pieces + self._texts(ids)

    def _texts(self, ids: list[int]) -> list[str]:
        """The text of these tokens that is whole now."""
        if not ids:
            return []
        self._token_cache.extend(ids)
        # The whole line is decoded each time (as transformers does), so that what was sent never
        # changes: a tokenizer may spell the start of a text differently from its middle.
        text = self.tokenizer.decode(self._token_cache)
        if text.endswith("\n"):  # a line is done: the next is decoded after its last token (its spaces kept)
            printable, self._token_cache = text[self._print_len :], self._token_cache[-1:]
            self._print_len = len(self.tokenizer.decode(self._token_cache))
        else:
            end = len(text)
            while end > max(self._print_len, len(text) - MAX_PARTIAL) and text[end - 1] == "\ufffd":
                end -= 1
            printable, self._print_len = text[self._print_len : end], end
        return [printable] if printable else []

    def _rest(self) -> list[str]:
        """What is left of the text at the end of the reply."""
        rest = self.tokenizer.decode(self._token_cache)[self._print_len :] if self._token_cache else ""
        self._token_cache, self._print_len = [], 0
        return [rest] if rest else []
