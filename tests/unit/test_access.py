"""LAN access rules: where the password comes from, sign-in checks, the wrong-password limiter, --lan."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.access import (
    FIRST_LOCKOUT_S,
    MAX_FAILURES,
    SESSION_TTL_S,
    AccessPolicy,
    SignInGate,
    SignInLimiter,
    is_loopback,
    load_access_policy,
)
from core.errors import ConfigError, SignInError
from core.settings import PROJECT_ROOT


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


def test_sign_in_gives_each_name_its_own_owner_and_admins_their_role() -> None:
    gate = SignInGate(AccessPolicy(password="s3cret", admin_names=frozenset({"root"})))
    alice = gate.sign_in("10.0.0.2", " Alice ", "s3cret")
    assert (alice.name, alice.owner, alice.is_admin) == ("Alice", "lan:alice", False)
    assert gate.sign_in("10.0.0.3", "ROOT", "s3cret").is_admin
    assert gate.sign_in("10.0.0.3", "李雷", "s3cret").owner == "lan:李雷"  # names in any script


@pytest.mark.parametrize("name", ["", "   ", "a" * 41, "<script>", "../x", "bob\nadmin"])
def test_bad_user_names_are_refused(name: str) -> None:
    with pytest.raises(SignInError) as caught:
        SignInGate(AccessPolicy(password="pw")).sign_in("10.0.0.2", name, "pw")
    assert caught.value.params["reason"] == "bad_name"


def test_the_admin_password_guards_admin_names_when_set() -> None:
    policy = AccessPolicy(password="shared", admin_names=frozenset({"boss"}), admin_password="boss-only")
    gate = SignInGate(policy)
    with pytest.raises(SignInError):
        gate.sign_in("10.0.0.2", "boss", "shared")  # the shared password does not make anyone admin
    assert gate.sign_in("10.0.0.2", "boss", "boss-only").is_admin
    assert not gate.sign_in("10.0.0.2", "worker", "shared").is_admin


def test_without_a_password_nobody_signs_in() -> None:
    with pytest.raises(SignInError) as caught:
        SignInGate(AccessPolicy()).sign_in("10.0.0.2", "alice", "")
    assert caught.value.params["reason"] == "no_password"


def test_wrong_passwords_lock_the_address_out_then_let_it_try_again() -> None:
    now = [1000.0]
    gate = SignInGate(AccessPolicy(password="right"), SignInLimiter(clock=lambda: now[0]))
    for _ in range(MAX_FAILURES):
        with pytest.raises(SignInError) as caught:
            gate.sign_in("10.0.0.9", "mallory", "guess")
        assert caught.value.params["reason"] == "bad_password"
    with pytest.raises(SignInError) as caught:
        gate.sign_in("10.0.0.9", "mallory", "right")  # even the right password waits out the lockout
    assert caught.value.params["reason"] == "rate_limited"
    assert caught.value.params["wait_s"] == FIRST_LOCKOUT_S
    assert gate.sign_in("10.0.0.10", "alice", "right")  # other addresses are not affected

    now[0] += FIRST_LOCKOUT_S + 1
    with pytest.raises(SignInError):
        gate.sign_in("10.0.0.9", "mallory", "guess")  # one more failure doubles the wait
    assert gate.limiter.wait_s("10.0.0.9") == 2 * FIRST_LOCKOUT_S
    now[0] += 2 * FIRST_LOCKOUT_S + 1
    assert gate.sign_in("10.0.0.9", "mallory", "right").name == "mallory"
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


def test_sessions_resume_until_closed_or_expired() -> None:
    now = [0.0]
    gate = SignInGate(AccessPolicy(password="pw"), clock=lambda: now[0])
    alice = gate.sign_in("10.0.0.2", "alice", "pw")
    token = gate.open_session(alice)
    assert gate.resume(token) == alice
    assert gate.resume("forged-token") is None
    assert gate.resume(None) is None
    gate.close_session(token)
    assert gate.resume(token) is None  # signed out

    later = gate.open_session(alice)
    now[0] += SESSION_TTL_S + 1
    assert gate.resume(later) is None  # expired
