"""LAN accounts (names claimed with a personal password) and signed-in sessions, in the database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.storage.schema import ConversationRow, LanAccountRow, LanSessionRow, utcnow

LAN_OWNER_PREFIX = "lan:"


@dataclass(frozen=True)
class LanAccount:
    name: str  # name_key(): the key of the account and of its conversations (owner "lan:<name>")
    display_name: str
    claimed: bool  # False: the name has conversations from before personal passwords, not claimed yet
    created_at: datetime | None
    last_sign_in_at: datetime | None


@dataclass(frozen=True)
class SessionRecord:
    name: str
    display_name: str
    is_admin: bool
    expires_at: datetime


def password_hash(session: Session, name: str) -> str | None:
    row = session.get(LanAccountRow, name)
    return row.password_hash if row else None


def claim(session: Session, name: str, display_name: str, hashed: str) -> bool:
    """Store the account if the name is still free; False when someone claimed it first."""
    if session.get(LanAccountRow, name) is not None:
        return False
    session.add(LanAccountRow(name=name, display_name=display_name, password_hash=hashed))
    session.flush()
    return True


def signed_in(session: Session, name: str) -> None:
    row = session.get(LanAccountRow, name)
    if row is not None:
        row.last_sign_in_at = utcnow()


def reset(session: Session, name: str) -> bool:
    """Forget the name's password and end its sessions; its conversations stay. False if unknown."""
    row = session.get(LanAccountRow, name)
    session.execute(delete(LanSessionRow).where(LanSessionRow.name == name))
    if row is None:
        return False
    session.delete(row)
    return True


def accounts(session: Session) -> list[LanAccount]:
    """Claimed accounts, and names with conversations that nobody has claimed yet, by name."""
    found = {
        row.name: LanAccount(row.name, row.display_name, True, row.created_at, row.last_sign_in_at)
        for row in session.scalars(select(LanAccountRow))
    }
    owners = session.scalars(
        select(ConversationRow.owner).where(ConversationRow.owner.startswith(LAN_OWNER_PREFIX)).distinct()
    )
    for owner in owners:
        name = owner.removeprefix(LAN_OWNER_PREFIX)
        found.setdefault(name, LanAccount(name, name, False, None, None))
    return [found[name] for name in sorted(found)]


def open_session(session: Session, token_hash: str, record: SessionRecord) -> None:
    session.add(LanSessionRow(token_hash=token_hash, **record.__dict__))
    session.flush()


def find_session(session: Session, token_hash: str) -> SessionRecord | None:
    """The live session with this token's hash; an expired one is deleted."""
    row = session.get(LanSessionRow, token_hash)
    if row is None:
        return None
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    if expires < datetime.now(UTC):
        session.delete(row)
        return None
    return SessionRecord(row.name, row.display_name, row.is_admin, expires)


def close_session(session: Session, token_hash: str) -> None:
    session.execute(delete(LanSessionRow).where(LanSessionRow.token_hash == token_hash))
