"""Repository functions: each takes a Session the caller owns and returns plain records."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from core.errors import ConfigError, NotFoundError
from core.inference.params import GenerationParams
from core.storage.records import (
    PROVIDERS,
    AttachmentInfo,
    Conversation,
    Message,
    ProviderConfig,
    check_base_url,
    from_row,
)
from core.storage.schema import (
    AttachmentRow,
    ConversationRow,
    CustomModelRow,
    MessageRow,
    ProviderConfigRow,
    SettingRow,
    utcnow,
)

CONFIG_FIELDS = frozenset({"name", "provider", "model", "base_url", "api_key", "params"})


def _config(row: ProviderConfigRow) -> ProviderConfig:
    return from_row(ProviderConfig, row, params=GenerationParams.from_mapping(row.params))


def _validate_config(provider: str, model: str, base_url: str | None) -> None:
    if provider not in PROVIDERS:
        raise ConfigError(f"Unknown provider {provider!r}; use one of {', '.join(PROVIDERS)}.")
    if not model.strip():
        raise ConfigError("A model name is required.", reason="model_required")
    if provider == "openai_compatible":
        if not base_url:
            raise ConfigError("An OpenAI-compatible provider needs a base URL.", reason="url_required")
        check_base_url(base_url)


def config_field_limit(field: str) -> int:
    """The most characters a provider config's text field (name, model, base_url, api_key) holds."""
    return ProviderConfigRow.__table__.c[field].type.length


def _check_lengths(**values: Any) -> None:
    """Text fields of a config within their columns (a database other than SQLite would refuse more)."""
    for field, value in values.items():
        limit = config_field_limit(field)
        if isinstance(value, str) and len(value) > limit:
            label = field.replace("_", " ")
            raise ConfigError(
                f"The {label} is too long: {len(value)} characters, at most {limit}.",
                reason=f"{field}_too_long", length=len(value), limit=limit,
            )  # fmt: skip


def _config_row(session: Session, config_id: int) -> ProviderConfigRow:
    row = session.get(ProviderConfigRow, config_id)
    if row is None:
        raise NotFoundError(f"No provider config with id {config_id}.", id=config_id, reason="config_gone")
    return row


def save_config(
    session: Session,
    *,
    provider: str,
    model: str,
    base_url: str | None = None,
    api_key: str | None = None,
    name: str | None = None,
    params: GenerationParams | None = None,
) -> int:
    """Store a new provider config and return its id."""
    _validate_config(provider, model, base_url)
    _check_lengths(name=name, model=model, base_url=base_url, api_key=api_key)
    unnamed = model.strip()[: config_field_limit("name")]  # the model's name, as the form's placeholder says
    row = ProviderConfigRow(
        name=name.strip() if name else unnamed,
        provider=provider,
        model=model.strip(),
        base_url=base_url or None,
        api_key=api_key or None,
        params=(params or GenerationParams()).to_dict(),
    )
    session.add(row)
    session.flush()
    return row.id


def get_config(session: Session, config_id: int) -> ProviderConfig:
    return _config(_config_row(session, config_id))


def list_configs(session: Session) -> list[ProviderConfig]:
    rows = session.scalars(select(ProviderConfigRow).order_by(ProviderConfigRow.id))
    return [_config(row) for row in rows]


def update_config(session: Session, config_id: int, **changes: Any) -> ProviderConfig:
    """Change some fields of a config (name, provider, model, base_url, api_key, params)."""
    unknown = set(changes) - CONFIG_FIELDS
    if unknown:
        raise ConfigError(f"Cannot change {', '.join(sorted(unknown))} of a provider config.")
    row = _config_row(session, config_id)
    merged = {field: getattr(row, field) for field in ("provider", "model", "base_url")}
    merged.update({k: v for k, v in changes.items() if k in merged})
    _validate_config(merged["provider"], merged["model"], merged["base_url"])
    _check_lengths(**{field: value for field, value in changes.items() if isinstance(value, str)})
    for key, value in changes.items():
        setattr(row, key, value.to_dict() if isinstance(value, GenerationParams) else value)
    session.flush()
    return _config(row)


def delete_config(session: Session, config_id: int) -> None:
    session.delete(_config_row(session, config_id))
    session.flush()


def set_current_config(session: Session, config_id: int) -> None:
    row = _config_row(session, config_id)
    session.execute(
        update(ProviderConfigRow).where(ProviderConfigRow.is_current.is_(True)).values(is_current=False)
    )
    session.flush()
    row.is_current = True
    session.flush()


def get_current_config(session: Session) -> ProviderConfig | None:
    row = session.scalars(select(ProviderConfigRow).where(ProviderConfigRow.is_current.is_(True))).first()
    return _config(row) if row else None


def get_setting(session: Session, key: str, default: Any = None) -> Any:
    row = session.get(SettingRow, key)
    return default if row is None else row.value.get("v", default)


def set_setting(session: Session, key: str, value: Any) -> None:
    row = session.get(SettingRow, key)
    if row is None:
        session.add(SettingRow(key=key, value={"v": value}))
    else:
        row.value = {"v": value}
    session.flush()


def delete_setting(session: Session, key: str) -> None:
    row = session.get(SettingRow, key)
    if row is not None:
        session.delete(row)
        session.flush()


def create_conversation(
    session: Session, *, owner: str, title: str, config_id: int | None = None, system_prompt: str = "",
    **fields: Any,
) -> Conversation:  # fmt: skip
    """A new conversation; `fields` are other ConversationRow columns (an import's uid, params, dates)."""
    fields.setdefault("uid", uuid.uuid4().hex)
    row = ConversationRow(
        owner=owner, title=title, config_id=config_id, system_prompt=system_prompt, **fields
    )
    session.add(row)
    session.flush()
    return from_row(Conversation, row)


def list_conversations(session: Session, owner: str, search: str = "") -> list[Conversation]:
    """The owner's conversations, the pinned ones first (the last pinned first), then the newest first;
    `search` matches titles and message text."""
    query = select(ConversationRow).where(ConversationRow.owner == owner)
    if search:  # the words as typed: "%" and "_" are themselves, not LIKE's wildcards
        literal = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{literal}%"
        in_messages = select(MessageRow.conversation_id).where(MessageRow.content.ilike(pattern, escape="\\"))
        query = query.where(
            or_(ConversationRow.title.ilike(pattern, escape="\\"), ConversationRow.id.in_(in_messages))
        )
    pinned = ConversationRow.pinned_at
    rows = session.scalars(query.order_by(
        pinned.is_(None), pinned.desc(), ConversationRow.updated_at.desc(), ConversationRow.id.desc()
    ))  # fmt: skip
    return [from_row(Conversation, row) for row in rows]


def leaf_id(session: Session, conversation: ConversationRow) -> int | None:
    """The last message of the branch shown (a database from before branches: the newest message)."""
    if conversation.leaf_id is not None:
        return conversation.leaf_id
    newest = select(func.max(MessageRow.id)).where(MessageRow.conversation_id == conversation.id)
    return session.scalar(newest)


def add_message(
    session: Session, conversation_id: int, role: str, content: str,
    parent_id: int | Literal["leaf"] | None = "leaf", **stats: Any,
) -> Message:  # fmt: skip
    """Add a message after `parent_id` (by default the shown branch's last message); it becomes the
    shown branch's last message. `stats` are model, prompt/completion tokens, ttft_s, tokens_per_s,
    finish_reason (or created_at, for an import)."""
    conversation = session.get(ConversationRow, conversation_id)
    if conversation is None:
        raise NotFoundError(
            f"No conversation with id {conversation_id}.", id=conversation_id, reason="conversation_gone"
        )
    parent = leaf_id(session, conversation) if parent_id == "leaf" else parent_id
    row = MessageRow(conversation_id=conversation_id, parent_id=parent, role=role, content=content, **stats)
    session.add(row)
    session.flush()
    conversation.leaf_id = row.id
    return from_row(Message, row)


def list_messages(session: Session, conversation_id: int) -> list[Message]:
    """Every message of the conversation, all branches, oldest first."""
    rows = session.scalars(
        select(MessageRow).where(MessageRow.conversation_id == conversation_id).order_by(MessageRow.id)
    )
    return [from_row(Message, row) for row in rows]


def add_attachment(
    session: Session, message_id: int, *, name: str, kind: str, size_bytes: int, text: str,
    pages: int | None = None, truncated: bool = False,
) -> AttachmentInfo:  # fmt: skip
    row = AttachmentRow(message_id=message_id, name=name, kind=kind, size_bytes=size_bytes, text=text,
                        pages=pages, truncated=truncated)  # fmt: skip
    session.add(row)
    session.flush()
    return from_row(AttachmentInfo, row)


def copy_attachments(session: Session, from_message_id: int, to_message_id: int) -> None:
    for row in session.scalars(select(AttachmentRow).where(AttachmentRow.message_id == from_message_id)):
        copied = {column.name: getattr(row, column.name) for column in AttachmentRow.__table__.columns}
        session.add(
            AttachmentRow(**copied | {"id": None, "message_id": to_message_id, "created_at": utcnow()})
        )


def attachment_texts(
    session: Session, message_ids: Sequence[int], with_text: bool = True
) -> list[tuple[AttachmentInfo, str]]:
    """The files given with these messages, in the order they were given, with their text (or '')."""
    columns = [column for column in AttachmentRow.__table__.columns if with_text or column.name != "text"]
    rows = session.execute(
        select(*columns).where(AttachmentRow.message_id.in_(message_ids)).order_by(AttachmentRow.id)
    )
    return [(from_row(AttachmentInfo, row), row.text if with_text else "") for row in rows]


def add_custom_model(
    session: Session, key: str, repo_id: str, revision: str, details: dict[str, Any]
) -> None:
    session.add(CustomModelRow(key=key, repo_id=repo_id, revision=revision, details=details))
    session.flush()


def list_custom_models(session: Session) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(key, repo_id, revision, details) for each model the user added, oldest first."""
    rows = session.scalars(select(CustomModelRow).order_by(CustomModelRow.id))
    return [(row.key, row.repo_id, row.revision, dict(row.details)) for row in rows]


def delete_custom_model(session: Session, key: str) -> None:
    row = session.scalars(select(CustomModelRow).where(CustomModelRow.key == key)).first()
    if row is None:
        raise NotFoundError(f"No custom model {key!r}.", key=key)
    session.delete(row)
    session.flush()


def measured_tokens_per_s(session: Session, model: str) -> float | None:
    """The average decode speed of this model's finished replies on this machine, if it ran here."""
    query = select(func.avg(MessageRow.tokens_per_s)).where(
        MessageRow.model == model,
        MessageRow.finish_reason.in_(("stop", "length")),
        MessageRow.tokens_per_s > 0,
    )
    value = session.scalar(query)
    return float(value) if value else None
