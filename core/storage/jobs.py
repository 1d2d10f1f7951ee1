"""Download jobs in the database: one open job per model, progress saved by the worker."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.storage.records import from_row
from core.storage.schema import DownloadJobRow, utcnow

FINISHED_STATES = ("completed",)


@dataclass(frozen=True)
class JobRecord:
    id: int
    model_key: str
    repo_id: str
    commit: str | None
    endpoint: str | None
    state: str
    bytes_done: int
    bytes_total: int
    current_file: str | None
    attempts: int
    last_error: str | None
    last_error_code: str | None
    last_error_params: dict[str, Any]
    updated_at: datetime


def _latest_row(session: Session, key: str) -> DownloadJobRow | None:
    query = select(DownloadJobRow).where(DownloadJobRow.model_key == key).order_by(DownloadJobRow.id.desc())
    return session.scalars(query.limit(1)).first()


def open_job(session: Session, key: str, repo_id: str) -> JobRecord:
    """The model's unfinished job (to resume, same commit) or a new one; marked running now."""
    row = _latest_row(session, key)
    if row is None or row.state in FINISHED_STATES or row.repo_id != repo_id:
        row = DownloadJobRow(model_key=key, repo_id=repo_id, state="running")
        session.add(row)
    row.state = "running"
    row.last_error = row.last_error_code = None
    row.last_error_params = {}
    row.updated_at = utcnow()
    session.flush()
    return from_row(JobRecord, row)


PROGRESS_FIELDS = frozenset(
    {"state", "bytes_done", "bytes_total", "current_file", "endpoint", "attempts", "last_error", "commit",
     "last_error_code", "last_error_params"}
)  # fmt: skip


def save_progress(session: Session, job_id: int, **fields: object) -> None:
    """Store a job's progress (PROGRESS_FIELDS); a commit once known is never forgotten."""
    row = session.get(DownloadJobRow, job_id)
    if row is None:
        return
    for name, value in fields.items():
        if name not in PROGRESS_FIELDS:
            raise TypeError(f"not a progress field: {name}")
        if name != "commit" or value:
            setattr(row, name, value)
    row.updated_at = utcnow()


def latest_job(session: Session, key: str) -> JobRecord | None:
    row = _latest_row(session, key)
    return from_row(JobRecord, row) if row else None


def unfinished_keys(session: Session) -> list[str]:
    rows = session.scalars(
        select(DownloadJobRow.model_key).where(DownloadJobRow.state.not_in(FINISHED_STATES))
    )
    return sorted(set(rows))
