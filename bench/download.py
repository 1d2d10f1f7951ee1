"""Download speed and resume cost, measured in one run against a local Hub-compatible server.

Prints:
  throughput ratio  = our verified download (ModelDownload: Range-capable transfer, sha256 while
                      receiving, fsync, atomic rename) / a plain streamed GET of the same file, same
                      server, same run; median of --runs alternating runs each. Goal: >= 0.9.
                      Measured twice: with the server limited to 100 MB/s (a fast real link) and
                      unlimited on loopback, where on 2 cores the local server takes one core and
                      the client's hashing competes with its receiving for the other.
  refetched bytes   = bytes the server sent for the weights over a download SIGKILLed at 50 % and
                      its rerun, minus the file size. Goal: at most one chunk (64 KiB).

Usage: .venv/bin/python -m bench.download [--size-mb 256] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from huggingface_hub.utils import get_session

from core.hub.transfer import DownloadTarget, ModelDownload, TransferPolicy
from core.settings import PROJECT_ROOT
from tests.fixtures.hub_server import CHUNK, HubServer

REPO_ID = "bench/model"


def make_repo(directory: Path, size_mb: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text('{"model_type": "qwen2", "max_position_embeddings": 512}')
    (directory / "tokenizer.json").write_text("{}")
    (directory / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    with (directory / "model.safetensors").open("wb") as handle:
        for _ in range(size_mb):
            handle.write(os.urandom(1024 * 1024))
    return directory


def start_server(repo_dir: Path, throttle: int | None) -> tuple[subprocess.Popen, str]:
    """The server runs in its own process so that it does not share the client's interpreter lock."""
    limit = ["--throttle", str(throttle)] if throttle else []
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fixtures.hub_server", "--repo", f"{REPO_ID}={repo_dir}", *limit],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, process.stdout.readline().strip()


def plain_get(url: str, target: Path) -> float:
    started = time.perf_counter()
    with get_session().stream("GET", url) as response, target.open("wb", buffering=0) as handle:
        for chunk in response.iter_bytes():
            handle.write(chunk)
    return time.perf_counter() - started


def our_download(endpoint: str, models_dir: Path) -> float:
    started = time.perf_counter()
    job = ModelDownload(DownloadTarget("bench", REPO_ID), models_dir, [endpoint], policy=TransferPolicy())
    progress = job.run()
    elapsed = time.perf_counter() - started
    if progress.state != "completed":
        raise SystemExit(f"download failed: {progress.error}")
    return elapsed


def measure_throughput(
    repo_dir: Path, size: int, runs: int, scratch: Path, throttle: int | None
) -> tuple[float, float]:
    process, endpoint = start_server(repo_dir, throttle)
    try:
        url = f"{endpoint}/{REPO_ID}/resolve/main/model.safetensors"
        plain, ours = [], []
        for run in range(runs):
            plain.append(size / plain_get(url, scratch / "plain.bin"))
            models = scratch / f"models-{run}"
            ours.append(size / our_download(endpoint, models))
            (scratch / "plain.bin").unlink()
            shutil.rmtree(models)
        return statistics.median(plain), statistics.median(ours)
    finally:
        process.terminate()
        process.wait()


def measure_kill_at_half(repo_dir: Path, size: int, scratch: Path) -> tuple[int, int]:
    env = {
        **os.environ,
        "LOCALLLM_DB_URL": f"sqlite:///{scratch / 'kill.db'}",
        "LOCALLLM_MODELS_DIR": str(scratch / "kill-models"),
    }
    partial = scratch / "kill-models" / "bench" / "model.safetensors.incomplete"
    with HubServer() as hub:
        hub.add_repo(REPO_ID, repo_dir)
        hub.throttle(20 * 1000 * 1000)  # a fast home line (160 Mbit/s); the rerun is unthrottled
        command = [sys.executable, "-m", "core", "download", "bench", "--endpoint", hub.url]
        register = [sys.executable, "-c", _REGISTER, REPO_ID]
        subprocess.run(register, cwd=PROJECT_ROOT, env=env, check=True)
        first = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while not (partial.exists() and partial.stat().st_size >= size // 2):
            if first.poll() is not None:
                raise SystemExit("the first download ended before the 50 % mark")
            time.sleep(0.005)
        first.send_signal(signal.SIGKILL)
        first.wait()
        on_disk = partial.stat().st_size
        hub.throttle(None)
        subprocess.run(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        transfers = [
            r for r in hub.requests("GET", "model.safetensors") if r.range is None or r.range.endswith("-")
        ]
        return on_disk, sum(r.bytes_sent for r in transfers) - size


_REGISTER = """
import sys
from core.settings import load_settings
from core.storage.db import Database
from core.storage import repo
with Database(load_settings().db_url).begin() as session:
    repo.add_custom_model(session, "bench", sys.argv[1], "main", {})
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="localllm-bench-") as tmp:
        scratch = Path(tmp)
        repo_dir = make_repo(scratch / "repo", args.size_mb)
        size = (repo_dir / "model.safetensors").stat().st_size
        link = measure_throughput(repo_dir, size, args.runs, scratch, throttle=100 * 1000 * 1000)
        loopback = measure_throughput(repo_dir, size, args.runs, scratch, throttle=None)
        on_disk, refetched = measure_kill_at_half(repo_dir, size, scratch)
    mb = 1024 * 1024
    print(f"file: {size / mb:.0f} MiB, {args.runs} runs each, median (MiB/s)")
    for name, (plain, ours) in (("100 MB/s link", link), ("loopback, no limit", loopback)):
        speeds = f"plain GET {plain / mb:7.1f}   ours {ours / mb:7.1f}"
        print(f"{name:<20} {speeds}   ratio {ours / plain:.3f} (goal >= 0.9)")
    print(f"killed at {on_disk / size:.1%} on disk (20 MB/s link); fetched again after it: {refetched} B")
    print(f"  = {refetched / CHUNK:.2f} chunks of 64 KiB (goal <= 1): the bytes in flight in socket buffers")


if __name__ == "__main__":
    main()
