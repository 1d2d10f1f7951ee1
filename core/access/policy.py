"""The LAN policy: the shared password, admin names and the admins' own password (from the environment
or .streamlit/secrets.toml), who is this machine (loopback), and the identities of signed-in people."""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ConfigError
from core.settings import PROJECT_ROOT, is_checkout, load_settings

# Beside Streamlit's config in a checkout; in the data folder when installed with pip.
SECRETS_FILE = PROJECT_ROOT / ".streamlit" / "secrets.toml" if is_checkout() else None
LOCAL_OWNER = "local"


def is_loopback(host: str | None) -> bool:
    """True for this machine's own addresses (and for no address: Streamlit reports loopback so)."""
    if host is None or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def user_name(typed: str) -> str:
    """A LAN user name as typed, tidied: NFKC (the full-width "Ａｌｉｃｅ" of a Chinese input method is
    "Alice") and single spaces (a browser shows "Al  ice" as "Al ice": two names that look alike)."""
    return re.sub(" {2,}", " ", unicodedata.normalize("NFKC", typed).strip())


def name_key(name: str) -> str:
    """What makes two user names the same name: their tidied, case-folded form (NFKC again: folding
    may leave a form that is not)."""
    return unicodedata.normalize("NFKC", user_name(name).casefold())


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses other machines could reach (no loopback)."""
    import psutil

    found = []
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family.name == "AF_INET" and not is_loopback(address.address):
                found.append(address.address)
    return sorted(set(found))


@dataclass(frozen=True)
class AccessPolicy:
    """The shared password, the admin names and the admins' own password (optional)."""

    password: str | None = field(default=None, repr=False)
    admin_names: frozenset[str] = frozenset()
    admin_password: str | None = field(default=None, repr=False)

    @property
    def lan_allowed(self) -> bool:
        return bool(self.password)


def cannot_listen(address: str, port: int) -> OSError | None:
    """Why a server could not listen on address:port (errno EADDRINUSE: another program does; an
    address that is not this machine's), or None: checked before a server starts, to say it in one
    sentence (uvicorn and Streamlit print a log line and exit 3)."""
    try:
        candidates = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:  # socket.gaierror: a name that is no address
        return exc
    problems: list[OSError] = []
    for family, kind, protocol, _name, where in candidates:  # localhost: 127.0.0.1 and perhaps ::1
        try:
            with socket.socket(family, kind, protocol) as probe:
                # As servers do: a port in TIME_WAIT is free.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(where)
        except OSError as exc:
            problems.append(exc)
    if in_use := [problem for problem in problems if port_in_use(problem)]:
        return in_use[0]
    # One address is enough (no IPv6 here: ::1 cannot be bound).
    return problems[0] if len(problems) == len(candidates) else None


def port_in_use(problem: OSError) -> bool:
    return problem.errno == errno.EADDRINUSE


def _read_secrets(path: Path) -> Mapping[str, object]:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc}") from exc


def _names(value: object) -> frozenset[str]:
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else []
    return frozenset(name_key(str(item)) for item in items if str(item).strip())


def load_access_policy(env: Mapping[str, str] | None = None) -> AccessPolicy:
    """From LOCALLLM_PASSWORD / LOCALLLM_ADMINS / LOCALLLM_ADMIN_PASSWORD, else the secrets file.

    The secrets file is .streamlit/secrets.toml, or the one LOCALLLM_SECRETS_FILE names.
    """
    env = os.environ if env is None else env
    default = SECRETS_FILE or load_settings(env).data_dir / "secrets.toml"
    secrets = _read_secrets(Path(env.get("LOCALLLM_SECRETS_FILE") or default))

    def pick(env_name: str, secret_name: str) -> object:
        return env.get(env_name) or secrets.get(secret_name) or None

    password = pick("LOCALLLM_PASSWORD", "password")
    admin_password = pick("LOCALLLM_ADMIN_PASSWORD", "admin_password")
    return AccessPolicy(
        password=str(password) if password else None,
        admin_names=_names(pick("LOCALLLM_ADMINS", "admins")),
        admin_password=str(admin_password) if admin_password else None,
    )


@dataclass(frozen=True)
class Identity:
    """A signed-in person: `owner` keys their conversations; admins may change and delete shared things."""

    name: str
    owner: str
    is_admin: bool


LOCAL_USER = Identity(name="local", owner=LOCAL_OWNER, is_admin=True)
