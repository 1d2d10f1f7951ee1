"""Time to first token for fresh prompts of several lengths: ours against llama.cpp, in one run.

A prompt is compute-bound where decoding is bound by memory. For each length each engine, in a fresh
process, prefills a prompt nothing was cached for and chooses the first token (three times, the
median):

- ours: LocalEngine.stream with the default settings (int4 on the CPU, default sampling) and a new
  owner every time, as a new conversation's first message, after a first reply and the engine's
  quiet moment after it (`LocalEngine.settle`: a user reading that reply), in which it keeps the
  int4 weights unpacked where memory allows; prompts from KEPT_PROMPT_ROWS rows on multiply them;
- "ours, unpacked each prompt": the same process and model without the kept weights (a machine
  short of memory for them): prompts from this machine's crossing on (core/inference/calibration.py)
  unpack bf16 weights a slice at a time (core/inference/quantize.py);
- "ours, int4 kernel": every prompt through torch's int4 kernel (how prompts ran before unpacking);
  the three alternate;
- llama.cpp Q8_0 and Q4_K_M through llama-cpp-python (reset before each prompt), with as many prompt
  tokens as ours had, when a llama.cpp source tree gives convert_hf_to_gguf.py (--llama-cpp DIR).

Random weights with the catalog models' configs, as bench/speed.py.

Usage: .venv/bin/python -m bench.prompts [--prompt-tokens 100 250 500 1000] [--models KEY] [--llama-cpp DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from bench.readiness import CATALOG_MODELS, CONFIGS, build
from bench.speed import llama_cpp_models, prompt_words, run_json
from tests.fixtures.tiny_models import install_ready

OURS = r"""
import itertools, json, statistics, sys
from pathlib import Path
from core.inference import quantize
from core.inference.engine import LocalEngine
from core.inference.events import Finished
from core.inference.params import GenerationParams
models, key = Path(sys.argv[1]), sys.argv[2]
engine = LocalEngine(models, idle_unload_s=0)
engine.prepare().result()
engine.load(key)
params = GenerationParams(max_new_tokens=1, seed=0)  # the default sampling
owners = itertools.count()
model = engine.parts_of(key).model  # the loaded layers, to switch their path (a bench, not the product)
layers = [m for m in model.modules() if isinstance(m, quantize.Int4Linear)]
unpacked_from = layers[0].prompt_rows
def first_token(words):
    messages = [{"role": "user", "content": "hello world " * words}]
    events = engine.stream(key, messages, params, owner=f"new-{next(owners)}")
    return [e.stats for e in events if isinstance(e, Finished)][0]
first_token(4)  # warm-up: the first reply after a load
engine.settle()  # what the engine does while its user reads the reply (keeps the weights unpacked)
kept = {m: m.kept for m in layers}
PATHS = {  # kept weights (where memory allows: the default), unpacked at each prompt, the int4 kernel
    "ours": (layers[0].prompt_rows, True),
    "ours, unpacked each prompt": (unpacked_from, False),
    "ours, int4 kernel": (1 << 62, False),
}
def take(path):
    rows, keep = PATHS[path]
    quantize.set_int4_prompt_rows(model, rows)
    for m in layers:
        m.kept = kept[m] if keep else ()
rows = []
for words in map(int, sys.argv[3:]):  # 'hello world' pairs
    times = {path: [] for path in PATHS}
    for _ in range(3):
        for path in PATHS:
            take(path)
            stats = first_token(words)
            times[path].append(stats.ttft_s)
    rows.append({"prompt_tokens": stats.prompt_tokens} | {k: statistics.median(v) for k, v in times.items()})
print(json.dumps(rows))
"""

LLAMA_CPP = r"""
import json, random, statistics, sys, time
from llama_cpp import Llama
path, threads, counts = sys.argv[1], int(sys.argv[2]), [int(n) for n in sys.argv[3:]]
llm = Llama(model_path=path, n_ctx=max(counts) + 64, n_threads=threads, n_batch=512, verbose=False)
random.seed(0)
SAMPLED = {"temp": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}  # its chain
def first_token(count):
    prompt = [random.randint(10, 300) for _ in range(count)]
    llm.reset()
    started = time.perf_counter()
    next(iter(llm.generate(prompt, reset=True, **SAMPLED)))
    return time.perf_counter() - started
first_token(8)
print(json.dumps([statistics.median(first_token(count) for _ in range(3)) for count in counts]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompt-tokens", type=int, nargs="+", default=[100, 250, 500, 1000])
    parser.add_argument("--models", nargs="+", default=CATALOG_MODELS, choices=list(CONFIGS))
    parser.add_argument("--llama-cpp", type=Path, help="a llama.cpp source tree (for convert_hf_to_gguf.py)")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="localllm-prompts-") as tmp:
        work = Path(tmp)
        for key in args.models:
            source = build(key, work / f"src-{key}")
            install_ready(work / "models", key, source)
            words = [str(prompt_words(tokens)) for tokens in args.prompt_tokens]
            ours = ["-c", OURS, str(work / "models"), key, *words]
            run_json([*ours[:4], "1"])  # the first load quantizes the model and keeps the copy
            os.sync()
            rows = run_json(ours)
            if args.llama_cpp:
                counts = [str(row["prompt_tokens"]) for row in rows]
                for name, gguf in llama_cpp_models(args.llama_cpp, source, work).items():
                    times = run_json(["-c", LLAMA_CPP, str(gguf), str(os.cpu_count()), *counts])
                    for row, seconds in zip(rows, times, strict=True):
                        row[name] = seconds
                    gguf.unlink()
            results[key] = rows
            _print(key, rows)
    print(json.dumps(results))


def _print(key: str, rows: list[dict]) -> None:
    names = [name for name in rows[0] if name != "prompt_tokens"]
    print(f"\n{key}: time to first token (s) of a fresh prompt, median of 3")
    print(f"  {'prompt':>6} " + " ".join(f"{name:>26}" for name in names) + "  ours / each")
    for row in rows:
        ratios = " ".join(f"{row['ours'] / row[name]:.2f}" for name in names[1:])
        print(
            f"  {row['prompt_tokens']:>6} " + " ".join(f"{row[name]:26.3f}" for name in names) + f"  {ratios}"
        )


if __name__ == "__main__":
    main()
