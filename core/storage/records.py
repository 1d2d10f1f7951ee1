"""Plain frozen values returned by the repository functions (no ORM objects leak out)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from core.errors import ConfigError
from core.inference.params import GenerationParams

PROVIDERS = ("local_model", "openai_compatible")
R = TypeVar("R")


def from_row(record_type: type[R], row: Any, **overrides: Any) -> R:
    """A record from an ORM row with the same attribute names; `overrides` replace converted fields."""
    values = {f.name: getattr(row, f.name) for f in fields(record_type) if f.name not in overrides}  # type: ignore[arg-type]
    return record_type(**values, **overrides)


def is_http_address(url: str) -> bool:
    """http(s), a host, a valid port, no spaces: an address a client can be given."""
    if not url.startswith(("http://", "https://")) or any(c.isspace() for c in url):
        return False
    try:
        address = urlsplit(url)
        return bool(address.hostname) and address.port != 0
    except ValueError:  # a port that is not a number or out of range, a broken [IPv6] address
        return False


def check_base_url(base_url: str) -> None:
    """An OpenAI-compatible server's address (`is_http_address`), or a ConfigError saying what is wrong."""
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError("The base URL must start with http:// or https://.", reason="url_scheme")
    if not is_http_address(base_url):
        shown = base_url[:80]
        raise ConfigError(
            f"{shown!r} is not a server address; one looks like http://localhost:11434/v1.",
            reason="url_invalid",
            url=shown,
        )


def mask_secret(secret: str | None) -> str:
    """Show only the last 4 characters of a secret."""
    if not secret:
        return ""
    return "•" * 4 + secret[-4:] if len(secret) > 4 else "•" * 4


@dataclass(frozen=True)
class ProviderConfig:
    id: int
    name: str
    provider: str
    model: str
    base_url: str | None
    api_key: str | None = field(repr=False)
    params: GenerationParams
    is_current: bool
    created_at: datetime
    updated_at: datetime

    @property
    def masked_api_key(self) -> str:
        return mask_secret(self.api_key)


@dataclass(frozen=True)
class Conversation:
    id: int
    owner: str
    title: str
    config_id: int | None
    system_prompt: str
    created_at: datetime
    updated_at: datetime
    preset: str | None = None
    uid: str | None = None
    leaf_id: int | None = None
    pinned_at: datetime | None = None


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: int
    parent_id: int | None
    role: str
    content: str
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    ttft_s: float | None
    tokens_per_s: float | None
    finish_reason: str | None
    created_at: datetime
    sources: list[dict[str, Any]] | None = None  # a reply's use of the attached files


@dataclass(frozen=True)
class AttachmentInfo:
    """A file given with a message, without its text."""

    id: int
    message_id: int
    name: str
    kind: str
    size_bytes: int
    pages: int | None
    truncated: bool
