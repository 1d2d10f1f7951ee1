"""`localllm` / `python -m core`: the dashboard's command line.

Each command sits in the module of its capability with its options right above it. A product error
becomes one sentence on stderr and an exit code: 2 for bad input, 1 for failures (never a traceback).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import click

from core.cli import admin, chat, chats, dashboard, hardware, models, score, serve
from core.errors import LocalLLMError
from core.logs import setup_logging
from core.storage.db import close_databases

logger = logging.getLogger(__name__)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "terminal_width": 100})
@click.option("-v", "--verbose", count=True, help="log to stderr too (-v: info, -vv: debug)")
def cli(verbose: int) -> None:
    """LocalLLM Dashboard: download, check and chat with small LLMs on this machine."""
    setup_logging(verbose=verbose)


for command in (
    dashboard.app, models.models, models.search, models.download, models.verify, chat.chat, chats.chats,
    score.score, serve.serve,
    hardware.hardware,
    admin.settings, admin.db, admin.users, admin.config,
):  # fmt: skip
    cli.add_command(command)


def main(argv: Sequence[str] | None = None, prog_name: str = "localllm") -> int:
    """Run the command line; returns the exit code (2: bad input, 1: a failure, 130: interrupted)."""
    try:
        result = cli.main(args=list(argv) if argv is not None else sys.argv[1:], prog_name=prog_name,
                          standalone_mode=False)  # fmt: skip
    except click.ClickException as exc:  # usage errors: exit code 2, as argparse and click do
        exc.show()
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        return 130
    except LocalLLMError as exc:
        logger.info("%s: %s", exc.code, exc.message)
        click.echo(f"error: {exc.message}", err=True)
        return 2 if exc.bad_input else 1
    return result if isinstance(result, int) else 0


def run(prog_name: str = "localllm") -> NoReturn:
    """The process's entry (`localllm`, `python -m core`): `main`, then `end_process`."""
    end_process(main(prog_name=prog_name))


def end_process(code: int) -> NoReturn:
    """Exit with `code`; once torch is imported, without the interpreter's teardown.

    Unwinding torch's modules takes ~0.6 s on a 2-core machine, and a model's output head still being
    packed for oneDNN (a thread inside C++) would be waited for: with fbgemm's packing, together 2 of
    the 5 s of a one-question `chat`. What must outlive the process is done first: output flushed, logs and
    databases closed (every row was committed when its transaction ended).
    """
    if "torch" not in sys.modules:
        raise SystemExit(code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`): nothing more to write
            stream.flush()
    logging.shutdown()
    close_databases()
    os._exit(code)
