"""`python -m core download/verify/models` as real processes, including a SIGKILL mid-download."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from core.cli.models import _new_notes
from core.settings import PROJECT_ROOT
from tests.fixtures.hub_server import CHUNK, HubServer


def cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "core", *args],
        cwd=PROJECT_ROOT,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_sigkill_then_rerun_resumes_without_refetching(hub: HubServer, bigger_model: Path) -> None:
    repo = hub.add_repo("tiny/chat", bigger_model)
    size = len(repo.files["model.safetensors"].data)
    partial = Path(os.environ["LOCALLLM_MODELS_DIR"]) / "chat" / "model.safetensors.incomplete"
    hub.throttle(1_000_000)

    first = cli("download", "tiny/chat", "--endpoint", hub.url)
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size > size // 3):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    on_disk_at_kill = partial.stat().st_size
    assert 0 < on_disk_at_kill < size

    hub.throttle(None)
    second = cli("download", "tiny/chat", "--endpoint", hub.url)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert "every file verified" in out

    # Transfers only: the closed range bytes=0-100000 is the safetensors header read when the
    # repo was added to the catalog (parameter count), not part of the download.
    transfers = [
        r for r in hub.requests("GET", "model.safetensors") if r.range is None or r.range.endswith("-")
    ]
    assert len(transfers) == 2
    [resumed] = [r for r in transfers if r.range]
    resumed_from = int(resumed.range.removeprefix("bytes=").rstrip("-"))
    assert resumed_from >= on_disk_at_kill
    assert sum(r.bytes_sent for r in transfers) <= size + CHUNK


def test_verify_names_bad_files_and_models_shows_damaged(
    hub: HubServer, tiny_models: dict[str, Path]
) -> None:
    hub.add_repo("tiny/llama-chat", tiny_models["llama"])
    done = cli("download", "tiny/llama-chat", "--endpoint", hub.url)
    assert done.wait(timeout=60) == 0, done.communicate()
    ok = cli("verify", "llama-chat")
    assert ok.wait(timeout=60) == 0

    weights = Path(os.environ["LOCALLLM_MODELS_DIR"]) / "llama-chat" / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    bad = cli("verify", "llama-chat")
    _, err = bad.communicate(timeout=60)
    assert bad.returncode == 1
    assert "model.safetensors: size" in err

    listing, _ = cli("models").communicate(timeout=60)
    assert "llama-chat" in listing
    assert "damaged" in listing

    repaired = cli("download", "llama-chat", "--endpoint", hub.url)
    assert repaired.wait(timeout=60) == 0
    assert cli("verify", "llama-chat").wait(timeout=60) == 0


def test_permanent_error_is_one_clear_line(hub: HubServer) -> None:
    process = cli("download", "nobody/nothing", "--endpoint", hub.url)
    out, err = process.communicate(timeout=60)
    assert process.returncode != 0
    assert err.strip() == "error: Repository nobody/nothing (main) was not found."
    assert "Traceback" not in out + err


def test_a_model_pages_address_in_any_case_names_the_catalog_model_it_is(
    hub: HubServer, tiny_models: dict[str, Path]
) -> None:
    hub.add_repo("Qwen/Qwen2.5-0.5B-Instruct", tiny_models["qwen2"])
    page = "https://huggingface.co/qwen/qwen2.5-0.5b-instruct/tree/main"  # as typed, lower case
    process = cli("download", page, "--endpoint", hub.url)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "every file verified" in out
    assert (Path(os.environ["LOCALLLM_MODELS_DIR"]) / "qwen2.5-0.5b" / "config.json").is_file()


def test_invalid_repo_id_is_refused(hub: HubServer) -> None:
    process = cli("download", "../etc/passwd", "--endpoint", hub.url)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "is not a Hugging Face repository id" in err
    assert hub.requests() == []


def test_retries_and_the_switch_to_the_next_endpoint_are_said(
    hub: HubServer, tiny_models: dict[str, Path]
) -> None:
    """The bar sat at 0 B while the first endpoint failed its three tries, the reason never said."""
    hub.add_repo("Qwen/Qwen2.5-0.5B-Instruct", tiny_models["qwen2"])
    with socket.socket() as closed:  # a port nothing listens on: connections refused
        closed.bind(("127.0.0.1", 0))
        refusing = f"http://127.0.0.1:{closed.getsockname()[1]}"
    process = cli("download", "qwen2.5-0.5b", "--endpoint", refusing, "--endpoint", hub.url)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    reason = "cannot connect (no network, a wrong address, or the server is down)"
    said = [f"listing: {reason} (try {n} of 3, {refusing})" for n in (1, 2, 3)] + [f"switching to {hub.url}"]
    assert [line for line in err.splitlines() if line in said] == said
    assert "every file verified" in out


def test_each_note_is_said_once_when_the_oldest_slide_out() -> None:
    """A job keeps its last 20 notes: once there are more, the oldest slide out as new ones come."""
    twenty = tuple(f"note {n}" for n in range(20))
    assert _new_notes((), twenty[:2]) == twenty[:2]
    assert _new_notes(twenty[:2], twenty[:3]) == ("note 2",)
    assert _new_notes(twenty, (*twenty[2:], "note 20", "note 21")) == ("note 20", "note 21")
    same = ("try 1 failed",) * 20
    assert _new_notes(same, same) == ()
    assert _new_notes(twenty, twenty) == ()
