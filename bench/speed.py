"""Decode speed, time to first token, load time and memory: our engine vs bare transformers vs llama.cpp.

For Qwen2.5-0.5B-Instruct and TinyLlama-1.1B-Chat it builds models with the exact config numbers and
random weights (speed does not depend on weight values; nothing is downloaded). Each measurement runs
in a fresh process, one after another, on the same machine in the same run:

- ours: LocalEngine as the app uses it (by default core.inference.decoder with int4 weights on the CPU, with
  16-bit weights and fused projections on a GPU), loaded twice in fresh processes: on the CPU the
  first load quantizes and keeps the int4 copy on disk, the second maps it; after a first reply (a
  warm-up, as bare and llama.cpp are warmed up) and the engine's quiet moment after it (a user reading
  it: `LocalEngine.settle`, where it keeps the int4 weights unpacked for prompts when memory allows),
  greedy and sampled replies alternate three times and
  the median of each is reported; `python -m core chat KEY
  --stats` prints the same figures. Greedy (temperature 0) and sampled: the defaults a user chats
  with (temperature 0.7, top-p 0.9, repetition penalty 1.1), against llama.cpp's sampler chain with
  the same settings (its top-k 40 and min-p 0.05 included); on a CPU "ours int8" the same with the
  int8 setting (Settings → "Weights on the CPU"), to compare with llama.cpp's Q8_0; where the
  engine's own kernels run (core.inference.native), "ours, torch's kernels" the same without them;
- bare: `model.generate` with the very same weights (ours / bare: what the engine adds or saves);
- reference: `model.generate` in bf16 (fp32 where the CPU has no bf16) with transformers' SDPA;
- llama.cpp Q8_0 and Q4_K_M through llama-cpp-python, when it is installed (outside requirements.txt)
  and a llama.cpp source tree gives convert_hf_to_gguf.py (--llama-cpp DIR);
- the bound (CPU only): measured read bandwidth / weight bytes read per token.

Quality (bench/quality.py: int4, int8 and llama.cpp's Q8_0 and Q4_K_M against the fp32 reference, on
fixed token sequences, teacher-forced): relative logit error, top-1 agreement and KL divergence, next
to per-tensor int8 (one scale per matrix) for contrast.

Usage: .venv/bin/python -m bench.speed [--tokens 128] [--prompt-tokens 100] [--llama-cpp DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.readiness import CATALOG_MODELS, CONFIGS, build
from core.hardware import measure_bandwidth
from core.inference import native
from core.inference.sizing import Precision, decode_tokens_per_s_bound, model_memory
from core.settings import PROJECT_ROOT
from tests.fixtures.tiny_models import install_ready

BARE = r"""
import json, sys, time, torch
from transformers import AutoModelForCausalLM, StoppingCriteria, StoppingCriteriaList
from core.inference import attention
from core.inference.device import choose_dtype, detect_device
from core.hardware import peak_rss_bytes
from core.inference.quantize import quantize_model
path, mode, prompt_tokens, new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
device = detect_device()
dtype = choose_dtype(device)
ours = mode == "bare"  # the engine's weights and attention; "reference": plain transformers
started = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(
    path, dtype=dtype, attn_implementation=attention.NAME if ours and device == "cpu" else "sdpa"
).to(device).eval()
if ours and device == "cpu":
    quantize_model(model, dtype)
load_s = time.perf_counter() - started
ids = torch.randint(10, 300, (1, prompt_tokens), generator=torch.Generator().manual_seed(0)).to(device)
class FirstToken(StoppingCriteria):  # records when the first new token exists, as the engine does
    def __call__(self, input_ids, scores, **kwargs):
        if device == "cuda": torch.cuda.synchronize()
        self.at = getattr(self, "at", None) or time.perf_counter()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
def timed(n):
    first = FirstToken()
    t = time.perf_counter()
    model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                   stopping_criteria=StoppingCriteriaList([first]))
    if device == "cuda": torch.cuda.synchronize()
    end = time.perf_counter()
    return first.at - t, (n - 1) / (end - first.at)
with torch.inference_mode():
    timed(4)
    ttft, tps = timed(new_tokens + 1)
print(json.dumps({"ttft_s": ttft, "decode_tps": tps, "load_s": load_s,
                  "peak_rss_mb": peak_rss_bytes() / 2**20, "device": device, "dtype": str(dtype)}))
"""

OURS = r"""
import json, sys, time, psutil
from pathlib import Path
from core.inference.events import Finished
from core.inference.engine import LocalEngine
from core.inference.params import GenerationParams
from core.hardware import peak_rss_bytes
models, key, prompt_words, new_tokens = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
options = {"quantization": sys.argv[5]} if len(sys.argv) > 5 else {}  # else the settings' default
engine = LocalEngine(models, idle_unload_s=0, **options)
engine.prepare().result()  # as the app does while the page is shown
started = time.perf_counter()
loaded = engine.load(key)
load_s = time.perf_counter() - started
messages = [{"role": "user", "content": "hello world " * prompt_words}]
greedy = GenerationParams(temperature=0, max_new_tokens=new_tokens + 1)
sampled = GenerationParams(max_new_tokens=new_tokens + 1, seed=0)  # the defaults a user chats with
def reply(params):  # each its own owner: a fresh prompt every time, as llama.cpp's reset=True
    events = engine.stream(key, messages, params, ignore_eos=True, owner=f"bench-{time.perf_counter()}")
    return [e.stats for e in events if isinstance(e, Finished)][0]
cold = reply(greedy)
engine.settle()  # what the engine does while its user reads a first reply (keeps weights unpacked)
# Greedy and sampled in turn, three times each: the median of each (this machine's speed drifts).
pairs = [(reply(greedy), reply(sampled)) for _ in range(3)]
warm = sorted((pair[0] for pair in pairs), key=lambda stats: stats.tokens_per_s)[1]
with_sampling = sorted((pair[1] for pair in pairs), key=lambda stats: stats.tokens_per_s)[1]
rss = psutil.Process().memory_info().rss
print(json.dumps({"ttft_s": warm.ttft_s, "decode_tps": warm.tokens_per_s, "load_s": load_s,
                  "sampled_tps": with_sampling.tokens_per_s,
                  "cold_ttft_s": cold.ttft_s, "prompt_tokens": warm.prompt_tokens,
                  "peak_rss_mb": peak_rss_bytes() / 2**20, "rss_mb": rss / 2**20,
                  "device": loaded.device, "dtype": loaded.dtype, "weights": loaded.weights,
                  "precision": engine.precision().__dict__}))
"""

QUALITY = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM
from bench.quality import compare, sequences
from core.inference.quantize import quantize_model
path, reference_file = sys.argv[1], sys.argv[2]
def load():
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
tokens = sequences()
with torch.inference_mode():
    expected = load()(tokens).logits.float()
torch.save(expected, reference_file)  # for llama.cpp's quality, in its own process
def quality(model):
    with torch.inference_mode():
        return compare(model(tokens).logits, expected)
results = {}
for scheme in ("int4", "int8"):
    model = load()
    quantize_model(model, torch.float32, scheme)
    results[scheme] = quality(model)
per_tensor = load()
with torch.no_grad():
    for module in per_tensor.modules():
        if isinstance(module, torch.nn.Linear):
            w = module.weight
            scale = w.abs().max() / 127
            w.copy_(torch.round(w / scale).clamp(-127, 127) * scale)
results["int8 per tensor"] = quality(per_tensor)
print(json.dumps(results))
"""

LLAMA_CPP_QUALITY = r"""
import json, sys, numpy, torch
from llama_cpp import Llama
from bench.quality import LENGTH, compare, sequences
path, reference_file = sys.argv[1], sys.argv[2]
llm = Llama(model_path=path, n_ctx=LENGTH, logits_all=True, verbose=False)
logits = []
for row in sequences().tolist():
    llm.reset()
    llm.eval(row)
    logits.append(torch.from_numpy(numpy.array(llm.scores[:LENGTH])))
print(json.dumps(compare(torch.stack(logits), torch.load(reference_file))))
"""

LLAMA_CPP = r"""
import json, sys, time, random
from llama_cpp import Llama
from core.hardware import peak_rss_bytes
path, prompt_tokens, new_tokens, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
started = time.perf_counter()
llm = Llama(model_path=path, n_ctx=1024, n_threads=threads, n_batch=512, verbose=False)
load_s = time.perf_counter() - started
random.seed(0)
prompt = [random.randint(10, 300) for _ in range(prompt_tokens)]
GREEDY = {"temp": 0.0, "top_k": 1}
SAMPLED = {"temp": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}  # its chain
def run(n, sampling):
    llm.reset()
    t = time.perf_counter(); first = None
    for count, _ in enumerate(llm.generate(prompt, reset=True, **sampling), start=1):
        first = first or time.perf_counter() - t
        if count >= n:
            break
    return first, time.perf_counter() - t
run(4, GREEDY)
ttft, total = run(new_tokens + 1, GREEDY)
sampled_ttft, sampled_total = run(new_tokens + 1, SAMPLED)
print(json.dumps({"ttft_s": ttft, "decode_tps": new_tokens / (total - ttft), "load_s": load_s,
                  "sampled_tps": new_tokens / (sampled_total - sampled_ttft),
                  "peak_rss_mb": peak_rss_bytes() / 2**20}))
"""

CONVERT = r"""
import sys
source = sys.argv.pop(1)
sys.path.insert(0, source); sys.path.insert(1, source + "/gguf-py")
import conversion.base as base
def plain_bpe(self, *args, **kwargs):
    raise FileNotFoundError("the bench models carry a tokenizers BPE vocabulary")
# The random models' small tokenizer is not one llama.cpp knows by hash; the pre-tokenizer does not
# change speed, so name a standard one.
for cls in vars(base).values():
    if isinstance(cls, type) and "get_vocab_base_pre" in vars(cls):
        cls.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
base.TextModel._set_vocab_sentencepiece = plain_bpe
base.TextModel._set_vocab_llama_hf = plain_bpe
sys.argv[0] = "convert_hf_to_gguf.py"
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""


def run_json(code_or_args: list[str], env: dict[str, str] | None = None) -> dict:
    """The JSON of the last output line of `python code_or_args...`, run from the project's root."""
    out = subprocess.run(
        [sys.executable, *code_or_args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def prompt_words(tokens: int) -> int:
    """'hello world' pairs for a chat prompt of about `tokens` tokens with the bench models' tokenizer
    (~8 tokens a pair here, + the template's ~20)."""
    return max(1, (tokens - 20) // 8)


def q8_gguf(source: Path, model: Path, work: Path) -> Path:
    """The model as llama.cpp's Q8_0 gguf file (`source`: a llama.cpp source tree)."""
    q8 = work / "model-q8_0.gguf"
    subprocess.run(
        [sys.executable, "-c", CONVERT, str(source), str(model), "--outfile", str(q8), "--outtype", "q8_0"],
        check=True, capture_output=True,
    )  # fmt: skip
    return q8


def llama_cpp_models(source: Path, model: Path, work: Path) -> dict[str, Path]:
    """The model as llama.cpp's Q8_0 and Q4_K_M gguf files (`source`: a llama.cpp source tree)."""
    import llama_cpp

    q8 = q8_gguf(source, model, work)
    q4 = work / "model-q4_k_m.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.allow_requantize = True
    llama_cpp.llama_model_quantize(str(q8).encode(), str(q4).encode(), params)
    return {"llama.cpp Q8_0": q8, "llama.cpp Q4_K_M": q4}


def llama_cpp_rows(source: Path, model: Path, work: Path, args: argparse.Namespace) -> dict[str, dict]:
    threads = str(os.cpu_count() if args.threads == 0 else args.threads)
    rows = {}
    for name, path in llama_cpp_models(source, model, work).items():
        rows[name] = run_json(
            ["-c", LLAMA_CPP, str(path), str(args.prompt_tokens), str(args.tokens), threads]
        )
        if not args.no_quality:
            rows[name]["quality"] = run_json(["-c", LLAMA_CPP_QUALITY, str(path), str(work / "reference.pt")])
    return rows


def ours_row(
    models: Path, key: str, args: argparse.Namespace, *quantization: str, env: dict[str, str] | None = None
) -> dict:
    words = str(prompt_words(args.prompt_tokens))
    command = ["-c", OURS, str(models), key, words, str(args.tokens), *quantization]
    first = run_json(command, env)  # a model's first load on the CPU quantizes it and keeps the copy
    os.sync()  # the model and its quantized copy written out before anything is timed
    record = run_json(command, env)
    return record | {"first_load_s": first["load_s"], "first_peak_rss_mb": first["peak_rss_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=128, help="new tokens to decode")
    parser.add_argument("--prompt-tokens", type=int, default=100)
    parser.add_argument("--models", nargs="+", default=CATALOG_MODELS, choices=list(CONFIGS))
    parser.add_argument("--llama-cpp", type=Path, help="a llama.cpp source tree (for convert_hf_to_gguf.py)")
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0: all CPUs)")
    parser.add_argument("--no-quality", action="store_true")
    args = parser.parse_args()

    bandwidth = measure_bandwidth()
    print(
        f"read bandwidth {bandwidth / 1e9:.1f} GB/s; {args.prompt_tokens}-token prompt, "
        f"{args.tokens} new tokens"
    )
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="localllm-speed-") as tmp:
        work = Path(tmp)
        for key in args.models:
            source = build(key, work / f"src-{key}")
            install_ready(work / "models", key, source)
            rows: dict[str, dict] = {"ours": ours_row(work / "models", key, args)}
            if rows["ours"]["device"] == "cpu":  # the int8 setting, against llama.cpp's Q8_0
                rows["ours int8"] = ours_row(work / "models", key, args, "int8")
                if native.prepare():  # what the engine's own kernels change (core.inference.native)
                    without = {**os.environ, "LOCALLLM_NATIVE": "0"}
                    rows["ours, torch's kernels"] = ours_row(work / "models", key, args, env=without)
            for mode in ("bare", "reference"):
                rows[mode] = run_json(
                    ["-c", BARE, str(source), mode, str(args.prompt_tokens), str(args.tokens)]
                )
            quality = (
                None
                if args.no_quality
                else run_json(["-c", QUALITY, str(source), str(work / "reference.pt")])
            )
            if args.llama_cpp:
                rows |= llama_cpp_rows(args.llama_cpp, source, work, args)
                if quality:
                    quality |= {name: row.pop("quality") for name, row in rows.items() if "quality" in row}
            estimate = model_memory(work / "models" / key, Precision(**rows["ours"]["precision"]))
            bound = decode_tokens_per_s_bound(estimate, bandwidth)
            results[key] = {"rows": rows, "bound_tps": bound, "quality": quality}
            _print(key, rows, bound, quality)
            for gguf in work.glob("*.gguf"):
                gguf.unlink()
    print(json.dumps(results))


def _print(key: str, rows: dict[str, dict], bound: float, quality: dict | None) -> None:
    ours = rows["ours"]
    print(f"\n{key}: ours = {ours['device']}, {ours['weights']} weights, {ours['dtype']} activations")
    print(
        f"  {'engine':<20} {'greedy t/s':>10} {'sampled t/s':>11} {'ttft s':>7} {'load s':>7} "
        f"{'load+ttft':>9} {'peak MiB':>9}"
    )
    for name, row in rows.items():
        sampled = f"{row['sampled_tps']:11.1f}" if "sampled_tps" in row else f"{'-':>11}"
        print(
            f"  {name:<20} {row['decode_tps']:10.1f} {sampled} {row['ttft_s']:7.3f} {row['load_s']:7.2f} "
            f"{row['load_s'] + row['ttft_s']:9.2f} {row['peak_rss_mb']:9.0f}"
        )
    ratios = {
        "ours sampled/greedy": ours["sampled_tps"] / ours["decode_tps"],
        "ours/bare": ours["decode_tps"] / rows["bare"]["decode_tps"],
        "ours/reference": ours["decode_tps"] / rows["reference"]["decode_tps"],
    }
    if ours["device"] == "cpu":  # the bandwidth measured is the CPU's: no bound for a GPU
        print(f"  bound (bandwidth / weight bytes read per token): {bound:.1f} tokens/s")
        ratios["ours/bound"] = ours["decode_tps"] / bound
    for other in ("llama.cpp Q8_0", "llama.cpp Q4_K_M"):
        if other in rows:
            ratios[f"ours/{other}"] = ours["decode_tps"] / rows[other]["decode_tps"]
            ratios[f"sampled ours/{other}"] = ours["sampled_tps"] / rows[other]["sampled_tps"]
            ratios[f"ttft ours/{other}"] = ours["ttft_s"] / rows[other]["ttft_s"]
            ratios[f"load+ttft ours/{other}"] = (ours["load_s"] + ours["ttft_s"]) / (
                rows[other]["load_s"] + rows[other]["ttft_s"]
            )
    if "ours int8" in rows and "llama.cpp Q8_0" in rows:
        int8, q8 = rows["ours int8"], rows["llama.cpp Q8_0"]
        ratios["ours int8/llama.cpp Q8_0"] = int8["decode_tps"] / q8["decode_tps"]
        ratios["sampled ours int8/llama.cpp Q8_0"] = int8["sampled_tps"] / q8["sampled_tps"]
    ratios["peak/steady memory (ours)"] = ours["peak_rss_mb"] / ours["rss_mb"]
    if "first_load_s" in ours:
        ratios["first load s (quantizing)"] = ours["first_load_s"]
        ratios["first-load peak/steady"] = ours["first_peak_rss_mb"] / ours["rss_mb"]
    print("  " + ", ".join(f"{name} {value:.2f}" for name, value in ratios.items()))
    if quality:
        for name, numbers in quality.items():
            print(f"  quality {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in numbers.items()))


if __name__ == "__main__":
    main()
