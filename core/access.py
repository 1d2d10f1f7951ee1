"""Who may open the dashboard from the LAN: the shared password, user names, admins, sign-in limits."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ConfigError, SignInError
from core.settings import PROJECT_ROOT

SECRETS_FILE = PROJECT_ROOT / ".streamlit" / "secrets.toml"
LOCAL_OWNER = "local"
MAX_FAILURES = 5  # wrong passwords allowed from one address before it must wait
FIRST_LOCKOUT_S = 30.0
MAX_LOCKOUT_S = 15 * 60.0
SESSION_TTL_S = 7 * 24 * 3600.0  # a browser stays signed in this long (while the app runs)
_USER_NAME = re.compile(r"^[\w][\w .@-]{0,39}$")


def is_loopback(host: str | None) -> bool:
    """True for this machine's own addresses (and for no address: Streamlit reports loopback so)."""
    if host is None or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


def _read_secrets(path: Path) -> Mapping[str, object]:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc}") from exc


def _names(value: object) -> frozenset[str]:
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else []
    return frozenset(str(item).strip().casefold() for item in items if str(item).strip())


def load_access_policy(env: Mapping[str, str] | None = None) -> AccessPolicy:
    """From LOCALLLM_PASSWORD / LOCALLLM_ADMINS / LOCALLLM_ADMIN_PASSWORD, else the secrets file.

    The secrets file is .streamlit/secrets.toml, or the one LOCALLLM_SECRETS_FILE names.
    """
    env = os.environ if env is None else env
    secrets = _read_secrets(Path(env.get("LOCALLLM_SECRETS_FILE") or SECRETS_FILE))

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


class SignInLimiter:
    """Counts wrong passwords per client address; after MAX_FAILURES the address waits, longer each time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._blocked_until: dict[str, float] = {}

    def wait_s(self, client: str) -> float:
        with self._lock:
            return max(0.0, self._blocked_until.get(client, 0.0) - self._clock())

    def failed(self, client: str) -> None:
        with self._lock:
            count = self._failures.get(client, 0) + 1
            self._failures[client] = count
            if count >= MAX_FAILURES:
                lockout = min(MAX_LOCKOUT_S, FIRST_LOCKOUT_S * 2 ** (count - MAX_FAILURES))
                self._blocked_until[client] = self._clock() + lockout

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)
            self._blocked_until.pop(client, None)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class SignInGate:
    """Checks a LAN sign-in against the policy, with the limiter in front of every password check.

    A successful sign-in opens a session: an opaque token the browser keeps (a cookie), so a reload
    or a new tab stays signed in. Sessions live in this process only; only their hashes are kept.
    """

    def __init__(
        self,
        policy: AccessPolicy,
        limiter: SignInLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.limiter = limiter or SignInLimiter(clock)
        self._clock = clock
        self._sessions: dict[str, tuple[Identity, float]] = {}
        self._lock = threading.Lock()

    def open_session(self, identity: Identity) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[_digest(token)] = (identity, self._clock() + SESSION_TTL_S)
        return token

    def resume(self, token: str | None) -> Identity | None:
        """The identity of a still-open session, or None."""
        if not token:
            return None
        with self._lock:
            found = self._sessions.get(_digest(token))
            if found is None:
                return None
            if found[1] < self._clock():
                del self._sessions[_digest(token)]
                return None
            return found[0]

    def close_session(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._sessions.pop(_digest(token), None)

    def sign_in(self, client: str, name: str, password: str) -> Identity:
        if not self.policy.password:
            raise SignInError("LAN access is off: no password is configured.", reason="no_password")
        wait = self.limiter.wait_s(client)
        if wait > 0:
            raise SignInError(f"Too many wrong passwords. Try again in {wait:.0f} s.", reason="rate_limited",
                              wait_s=round(wait))  # fmt: skip
        name = name.strip()
        if not _USER_NAME.match(name):
            raise SignInError("Choose a user name of 1-40 letters, digits, spaces, '.', '@' or '-'.",
                              reason="bad_name")  # fmt: skip
        is_admin = name.casefold() in self.policy.admin_names
        expected = (self.policy.admin_password if is_admin else None) or self.policy.password
        if not _same(password, expected):
            self.limiter.failed(client)
            raise SignInError("Wrong user name or password.", reason="bad_password")
        self.limiter.succeeded(client)
        return Identity(name=name, owner=f"lan:{name.casefold()}", is_admin=is_admin)
