"""Memory as prompts of many lengths come in: a long-running server meets a new prompt length with
nearly every first message, and a new (cached, new) token count with every turn.

For each catalog model (exact config numbers, random weights: nothing is downloaded) a fresh process
loads it with the engine's defaults and sends one-token replies to prompts of `--prompts` different
lengths (each a new conversation, so nothing is cached), then 30 turns of one conversation (each
prefills its new tokens beside a longer cache); it prints the resident memory after each tenth reply
(the engine hands freed memory back after each) against the memory the engine plans for (the weights
and runtime, a KV cache at the context length for each reply at once, running or kept, and the
int4 weights kept unpacked for prompts where memory allows).

`--quantization none` runs the 16-bit weights through transformers' own forward on the CPU: the path of
every architecture the lean decoder does not run.

Usage: .venv/bin/python -m bench.prompt_memory [--prompts 60] [--models KEY ...]
    [--quantization int4|int8|none]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.readiness import CATALOG_MODELS, CONFIGS, build
from core.settings import PROJECT_ROOT
from tests.fixtures.tiny_models import install_ready

MEASURE = """
import sys, psutil
from pathlib import Path
from core.inference.engine import LocalEngine
from core.inference.events import Finished
from core.inference.params import GenerationParams
models, key, count, quantization = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
engine = LocalEngine(models, quantization=quantization, idle_unload_s=0)
engine.load(key)
estimate = engine.memory_estimate(key)
plan = (estimate.with_caches(engine.parallel) + engine.prompt_copies.get(key, 0)) / 2**20
params = GenerationParams(max_new_tokens=1)
def reply(messages, owner):
    for event in engine.stream(key, messages, params, ignore_eos=True, owner=owner):
        if isinstance(event, Finished):
            return event.stats.prompt_tokens
def rss():
    engine.on_torch_thread(lambda: None)  # the trim after the reply has run
    return psutil.Process().memory_info().rss / 2**20
kept = engine.prompt_copies.get(key, 0) / 2**20
copy = f", {kept:.0f} MiB of weights kept unpacked" if kept else ""
print(f"{key}: planned {plan:.0f} MiB (the weights, {engine.parallel} KV caches running or kept{copy})")
for index in range(count):
    words = 20 + index
    tokens = reply([{"role": "user", "content": f"{index} " + "hello world " * words}], f"new-{index}")
    if index % 10 == 9:
        print(f"  {index + 1:3} first messages (up to {tokens} tokens): RSS {rss():.0f} MiB", flush=True)
history = []
for index in range(30):  # within TinyLlama's 2048 tokens
    history.append({"role": "user", "content": "more " * (1 + index % 5)})
    reply(history, "one-conversation")
    history.append({"role": "assistant", "content": "sure"})
    if index % 10 == 9:
        print(f"  {index + 1:3} turns of one conversation: RSS {rss():.0f} MiB", flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=60, help="first messages of new lengths")
    parser.add_argument("--models", nargs="+", default=CATALOG_MODELS, choices=list(CONFIGS))
    parser.add_argument("--quantization", default="int4", choices=["int4", "int8", "none"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="localllm-prompt-memory-") as tmp:
        models = Path(tmp) / "models"
        for key in args.models:
            install_ready(models, key, build(key, Path(tmp) / f"src-{key}"))
            subprocess.run(
                [sys.executable, "-c", MEASURE, str(models), key, str(args.prompts), args.quantization],
                cwd=PROJECT_ROOT, check=True,
            )  # fmt: skip


if __name__ == "__main__":
    main()
