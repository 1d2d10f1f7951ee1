"""core.inference.decoder against transformers on this machine's device: the check to run where a GPU is lent.

For both catalog architectures, a small random model is loaded as the engine would load it there
(int4 on a CPU; 16-bit with fused projections on a GPU). The decoder's logits for a prompt and 16
teacher-forced tokens are compared with transformers' forward on the very same weights, and the
greedy replies of both are compared token by token (on CUDA each new token replays the decoder's
CUDA graph). Three greedy replies generated together (continuous batching: on CUDA, replayed from the
graph recorded for the replies decoding together) are compared with the same replies generated alone.
One line per architecture; exit status 1 when the logits differ by more than the dtype's rounding.

With --steps, then, for both catalog models (their exact config numbers, random weights): the time of a
decode step by how many replies decode together, 1-16, after 100-token prompts, as the engine runs it
(on CUDA replayed from the graph recorded for those replies, and eagerly beside it; on a CPU int4,
eagerly), the time to record each graph, and the host's time to choose a token greedily and with the
default sampling after a synchronized pass (what sampling adds to a step). A bench path, labelled so:
greedy but for that, model warm, no HTTP (bench/many_users.py measures what users get through
`localllm serve`).

    python -m bench.decoder_check [--steps]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from core.inference.batching import Batch, Request, generate
from core.inference.decoder import Decoder, KvCache, Segment, supports
from core.inference.device import choose_dtype, detect_device, prepare_attention
from core.inference.generation import sampling_for
from core.inference.params import GenerationParams
from core.inference.quantize import fuse_projections, quantize_model
from core.inference.sampler import Sampling, TokenChooser
from tests.fixtures.tiny_models import build_tiny_model

BATCH_SIZES = (1, 2, 3, 4, 8, 16)

NEW_TOKENS = 16
TOLERANCE = 0.02  # relative logit error from bf16 rounding (the unit tests' bound on the CPU)


def check(path: Path, device: str, dtype: torch.dtype) -> tuple[float, int, int, bool, bool]:
    """(largest relative logit error, greedy tokens on which both agree, replies of three generated
    together equal to the same generated alone, whether new tokens replayed CUDA graphs alone and
    together) for one model."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    if device == "cpu":
        quantize_model(model, dtype, "int4")
    else:
        fuse_projections(model)
    assert supports(model)
    decoder = Decoder(model)
    prompt = torch.tensor([[5, 17, 42, 99, 7, 230, 18, 64, 3, 150, 77, 12]], device=device)
    with torch.inference_mode():
        expected = model.generate(
            prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
            output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
        decoder.reset(64)
        got = [decoder.forward(prompt[0])]
        got += [decoder.forward(token.view(1)) for token in expected.sequences[0, prompt.shape[1] : -1]]
        greedy, *alone = (
            generate(decoder, ids, NEW_TOKENS, chooser(model, device), set(), lambda _token: False)
            for ids in prompts(prompt)
        )
        together = [
            Request(ids, NEW_TOKENS, chooser(model, device), frozenset(), lambda _token: False)
            for ids in prompts(prompt)[1:]
        ]
        batch = Batch(decoder)
        for request in together:
            batch.add(request)
        while batch.active:
            batch.step()
    error = max(
        float((mine - theirs[0].float()).norm() / theirs.float().norm())
        for mine, theirs in zip(got, expected.logits, strict=True)
    )
    theirs = expected.sequences[0, prompt.shape[1] :].tolist()
    agree = next((i for i, (a, b) in enumerate(zip(greedy, theirs, strict=True)) if a != b), NEW_TOKENS)
    same = sum(request.done.result() == reply for request, reply in zip(together, alone, strict=True))
    return error, agree, same, decoder.use_graphs, decoder.use_graphs and decoder.graphs_together


def prompts(prompt: torch.Tensor) -> list[list[int]]:
    """The prompt, then three prompts of different lengths cut from it."""
    return [prompt[0].tolist()] + [prompt[0, :count].tolist() for count in (10, 7, 4)]


def chooser(model: AutoModelForCausalLM, device: str) -> TokenChooser:
    return TokenChooser(Sampling(), model.get_output_embeddings().out_features, device)


def step_ms(model: AutoModelForCausalLM, replies: int, graphs: bool, steps: int) -> tuple[float, float, bool]:
    """(ms a decode step of `replies` takes, ms its first step took: the recording on CUDA, whether
    graphs stayed on) after a 100-token prompt each; the host reads each step's tokens, as replies do."""
    decoder = Decoder(model)
    decoder.use_graphs = decoder.use_graphs and graphs
    sync = torch.cuda.synchronize if decoder.device.type == "cuda" else lambda: None
    caches = [KvCache(decoder, 512, zeroed=True) for _ in range(replies)]
    generator = torch.Generator().manual_seed(0)
    decoder.run([Segment(cache, torch.randint(10, 300, (100,), generator=generator)) for cache in caches])
    tokens = torch.randint(10, 300, (replies,), generator=generator).tolist()

    def step() -> list[int]:
        return (
            decoder.run([Segment(c, torch.tensor([t])) for c, t in zip(caches, tokens, strict=True)])
            .argmax(-1)
            .tolist()
        )

    sync()
    started = time.perf_counter()
    tokens = step()
    first = time.perf_counter() - started
    for _ in range(3):
        tokens = step()
    started = time.perf_counter()
    for _ in range(steps):
        tokens = step()
    replayed = decoder.use_graphs and (replies == 1 or decoder.graphs_together)
    return (time.perf_counter() - started) * 1e3 / steps, first * 1e3, replayed


def choosing_us(model: AutoModelForCausalLM, params: GenerationParams, steps: int) -> tuple[float, float]:
    """(µs choosing a token takes, ms a pass takes) for one reply with these settings after a 100-token
    prompt: the device is synchronized after each pass, so the first is the host's alone (on a GPU
    the top-k's kernel and its read back, then the draw in Python)."""
    decoder = Decoder(model)
    sync = torch.cuda.synchronize if decoder.device.type == "cuda" else lambda: None
    prompt = torch.randint(10, 300, (100,), generator=torch.Generator().manual_seed(0))
    chooser = TokenChooser(
        sampling_for(params, model.generation_config),
        decoder.vocabulary,
        decoder.device,
        seen=prompt.tolist(),
    )
    token = chooser.choose(decoder.run([Segment(decoder.reset(512), prompt)])[0])
    token = chooser.choose(decoder.forward(torch.tensor([token])))  # on CUDA: recorded here
    passes = choices = 0.0
    for _ in range(steps):
        started = time.perf_counter()
        logits = decoder.forward(torch.tensor([token]))
        sync()
        chosen = time.perf_counter()
        token = chooser.choose(logits)
        passes, choices = passes + chosen - started, choices + time.perf_counter() - chosen
    return choices * 1e6 / steps, passes * 1e3 / steps


def steps_by_batch_size(device: str, dtype: torch.dtype) -> None:
    from transformers import AutoConfig

    from bench.readiness import CATALOG_MODELS, CONFIGS

    cuda = device == "cuda"
    for key in CATALOG_MODELS:
        arch, numbers = CONFIGS[key]
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(
                AutoConfig.for_model(arch, **numbers), dtype=dtype
            ).eval()
        if cuda:
            fuse_projections(model)
        else:
            quantize_model(model, dtype, "int4")
        print(
            f"\n{key}: a decode step by replies decoding together ({device}, 100-token prompts; "
            "a bench path: greedy, warm)"
        )
        print(f"  {'replies':>7} {'step ms':>8} {'tokens/s':>9} {'eager ms':>9} {'first step ms':>14}")
        for replies in BATCH_SIZES:
            ms, first, graphs = step_ms(model, replies, True, 100 if cuda else 5)
            eager = f"{step_ms(model, replies, False, 20)[0]:9.2f}" if cuda else f"{'-':>9}"
            note = "" if graphs or not cuda else "  (graphs off: recording failed)"
            print(
                f"  {replies:>7} {ms:8.2f} {replies * 1e3 / ms:9.0f} {eager} {first:14.1f}{note}", flush=True
            )
        steps = 200 if cuda else 10
        greedy = choosing_us(model, GenerationParams(temperature=0), steps)
        sampled = choosing_us(model, GenerationParams(seed=0), steps)  # the defaults a user chats with
        print(
            f"  choosing a token, one reply (after its pass, synced): greedy {greedy[0]:.0f} µs, default "
            f"sampling {sampled[0]:.0f} µs; the pass {greedy[1]:.2f} and {sampled[1]:.2f} ms"
        )
        del model


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", action="store_true", help="then the decode step by replies together")
    args = parser.parse_args()
    device = detect_device()
    prepare_attention(device)  # as the engine's load does
    dtype = choose_dtype(device)
    failed = False
    with tempfile.TemporaryDirectory(prefix="localllm-decoder-") as tmp:
        for arch in ("qwen2", "llama"):
            path = build_tiny_model(Path(tmp) / arch, arch, hidden_size=256, layers=4)
            error, agree, same, graphs, together = check(path, device, dtype)
            failed |= error > TOLERANCE
            print(
                f"{arch}: {device} {str(dtype).removeprefix('torch.')}, relative logit error {error:.4f} "
                f"(bound {TOLERANCE}), greedy tokens equal for {agree}/{NEW_TOKENS}, "
                f"replies together equal alone {same}/3, CUDA graphs: {graphs}, together: {together}"
            )
    if args.steps:
        with torch.inference_mode():
            steps_by_batch_size(device, dtype)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
