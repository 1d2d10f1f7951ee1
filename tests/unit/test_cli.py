"""`python -m core` as a user runs it: a real subprocess against a real SQLite file."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import text

from core.chat.presets import PresetStore
from core.cli import common
from core.settings import PROJECT_ROOT
from core.storage.db import Database, sqlite_file
from tests.fixtures.openai_faults import FaultyOpenAIServer
from tests.fixtures.tiny_models import build_tiny_model, install_ready


def run_cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env=os.environ,
        input=input,
    )


def test_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("app", "models", "config"):
        assert command in result.stdout


def test_a_port_in_use_is_said_in_a_sentence_before_the_server_starts(isolated_env: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "core", "app", "--port", str(port)],
            cwd=PROJECT_ROOT, capture_output=True, text=True, env=os.environ, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == (
        f"error: port {port} is in use: the dashboard may be running already (open "
        f"http://localhost:{port}), or start it on another port with --port.\n"
    )


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
    assert "not downloaded" in result.stdout and "not_downloaded" not in result.stdout  # words, not a code


def test_a_one_question_chat_replies_keeps_the_conversation_and_ends_with_its_code(
    tiny_models: dict[str, Path],
) -> None:
    # The process ends without Python's teardown once torch is imported (core.cli.end_process):
    # what it printed and what it saved must be there all the same, and its exit code must be kept.
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "qwen2.5-0.5b", tiny_models["qwen2"])
    done = run_cli("chat", "qwen2.5-0.5b", "--prompt", "Hello there", "--max-new-tokens", "6",
                   "--temperature", "0", "--stats")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "[stopped]" not in done.stderr  # said only of a reply that Ctrl+C stopped
    *reply, stats = done.stdout.splitlines()
    assert json.loads(stats)["completion_tokens"] >= 1
    if database := sqlite_file(os.environ["LOCALLLM_DB_URL"]):
        assert not database.with_name(database.name + "-wal").exists()  # closed: the WAL folded in
    saved = _rows("SELECT role, content FROM messages ORDER BY id")
    assert saved == [("user", "Hello there"), ("assistant", "\n".join(reply))]
    missing = run_cli("chat", "no-such-model", "-p", "Hi")  # -p: llama.cpp's short form
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")


def test_format_holds_each_reply_to_json_or_to_a_schema(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Ollama's `--format json` for scripts that parse the reply; here a schema's file too."""
    endless = build_tiny_model(tmp_path / "endless", endless=True)  # alone, it writes noise to its limit
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "qwen2.5-0.5b", endless)
    schema = tmp_path / "mood.json"
    mood = {"enum": ["happy", "sad"]}
    schema.write_text(json.dumps({"type": "object", "properties": {"mood": mood}, "required": ["mood"]}))
    held = run_cli("chat", "qwen2.5-0.5b", "-p", "How do you feel?", "--format", str(schema))
    assert held.returncode == 0, held.stderr
    assert json.loads(held.stdout)["mood"] in mood["enum"]
    anything = run_cli("chat", "qwen2.5-0.5b", "-p", "Hi", "--format", "json", "--max-new-tokens", "300")
    assert anything.returncode == 0 and anything.stdout.startswith("{")
    schema.write_text('{"type": "nonsense"}')
    refused = run_cli("chat", "qwen2.5-0.5b", "-p", "Hi", "--format", str(schema))
    assert refused.returncode == 2 and "cannot hold a reply: Invalid type: nonsense" in refused.stderr
    endless_json = run_cli("chat", "qwen2.5-0.5b", "-p", "Hi", "--format", "json", "--ignore-eos")
    assert endless_json.returncode == 2 and "do not go together" in endless_json.stderr


def test_a_cli_chat_samples_as_the_model_publisher_says_unless_told_otherwise(
    tiny_models: dict[str, Path],
) -> None:
    # The tiny model's generation_config says do_sample false (greedy); the product's default is 0.7.
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "qwen2.5-0.5b", tiny_models["qwen2"])
    for given, temperature in (([], 0.0), (["--temperature", "0.5"], 0.5)):
        done = run_cli("chat", "qwen2.5-0.5b", "--prompt", "Hi", "--max-new-tokens", "2", *given)
        assert done.returncode == 0, done.stderr
        [(stored,)] = _rows("SELECT params FROM conversations ORDER BY id DESC LIMIT 1")
        assert _json(stored)["temperature"] == temperature, stored


def test_a_cli_chat_takes_every_sampling_setting_and_a_saved_preset_by_name(
    tiny_models: dict[str, Path], database: Database
) -> None:
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "qwen2.5-0.5b", tiny_models["qwen2"])
    PresetStore(database).save("Code reviewer", "Review code tersely.", {"temperature": 1.5, "top_k": 0})

    def replied(*given: str) -> tuple[str, dict[str, object], str]:
        done = run_cli("chat", "qwen2.5-0.5b", "-p", "Hi", "--max-new-tokens", "12", "--ignore-eos", *given)
        assert done.returncode == 0, done.stderr
        [(params, system)] = _rows("SELECT params, system_prompt FROM conversations ORDER BY id DESC LIMIT 1")
        return done.stdout, _json(params), system

    # llama.cpp's spelling of the repetition penalty works too; the preset's settings, then the options.
    first, params, system = replied("--preset", "code REVIEWER", "--seed", "7", "--top-p", "0.95",
                                    "--min-p", "0.01", "--repeat-penalty", "1.2", "--presence-penalty",
                                    "0.5", "--frequency-penalty", "-0.5")  # fmt: skip
    assert system == "Review code tersely."
    assert params | {"max_new_tokens": 0} == {
        "temperature": 1.5, "top_p": 0.95, "max_new_tokens": 0, "repetition_penalty": 1.2, "top_k": 0,
        "min_p": 0.01, "presence_penalty": 0.5, "frequency_penalty": -0.5, "seed": 7, "thinking": True,
    }  # fmt: skip
    # A seed repeats a sampled reply (at 1.5 over the whole vocabulary, 12 tokens); another one does not.
    again, _, _ = replied("--preset", "Code reviewer", "--seed", "7", "--top-p", "0.95", "--min-p",
                          "0.01", "--repeat-penalty", "1.2", "--presence-penalty", "0.5",
                          "--frequency-penalty", "-0.5")  # fmt: skip
    other, params, system = replied("--preset", "Code reviewer", "--seed", "8", "--temperature", "1.2",
                                    "--system", "")  # fmt: skip
    assert again == first != other
    assert (system, params["temperature"], params["seed"]) == ("", 1.2, 8)
    # A name that is no saved preset: said before the model loads, with the names there are.
    missing = run_cli("chat", "qwen2.5-0.5b", "-p", "Hi", "--preset", "Coder")
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: No preset is called 'Coder'; the saved ones: 'Code reviewer'.")


def test_a_cli_chat_takes_files_as_the_page_does_and_stdin_as_one(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """`ollama run m "Summarize" < notes.txt`, llm's `cat notes.txt | llm "…"`: a shell's way to ask about a
    file. Files go with the first message as 📎 on the page: whole where they fit, else the passages most
    relevant to it, said on stderr."""
    longer = build_tiny_model(tmp_path / "long", context=4096)  # room for a few passages of 1,200 characters
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "qwen2.5-0.5b", longer)
    guide = tmp_path / "guide.txt"
    chapters = [f"Chapter {n} is about the harbour and its ships. " * 20 for n in range(60)]
    chapters[41] = "Old Wen has kept the lighthouse since the storm. " * 20
    guide.write_text("\n\n".join(chapters))
    done = subprocess.run(
        [sys.executable, "-m", "core", "chat", "qwen2.5-0.5b", "-p", "Who has kept the lighthouse?",
         "--file", str(guide), "-f", "-", "--max-new-tokens", "2"],
        cwd=PROJECT_ROOT, input="The ferry leaves at noon.", capture_output=True, text=True, env=os.environ,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # (A busy machine's load may take long enough to be said first.)
    [said] = [line for line in done.stderr.splitlines() if not line.startswith("Loading qwen2.5-0.5b…")]
    assert said.startswith("[guide.txt: passages ") and " of 60 (the whole file does not fit" in said
    files = _rows("SELECT name, kind FROM attachments ORDER BY id")
    [(sources,)] = _rows("SELECT sources FROM messages WHERE role = 'assistant'")
    assert files == [("guide.txt", "text"), ("stdin.txt", "text")]
    used = {use["file"]: use["passages"] for use in _json(sources)}
    assert 42 in used["guide.txt"] and used["stdin.txt"] == [1]  # the lighthouse's chapter, all of stdin
    # Each refusal is said before the model loads, naming the file.
    for given, said in (
        (["-f", str(tmp_path / "missing.txt"), "-p", "Hi"], "error: Cannot read "),
        (["-f", sys.executable, "-p", "Hi"], "this kind of file cannot be read"),
        (["-f", "-"], "--file - reads the file from stdin: give the message with --prompt."),
        ([arg for n in range(6) for arg in ("-f", str(guide))] + ["-p", "Hi"], "At most 5 files"),
    ):
        refused = run_cli("chat", "qwen2.5-0.5b", *given)
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr
        assert "Loading" not in refused.stderr


def test_a_cli_chat_talks_to_a_saved_model_server_by_its_name() -> None:
    """A model server saved on the Model servers page (or with `config add`) is chatted with from the
    shell as a downloaded model is: `localllm chat gpu-box`, its settings and options on top."""
    with FaultyOpenAIServer("reasoning:reasoning_content") as server:
        added = run_cli("config", "add", "openai_compatible", "qwen3:8b", "--base-url", server.url,
                        "--name", "gpu-box")  # fmt: skip
        assert added.returncode == 0, added.stderr
        done = run_cli("chat", "gpu-box", "-p", "Six times seven?", "--no-think", "--seed", "7", "--stats")
        by_model = run_cli("chat", "qwen3:8b", "-p", "And again?")  # its model's name works too
        refused = run_cli("chat", "gpu-box", "-p", "Hi", "--quantization", "int8")
    assert done.returncode == 0, done.stderr
    *reply, stats = done.stdout.splitlines()
    assert "It is 42." in "\n".join(reply) and json.loads(stats)["device"] == "server"
    assert server.bodies[0]["reasoning_effort"] == "none" and server.bodies[0]["seed"] == 7
    assert by_model.returncode == 0 and "It is 42." in by_model.stdout
    assert refused.returncode == 2 and "for a model run on this machine" in refused.stderr
    missing = run_cli("chat", "no-such-thing", "-p", "Hi")
    assert missing.returncode == 2
    assert "nor a model server saved as 'no-such-thing' (saved: gpu-box)." in missing.stderr


def test_16_bit_weights_load_without_transformers_progress_bars(tiny_models: dict[str, Path]) -> None:
    # transformers draws "Loading weights: 100%|███" on stderr as it reads a model: not ours to show.
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "qwen2.5-0.5b", tiny_models["qwen2"])
    done = run_cli(
        "chat", "qwen2.5-0.5b", "--prompt", "Hi", "--max-new-tokens", "2", "--quantization", "none"
    )
    assert done.returncode == 0, done.stderr
    # A slow load's own notice may be on stderr on a busy machine; transformers' bar never is.
    assert "Loading weights" not in done.stderr and "it/s]" not in done.stderr, done.stderr


def test_no_think_makes_a_qwen3_answer_at_once(tiny_models: dict[str, Path]) -> None:
    # Its template then closes an empty reasoning block in the prompt: a longer prompt, nothing else.
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "qwen2.5-0.5b", tiny_models["qwen3"])
    prompt_tokens = []
    for flag in ("--think", "--no-think"):
        done = run_cli("chat", "qwen2.5-0.5b", "--prompt", "Hi", "--max-new-tokens", "1", "--stats", flag)
        assert done.returncode == 0, done.stderr
        prompt_tokens.append(json.loads(done.stdout.splitlines()[-1])["prompt_tokens"])
    assert prompt_tokens[1] > prompt_tokens[0]


def test_a_slow_load_says_why_on_stderr_and_a_fast_one_says_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand-in engines: a real first load (quantizing TinyLlama) takes ~40 s, too long for a test.
    said: list[str] = []
    heard = threading.Event()
    monkeypatch.setattr(common, "warn", lambda text: (said.append(text), heard.set()))
    monkeypatch.setattr(common, "SLOW_LOAD_NOTICE_S", 0.05)
    slow = SimpleNamespace(load=lambda key, force: heard.wait(30) and f"{key} loaded")
    assert common.load_with_notice(slow, "tinyllama-1.1b") == "tinyllama-1.1b loaded"
    assert said == ["Loading tinyllama-1.1b… (a first load prepares its weights for this machine, once)"]
    said.clear()
    monkeypatch.setattr(common, "SLOW_LOAD_NOTICE_S", 1.0)
    fast = SimpleNamespace(load=lambda key, force: f"{key} loaded")
    assert common.load_with_notice(fast, "qwen2.5-0.5b") == "qwen2.5-0.5b loaded"
    for timer in [t for t in threading.enumerate() if isinstance(t, threading.Timer)]:
        timer.join(5)  # a notice not called off would be said within the second
    assert said == []


def _json(value: Any) -> Any:
    """A JSON column read by plain SQL: text on SQLite and MariaDB, already parsed on PostgreSQL."""
    return json.loads(value) if isinstance(value, str) else value


def _rows(query: str) -> list[tuple[Any, ...]]:
    """What the command stored, read from its database."""
    database = Database(os.environ["LOCALLLM_DB_URL"])
    try:
        with database.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(query))]
    finally:
        database.dispose()


def _read_until(terminal: int, expected: str, seen: bytearray, start: int = 0, timeout: float = 60) -> int:
    """Read the terminal into `seen` until `expected` shows after `start`; where it ends."""
    deadline = time.monotonic() + timeout
    while (found := seen.find(expected.encode(), start)) < 0:
        assert time.monotonic() < deadline, f"{expected!r} never appeared in {bytes(seen)[-400:]!r}"
        if select.select([terminal], [], [], 0.5)[0]:
            seen += os.read(terminal, 4096)
    return found + len(expected)


def test_typed_at_a_terminal_a_long_prompt_shows_progress_and_ctrl_c_stops_the_reply(tmp_path: Path) -> None:
    # A terminal (a pseudo-terminal here), as a person runs `localllm chat KEY`; Ctrl+C is its SIGINT.
    endless = build_tiny_model(tmp_path / "endless", context=32768, endless=True)
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "qwen2.5-0.5b", endless)
    # A reply may be half the context: 16,000 tokens, ~10 s of this model here, far longer than it
    # takes to press Ctrl+C (its default 4,096-token context allows 2,048 tokens: 1.6 s).
    assert run_cli("settings", "set", "context_tokens", "32768").returncode == 0
    terminal, child_end = pty.openpty()
    chat = subprocess.Popen(
        [sys.executable, "-m", "core", "chat", "qwen2.5-0.5b", "--max-new-tokens", "16000", "--ignore-eos"],
        cwd=PROJECT_ROOT, env=os.environ, stdin=child_end, stdout=child_end, stderr=child_end,
    )  # fmt: skip
    os.close(child_end)
    try:
        seen = bytearray()
        _read_until(terminal, ">>> ", seen)
        assert "Ctrl+C stops a reply, Ctrl+D quits" in seen.decode()
        os.write(terminal, b"Hello" + b" hi" * 1000 + b"\n")  # long: the prompt is read in parts
        echoed = _read_until(terminal, "Hello", seen)
        reading = _read_until(terminal, "[reading 512 of ", seen, start=echoed)  # said on stderr
        cleared = _read_until(terminal, "\x1b[K", seen, start=reading)  # and cleared as the reply starts
        _read_until(terminal, "", seen, start=cleared + 200)  # 200 bytes of the reply have streamed
        assert chat.poll() is None
        chat.send_signal(signal.SIGINT)
        stopped = _read_until(terminal, "[stopped]", seen, start=echoed)
        _read_until(terminal, ">>> ", seen, start=stopped)  # the prompt is back: the chat goes on
        os.write(terminal, b"\x04")  # Ctrl+D
        assert chat.wait(timeout=60) == 0
    finally:
        chat.kill()
        os.close(terminal)
    saved = _rows("SELECT role, finish_reason, length(content) FROM messages ORDER BY id")
    assert [row[:2] for row in saved] == [("user", None), ("assistant", "stopped")]
    assert saved[1][2] > 0  # kept as far as it got


def test_typed_at_a_terminal_a_reasoning_is_shaded_and_its_tags_left_out() -> None:
    """A thinking model's <think>…</think> was printed as it came, tags and all: at a terminal it is now
    dim and the answer in the normal colour (piped, the text stays as written)."""
    with FaultyOpenAIServer("reasoning:reasoning_content") as server:
        assert run_cli("config", "add", "openai_compatible", "qwen3:8b", "--base-url", server.url,
                       "--name", "gpu-box").returncode == 0  # fmt: skip
        terminal, child_end = pty.openpty()
        chat = subprocess.Popen(
            [sys.executable, "-m", "core", "chat", "gpu-box"], cwd=PROJECT_ROOT, env=os.environ,
            stdin=child_end, stdout=child_end, stderr=child_end,
        )  # fmt: skip
        os.close(child_end)
        try:
            seen = bytearray()
            at = _read_until(terminal, ">>> ", seen)
            os.write(terminal, b"Six times seven?\n")
            end = _read_until(terminal, ">>> ", seen, start=_read_until(terminal, "seven?", seen, start=at))
            os.write(terminal, b"\x04")
            assert chat.wait(timeout=60) == 0
        finally:
            chat.kill()
            os.close(terminal)
        piped = run_cli("chat", "gpu-box", "-p", "Six times seven?")
    shown = seen[at:end].decode()
    assert re.search(r"\x1b\[2m\s*Six sevens make 42\.\s*\x1b\[0m\s*It is 42\.", shown), shown
    assert "think>" not in shown
    assert "<think>" in piped.stdout and "\x1b[" not in piped.stdout


def test_typed_at_a_terminal_commands_go_on_start_over_and_quit(tmp_path: Path) -> None:
    """Ollama's REPL ends with /bye and forgets with /clear; a reply cut at its length goes on with
    /continue (the page's Continue). A line that starts with / elsewhere (a script's stdin) is a message."""
    endless = build_tiny_model(tmp_path / "endless", "llama", endless=True)
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "qwen2.5-0.5b", endless)
    terminal, child_end = pty.openpty()
    chat = subprocess.Popen(
        [sys.executable, "-m", "core", "chat", "qwen2.5-0.5b", "--max-new-tokens", "5", "--temperature", "0"],
        cwd=PROJECT_ROOT, env=os.environ, stdin=child_end, stdout=child_end, stderr=child_end,
    )  # fmt: skip
    os.close(child_end)
    try:
        seen = bytearray()
        at = _read_until(terminal, ">>> ", seen)
        assert "/? lists commands" in seen.decode()
        for typed, said in (("Tell me a story", ">>> "), ("/continue", ">>> "),
                            ("/what", "Unknown command /what."), ("/clear", "[a new conversation"),
                            ("Hello again", ">>> "), ('"""', "... "), ("/usr/bin holds", "... "),
                            ('    programs"""', ">>> ")):  # fmt: skip
            os.write(terminal, typed.encode() + b"\n")
            at = _read_until(terminal, said, seen, start=_read_until(terminal, typed, seen, start=at))
        os.write(terminal, b"/bye\n")
        assert chat.wait(timeout=60) == 0
    finally:
        chat.kill()
        os.close(terminal)
    saved = _rows("SELECT conversation_id, role, content, completion_tokens FROM messages ORDER BY id")
    [(first, _, asked, _), (_, _, _, grown), (second, _, again, _), (_, _, _, fresh), (_, _, lines, _), _] = (
        saved
    )
    assert (asked, again, grown, fresh) == ("Tell me a story", "Hello again", 10, 5)  # 5 + 5 in one reply
    assert second != first  # /clear: a new conversation; /what, /continue, /bye were never sent
    assert (
        lines == "/usr/bin holds\n    programs"
    )  # between \"\"\", as Ollama takes it: one message, not a command
    piped = run_cli("chat", "qwen2.5-0.5b", "--max-new-tokens", "2", input="/usr/bin is a folder\n")
    assert piped.returncode == 0, piped.stderr
    [(sent,)] = _rows("SELECT content FROM messages WHERE role = 'user' ORDER BY id DESC LIMIT 1")
    assert sent == "/usr/bin is a folder"
