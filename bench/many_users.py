"""Many people at once: N concurrent streaming clients against `localllm serve`, with the official
`openai` client, as LAN users and API clients use it.

For each catalog model (exact config numbers, random weights that say the words of a small tokenizer:
nothing is downloaded) it starts
`python -m core serve --model KEY` in a fresh process with a fresh data folder and the saved settings'
defaults (int4 on the CPU, default sampling: each request sends only its messages and max_tokens), then
for each N sends N requests at the same moment and prints each user's time to first token and
decode tokens/s, the aggregate (all completion tokens / wall time from the first request to the last
token), its ratio to one user alone, and the server's resident memory against what the engine plans
for (the weights, and a KV cache at the model's context length for each reply at once, running or kept
for its owner's next turn: the same whatever N). Each request asks its own question (a number first),
and every reply runs to max_tokens (the model never says its end-of-turn token). One warm-up request
comes first (not counted). The clients run at a lower priority (nice 10): they stand
for other machines.

One user alone is measured before the first N and again after each N, and each N's ratio is to the mean
of the one-user rounds on either side of it: this 2-core machine's speed drifts by up to ~1.5× between
minutes, and a ratio to a single one-user round at the start followed that drift as much as the engine.
With --rounds R each N is measured R times (one user alone after each) and the median ratio is printed.

Usage: .venv/bin/python -m bench.many_users [--users 1 2 3 4 8] [--rounds 1] [--tokens 128]
       [--prompt-words 12] [--models qwen2.5-0.5b tinyllama-1.1b] [--parallel N]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import psutil

from bench.readiness import CATALOG_MODELS, CONFIGS, build
from core.settings import PROJECT_ROOT
from tests.fixtures.serving import free_port
from tests.fixtures.tiny_models import install_ready

REQUESTS = itertools.count()


@dataclass(frozen=True)
class UserRun:
    started: float
    first_token: float
    ended: float
    prompt_tokens: int
    completion_tokens: int

    @property
    def ttft_s(self) -> float:
        return self.first_token - self.started

    @property
    def tokens_per_s(self) -> float:
        decode = self.ended - self.first_token
        return (self.completion_tokens - 1) / decode if decode > 0 else 0.0


def one_user(url: str, key: str, words: int, tokens: int, start: threading.Barrier) -> UserRun:
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="unused", timeout=600, max_retries=0)
    # Each request its own words: all clients share one address (one owner of kept caches), and a
    # prompt an earlier round already sent would start from that reply's cache.
    messages = [{"role": "user", "content": f"{next(REQUESTS)} " + "hello world " * words}]
    start.wait()
    started = time.perf_counter()
    first_token = None
    usage = None
    stream = client.chat.completions.create(
        model=key, messages=messages, max_tokens=tokens, stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        if first_token is None and chunk.choices and chunk.choices[0].delta.content:
            first_token = time.perf_counter()
        usage = chunk.usage or usage
    ended = time.perf_counter()
    if usage is None:
        raise RuntimeError("the server sent no usage")
    return UserRun(started, first_token or ended, ended, usage.prompt_tokens, usage.completion_tokens)


def together(url: str, key: str, users: int, words: int, tokens: int) -> list[UserRun]:
    start = threading.Barrier(users)
    runs: list[UserRun | None] = [None] * users

    def user(index: int) -> None:
        runs[index] = one_user(url, key, words, tokens, start)

    threads = [threading.Thread(target=user, args=(index,)) for index in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if any(run is None for run in runs):
        raise RuntimeError("a client failed (see its traceback above)")
    return runs  # type: ignore[return-value]


def aggregate(runs: list[UserRun]) -> float:
    """All completion tokens over the wall time from the first request to the last token."""
    return sum(r.completion_tokens for r in runs) / (
        max(r.ended for r in runs) - min(r.started for r in runs)
    )


def row(runs: list[UserRun], ratio: float, server: subprocess.Popen, plan_mb: float) -> str:
    ttfts = " ".join(f"{r.ttft_s:.2f}" for r in sorted(runs, key=lambda r: r.ttft_s))
    rss = psutil.Process(server.pid).memory_info().rss / 2**20
    return (
        f"  {len(runs):>5} {ttfts:<28} {statistics.median(r.tokens_per_s for r in runs):17.1f} "
        f"{aggregate(runs):13.1f} {ratio:10.2f} {sum(r.completion_tokens for r in runs):6} {rss:8.0f} "
        f"{plan_mb:8.0f}"
    )


def serve(models: Path, data: Path, key: str, port: int, parallel: int | None) -> subprocess.Popen:
    env = os.environ | {"LOCALLLM_MODELS_DIR": str(models), "LOCALLLM_DATA_DIR": str(data)}
    if parallel is not None:
        env["LOCALLLM_PARALLEL"] = str(parallel)
    server = subprocess.Popen(
        [sys.executable, "-m", "core", "serve", "--model", key, "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
    )
    deadline = time.monotonic() + 600  # the first load quantizes the model
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise RuntimeError("the server did not start in 10 minutes")


def settle(server: subprocess.Popen, quiet_s: float = 0.5) -> None:
    """Wait until the server uses no CPU for `quiet_s` (30 s at most): after loading it packs the output
    head for oneDNN on otherwise idle cores (~0.3 s of a core), which a server does before its users come."""
    process = psutil.Process(server.pid)
    deadline = time.monotonic() + 30
    used = sum(process.cpu_times()[:2])
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        used, before = sum(process.cpu_times()[:2]), used
        if used - before < 0.05 * quiet_s:
            return


def planned_mb(models: Path, key: str, parallel: int | None) -> float:
    """What the engine plans for: the weights and runtime once, a KV cache at the model's chosen context
    length for each reply at once (`parallel`, or the setting's default), running or kept for its
    owner's next turn (core.inference.reuse), whatever the number of users, and the weights it keeps
    unpacked for prompts where memory allows (a load here says whether it would)."""
    from core.inference.engine import LocalEngine

    engine = LocalEngine(models, idle_unload_s=0, **({} if parallel is None else {"parallel": parallel}))
    engine.load(key)
    planned = engine.memory_estimate(key).with_caches(engine.parallel) + engine.prompt_copies.get(key, 0)
    engine.unload()
    return planned / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, nargs="+", default=[1, 2, 3, 4, 8])
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens of each request")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of each N (a row each, then medians)")
    parser.add_argument("--prompt-words", type=int, default=12, help="'hello world' pairs in the message")
    parser.add_argument("--models", nargs="+", default=CATALOG_MODELS, choices=list(CONFIGS))
    parser.add_argument(
        "--parallel", type=int, help="LOCALLLM_PARALLEL for the server (default: the setting's)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="localllm-many-") as tmp:
        work = Path(tmp)
        for key in args.models:
            install_ready(work / "models", key, build(key, work / f"src-{key}", speaking=True))
            port = free_port()
            server = serve(work / "models", work / f"data-{key}", key, port, args.parallel)
            url = f"http://127.0.0.1:{port}/v1"
            # The clients stand for other machines on the LAN: here they share the server's 2 cores, and
            # at a lower priority they take less of the time the server would have had alone.
            os.nice(10 - os.nice(0))
            try:
                # Warm-up as long as a measured reply: the first full reply after a short warm-up ran
                # ~1.3 × slower than later ones here, which flattered the ratio to one user.
                together(url, key, 1, args.prompt_words, args.tokens)
                settle(server)
                print(f"\n{key}: {args.tokens} tokens a user, default sampling, `localllm serve`")
                print(
                    f"  {'users':>5} {'ttft s (each)':<28} {'t/s each (median)':>17} {'aggregate t/s':>13} "
                    f"{'x one user':>10} {'tokens':>6} {'RSS MiB':>8} {'plan MiB':>8}"
                )
                plan = planned_mb(work / "models", key, args.parallel)
                before = together(url, key, 1, args.prompt_words, args.tokens)
                if 1 in args.users:
                    print(row(before, 1.0, server, plan))
                medians = []
                for users in (n for n in args.users if n != 1):
                    ratios = []
                    for _ in range(args.rounds):
                        runs = together(url, key, users, args.prompt_words, args.tokens)
                        after = together(url, key, 1, args.prompt_words, args.tokens)
                        ratios.append(aggregate(runs) / ((aggregate(before) + aggregate(after)) / 2))
                        print(row(runs, ratios[-1], server, plan))
                        before = after
                    medians.append(
                        f"{users}: {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
                    )
                if args.rounds > 1:
                    print(f"  × one user, median (range) of {args.rounds} rounds: " + ", ".join(medians))
            finally:
                server.terminate()
                server.wait(30)


if __name__ == "__main__":
    main()
