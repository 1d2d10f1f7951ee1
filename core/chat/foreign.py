"""Other products' chat exports: ChatGPT's data export (conversations.json, a tree of message nodes per
conversation) and OpenAI chat messages ({"messages": [{"role", "content"}]}: one object, a list of
them, or JSON Lines)."""

from __future__ import annotations

from typing import Any

from core.chat.archived import (
    MAX_TITLE,
    ROLES,
    ArchivedConversation,
    ArchivedMessage,
    content_uid,
    ordered,
    text_of,
    time_of,
)


def read(parsed: Any) -> list[ArchivedConversation] | None:
    """The conversations in a parsed file of a format this module knows; None for any other."""
    items = parsed if isinstance(parsed, list) else [parsed]
    if not items or not all(isinstance(item, dict) for item in items):
        return None
    if all(isinstance(item.get("mapping"), dict) for item in items):
        return [_chatgpt(item) for item in items]
    if all(isinstance(item.get("messages"), list) for item in items):
        return [_openai(item) for item in items]
    return None


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else None


def _chatgpt_text(message: Any) -> tuple[str, str] | None:
    """(role, text) of a ChatGPT message, or None for what a chat here cannot show (tool output, images,
    code runs, empty nodes)."""
    role = _field(_field(message, "author"), "role")
    content = _field(message, "content")
    if role not in (*ROLES, "system") or _field(content, "content_type") not in ("text", "multimodal_text"):
        return None
    parts = _field(content, "parts")
    text = (
        "\n".join(part for part in parts if isinstance(part, str)).strip() if isinstance(parts, list) else ""
    )
    return (role, text) if text else None


def _chatgpt(item: dict[str, Any]) -> ArchivedConversation:
    """One ChatGPT conversation: its tree of user and assistant messages (a node left out passes its
    children to its nearest kept ancestor); the first system message becomes the system prompt."""
    mapping: dict[str, Any] = item["mapping"]
    texts = {
        str(key): found for key, node in mapping.items() if (found := _chatgpt_text(_field(node, "message")))
    }
    kept = [key for key, (role, _) in texts.items() if role != "system"]  # in the file's order

    def kept_ancestor(key: Any) -> str | None:
        seen: set[str] = set()
        while key is not None and str(key) not in seen and len(seen) <= len(mapping):
            if str(key) in texts and texts[str(key)][0] != "system":
                return str(key)
            seen.add(str(key))
            key = _field(mapping.get(str(key)), "parent")
        return None

    messages = []
    for key in kept:
        node, (role, text) = mapping[key], texts[key]
        message = node["message"]
        model = _field(_field(message, "metadata"), "model_slug")
        stats = {"model": model} if isinstance(model, str) and len(model) <= 300 else {}
        parent = kept_ancestor(_field(node, "parent"))
        messages.append(ArchivedMessage(key, parent, role, text, time_of(message.get("create_time")), stats))
    system = next((text for role, text in texts.values() if role == "system"), "")
    title = text_of(item.get("title"), MAX_TITLE) or "ChatGPT"
    source_id = text_of(item.get("conversation_id") or item.get("id"), 90)
    return ArchivedConversation(
        uid=f"chatgpt:{source_id}" if source_id else content_uid(title, messages),
        title=title, messages=ordered(messages), leaf=kept_ancestor(item.get("current_node")),
        system_prompt=system, created_at=time_of(item.get("create_time")),
        updated_at=time_of(item.get("update_time")),
    )  # fmt: skip


def _openai(item: dict[str, Any]) -> ArchivedConversation:
    """One list of OpenAI chat messages: a single branch; a leading system message is the system prompt."""
    turns = [m for m in item["messages"] if isinstance(m, dict) and isinstance(m.get("content"), str)]
    system = turns[0]["content"] if turns and turns[0].get("role") == "system" else ""
    messages: list[ArchivedMessage] = []
    for index, message in enumerate(turns):
        if message.get("role") in ROLES and message["content"].strip():
            parent = messages[-1].key if messages else None
            messages.append(ArchivedMessage(str(index), parent, message["role"], message["content"]))
    first_line = messages[0].content.strip().splitlines()[0] if messages else ""
    title = text_of(item.get("title"), MAX_TITLE) or first_line[:40] or "Imported chat"
    source_id = text_of(item.get("id"), 90)
    return ArchivedConversation(
        uid=f"openai:{source_id}" if source_id else content_uid(title, messages),
        title=title, messages=tuple(messages), system_prompt=system,
    )  # fmt: skip
