"""core.inference.decoder against transformers on this machine's device: the check to run where a GPU is lent.

For both catalog architectures, a small random model is loaded as the engine would load it there
(int4 on a CPU; 16-bit with fused projections on a GPU). The decoder's logits for a prompt and 16
teacher-forced tokens are compared with transformers' forward on the very same weights, and the
greedy replies of both are compared token by token (on CUDA each new token replays the decoder's
CUDA graph). Three greedy replies generated together (continuous batching: on CUDA, replayed from the
graph recorded for the replies decoding together) are compared with the same replies generated alone.
One line per architecture; exit status 1 when the logits differ by more than the dtype's rounding.

    python -m bench.decoder_check
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from core.inference.batching import Batch, Request, generate
from core.inference.decoder import Decoder, supports
from core.inference.device import choose_dtype, detect_device
from core.inference.quantize import fuse_projections, quantize_model
from core.inference.sampler import Sampling, TokenChooser
from tests.fixtures.tiny_models import build_tiny_model

NEW_TOKENS = 16
TOLERANCE = 0.02  # relative logit error from bf16 rounding (the unit tests' bound on the CPU)


def check(path: Path, device: str, dtype: torch.dtype) -> tuple[float, int, int, bool]:
    """(largest relative logit error, greedy tokens on which both agree, replies of three generated
    together equal to the same generated alone, whether new tokens replayed CUDA graphs) for one model."""
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
    return error, agree, same, decoder.use_graphs


def prompts(prompt: torch.Tensor) -> list[list[int]]:
    """The prompt, then three prompts of different lengths cut from it."""
    return [prompt[0].tolist()] + [prompt[0, :count].tolist() for count in (10, 7, 4)]


def chooser(model: AutoModelForCausalLM, device: str) -> TokenChooser:
    return TokenChooser(Sampling(), model.get_output_embeddings().out_features, device)


def main() -> int:
    device = detect_device()
    dtype = choose_dtype(device)
    failed = False
    with tempfile.TemporaryDirectory(prefix="localllm-decoder-") as tmp:
        for arch in ("qwen2", "llama"):
            path = build_tiny_model(Path(tmp) / arch, arch, hidden_size=256, layers=4)
            error, agree, same, graphs = check(path, device, dtype)
            failed |= error > TOLERANCE
            print(
                f"{arch}: {device} {str(dtype).removeprefix('torch.')}, relative logit error {error:.4f} "
                f"(bound {TOLERANCE}), greedy tokens equal for {agree}/{NEW_TOKENS}, "
                f"replies together equal alone {same}/3, CUDA graphs: {graphs}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
