"""Time to first token turn after turn of one conversation: ours against llama.cpp, in one run.

A chat sends the whole conversation at every turn, so without reuse each message prefills all the
turns before it again. Each engine, in a fresh process, holds a conversation of `--turns` questions
(a sentence repeated `--question-repeats` times) with the default sampling and `--tokens` new tokens
a reply, every reply going back into the history as the assistant's message, as the chat page does:

- ours: LocalEngine.stream with one owner for the whole conversation (what the chat page and `core
  serve` pass), so a turn starts from the previous reply's kept cache; and "ours, no reuse", a new
  owner at every turn: each prompt prefilled whole (how turns ran before the caches were kept);
- llama.cpp Q8_0 through llama-cpp-python's create_chat_completion (the gguf's chat template), which
  keeps its context between calls and evaluates only what changed (llama-server's cache_prompt).

With `--context N` every engine is sent the history as the chat page trims it for a context of N
tokens (core.chat.service.trim_history: cut in steps, so that the prompt keeps its start for
several turns). Prints each turn's prompt tokens and time to first token, and the ratios at the
last turn. Random weights with the catalog models' configs, as bench/speed.py (the gguf is made the
same way).

Usage: .venv/bin/python -m bench.turns [--turns 6] [--context N] [--models KEY] [--llama-cpp DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from bench.readiness import CONFIGS, build
from bench.speed import q8_gguf, run_json
from tests.fixtures.tiny_models import install_ready

QUESTION = "Tell me more about the history of the city and its rivers, bridges and markets, please. "

OURS = r"""
import json, sys
from pathlib import Path
from core.inference.engine import LocalEngine
from core.inference.events import Finished, TextDelta
from core.inference.params import GenerationParams
from core.chat.service import trim_history
models, key, question, reuse = Path(sys.argv[1]), sys.argv[2], sys.argv[4], sys.argv[7] == "1"
turns, tokens, context = int(sys.argv[3]), int(sys.argv[5]), int(sys.argv[6])
engine = LocalEngine(models, idle_unload_s=0)
engine.prepare().result()
engine.load(key)
params = GenerationParams(max_new_tokens=tokens, seed=0)  # the default sampling
def count(messages, limit):
    return engine.count_tokens(key, messages, limit)
def turn(messages, owner):
    if context:  # as the chat page trims a history that outgrows the context
        messages = trim_history("", messages, context - tokens, count)[0]
    events = list(engine.stream(key, messages, params, owner=owner))
    stats = [e.stats for e in events if isinstance(e, Finished)][0]
    return "".join(e.text for e in events if isinstance(e, TextDelta)), stats
turn([{"role": "user", "content": "hello"}], "warm-up")
messages, rows = [], []
for number in range(turns):
    messages.append({"role": "user", "content": f"{number + 1}. {question}"})
    text, stats = turn(messages, "conversation" if reuse else f"turn {number}")
    messages.append({"role": "assistant", "content": text})
    rows.append({"prompt_tokens": stats.prompt_tokens, "cached_tokens": stats.cached_tokens,
                 "ttft_s": stats.ttft_s})
print(json.dumps(rows))
"""

LLAMA_CPP = r"""
import json, sys, time
from llama_cpp import Llama
from transformers import AutoTokenizer
from core.chat.service import trim_history
from core.inference.chat_tokenizer import ChatTokenizer
from core.inference.prompts import count_prompt_tokens
path, question = sys.argv[1], sys.argv[3]
turns, tokens, context, threads = int(sys.argv[2]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
tokenizer = ChatTokenizer.from_transformers(AutoTokenizer.from_pretrained(sys.argv[7]))  # ours' trimming
llm = Llama(model_path=path, n_ctx=8192, n_threads=threads, n_batch=512, verbose=False)
SAMPLED = {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1, "seed": 0}
def count(messages, limit):
    return count_prompt_tokens(tokenizer, messages, limit)
def turn(messages):
    if context:
        messages = trim_history("", messages, context - tokens, count)[0]
    started, first, text = time.perf_counter(), None, ""
    for chunk in llm.create_chat_completion(messages, max_tokens=tokens, stream=True, **SAMPLED):
        delta = chunk["choices"][0]["delta"]
        if "content" in delta:
            first = first or time.perf_counter() - started
            text += delta["content"] or ""
    return text, first
turn([{"role": "user", "content": "hello"}])
messages, rows = [], []
for number in range(turns):
    messages.append({"role": "user", "content": f"{number + 1}. {question}"})
    text, ttft = turn(messages)
    messages.append({"role": "assistant", "content": text})
    rows.append({"ttft_s": ttft})
print(json.dumps(rows))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=64, help="new tokens a reply")
    parser.add_argument("--question-repeats", type=int, default=1, help="the question sentence, repeated")
    parser.add_argument("--context", type=int, default=0, help="trim as the chat page does (0: never)")
    parser.add_argument("--models", nargs="+", default=["qwen2.5-0.5b"], choices=list(CONFIGS))
    parser.add_argument("--llama-cpp", type=Path, help="a llama.cpp source tree (for convert_hf_to_gguf.py)")
    args = parser.parse_args()
    question = QUESTION * args.question_repeats
    common = [str(args.turns), question, str(args.tokens), str(args.context)]
    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="localllm-turns-") as tmp:
        work = Path(tmp)
        for key in args.models:
            source = build(key, work / f"src-{key}")
            install_ready(work / "models", key, source)
            ours = ["-c", OURS, str(work / "models"), key, *common]
            run_json([*ours, "1"])  # the first load quantizes the model and keeps the copy
            rows = {"ours": run_json([*ours, "1"]), "ours, no reuse": run_json([*ours, "0"])}
            if args.llama_cpp:
                gguf = q8_gguf(args.llama_cpp, source, work)
                threads = str(os.cpu_count())
                rows["llama.cpp Q8_0"] = run_json(["-c", LLAMA_CPP, str(gguf), *common, threads, str(source)])
                gguf.unlink()
            results[key] = rows
            _print(key, rows)
    print(json.dumps(results))


def _print(key: str, rows: dict[str, list[dict]]) -> None:
    names = list(rows)
    print(f"\n{key}: time to first token (s) at each turn (prompt tokens and those from a kept cache: ours)")
    print(f"  {'turn':>4} {'prompt':>6} {'cached':>6} " + " ".join(f"{name:>16}" for name in names))
    for number, ours in enumerate(rows["ours"]):
        times = " ".join(f"{rows[name][number]['ttft_s']:16.3f}" for name in names)
        print(f"  {number + 1:>4} {ours['prompt_tokens']:>6} {ours['cached_tokens']:>6} {times}")
    last = {name: rows[name][-1]["ttft_s"] for name in names}
    mean = {name: sum(row["ttft_s"] for row in rows[name]) / len(rows[name]) for name in names}
    for name in names[1:]:
        ratios = f"last turn {last['ours'] / last[name]:.2f}, mean {mean['ours'] / mean[name]:.2f}"
        print(f"  ours / {name}: {ratios}")


if __name__ == "__main__":
    main()
