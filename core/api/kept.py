"""Responses kept for a follow-up's `previous_response_id` (OpenAI's Responses API with `store`, its
default): in this process's memory only, never written anywhere, the latest KEPT_RESPONSES within
KEPT_CHARS characters; the oldest go first. Each keeps its own input and output and the id of the one
it followed, so a conversation costs its length once, not once a turn. A response's input items (the
conversation before it and its own input) are listed a page at a time, as OpenAI lists them."""

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
    listed: tuple[dict[str, Any], ...]  # its own input as OpenAI lists items (with ids)
    previous: str | None  # the response it followed
    chars: int


@dataclass(frozen=True)
class ItemPage:
    """A page of a response's input items (GET /v1/responses/{id}/input_items)."""

    data: list[dict[str, Any]]
    has_more: bool

    def body(self) -> dict[str, Any]:
        first, last = (self.data[0]["id"], self.data[-1]["id"]) if self.data else (None, None)
        return {"object": "list", "data": self.data, "first_id": first, "last_id": last,
                "has_more": self.has_more}  # fmt: skip


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
        listed = tuple(_listed(item, f"{response['id']}_{place}") for place, item in enumerate(asked))
        chars = len(json.dumps([response, listed], ensure_ascii=False))
        if chars > self.most_chars:
            return
        with self._lock:
            self._kept[response["id"]] = KeptResponse(response, items, listed, previous, chars)
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
        return [item for kept in self._chain(response_id, "previous_response_id") for item in kept.items]

    def _chain(self, response_id: str, param: str | None = None) -> list[KeptResponse]:
        """The responses of a conversation up to and with this one, the first first; 404 (naming `param`)
        when it, or one before it, is no longer kept."""
        chain: list[KeptResponse] = []
        previous: str | None = response_id
        while previous is not None:
            kept = self.get(previous, param)
            chain.insert(0, kept)
            previous = kept.previous
        return chain

    def input_items(
        self, response_id: str, *, after: str | None, before: str | None, limit: int, order: str
    ) -> ItemPage:
        """A page of the items a response was asked from: the conversation before it (each earlier
        response's input and output) and its own input, the latest first unless `order` is "asc";
        `limit` of those after `after` and before `before` (ids from an earlier page). 404 when it, or
        one before it, is no longer kept; 400 naming the parameter for an id not among its items."""
        chain = self._chain(response_id)
        items = [item for kept in chain[:-1] for item in (*kept.listed, *kept.response["output"])]
        items += chain[-1].listed
        if order == "desc":
            items.reverse()
        ids = [item["id"] for item in items]
        start, end = 0, len(items)
        for param, given in (("after", after), ("before", before)):
            if given is None:
                continue
            if given not in ids:
                raise APIError(400, f"No item '{given[:100]}' is in the input of response "
                               f"'{response_id[:100]}'.", code="invalid_request", param=param)  # fmt: skip
            if param == "after":
                start = ids.index(given) + 1
            else:
                end = ids.index(given)
        page = items[start:end]
        return ItemPage(page[:limit], len(page) > limit)

    def delete(self, response_id: str) -> None:
        """Forget a response (its follow-ups can no longer follow it); 404 when it is not kept."""
        with self._lock:
            kept = self._kept.pop(response_id, None)
            if kept is not None:
                self._chars -= kept.chars
        if kept is None:
            self.get(response_id)  # says why, in the same sentence


def _listed(item: InputItem, name: str) -> dict[str, Any]:
    """An input item as OpenAI lists it: an id (made from the response's and its place, the same at
    every listing), a message's text as parts."""
    said = item.model_dump(exclude_none=True)
    if item.type == "message":
        part = "output_text" if item.role == "assistant" else "input_text"
        content = said["content"]
        parts = [{"type": part, "text": content}] if isinstance(content, str) else content
        return {"id": f"msg_{name}", **said, "content": parts, "status": "completed"}
    prefix = {"function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}[item.type]
    return {"id": f"{prefix}_{name}", **said, **({"status": "completed"} if item.type != "reasoning" else {})}
