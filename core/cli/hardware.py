"""`localllm hardware`: this machine, and whether each model fits and how fast it should decode."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from core.cli.common import library
from core.hardware import HardwareInfo, measure_bandwidth, probe
from core.units import format_bytes


@click.command(short_help="this machine, and whether each model fits and how fast it runs")
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of text")
def hardware(as_json: bool) -> int:
    """This machine (CPU, RAM, GPU, disk, memory bandwidth) and, for each model, the memory it needs, whether
    it fits, and its expected decode speed."""
    from core.inference import native
    from core.inference.engine import LocalEngine
    from core.inference.sizing import cpu_decode_efficiency

    # The engine's own kernels where they are built (a command this short never starts their build):
    # loaded before the precision is read, which counts on them (the head then has no packed copy, and
    # decoding reaches a larger share of the bandwidth bound).
    if native.library_path().exists():
        native.ready()
    models_library = library()
    info = probe(models_library.models_dir)
    engine = LocalEngine.from_preferences(models_library.preferences)
    bandwidth = measure_bandwidth()
    device, precision = engine.runs_on(), engine.precision()
    # On a GPU a model this small waits on launching its work, not on memory: no estimate from bandwidth.
    efficiency = cpu_decode_efficiency(precision) if device == "cpu" else None
    report = {
        "cpu": info.cpu_name, "physical_cores": info.physical_cores, "logical_cores": info.logical_cores,
        "ram_total_bytes": info.ram_total_bytes, "ram_available_bytes": info.ram_available_bytes,
        "swap_total_bytes": info.swap_total_bytes, "gpus": [asdict(gpu) for gpu in info.gpus],
        "mps": info.mps_available, "disk_free_bytes": info.disk_free_bytes,
        "device": device, "memory_bandwidth_bytes_per_s": round(bandwidth),
        "parallel_replies": engine.parallel,
        "models": _models(models_library, precision, info, bandwidth, efficiency, engine.parallel),
    }  # fmt: skip
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print(info, bandwidth, report["models"], on_gpu=device != "cpu")
    return 0


def _models(
    models_library: Any,
    precision: Any,
    info: HardwareInfo,
    bandwidth: float,
    efficiency: float | None,
    parallel: int,
) -> dict[str, Any]:
    """Each model's memory, verdict and decode speed (`efficiency`: the share of the bandwidth bound that
    decoding reaches on this CPU, sizing.cpu_decode_efficiency; None on a GPU: no estimate)."""
    from core.inference.sizing import decode_tokens_per_s_bound, memory_verdict, replies_that_fit

    found = {}
    for spec in models_library.models():
        estimate = models_library.memory_estimate(spec.key, precision)
        needed = estimate.total_bytes if estimate else None
        speed = (
            decode_tokens_per_s_bound(estimate, bandwidth) * efficiency if estimate and efficiency else None
        )
        verdict = memory_verdict(needed, info) if needed else None
        found[spec.key] = {
            "context_tokens": models_library.context_tokens(spec.key),
            "memory_needed_bytes": needed,
            "download_bytes": spec.download_bytes,
            "verdict": verdict.verdict if verdict else "unknown",
            "est_tokens_per_s": round(speed, 1) if speed else None,
            "people_at_once": replies_that_fit(estimate, verdict.available_bytes, parallel)
            if verdict
            else None,
        }
    return found


def _print(info: HardwareInfo, bandwidth: float, models: dict[str, Any], *, on_gpu: bool) -> None:
    click.echo(f"CPU     {info.cpu_name}, {info.physical_cores} cores / {info.logical_cores} threads")
    available, total = format_bytes(info.ram_available_bytes), format_bytes(info.ram_total_bytes)
    click.echo(f"RAM     {available} available of {total}")
    for gpu in info.gpus:
        free, total = format_bytes(gpu.memory_free_bytes), format_bytes(gpu.memory_total_bytes)
        click.echo(f"GPU     {gpu.name}: {free} free of {total}")
    if not info.gpus:
        click.echo("GPU     none: models run on the CPU")
    click.echo(f"Disk    {format_bytes(info.disk_free_bytes)} free on {info.disk_path}")
    click.echo(
        f"Memory bandwidth {bandwidth / 1e9:.1f} GB/s (measured): decode reads every weight once per token"
    )
    for key, model in models.items():
        needed = format_bytes(model["memory_needed_bytes"]) if model["memory_needed_bytes"] else "?"
        if on_gpu:  # bound by launching work, not by memory: no estimate (see `hardware`)
            speed = "speed measured with the first reply (GPU)"
        else:
            speed = f"~{model['est_tokens_per_s']} tokens/s expected" if model["est_tokens_per_s"] else ""
        people = f", {model['people_at_once']} at once" if model["people_at_once"] else ""
        click.echo(f"{key:<24} needs {needed:>9}  {VERDICTS[model['verdict']]:<13} {speed}{people}")


VERDICTS = {"fits_gpu": "fits the GPU", "fits_ram": "fits in RAM", "tight": "tight", "too_large": "too large",
            "unknown": "size unknown"}  # fmt: skip
