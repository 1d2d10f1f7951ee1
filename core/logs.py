"""Logs: one logger per module (`logging.getLogger(__name__)`), a rotating file under the data folder
(data/logs/localllm.log, 5 × 1 MB), and stderr too for the CLI with -v.

No secret reaches a log line: the shared and admin passwords, the API key and the Hugging Face token
of the environment are masked wherever they appear, and so is anything shaped like a key or a bearer
token (sk-…, hf_…, "Authorization: Bearer …", password=…).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path

from core.settings import load_settings

LOG_NAME = "localllm.log"
MAX_BYTES = 1024 * 1024
BACKUPS = 4
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SECRET_VARIABLES = ("LOCALLLM_PASSWORD", "LOCALLLM_ADMIN_PASSWORD", "LOCALLLM_API_KEY", "HF_TOKEN")
MASK = "•••"
_KEYS = re.compile(r"\b(?:sk-[A-Za-z0-9_-]{8,}|hf_[A-Za-z0-9]{8,})")
_LABELLED = re.compile(
    r"(?i)(\bbearer\s+|\b(?:password|passwd|api_key|apikey|token|secret)\s*[=:]\s*)[^\s&,;'\"]+"
)
_lock = threading.Lock()
_secrets: set[str] = set()
_configured: Path | None = None


def remember_secret(value: str | None) -> None:
    """A secret known at run time (a generated API key): masked in every later log line."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, MASK)
    return _LABELLED.sub(lambda m: m.group(1) + MASK, _KEYS.sub(MASK, text))


class RedactingFormatter(logging.Formatter):
    """The whole formatted line, traceback included, with secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def log_file(data_dir: Path | None = None) -> Path:
    return (data_dir or load_settings().data_dir) / "logs" / LOG_NAME


def setup_logging(
    verbose: int = 0, data_dir: Path | None = None, env: Mapping[str, str] | None = None
) -> Path:
    """Send the product's loggers (core.*, ui.*) to the rotating file, and to stderr with `verbose`.
    Calling it again only adds what is missing (stderr) or moves the file when the data folder changed."""
    global _configured
    for name in SECRET_VARIABLES:
        remember_secret((os.environ if env is None else env).get(name))
    path = log_file(data_dir)
    formatter = RedactingFormatter(FORMAT)
    loggers = [logging.getLogger("core"), logging.getLogger("ui")]
    with _lock:
        if _configured != path:
            for logger in loggers:
                for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
                    logger.removeHandler(handler)
                    handler.close()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                file_handler = logging.handlers.RotatingFileHandler(
                    path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8", delay=True
                )
            except OSError:
                file_handler = None  # a read-only data folder: no file log, the product still runs
            for logger in loggers:
                logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
                logger.propagate = False
                if file_handler is not None:
                    file_handler.setFormatter(formatter)
                    logger.addHandler(file_handler)
            _configured = path
        if verbose and not any(type(h) is logging.StreamHandler for h in loggers[0].handlers):
            stderr = logging.StreamHandler()
            stderr.setFormatter(formatter)
            stderr.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
            for logger in loggers:
                logger.addHandler(stderr)
    return path


def close_logging() -> None:
    """Detach the file and stderr handlers (the product's loggers propagate again)."""
    global _configured
    with _lock:
        for logger in (logging.getLogger("core"), logging.getLogger("ui")):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
                handler.close()
            logger.propagate = True
        _configured = None


def tail(lines: int = 200, data_dir: Path | None = None) -> list[str]:
    """The last lines of the log file (fewer when it is shorter; [] when there is none yet)."""
    path = log_file(data_dir)
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 256 * lines))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]
