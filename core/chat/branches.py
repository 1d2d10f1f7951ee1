"""Branches: a conversation's messages form a tree (each message follows its parent), and the one shown
is the path from a root to the conversation's leaf. Editing a message adds a sibling, so the earlier
branch stays; switching to a sibling shows its newest continuation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import NotFoundError
from core.storage.records import Message


@dataclass(frozen=True)
class Turn:
    """A message on the shown branch and its place among its siblings (1-based)."""

    message: Message
    branch: int
    branches: int


def path_to(messages: Sequence[Message], leaf_id: int | None) -> list[Message]:
    """The messages from a root down to `leaf_id`, oldest first."""
    by_id = {message.id: message for message in messages}
    path: list[Message] = []
    current = by_id.get(leaf_id) if leaf_id is not None else None
    while current is not None and len(path) < len(by_id):  # the bound guards against a damaged cycle
        path.append(current)
        current = by_id.get(current.parent_id) if current.parent_id is not None else None
    return path[::-1]


def siblings(messages: Sequence[Message], message: Message) -> list[Message]:
    """The messages that follow the same parent as `message` (itself included), oldest first."""
    return [m for m in messages if m.parent_id == message.parent_id]


def _children(messages: Sequence[Message]) -> dict[int | None, list[int]]:
    children: dict[int | None, list[int]] = {}
    for message in messages:
        children.setdefault(message.parent_id, []).append(message.id)
    return children


def turns(messages: Sequence[Message], leaf_id: int | None) -> list[Turn]:
    """The shown branch, each message with its place among its siblings."""
    children = _children(messages)
    return [
        Turn(message, children[message.parent_id].index(message.id) + 1, len(children[message.parent_id]))
        for message in path_to(messages, leaf_id)
    ]


def newest_leaf(messages: Sequence[Message], message_id: int) -> int:
    """The last message of the newest branch that continues from `message_id` (itself if none does):
    the newest descendant, which has no child since a child is always newer than its parent."""
    children = _children(messages)
    newest, frontier = message_id, [message_id]
    while frontier:
        current = frontier.pop()
        newest = max(newest, current)
        frontier.extend(children.get(current, []))
    return newest


def sibling_leaf(messages: Sequence[Message], message_id: int, step: int) -> int:
    """The leaf to show after moving `step` siblings away from `message_id` (clamped to the ends)."""
    message = next((m for m in messages if m.id == message_id), None)
    if message is None:
        raise NotFoundError(
            f"No message {message_id} in this conversation.", id=message_id, reason="message_gone"
        )
    alternatives = siblings(messages, message)
    index = min(max(alternatives.index(message) + step, 0), len(alternatives) - 1)
    return newest_leaf(messages, alternatives[index].id)
