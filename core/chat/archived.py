"""What an export file holds once read (any format), and the checks every field passes on the way in."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

MAX_TITLE = 300
ROLES = ("user", "assistant")
STATS = ("model", "prompt_tokens", "completion_tokens", "ttft_s", "tokens_per_s", "finish_reason")


@dataclass(frozen=True)
class ArchivedMessage:
    key: str  # unique within its conversation in the file
    parent: str | None
    role: str
    content: str
    created_at: datetime | None = None
    stats: Mapping[str, Any] = field(default_factory=dict)  # also a reply's `sources`
    attachments: tuple[Mapping[str, Any], ...] = ()  # the files' texts: repo.add_attachment's fields


@dataclass(frozen=True)
class ArchivedConversation:
    uid: str
    title: str
    messages: tuple[ArchivedMessage, ...]  # a parent before its children
    leaf: str | None = None  # the branch shown; None: the newest message
    system_prompt: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    preset: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    pinned_at: datetime | None = None  # kept at the list's top since


@dataclass(frozen=True)
class ImportResult:
    imported: int
    already_here: int


def time_of(value: Any) -> datetime | None:
    """An ISO 8601 text or a Unix time; None for anything else."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    return None


def content_uid(title: str, messages: Sequence[ArchivedMessage]) -> str:
    """A uid for a conversation whose file gives none: the same text gives the same uid."""
    digest = hashlib.sha256(json.dumps([title, [(m.role, m.content) for m in messages]]).encode())
    return f"sha256:{digest.hexdigest()[:40]}"


def text_of(value: Any, limit: int | None = None) -> str:
    """A text field as text ('' when it is not one), cut to `limit` characters."""
    text = value if isinstance(value, str) else ""
    return text[:limit] if limit else text


def ordered(messages: Sequence[ArchivedMessage]) -> tuple[ArchivedMessage, ...]:
    """The messages with every parent before its children; a parent the file lacks (or a cycle) makes
    the message a root."""
    by_key = {message.key: message for message in messages}
    placed: dict[str, ArchivedMessage] = {}
    for message in messages:
        chain: list[ArchivedMessage] = []
        current: ArchivedMessage | None = message
        while current is not None and current.key not in placed and current not in chain:
            chain.append(current)
            current = by_key.get(current.parent) if current.parent is not None else None
        for pending in reversed(chain):
            parent = pending.parent if pending.parent in placed else None
            placed[pending.key] = replace(pending, parent=parent)
    return tuple(placed.values())
