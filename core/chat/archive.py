"""Export every conversation of one person to one JSON file, and import such files back, as well as
ChatGPT's export and OpenAI chat messages (core.chat.foreign reads those).

Our format is documented in docs/chat-export.md. Every conversation has a uid that survives export
and import, so importing a file twice adds nothing the second time. A file is hostile until read: its
size is checked before it is read, a ZIP member before it is unpacked, every field before it is kept.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import psutil
from sqlalchemy import Integer, insert, select, update

from core.chat import foreign
from core.chat.archived import (
    MAX_TITLE,
    ROLES,
    STATS,
    ArchivedConversation,
    ArchivedMessage,
    ImportResult,
    content_uid,
    ordered,
    text_of,
    time_of,
)
from core.chat.attachments import MAX_CHARACTERS, MAX_FILES
from core.chat.retrieval import FileUse
from core.errors import ArchiveError, ConfigError
from core.inference.params import GenerationParams
from core.storage import repo
from core.storage.db import Database
from core.storage.records import Message
from core.storage.schema import INT_MAX, AttachmentRow, ConversationRow, MessageRow, utcnow
from core.units import format_bytes

FORMAT = "localllm-chats"
VERSION = 1
MAX_FILE_BYTES = 50 * 1024**2  # an uploaded export file, or a ZIP holding one (the upload's limit)
# The JSON read: a file on this machine (`localllm chats import`), or inside a ZIP of any size (ChatGPT's
# export holds every image ever made and uploaded: gigabytes). Parsed, it takes 2.5-4 × its size.
MAX_UNPACKED_BYTES = 1024**3
PARSED_PER_JSON_BYTE = 4  # memory a parse may take for each byte of JSON, asked of the machine first
ZIP_MAGIC = b"PK\x03\x04"


# -- export -------------------------------------------------------------------------------------
def export_all(db: Database, owner: str, only: int | None = None) -> dict[str, Any]:
    """Every conversation of `owner` (or just the one with id `only`), with every branch, in our format."""
    query = select(ConversationRow).where(ConversationRow.owner == owner).order_by(ConversationRow.id)
    if only is not None:
        query = query.where(ConversationRow.id == only)
    with db.begin() as session:
        rows = session.scalars(query).all()
        conversations = [_exported(session, row) for row in rows]
    return {"format": FORMAT, "version": VERSION, "exported_at": datetime.now(UTC).isoformat(),
            "conversations": conversations}  # fmt: skip


def _exported(session: Any, row: ConversationRow) -> dict[str, Any]:
    messages = repo.list_messages(session, row.id)
    files: dict[int, list[dict[str, Any]]] = {}
    for info, text in repo.attachment_texts(session, [m.id for m in messages]):
        fields = {name: getattr(info, name) for name in ("name", "kind", "size_bytes", "pages", "truncated")}
        files.setdefault(info.message_id, []).append(fields | {"text": text})
    return {
        "uid": row.uid,
        "title": row.title,
        "system_prompt": row.system_prompt,
        "params": row.params,
        "preset": row.preset,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "pinned_at": row.pinned_at.isoformat() if row.pinned_at else None,
        "leaf": repo.leaf_id(session, row),
        "messages": [_exported_message(m, files.get(m.id, [])) for m in messages],
    }


def _exported_message(message: Message, files: list[dict[str, Any]]) -> dict[str, Any]:
    exported = {
        "id": message.id,
        "parent": message.parent_id,
        "role": message.role,
        "content": message.content,
        "created_at": message.created_at.isoformat(),
        **{name: getattr(message, name) for name in STATS},
    }
    if message.sources:
        exported["sources"] = message.sources
    if files:
        exported["attachments"] = files
    return exported


def export_bytes(db: Database, owner: str, only: int | None = None) -> bytes:
    return json.dumps(export_all(db, owner, only), ensure_ascii=False, indent=1).encode("utf-8")


# -- import -------------------------------------------------------------------------------------
def read_archive(source: bytes | Path) -> list[ArchivedConversation]:
    """The conversations in an export (ours, ChatGPT's JSON or ZIP, OpenAI chat JSON or JSONL): an upload
    (bytes, at most MAX_FILE_BYTES), or a file on this machine (a ZIP of any size; the JSON in it, or the
    file itself, at most MAX_UNPACKED_BYTES and what the machine's free memory can parse)."""
    parsed = _parsed(_json_of(source))
    if isinstance(parsed, dict) and parsed.get("format") == FORMAT:
        return _ours(parsed)
    conversations = foreign.read(parsed)
    if conversations is None:
        raise ArchiveError(
            "This file is not a chat export this app can read (LocalLLM, ChatGPT or OpenAI chat JSON).",
            reason="archive_unknown",
        )
    return conversations


def _json_of(source: bytes | Path) -> bytes:
    """The JSON to parse: an upload or a file as it is, or the one a ZIP holds; sizes checked first."""
    if isinstance(source, bytes):
        if len(source) > MAX_FILE_BYTES:
            raise ArchiveError(
                f"The file is larger than the {MAX_FILE_BYTES // 1024**2} MB an upload may be: import it on "
                "this machine with 'localllm chats import FILE', or upload the conversations.json inside it.",
                reason="archive_too_large", limit_mb=MAX_FILE_BYTES // 1024**2,
            )  # fmt: skip
        return _unzipped(io.BytesIO(source)) if source[:4] == ZIP_MAGIC else source
    try:
        with source.open("rb") as handle:
            if handle.read(4) == ZIP_MAGIC:
                return _unzipped(source)
            size = source.stat().st_size
            _check_json_size(size)
            handle.seek(0)
            return handle.read(MAX_UNPACKED_BYTES + 1)
    except OSError as exc:
        raise ArchiveError(
            f"Cannot read {source}: {exc.strerror or exc}.", reason="archive_unreadable"
        ) from exc


def _check_json_size(size: int) -> None:
    """Refuse JSON larger than MAX_UNPACKED_BYTES, or than the machine's free memory can parse."""
    if size > MAX_UNPACKED_BYTES:
        raise ArchiveError(
            f"The conversations are larger than the {MAX_UNPACKED_BYTES // 1024**2} MB an import may read.",
            reason="archive_json_too_large", limit_mb=MAX_UNPACKED_BYTES // 1024**2,
        )  # fmt: skip
    needed, free = size * PARSED_PER_JSON_BYTE, psutil.virtual_memory().available
    if needed > free:
        raise ArchiveError(
            f"Reading {format_bytes(size)} of conversations needs about {format_bytes(needed)} of free "
            f"memory; {format_bytes(free)} is free. Close other programs or unload the model, then retry.",
            reason="archive_memory", size_bytes=size, needed_bytes=needed, free_bytes=free,
        )  # fmt: skip


def _unzipped(source: BinaryIO | Path) -> bytes:
    """ChatGPT's export ZIP: its conversations.json (or the ZIP's only JSON file), size checked first."""
    try:
        with zipfile.ZipFile(source) as archive:
            members = [m for m in archive.infolist() if m.filename.endswith(".json") and not m.is_dir()]
            chosen = next((m for m in members if m.filename.rsplit("/", 1)[-1] == "conversations.json"),
                          members[0] if len(members) == 1 else None)  # fmt: skip
            if chosen is not None and chosen.file_size <= MAX_UNPACKED_BYTES:
                _check_json_size(chosen.file_size)
                with archive.open(chosen) as member:
                    unpacked = member.read(MAX_UNPACKED_BYTES + 1)
                if len(unpacked) <= MAX_UNPACKED_BYTES:  # the listed size may lie
                    return unpacked
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError):
        pass
    raise ArchiveError(
        f"The ZIP file holds no conversations.json of at most {MAX_UNPACKED_BYTES // 1024**2} MB.",
        reason="archive_zip", limit_mb=MAX_UNPACKED_BYTES // 1024**2,
    )  # fmt: skip


def _parsed(data: bytes) -> Any:
    """JSON, or JSON Lines (one OpenAI chat per line)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        try:
            return json.loads(text)
        except ValueError:
            try:
                return [json.loads(line) for line in text.splitlines() if line.strip()]
            except ValueError:
                pass
    raise ArchiveError("The file is not JSON (nor JSON Lines) in UTF-8.", reason="archive_not_json")


def _ours(parsed: dict[str, Any]) -> list[ArchivedConversation]:
    version = parsed.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ArchiveError(
            f"This export is format version {version}, newer than this app reads ({VERSION}): update the "
            "app.",
            reason="archive_too_new", version=version, supported=VERSION,
        )  # fmt: skip
    items = parsed.get("conversations")
    return (
        [_our_conversation(item) for item in items if isinstance(item, dict)]
        if isinstance(items, list)
        else []
    )


def _our_conversation(item: dict[str, Any]) -> ArchivedConversation:
    messages = [
        _our_message(m) for m in item.get("messages") or [] if isinstance(m, dict) and m.get("role") in ROLES
    ]
    title = text_of(item.get("title"), MAX_TITLE) or "Imported chat"
    uid = text_of(item.get("uid"), 100) or content_uid(title, messages)
    return ArchivedConversation(
        uid=uid, title=title, messages=ordered(messages),
        leaf=None if item.get("leaf") is None else str(item.get("leaf")),
        system_prompt=text_of(item.get("system_prompt")), params=_params(item.get("params")),
        preset=text_of(item.get("preset"), 60) or None,
        created_at=time_of(item.get("created_at")), updated_at=time_of(item.get("updated_at")),
        pinned_at=time_of(item.get("pinned_at")),
    )  # fmt: skip


def _our_message(m: dict[str, Any]) -> ArchivedMessage:
    return ArchivedMessage(
        key=str(m.get("id")),
        parent=None if m.get("parent") is None else str(m.get("parent")),
        role=m["role"],
        content=text_of(m.get("content")),
        created_at=time_of(m.get("created_at")),
        stats={name: m[name] for name in STATS if _stat_ok(name, m.get(name))} | _sources(m.get("sources")),
        attachments=tuple(_attachments(m.get("attachments"))),
    )


def _sources(value: Any) -> dict[str, Any]:
    """A reply's record of the files it was given, when it is well formed."""
    if not isinstance(value, list) or len(value) > MAX_FILES * 100:
        return {}
    try:
        return {"sources": [FileUse.from_dict(use).to_dict() for use in value]}
    except (TypeError, ValueError, AttributeError):
        return {}


def _attachments(value: Any) -> list[dict[str, Any]]:
    """The files a message carried, each checked as a file given now is (name, kind, size, text)."""
    found = []
    for item in value if isinstance(value, list) else []:
        text = item.get("text") if isinstance(item, dict) else None
        if not isinstance(text, str) or not text.strip() or item.get("kind") not in ("text", "pdf", "docx"):
            continue
        pages, size = item.get("pages"), item.get("size_bytes")
        found.append(
            {
                "name": text_of(item.get("name"), 255) or "file",
                "kind": item["kind"],
                "text": text[:MAX_CHARACTERS],
                "size_bytes": size if isinstance(size, int) and 0 <= size <= 2**40 else len(text.encode()),
                "pages": pages if isinstance(pages, int) and 0 < pages <= 10**6 else None,
                "truncated": item.get("truncated") is True or len(text) > MAX_CHARACTERS,
            }
        )
    return found[:MAX_FILES]


def _stat_ok(name: str, value: Any) -> bool:
    """Whether a message's statistic fits its column on every database (lengths, 32-bit integers)."""
    column_type = MessageRow.__table__.c[name].type
    if name in ("model", "finish_reason"):
        return isinstance(value, str) and len(value) <= column_type.length
    limit = INT_MAX if isinstance(column_type, Integer) else 1e12
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= limit


def _params(value: Any) -> dict[str, Any]:
    """A conversation's own settings when they are valid; {} (the model's own) otherwise."""
    if not isinstance(value, dict) or not value:
        return {}
    try:
        return GenerationParams.from_mapping(value).to_dict()
    except (ConfigError, TypeError, ValueError):
        return {}


def import_conversations(
    db: Database, owner: str, conversations: Sequence[ArchivedConversation]
) -> ImportResult:
    """Add the conversations `owner` does not have yet (by uid); one transaction for all."""
    new, already_here = [], 0
    with db.begin() as session:
        have = set(session.scalars(select(ConversationRow.uid).where(ConversationRow.owner == owner)))
        for conversation in conversations:
            if conversation.uid in have:
                already_here += 1
                continue
            have.add(conversation.uid)
            new.append(conversation)
        if new:
            _add(session, owner, new)
    return ImportResult(len(new), already_here)


_TIMES = ("created_at", "updated_at", "pinned_at")


def _add(session: Any, owner: str, conversations: list[ArchivedConversation]) -> None:
    """The conversations with their messages and files, in a few statements per level of their message
    trees (a parent needs its id before its children): one per message took 43 s for 45,000 messages."""
    rows = [
        ConversationRow(
            owner=owner, title=c.title, system_prompt=c.system_prompt, uid=c.uid, params=dict(c.params),
            preset=c.preset, **{name: when for name in _TIMES if (when := getattr(c, name))},
        )
        for c in conversations
    ]  # fmt: skip
    session.add_all(rows)
    session.flush()
    levels: list[list[tuple[int, ArchivedMessage]]] = []  # (conversation's index, message) by depth
    for index, conversation in enumerate(conversations):
        depth: dict[str, int] = {}
        for message in conversation.messages:  # a parent before its children; one not found: a root
            level = depth[message.parent] + 1 if message.parent in depth else 0
            depth[message.key] = level
            if level == len(levels):
                levels.append([])
            levels[level].append((index, message))
    ids: list[dict[str, int]] = [{} for _ in conversations]
    now = utcnow()
    for level in levels:
        values = [
            {"conversation_id": rows[index].id, "parent_id": ids[index].get(message.parent or ""),
             "role": message.role, "content": message.content, "created_at": message.created_at or now,
             **{name: message.stats.get(name) for name in (*STATS, "sources")}}
            for index, message in level
        ]  # fmt: skip
        added = session.scalars(
            insert(MessageRow).returning(MessageRow.id, sort_by_parameter_order=True), values
        )
        for (index, message), message_id in zip(level, added, strict=True):
            ids[index][message.key] = message_id
    files = [
        {"pages": None, "truncated": False, **attachment, "message_id": ids[index][message.key]}
        for index, conversation in enumerate(conversations)
        for message in conversation.messages
        for attachment in message.attachments
    ]
    if files:
        session.execute(insert(AttachmentRow), files)
    leaves = []
    for row, conversation, known in zip(rows, conversations, ids, strict=True):
        leaf = known.get(conversation.leaf) if conversation.leaf is not None else None
        newest = known[conversation.messages[-1].key] if conversation.messages else None
        # updated_at as inserted: onupdate would stamp the import's time
        leaves.append(
            {"id": row.id, "leaf_id": newest if leaf is None else leaf, "updated_at": row.updated_at}
        )
    session.execute(update(ConversationRow), leaves)


def import_bytes(db: Database, owner: str, data: bytes | Path) -> ImportResult:
    """Read an export (an upload's bytes, or a file on this machine) and import what `owner` does not have
    yet."""
    return import_conversations(db, owner, read_archive(data))
