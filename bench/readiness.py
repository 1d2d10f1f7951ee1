"""Readiness estimates against reality, for the full-size catalog architectures (random weights).

For Qwen2.5-0.5B-Instruct, TinyLlama-1.1B-Chat and Qwen3-0.6B (a model users add), builds a model
with the exact config numbers and random weights (speed and memory do not depend on weight values;
nothing is downloaded), then in a fresh process loads it with the engine and generates: prints the
estimated vs measured resident memory (after a reply: mmapped weights are resident only once read),
and the decode-speed bound (read bandwidth / weight bytes) vs measured tokens/s.

Usage: .venv/bin/python -m bench.readiness [--tokens 48]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from core.hardware import measure_bandwidth
from core.inference.sizing import Precision, decode_tokens_per_s_bound, model_memory
from core.settings import PROJECT_ROOT
from tests.fixtures.tiny_models import ARCHS, _train_tokenizer, install_ready

CONFIGS = {
    "qwen2.5-0.5b": (
        "qwen2",
        {
            "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
        },
    ),
    "tinyllama-1.1b": (
        "llama",
        {
            "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
            "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
        },
    ),
    # A model users add (not in the catalog): Qwen2 with per-head q/k norms and a thinking switch.
    "Qwen/Qwen3-0.6B": (
        "qwen3",
        {
            "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
            "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
            "max_position_embeddings": 40960, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
        },
    ),
}  # fmt: skip
CATALOG_MODELS = ["qwen2.5-0.5b", "tinyllama-1.1b"]  # the benches' default; others by --models

MEASURE = """
import json, sys, threading, psutil
from pathlib import Path
from core.inference.events import Finished
from core.inference.engine import LocalEngine
from core.inference.params import GenerationParams
engine = LocalEngine(Path(sys.argv[1]))
loaded = engine.load(sys.argv[2])
after_load = psutil.Process().memory_info().rss
params = GenerationParams(temperature=0, max_new_tokens=int(sys.argv[3]))
messages = [{"role": "user", "content": "Write a long story about the sea."}]
events = engine.stream(sys.argv[2], messages, params, ignore_eos=True)
stats = [e.stats for e in events if isinstance(e, Finished)][0]
print(json.dumps({"rss_after_load": after_load, "rss_after_reply": psutil.Process().memory_info().rss,
                  "tokens_per_s": stats.tokens_per_s, "ttft_s": stats.ttft_s, "dtype": loaded.dtype,
                  "load_s": loaded.load_s, "precision": engine.precision().__dict__}))
"""


def build(key: str, directory: Path, *, speaking: bool = False) -> Path:
    """The model with the catalog's numbers, random weights and a small trained tokenizer. A `speaking`
    model only chooses among the tokenizer's words (its other output rows are zero, its end-of-turn
    token's too: every reply runs to max_tokens), so a reply streams text as a real one does; weight
    values do not change the work a token costs."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    arch, numbers = CONFIGS[key]
    spec = ARCHS[arch]
    tokenizer = _train_tokenizer(spec, vocab_size=400)
    eos = tokenizer.convert_tokens_to_ids(spec.eos)
    config = AutoConfig.for_model(arch, **numbers, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    if speaking:
        with torch.no_grad():
            model.get_output_embeddings().weight[len(tokenizer) :] = 0
            model.get_output_embeddings().weight[eos] = 0
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    _widen_vocabulary(directory / "tokenizer.json", numbers["vocab_size"])
    return directory


def _widen_vocabulary(path: Path, size: int) -> None:
    """Give the small tokenizer as many ids as the model's vocabulary, the new ones unreachable by its
    merges (`<unusedN>`, as real vocabularies hold): the app refuses a tokenizer far smaller than its
    model's vocabulary (a repo whose tokenizer it could not read)."""
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    vocabulary = tokenizer["model"]["vocab"]
    taken = set(vocabulary.values()) | {token["id"] for token in tokenizer["added_tokens"]}
    vocabulary.update({f"<unused{token}>": token for token in range(size) if token not in taken})
    path.write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    bandwidth = measure_bandwidth()
    print(f"read bandwidth: {bandwidth / 1e9:.1f} GB/s")
    memory_columns = f"{'model':<16} {'est. MiB':>9} {'RSS MiB':>8} {'ratio':>6}"
    print(f"{memory_columns}   {'bound t/s':>9} {'meas. t/s':>9} {'ratio':>6}")
    with tempfile.TemporaryDirectory(prefix="localllm-readiness-") as tmp:
        models = Path(tmp) / "models"
        for key in CONFIGS:
            install_ready(models, key, build(key, Path(tmp) / f"src-{key}"))
            out = subprocess.run(
                [sys.executable, "-c", MEASURE, str(models), key, str(args.tokens)],
                cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
            )  # fmt: skip
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            estimate = model_memory(models / key, Precision(**measured["precision"]))
            bound = decode_tokens_per_s_bound(estimate, bandwidth)
            # bf16 checkpoints are memory-mapped: weights become resident as a reply reads them,
            # so the steady state is measured after a reply (right after load it is far lower).
            rss = measured["rss_after_reply"]
            tps = measured["tokens_per_s"]
            print(
                f"{key:<16} {estimate.after_load_bytes / 2**20:9.0f} {rss / 2**20:8.0f} "
                f"{rss / estimate.after_load_bytes:6.2f}   {bound:9.1f} {tps:9.1f} {tps / bound:6.2f}"
                f"   ({measured['dtype']}, load {measured['load_s']:.1f} s, ttft {measured['ttft_s']:.2f} s)"
            )


if __name__ == "__main__":
    main()
