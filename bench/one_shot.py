"""One question from the command line: the wall time a user waits, process start to exit, in one run.

- ours: `python -m core chat KEY --prompt ... --max-new-tokens N --stats` in a fresh process, the
  model's int4 copy already kept beside it (a first run, not timed, makes it), default sampling;
- llama.cpp Q8_0 through llama-cpp-python: a fresh `python -c` that imports it, loads the gguf and
  generates as many tokens for a prompt of as many tokens, with its sampler chain and the same
  settings (when a llama.cpp source tree gives convert_hf_to_gguf.py: --llama-cpp DIR).

The two alternate, each `--runs` times; medians. Besides the wall time each reports its load (ours:
`load_s` of `--stats`, tokenizer and imports of transformers included; llama.cpp: `Llama(...)`) and
time to first token. Random weights with the catalog models' configs, as bench/speed.py.

Usage: .venv/bin/python -m bench.one_shot [--models KEY] [--tokens 16] [--runs 5] [--llama-cpp DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.readiness import CONFIGS, build
from bench.speed import prompt_words, q8_gguf, run_json
from tests.fixtures.tiny_models import install_ready

LLAMA_CPP = r"""
import json, os, random, sys, time
started = time.perf_counter()
from llama_cpp import Llama
path, prompt_tokens, new_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = Llama(model_path=path, n_ctx=1024, n_threads=os.cpu_count(), n_batch=512, verbose=False)
load_s = time.perf_counter() - started
random.seed(0)
prompt = [random.randint(10, 300) for _ in range(prompt_tokens)]
sampling = {"temp": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}
begun, first = time.perf_counter(), None
for count, _ in enumerate(llm.generate(prompt, reset=True, **sampling), start=1):
    first = first or time.perf_counter() - begun
    if count >= new_tokens:
        break
print(json.dumps({"load_s": load_s, "ttft_s": first}))
"""


def timed(args: list[str], env: dict[str, str]) -> tuple[float, dict]:
    """Wall seconds of a fresh `python args...` and the JSON of its last output line."""
    started = time.perf_counter()
    record = run_json(args, env)
    return time.perf_counter() - started, record


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--prompt-tokens", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=16, help="tokens in the reply")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--llama-cpp", type=Path, help="a llama.cpp source tree (for convert_hf_to_gguf.py)")
    args = parser.parse_args()
    print(
        f"one question: ~{args.prompt_tokens}-token prompt, {args.tokens}-token reply, {args.runs} runs each"
    )
    with tempfile.TemporaryDirectory(prefix="localllm-one-shot-") as tmp:
        work = Path(tmp)
        env = os.environ | {
            "LOCALLLM_MODELS_DIR": str(work / "models"),
            "LOCALLLM_DATA_DIR": str(work / "data"),
        }
        for key in args.models:
            source = build(key, work / f"src-{key}")
            install_ready(work / "models", key, source)
            ours = ["-m", "core", "chat", key, "--prompt",
                    "hello world " * prompt_words(args.prompt_tokens), "--max-new-tokens", str(args.tokens),
                    "--ignore-eos", "--stats"]  # fmt: skip
            _, first = timed(ours, env)  # quantizes once and keeps the copy
            os.sync()
            engines = {"ours": ours}
            if args.llama_cpp:
                gguf = q8_gguf(args.llama_cpp, source, work)
                engines["llama.cpp Q8_0"] = ["-c", LLAMA_CPP, str(gguf),
                                             str(first["prompt_tokens"]), str(args.tokens)]  # fmt: skip
            runs: dict[str, list[tuple[float, dict]]] = {name: [] for name in engines}
            for _ in range(args.runs):
                for name, command in engines.items():
                    runs[name].append(timed(command, env))
            print(f"\n{key} ({first['prompt_tokens']} prompt tokens)")
            print(f"{'engine':<16} {'wall s':>7} {'load s':>7} {'first token s':>14}")
            medians = {}
            for name, results in runs.items():
                medians[name] = statistics.median(wall for wall, _ in results)
                load = statistics.median(record["load_s"] for _, record in results)
                ttft = statistics.median(record["ttft_s"] for _, record in results)
                print(f"{name:<16} {medians[name]:7.2f} {load:7.2f} {ttft:14.3f}")
            if "llama.cpp Q8_0" in medians:
                print(f"wall, ours / llama.cpp Q8_0: {medians['ours'] / medians['llama.cpp Q8_0']:.2f}")
            for gguf in work.glob("*.gguf"):
                gguf.unlink()


if __name__ == "__main__":
    main()
