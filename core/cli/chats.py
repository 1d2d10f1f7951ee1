"""`localllm chats export FILE | import FILE`: every conversation in one JSON file, and back."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from core.access.policy import LOCAL_OWNER
from core.access.sign_in import owner_of
from core.chat import archive
from core.cli.common import database
from core.errors import NotWritableError

WHOSE = click.option("--user", "name", default=None, metavar="NAME",
                     help="a LAN user's conversations (default: this machine's own)")  # fmt: skip


def _owner(name: str | None) -> str:
    return owner_of(name) if name else LOCAL_OWNER


@click.group(short_help="chat history: export FILE, import FILE")
def chats() -> None:
    """Every conversation with its branches in one JSON file (docs/chat-export.md), and back."""


@chats.command("export")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@WHOSE
def chats_export(file: str, name: str | None) -> int:
    """Write every conversation to FILE (- for stdout)."""
    data = archive.export_bytes(database(), _owner(name))
    if file == "-":
        sys.stdout.buffer.write(data)
        return 0
    try:
        Path(file).write_bytes(data)
    except OSError as exc:
        raise NotWritableError(f"Cannot write {file}: {exc.strerror or exc}.", path=file) from exc
    click.echo(f"Exported to {file} ({len(data):,} bytes).", err=True)
    return 0


@chats.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@WHOSE
def chats_import(file: str, name: str | None) -> int:
    """Import FILE (- for stdin): our export, ChatGPT's export (ZIP or conversations.json) or OpenAI chat
    messages (JSON or JSONL). Conversations already here are skipped, so importing twice adds nothing."""
    source: bytes | Path = Path(file)
    if file == "-":  # a pipe: read as an upload is, at most MAX_FILE_BYTES
        source = sys.stdin.buffer.read(archive.MAX_FILE_BYTES + 1)
    result = archive.import_bytes(database(), _owner(name), source)
    click.echo(f"Conversations imported: {result.imported} (already here, skipped: {result.already_here}).")
    return 0
