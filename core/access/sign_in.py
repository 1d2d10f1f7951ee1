"""Signing in from the LAN: the shared password, a personal password per name (claimed at the first
sign-in, scrypt-hashed), limits on wrong passwords per address and per name, and sessions."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from core.access.policy import AccessPolicy, Identity, name_key, user_name
from core.errors import SignInError
from core.storage import lan_accounts
from core.storage.db import Database

MAX_FAILURES = 5  # wrong passwords allowed from one address before it must wait
FIRST_LOCKOUT_S = 30.0
MAX_LOCKOUT_S = 15 * 60.0
SESSION_TTL_S = 7 * 24 * 3600.0  # a browser stays signed in this long
_USER_NAME = re.compile(r"^[\w][\w .@-]{0,39}$")
_LOOKALIKE = ("LATIN", "GREEK", "CYRILLIC")  # scripts with letters that look alike
logger = logging.getLogger(__name__)


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


# scrypt with n=2**14, r=8: 16 MiB of memory and ~50 ms per check, so guessing is slow on any hardware.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PERSONAL_PASSWORD = 8


def hash_password(password: str) -> str:
    """A memory-hard hash of a personal password: `scrypt$n$r$p$salt$hash` (hex)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=64 * 1024**2, dklen=32)  # fmt: skip
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def password_matches(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt" or int(n) > 2**20:
            return False
        digest = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                                p=int(p), maxmem=256 * 1024**2, dklen=len(expected) // 2)  # fmt: skip
    except ValueError:
        return False
    return hmac.compare_digest(digest.hex(), expected)


def lookalike_scripts(name: str) -> set[str]:
    """The scripts among Latin, Greek and Cyrillic whose letters `name` uses: mixed, "Аlice" (a Cyrillic
    А) would pass for "Alice" in the admin's list of names (Unicode's mixed-script confusables)."""
    return {
        script
        for c in name
        if c.isalpha()
        for script in _LOOKALIKE
        if unicodedata.name(c, "").startswith(script)
    }


def owner_of(name: str) -> str:
    return f"{lan_accounts.LAN_OWNER_PREFIX}{name_key(name)}"


class SignInGate:
    """Checks a LAN sign-in: the shared password (the admins' own for admin names), then the name's
    personal password, with the limiter in front of every check.

    A name is claimed at its first sign-in: the personal password typed then (twice) becomes the
    name's, stored as an scrypt hash, so knowing the shared password is not enough to open someone
    else's conversations. A successful sign-in opens a session: an opaque token the browser keeps (a
    cookie); the database keeps only its sha256, so the app and the HTTP guard in front of it agree.
    """

    def __init__(
        self,
        policy: AccessPolicy,
        db: Database,
        limiter: SignInLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.db = db
        self.limiter = limiter or SignInLimiter(clock)

    def open_session(self, identity: Identity) -> str:
        token = secrets.token_urlsafe(32)
        record = lan_accounts.SessionRecord(
            identity.owner.removeprefix(lan_accounts.LAN_OWNER_PREFIX), identity.name, identity.is_admin,
            datetime.now(UTC) + timedelta(seconds=SESSION_TTL_S),
        )  # fmt: skip
        with self.db.begin() as session:
            lan_accounts.open_session(session, _digest(token), record)
        return token

    def resume(self, token: str | None) -> Identity | None:
        """The identity of a still-open session, or None."""
        if not token or len(token) > 200:
            return None
        with self.db.begin() as session:
            found = lan_accounts.find_session(session, _digest(token))
        if found is None:
            return None
        return Identity(name=found.display_name, owner=owner_of(found.name), is_admin=found.is_admin)

    def close_session(self, token: str | None) -> None:
        if token:
            with self.db.begin() as session:
                lan_accounts.close_session(session, _digest(token))

    def _check_shared(self, client: str, name: str, password: str) -> bool:
        """The shared password (an admin name's own, when one is set); raises before any check when the
        address or the name must wait."""
        if not self.policy.password:
            raise SignInError("LAN access is off: no password is configured.", reason="no_password")
        wait = max(self.limiter.wait_s(client), self.limiter.wait_s(f"name:{name_key(name)}"))
        if wait > 0:
            raise SignInError(f"Too many wrong passwords. Try again in {wait:.0f} s.", reason="rate_limited",
                              wait_s=round(wait))  # fmt: skip
        if not _USER_NAME.match(name):
            raise SignInError("Choose a user name of 1-40 letters, digits, spaces, '.', '@' or '-'.",
                              reason="bad_name")  # fmt: skip
        if len(lookalike_scripts(name)) > 1:
            raise SignInError("A user name may not mix Latin, Greek and Cyrillic letters: they look alike "
                              "(Cyrillic 'А', Latin 'A').", reason="mixed_scripts")  # fmt: skip
        is_admin = name_key(name) in self.policy.admin_names
        expected = (self.policy.admin_password if is_admin else None) or self.policy.password
        return _same(password, expected)

    def _failed(self, client: str, name: str) -> SignInError:
        logger.info("wrong password for %r from %s", name[:40], client)
        self.limiter.failed(client)
        self.limiter.failed(f"name:{name_key(name)}")
        return SignInError("Wrong user name or password.", reason="bad_password")

    def sign_in(
        self, client: str, name: str, password: str, personal: str, confirm: str | None = None
    ) -> Identity:
        """Sign in, or claim an unclaimed name (`confirm` repeats the personal password to claim it).

        SignInError reasons: no_password, rate_limited, bad_name, mixed_scripts, bad_password, claim (the
        name is free: ask for `confirm`), weak_password, mismatch."""
        name = user_name(name)
        if not self._check_shared(client, name, password):
            raise self._failed(client, name)
        key = name_key(name)
        with self.db.begin() as session:
            stored = lan_accounts.password_hash(session, key)
        if stored is not None:
            if not password_matches(personal, stored):
                raise self._failed(client, name)
        else:
            self._claim(key, name, personal, confirm)
        self.limiter.succeeded(client)
        self.limiter.succeeded(f"name:{key}")
        with self.db.begin() as session:
            lan_accounts.signed_in(session, key)
        logger.info("%r signed in from %s", name, client)
        return Identity(name=name, owner=owner_of(name), is_admin=key in self.policy.admin_names)

    def _claim(self, key: str, name: str, personal: str, confirm: str | None) -> None:
        if len(personal) < MIN_PERSONAL_PASSWORD or _same(personal, self.policy.password or ""):
            raise SignInError(
                f"Choose a personal password of at least {MIN_PERSONAL_PASSWORD} characters, other than "
                "the shared one.",
                reason="weak_password",
                length=MIN_PERSONAL_PASSWORD,
            )
        if confirm is None:
            raise SignInError(f"{name} is a new name here: type your password again to claim it.",
                              reason="claim", name=name)  # fmt: skip
        if not _same(personal, confirm):
            raise SignInError("The two passwords differ.", reason="mismatch")
        with self.db.begin() as session:
            if not lan_accounts.claim(session, key, name, hash_password(personal)):
                raise SignInError("Wrong user name or password.", reason="bad_password")  # claimed meanwhile
        logger.info("the name %r was claimed", name)

    def accounts(self) -> list[lan_accounts.LanAccount]:
        with self.db.begin() as session:
            return lan_accounts.accounts(session)

    def reset(self, name: str) -> bool:
        """Forget a name's personal password (its next sign-in claims it again) and sign it out."""
        logger.info("the name %r was reset", name)
        with self.db.begin() as session:
            return lan_accounts.reset(session, name_key(name))
