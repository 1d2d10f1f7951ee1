"""LAN access rules: where the password comes from, sign-in checks, the wrong-password limiter, --lan."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from core.access.policy import AccessPolicy, Identity, is_loopback, load_access_policy
from core.access.sign_in import FIRST_LOCKOUT_S, MAX_FAILURES, SignInGate, SignInLimiter
from core.chat.service import ChatService
from core.errors import ConfigError, SignInError
from core.settings import PROJECT_ROOT
from core.storage.db import Database
from core.storage.schema import LanAccountRow


def test_password_and_admins_come_from_the_environment_before_the_secrets_file(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('password = "from-file"\nadmins = ["Alice", "bob "]\n', encoding="utf-8")
    from_file = load_access_policy({"LOCALLLM_SECRETS_FILE": str(secrets)})
    assert from_file.password == "from-file"
    assert from_file.admin_names == {"alice", "bob"}
    from_env = load_access_policy(
        {"LOCALLLM_SECRETS_FILE": str(secrets), "LOCALLLM_PASSWORD": "env", "LOCALLLM_ADMINS": "carol, dan"}
    )
    assert from_env.password == "env"
    assert from_env.admin_names == {"carol", "dan"}
    assert "env" not in repr(from_env)  # secrets never reach logs


def test_no_password_anywhere_means_no_lan_access(tmp_path: Path) -> None:
    assert not load_access_policy({"LOCALLLM_SECRETS_FILE": str(tmp_path / "missing.toml")}).lan_allowed


def test_a_broken_secrets_file_is_a_clear_config_error(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text("password = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"secrets\.toml cannot be read"):
        load_access_policy({"LOCALLLM_SECRETS_FILE": str(secrets)})


@pytest.mark.parametrize(
    ("address", "loopback"),
    [(None, True), ("127.0.0.1", True), ("::1", True), ("localhost", True), ("10.0.0.2", False),
     ("", False), ("not an ip", False)],
)  # fmt: skip
def test_loopback_addresses(address: str | None, loopback: bool) -> None:
    assert is_loopback(address) is loopback


PERSONAL = "my own secret"


def claimed(gate: SignInGate, client: str, name: str, shared: str, personal: str = PERSONAL) -> Identity:
    """A first sign-in: the personal password typed twice claims the name."""
    return gate.sign_in(client, name, shared, personal, confirm=personal)


def reason(call: Callable[[], object]) -> str:
    with pytest.raises(SignInError) as caught:
        call()
    return caught.value.params["reason"]


def test_sign_in_gives_each_name_its_own_owner_and_admins_their_role(database: Database) -> None:
    gate = SignInGate(AccessPolicy(password="s3cret", admin_names=frozenset({"root"})), database)
    alice = claimed(gate, "10.0.0.2", " Alice ", "s3cret")
    assert (alice.name, alice.owner, alice.is_admin) == ("Alice", "lan:alice", False)
    assert claimed(gate, "10.0.0.3", "ROOT", "s3cret").is_admin
    assert claimed(gate, "10.0.0.3", "李雷", "s3cret").owner == "lan:李雷"  # names in any script


def test_a_name_typed_full_width_or_with_extra_spaces_is_the_same_name(database: Database) -> None:
    """A Chinese input method in full-width mode types "Ａｌｉｃｅ"; a browser shows "Al  ice" as "Al ice";
    a Cyrillic "А" in "Аlice" looks like a Latin one."""
    gate = SignInGate(AccessPolicy(password="s3cret", admin_names=frozenset({"root"})), database)
    alice = claimed(gate, "10.0.0.2", "Ａｌｉｃｅ  Ｌｉ", "s3cret")
    assert (alice.name, alice.owner) == ("Alice Li", "lan:alice li")
    assert gate.sign_in("10.0.0.3", "alice li", "s3cret", PERSONAL).owner == "lan:alice li"
    assert reason(lambda: gate.sign_in("10.0.0.4", "Alice   Li", "s3cret", "guess guess")) == "bad_password"
    assert claimed(gate, "10.0.0.5", "ＲＯＯＴ", "s3cret").is_admin
    # A Cyrillic "А" in a Latin name would pass for "Alice" in the admin's list: refused; one script is fine.
    assert reason(lambda: claimed(gate, "10.0.0.6", "\u0410lice", "s3cret")) == "mixed_scripts"
    assert claimed(gate, "10.0.0.6", "Алиса", "s3cret").owner == "lan:алиса"
    assert claimed(gate, "10.0.0.6", "李 Lee", "s3cret").owner == "lan:李 lee"
    assert load_access_policy(
        {"LOCALLLM_PASSWORD": "pw", "LOCALLLM_ADMINS": "Ｂｏｂ, Carol  Wu"}
    ).admin_names == {"bob", "carol wu"}


@pytest.mark.parametrize("name", ["", "   ", "a" * 41, "<script>", "../x", "bob\nadmin", "bob\u3000\nadmin"])
def test_bad_user_names_are_refused(database: Database, name: str) -> None:
    gate = SignInGate(AccessPolicy(password="pw"), database)
    assert reason(lambda: claimed(gate, "10.0.0.2", name, "pw")) == "bad_name"


def test_a_name_is_claimed_at_its_first_sign_in_and_needs_its_password_after(database: Database) -> None:
    gate = SignInGate(AccessPolicy(password="shared"), database)
    assert reason(lambda: gate.sign_in("10.0.0.2", "carol", "shared", PERSONAL)) == "claim"
    assert reason(lambda: gate.sign_in("10.0.0.2", "carol", "shared", PERSONAL, "typo")) == "mismatch"
    assert reason(lambda: claimed(gate, "10.0.0.2", "carol", "shared", "short")) == "weak_password"
    assert reason(lambda: claimed(gate, "10.0.0.2", "carol", "shared", "shared")) == "weak_password"
    assert claimed(gate, "10.0.0.2", "carol", "shared").owner == "lan:carol"

    # Knowing the shared password is not enough to be carol now, from any address.
    assert reason(lambda: gate.sign_in("10.0.0.7", "carol", "shared", "guess guess")) == "bad_password"
    assert reason(lambda: gate.sign_in("10.0.0.7", "Carol", "shared", "")) == "bad_password"
    assert gate.sign_in("10.0.0.8", "CAROL", "shared", PERSONAL).owner == "lan:carol"
    with database.begin() as session:
        stored = session.get(LanAccountRow, "carol").password_hash
    assert stored.startswith("scrypt$") and PERSONAL not in stored  # a memory-hard hash, not the password


def test_guessing_a_names_password_from_many_addresses_locks_the_name(database: Database) -> None:
    gate = SignInGate(AccessPolicy(password="shared"), database)
    claimed(gate, "10.0.0.2", "carol", "shared")
    for attempt in range(MAX_FAILURES):
        assert (
            reason(lambda a=attempt: gate.sign_in(f"10.0.1.{a}", "carol", "shared", "guess"))
            == "bad_password"
        )
    assert reason(lambda: gate.sign_in("10.0.2.1", "carol", "shared", PERSONAL)) == "rate_limited"
    assert claimed(gate, "10.0.2.1", "dave", "shared")  # other names are not affected


def test_an_admin_resets_a_name_and_existing_names_are_claimed_by_their_next_sign_in(
    database: Database,
) -> None:
    ChatService(database, provider=lambda: None, owner="lan:erin").new_conversation("from before passwords")
    gate = SignInGate(AccessPolicy(password="shared"), database)
    claimed(gate, "10.0.0.2", "carol", "shared")
    token = gate.open_session(gate.sign_in("10.0.0.2", "carol", "shared", PERSONAL))
    assert [(a.name, a.claimed) for a in gate.accounts()] == [("carol", True), ("erin", False)]

    assert gate.reset("Carol")
    assert gate.resume(token) is None  # signed out everywhere
    assert reason(lambda: gate.sign_in("10.0.0.2", "carol", "shared", "a new one!")) == "claim"
    assert claimed(gate, "10.0.0.2", "carol", "shared", "a new one!").owner == "lan:carol"
    assert claimed(gate, "10.0.0.3", "erin", "shared").owner == "lan:erin"  # keeps her conversations
    assert not gate.reset("nobody")


def test_the_admin_password_guards_admin_names_when_set(database: Database) -> None:
    policy = AccessPolicy(password="shared", admin_names=frozenset({"boss"}), admin_password="boss-only")
    gate = SignInGate(policy, database)
    assert reason(lambda: claimed(gate, "10.0.0.2", "boss", "shared")) == "bad_password"  # not an admin's
    assert claimed(gate, "10.0.0.2", "boss", "boss-only").is_admin
    assert not claimed(gate, "10.0.0.2", "worker", "shared").is_admin


def test_without_a_password_nobody_signs_in(database: Database) -> None:
    assert (
        reason(lambda: SignInGate(AccessPolicy(), database).sign_in("10.0.0.2", "alice", "", ""))
        == "no_password"
    )


def test_wrong_passwords_lock_the_address_out_then_let_it_try_again(database: Database) -> None:
    now = [1000.0]
    gate = SignInGate(AccessPolicy(password="right"), database, SignInLimiter(clock=lambda: now[0]))
    for attempt in range(MAX_FAILURES):
        assert (
            reason(lambda a=attempt: gate.sign_in("10.0.0.9", f"mallory{a}", "guess", "")) == "bad_password"
        )
    # even the right password waits out the lockout
    assert reason(lambda: claimed(gate, "10.0.0.9", "mallory", "right")) == "rate_limited"
    with pytest.raises(SignInError) as caught:
        claimed(gate, "10.0.0.9", "mallory", "right")
    assert caught.value.params["wait_s"] == FIRST_LOCKOUT_S
    assert claimed(gate, "10.0.0.10", "alice", "right")  # other addresses are not affected

    now[0] += FIRST_LOCKOUT_S + 1
    assert reason(lambda: gate.sign_in("10.0.0.9", "mallory", "guess", "")) == "bad_password"
    assert gate.limiter.wait_s("10.0.0.9") == 2 * FIRST_LOCKOUT_S  # one more failure doubles the wait
    now[0] += 2 * FIRST_LOCKOUT_S + 1
    assert claimed(gate, "10.0.0.9", "mallory", "right").name == "mallory"
    assert gate.limiter.wait_s("10.0.0.9") == 0


def test_app_lan_refuses_to_start_without_a_password() -> None:
    env = {k: v for k, v in os.environ.items() if k != "LOCALLLM_PASSWORD"}
    result = subprocess.run(
        [sys.executable, "-m", "core", "app", "--lan", "--port", "8599"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "LOCALLLM_PASSWORD" in result.stderr
    assert "secrets.toml" in result.stderr


def test_sessions_resume_until_closed_or_expired(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = SignInGate(AccessPolicy(password="pw"), database)
    alice = claimed(gate, "10.0.0.2", "alice", "pw")
    token = gate.open_session(alice)
    assert gate.resume(token) == alice
    assert SignInGate(AccessPolicy(password="pw"), database).resume(token) == alice  # any process agrees
    assert gate.resume("forged-token") is None
    assert gate.resume(None) is None
    gate.close_session(token)
    assert gate.resume(token) is None  # signed out

    monkeypatch.setattr("core.access.sign_in.SESSION_TTL_S", -1.0)
    assert gate.resume(gate.open_session(alice)) is None  # expired
