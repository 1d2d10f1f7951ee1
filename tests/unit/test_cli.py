"""`python -m core` as a user runs it: a real subprocess against a real SQLite file."""

from __future__ import annotations

import os
import subprocess
import sys

from core.settings import PROJECT_ROOT


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env=os.environ,
    )


def test_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("app", "models", "config"):
        assert command in result.stdout


def test_config_add_use_list_masks_the_key() -> None:
    added = run_cli(
        "config",
        "add",
        "openai_compatible",
        "llama3",
        "--base-url",
        "http://127.0.0.1:1/v1",
        "--api-key",
        "sk-topsecret-9876",
        "--use",
    )
    assert added.returncode == 0, added.stderr
    listed = run_cli("config", "list")
    assert "* " in listed.stdout and "llama3" in listed.stdout and "••••9876" in listed.stdout
    assert "sk-topsecret" not in listed.stdout + listed.stderr


def test_bad_input_gives_one_clear_line_and_a_nonzero_exit() -> None:
    result = run_cli("config", "use", "42")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: No provider config with id 42."
    result = run_cli("config", "add", "openai_compatible", "m")
    assert result.returncode == 2 and "needs a base URL" in result.stderr


def test_models_lists_the_catalog() -> None:
    result = run_cli("models")
    assert "qwen2.5-0.5b" in result.stdout and "TinyLlama/TinyLlama-1.1B-Chat-v1.0" in result.stdout
