"""Where `core serve` (or the dashboard's own API) runs, as the dashboard's Settings page shows it."""

from __future__ import annotations

from typing import Any

from core.access.policy import lan_addresses
from core.storage import repo
from core.storage.db import Database

SERVER_STATUS_SETTING = "server.status"


def server_urls(host: str, port: int) -> list[str]:
    """The base URLs a client would use for a server bound to `host`."""
    hosts = lan_addresses() if host in ("0.0.0.0", "::") else [host]
    return [f"http://{h}:{port}/v1" for h in hosts] or [f"http://127.0.0.1:{port}/v1"]


def record_server(db: Database, host: str, port: int, token_required: bool, pid: int) -> None:
    with db.begin() as session:
        repo.set_setting(
            session,
            SERVER_STATUS_SETTING,
            {"pid": pid, "host": host, "port": port, "token_required": token_required},
        )


def forget_server(db: Database, pid: int) -> None:
    """The server of process `pid` stopped (its process goes on: the dashboard's own API)."""
    with db.begin() as session:
        status = repo.get_setting(session, SERVER_STATUS_SETTING)
        if status and int(status["pid"]) == pid:
            repo.delete_setting(session, SERVER_STATUS_SETTING)


def server_status(db: Database) -> dict[str, Any] | None:
    """The running `core serve` (pid, host, port, token_required), or None when none is running."""
    import psutil

    with db.begin() as session:
        status = repo.get_setting(session, SERVER_STATUS_SETTING)
    if not status or not psutil.pid_exists(int(status["pid"])):
        return None
    return status
