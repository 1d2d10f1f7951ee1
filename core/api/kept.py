"""Responses kept for a follow-up's `previous_response_id` (OpenAI's Responses API with `store`, its
default): in this process's memory only, never written anywhere, the latest KEPT_RESPONSES within
KEPT_CHARS characters; the oldest go first. Each keeps its own input and output and the id of the one
it followed, so a conversation costs its length once, not once a turn."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from core.api.errors import APIError
from core.api.schemas import InputItem

KEPT_RESPONSES = 256
KEPT_CHARS = 8_000_000  # of the responses' JSON and their inputs': tens of MB of memory at most
_ITEMS = TypeAdapter(list[InputItem])


@dataclass(frozen=True)
class KeptResponse:
    response: dict[str, Any]  # as it was answered (GET /v1/responses/{id})
    items: tuple[InputItem, ...]  # its own input and output: what a follow-up continues from
    previous: str | None  # the response it followed
    chars: int


class KeptResponses:
    """The responses kept, by id; safe to use from any thread."""

    def __init__(self, most: int = KEPT_RESPONSES, most_chars: int = KEPT_CHARS) -> None:
        self.most, self.most_chars = most, most_chars
        self._kept: OrderedDict[str, KeptResponse] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def keep(self, response: dict[str, Any], asked: Sequence[InputItem], previous: str | None) -> None:
        """Keep a finished response with the input it was asked (its follow-ups read both); one larger
        than the whole store is not kept (a follow-up is told so)."""
        items = (*asked, *_ITEMS.validate_python(response["output"]))
        chars = len(json.dumps(response, ensure_ascii=False)) + sum(
            len(item.model_dump_json()) for item in asked
        )
        if chars > self.most_chars:
            return
        with self._lock:
            self._kept[response["id"]] = KeptResponse(response, items, previous, chars)
            self._chars += chars
            while len(self._kept) > self.most or self._chars > self.most_chars:
                self._chars -= self._kept.popitem(last=False)[1].chars

    def get(self, response_id: str, param: str | None = None) -> KeptResponse:
        """The kept response; 404 in a sentence when it is not (or no longer) kept."""
        with self._lock:
            kept = self._kept.get(response_id)
        if kept is None:
            raise APIError(404, f"No response '{response_id[:100]}' is kept here: this server keeps the "
                           f"latest {self.most} in memory until it stops, and none asked with store false.",
                           code="not_found", param=param)  # fmt: skip
        return kept

    def conversation(self, response_id: str) -> list[InputItem]:
        """The items of a conversation up to and with this response, the first response's first; 404 when
        it, or one before it, is no longer kept."""
        items: list[InputItem] = []
        previous: str | None = response_id
        while previous is not None:
            kept = self.get(previous, "previous_response_id")
            items[:0] = kept.items
            previous = kept.previous
        return items

    def delete(self, response_id: str) -> None:
        """Forget a response (its follow-ups can no longer follow it); 404 when it is not kept."""
        with self._lock:
            kept = self._kept.pop(response_id, None)
            if kept is not None:
                self._chars -= kept.chars
        if kept is None:
            self.get(response_id)  # says why, in the same sentence
