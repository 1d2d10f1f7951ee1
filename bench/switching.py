"""Switching between two models, as a user of two chats (or a program that embeds with one model and
chats with another) does: each request's time to its first token, with one model kept loaded (every
switch loads the other again) against the default `loaded_models` (both stay loaded), in one run; and
two users at once, each asking its own model: the second user's first token and both replies' time,
the two batches stepping in turn against one model's replies at a time (as before 2026-12-06); and the
same with the second model not loaded (its int4 copy kept): loaded beside the first user's reply (its
steps wait for the load: the longest gap between its tokens) against waiting for that reply to end (as
until the evening of 2026-12-06); and both loaded, the second user sending a long prompt (a pasted
document): read 64 tokens a pass between the first user's tokens against in one pass (as before).

Random weights with the catalog models' configs (bench/readiness.build), each in a fresh process with
the engine's default settings (int4 on the CPU, the default sampling, the weights kept for prompts);
the int4 files are made once beforehand, as after a first load. Prints each setting's median time to
first token after a switch, the process's peak resident memory, and the ratios.

Usage: .venv/bin/python -m bench.switching [--rounds 4] [--models qwen2.5-0.5b tinyllama-1.1b]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench.readiness import CONFIGS, build
from bench.speed import run_json
from tests.fixtures.tiny_models import install_ready

SWITCHES = r"""
import json, resource, sys, time
from pathlib import Path
from core.inference.engine import LocalEngine
from core.inference.events import TextDelta
from core.inference.params import GenerationParams
models, rounds, kept, keys = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
engine = LocalEngine(models, idle_unload_s=0, max_loaded=kept)
engine.prepare().result()
params = GenerationParams(max_new_tokens=8, seed=0)  # the default sampling
def first_token(key):
    started = time.perf_counter()
    for event in engine.stream(key, [{"role": "user", "content": "Tell me about rivers."}], params):
        if isinstance(event, TextDelta):
            return time.perf_counter() - started
waits = []
for number in range(rounds):
    for key in keys:
        wait = first_token(key)
        engine.settle()  # the weights kept for prompts between replies: a user's reading time
        if number:  # the first round loads each model once whatever the setting
            waits.append(wait)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"waits": waits, "peak_rss": peak, "loaded": [m.key for m in engine.loaded_models]}))
"""

TOGETHER = r"""
import json, statistics, sys, threading, time
from pathlib import Path
from core.inference.engine import LocalEngine
from core.inference.events import TextDelta
from core.inference.params import GenerationParams
models, rounds, mode, keys = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
engine = LocalEngine(models, idle_unload_s=0)
engine.prepare().result()
# Earlier behaviours (a bench, not the product): before 12-06 a model's replies waited for another's to
# end; until that evening a model to load waited for them, its int4 copy kept or not.
if mode == "turns":
    engine._turns._beside = lambda key: False
elif mode == "load-waits":
    engine._turns._beside = lambda key: engine.parts_of(key) is not None
elif mode == "prompt-whole":  # before: a prompt was read in one pass whatever another model's batch did
    engine._others_decoding = lambda key: False
params = GenerationParams(max_new_tokens=128, seed=0)  # the default sampling
def reply(key, started, times, text="Tell me about rivers."):
    last = None
    for event in engine.stream(key, [{"role": "user", "content": text}], params, ignore_eos=True):
        if isinstance(event, TextDelta):
            now = time.perf_counter()
            times.setdefault("first", now - started)
            if last is not None:
                times["gap"] = max(times.get("gap", 0.0), now - last)
            last = now
    times["done"] = time.perf_counter() - started
for key in keys:
    engine.load(key)
    reply(key, time.perf_counter(), {})  # a first reply each: the prompt copies made, caches warm
    engine.settle()
rows = []
for _ in range(rounds):
    a, b = {}, {}
    if mode.startswith("load"):
        engine.unload(keys[1])  # its int4 copy stays on disk, as after any first load
    start_a = time.perf_counter()
    first_user = threading.Thread(target=reply, args=(keys[0], start_a, a))
    first_user.start()
    while "first" not in a:
        time.sleep(0.005)
    start_b = time.perf_counter()  # the second user asks the other model as the first one's text starts
    # A pasted document (each round its own: no kept cache holds it) in the prompt modes.
    text = f"{len(rows)}: " + "Rivers carry water from the hills to the sea. " * 40
    reply(keys[1], start_b, b, *([text] if mode.startswith("prompt") else []))
    first_user.join()
    rows.append({"b_first": b["first"], "b_done": b["done"], "a_done": a["done"], "a_gap": a["gap"],
                 "both_done": max(a["done"], start_b - start_a + b["done"])})
    engine.settle()
print(json.dumps(rows))
"""


MODES = {
    "turns": "both loaded, one model at a time (before)",
    "beside": "both loaded, side by side (now)",
    "load-waits": "2nd to load: waits for the 1st (before)",
    "load-beside": "2nd to load: loads beside the 1st (now)",
    "prompt-whole": "2nd sends a long prompt: one pass (before)",
    "prompt-parts": "2nd sends a long prompt: 64 tokens a pass (now)",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=4, help="requests to each model (the first loads it)")
    parser.add_argument("--models", nargs=2, default=list(CONFIGS)[:2], choices=list(CONFIGS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="localllm-switching-") as tmp:
        models = Path(tmp) / "models"
        for key in args.models:
            install_ready(models, key, build(key, Path(tmp) / f"src-{key}"))
        common = ["-c", SWITCHES, str(models), str(args.rounds)]
        run_json([*common, "1", *args.models])  # makes each model's int4 file, as a first load does
        results = {kept: run_json([*common, str(kept), *args.models]) for kept in (1, 3)}
        together = ["-c", TOGETHER, str(models), str(args.rounds)]
        side_by_side = {mode: run_json([*together, mode, *args.models]) for mode in MODES}
    one, both = results[1], results[3]
    print(f"\n{' and '.join(args.models)}: {args.rounds - 1} switches to each, after a first load of each")
    print(f"  {'models kept loaded':<20} {'first token after a switch (median s)':>38} {'peak memory':>12}")
    for kept, result in results.items():
        median = statistics.median(result["waits"])
        print(f"  {kept:<20} {median:>38.3f} {result['peak_rss'] / 2**30:>10.2f} GiB")
    sooner = statistics.median(one["waits"]) / statistics.median(both["waits"])
    memory = both["peak_rss"] / one["peak_rss"]
    print(f"  both kept: a switch's first token {sooner:.1f}x sooner, for {memory:.2f}x the peak memory")
    print(
        f"\nTwo users at once, each its model, 128 tokens a reply ({args.rounds} rounds, medians): the second"
        f" asks {args.models[1]} as the first's text from {args.models[0]} starts"
    )
    names = ("2nd: 1st tok", "2nd: done", "1st: done", "both done", "1st: gap")
    print(f"  {'':<50} " + " ".join(f"{name:>12}" for name in names) + "   (seconds)")
    for mode, rows in side_by_side.items():
        medians = [
            statistics.median(row[name] for row in rows)
            for name in ("b_first", "b_done", "a_done", "both_done", "a_gap")
        ]
        print(f"  {MODES[mode]:<50} " + " ".join(f"{value:>12.2f}" for value in medians))
    print(json.dumps({"switches": results, "side_by_side": side_by_side}))


if __name__ == "__main__":
    main()
