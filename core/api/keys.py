"""The key `localllm serve` (and the dashboard's API) asks for off loopback when LOCALLLM_API_KEY is
unset: made once and kept in the data folder (readable by this user only), so that clients keep working
after a restart."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from core.access.policy import is_loopback
from core.errors import ConfigError

KEY_FILE = "api-key"
_KEY = re.compile(r"^[A-Za-z0-9_-]{16,200}$")  # what token_urlsafe makes, or a key put there by hand


def api_key_for(host: str, data_dir: Path, renew: bool = False) -> str | None:
    """The bearer key a server bound to `host` asks for: LOCALLLM_API_KEY where set; else, off loopback,
    the kept one (`lasting_api_key`); else none (this machine's programs need none)."""
    if key := os.environ.get("LOCALLLM_API_KEY"):
        return key
    return None if is_loopback(host) else lasting_api_key(data_dir, renew=renew)


def lasting_api_key(data_dir: Path, renew: bool = False) -> str:
    """The kept key, made (or, with `renew`, made anew: the old one stops working) when there is none."""
    path = data_dir / KEY_FILE
    if not renew:
        try:
            kept = path.read_text(encoding="utf-8").strip()
        except (FileNotFoundError, UnicodeDecodeError):  # none, or not a key: a new one
            kept = ""
        except OSError as exc:
            raise _unusable(path, exc) from exc
        if _KEY.match(kept):
            return kept
    key = secrets.token_urlsafe(24)
    partial = path.with_name(f".{KEY_FILE}.new")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(key + "\n")
        os.replace(partial, path)
    except OSError as exc:
        raise _unusable(path, exc) from exc
    return key


def _unusable(path: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        f"The API key file {path} cannot be used ({exc.strerror or exc}): fix its permissions, or set "
        "LOCALLLM_API_KEY.",
        reason="api_key_file", path=str(path),
    )  # fmt: skip
