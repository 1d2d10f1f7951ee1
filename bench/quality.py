"""Quality of a lower-precision model against the reference, on fixed token sequences, teacher-forced.

Every engine sees the same sequences; the metrics compare its logits at every position with the
reference's: relative logit error, top-1 agreement and the mean KL divergence per token.

Run as a script it measures what prompts and decoding cost in quality on this machine, for each
catalog model (random weights, bench/speed.py's): int4 with fp32 activations (bench/speed.py's quality
table), the engine's bf16 model with prompts unpacked each time, decoding's int4 kernel (the engine's
own, 8-bit activations: core.inference.native, and torch's, bf16 activations), the engine's decoder
token by token (each layer one call of the engine's own, or torch operations), and through the copy
kept for prompts as the engine runs it (int8 with 8-bit activations where oneDNN's int8 kernel runs:
`quantize.PROMPT_PEAK`, outlier columns in 16 bits), with every row 8-bit (no row guard; the outlier
columns still taken out) and every row 15-bit beside it. `--outlier-channels` first gives the
model the activations real checkpoints have without changing its function: four channels of each
RMSNorm's weight × OUTLIER and the next matrices' columns / OUTLIER, four of each up_proj's rows ×
OUTLIER and down_proj's columns / OUTLIER.

Usage: .venv/bin/python -m bench.quality [--models KEY ...] [--outlier-channels]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch

SEQUENCES, LENGTH = 4, 64


def sequences() -> torch.Tensor:
    """SEQUENCES × LENGTH token ids, the same in every process."""
    return torch.randint(10, 300, (SEQUENCES, LENGTH), generator=torch.Generator().manual_seed(1))


def compare(got: torch.Tensor, expected: torch.Tensor) -> dict[str, float]:
    """Metrics of logits `got` against `expected` (both sequences × positions × vocabulary)."""
    got, expected = got.float(), expected.float()
    kl = (
        torch.nn.functional.kl_div(
            got.log_softmax(-1), expected.log_softmax(-1), log_target=True, reduction="batchmean"
        )
        / got.shape[1]
    )
    return {
        "rel_logit_error": float((got - expected).norm() / expected.norm()),
        "top1_agreement": float((got.argmax(-1) == expected.argmax(-1)).float().mean()),
        "kl_per_token": float(kl),
    }


OUTLIER = 30.0


def with_outlier_channels(model: torch.nn.Module) -> torch.nn.Module:
    """The same function (in exact arithmetic) with outlier channels in the matrices' inputs (see above)."""
    generator = torch.Generator().manual_seed(5)

    def pick(count: int) -> torch.Tensor:
        return torch.randperm(count, generator=generator)[:4]

    with torch.no_grad():
        for layer in model.model.layers:
            attention, mlp = layer.self_attn, layer.mlp
            for norm, matrices in (
                (layer.input_layernorm, (attention.q_proj, attention.k_proj, attention.v_proj)),
                (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj)),
            ):
                channels = pick(norm.weight.shape[0])
                norm.weight[channels] *= OUTLIER
                for matrix in matrices:
                    matrix.weight[:, channels] /= OUTLIER
            channels = pick(mlp.up_proj.weight.shape[0])
            mlp.up_proj.weight[channels] *= OUTLIER
            mlp.down_proj.weight[:, channels] /= OUTLIER
    return model


def prompt_quality(path: Path, outliers: bool) -> dict[str, dict[str, float]]:
    """The metrics of each way prompts can run (see above) for the model at `path`."""
    from transformers import AutoModelForCausalLM

    from core.inference import native, quantize

    native.prepare()  # the engine's own group fit where it runs: a first load quantizes with it

    def load(dtype: torch.dtype) -> torch.nn.Module:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        return with_outlier_channels(model) if outliers else model

    tokens = sequences()
    results = {}
    with torch.inference_mode():
        expected = load(torch.float32)(tokens).logits.float()
        model = load(torch.float32)
        quantize.quantize_model(model, torch.float32, "int4")
        results["int4, fp32 activations"] = compare(model(tokens).logits, expected)
        model = load(torch.bfloat16)
        quantize.quantize_model(model, torch.bfloat16, "int4")
        results["int4, prompts in bf16 (unpacked each prompt)"] = compare(model(tokens).logits, expected)
        results.update(decoding_quality(model, tokens, expected))
        for layer in quantize.unpackable_layers(model):
            layer.keep_unpacked()
        quantize.set_int4_prompt_rows(model, quantize.KEPT_PROMPT_ROWS)
        kept = "int8, 8-bit activations" if quantize.packing_works() else "bf16"
        peak = quantize.PROMPT_PEAK
        for name, rows_peak in (
            (f"int4, through the copy kept for prompts ({kept}, as the engine runs it)", peak),
            ("  the same, every row 8-bit (outlier columns still in 16 bits)", math.inf),
            ("  the same, every row 15-bit", 0.0),
        ):
            quantize.PROMPT_PEAK = rows_peak
            try:
                results[name] = compare(model(tokens).logits, expected)
            finally:
                quantize.PROMPT_PEAK = peak
            if not quantize.packing_works():
                break
    return results


def decoding_quality(
    model: torch.nn.Module, tokens: torch.Tensor, expected: torch.Tensor
) -> dict[str, dict[str, float]]:
    """Every row through the int4 kernel that decodes (each row is computed alone, so this is what
    decoding gives): the engine's own kernel where it runs (8-bit activations), and torch's."""
    from unittest import mock

    from core.inference import native, quantize

    results = {}
    layers = quantize.unpackable_layers(model)
    rows = [layer.prompt_rows for layer in layers]
    for layer in layers:
        layer.prompt_rows = 1 << 30
    try:
        if native.prepare():
            name = "int4, decoding's kernel: the engine's own (8-bit activations a group of 32)"
            results[name] = compare(model(tokens).logits, expected)
        with mock.patch.object(quantize.Int4Linear, "native_runs", return_value=False):
            name = "int4, decoding's kernel: torch's (bf16 activations)"
            results[name] = compare(model(tokens).logits, expected)
    finally:
        for layer, count in zip(layers, rows, strict=True):
            layer.prompt_rows = count
    return results | lean_decoding_quality(model, tokens, expected)


def lean_decoding_quality(
    model: torch.nn.Module, tokens: torch.Tensor, expected: torch.Tensor
) -> dict[str, dict[str, float]]:
    """The engine's decoder fed the sequences token by token, as it decodes: each layer in one call of
    the engine's own (core.inference.native: float32 between the matmuls), and in torch operations
    (bf16 between them)."""
    from unittest import mock

    from core.inference.decoder import Decoder

    def decoded() -> torch.Tensor:
        lean = Decoder(model)
        logits = []
        for sequence in tokens:
            lean.reset(len(sequence))
            logits.append(torch.stack([lean.forward(token.view(1)) for token in sequence]))
        return torch.stack(logits)

    results = {}
    if Decoder(model)._native_layers() is not None:
        results["int4, decoded token by token, a layer a call (the engine's own)"] = compare(
            decoded(), expected
        )
    with mock.patch.object(Decoder, "_native_layers", return_value=None):
        results["int4, decoded token by token, a layer in torch operations"] = compare(decoded(), expected)
    return results


def main() -> None:
    from bench.readiness import CATALOG_MODELS, build

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=CATALOG_MODELS)
    parser.add_argument("--outlier-channels", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        for key in args.models:
            results = prompt_quality(build(key, Path(work) / key), args.outlier_channels)
            print(f"\n{key}{' with outlier channels' if args.outlier_channels else ''}: against fp32")
            for name, metrics in results.items():
                print(f"  {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
