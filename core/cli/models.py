"""`localllm models | search | download | verify`: the catalog, finding models on the Hub, downloads that
resume, and checking files."""

from __future__ import annotations

import json
import signal
import sys
import threading
from dataclasses import asdict

import click

from core.cli.common import library, warn
from core.errors import NotFoundError, is_bad_input
from core.hub.library import ModelLibrary
from core.outbound import shown_origin
from core.units import format_bytes, format_count


@click.command(short_help="the model catalog with size and state")
def models() -> int:
    """The model catalog with each model's size and state (ready, partial, damaged, ...)."""
    models_library = library()
    for spec in models_library.models():
        status = models_library.status(spec.key)
        shown = status.kind.replace("_", " ")  # not downloaded, partial 40 %, ready, damaged
        if status.kind in ("partial", "downloading"):
            shown += f" {status.fraction:.0%}"
        size = format_bytes(spec.download_bytes) if spec.download_bytes else "?"
        click.echo(f"{spec.key:<24} {spec.repo_id:<44} {size:>9}  {shown}")
    return 0


@click.command(short_help="find chat models on Hugging Face by name")
@click.argument("words", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of text")
def search(words: tuple[str, ...], as_json: bool) -> int:
    """The most downloaded chat models for transformers whose name holds WORDS, from the first download
    endpoint that answers. `localllm download REPO_ID` checks one, adds it and downloads it."""
    models_library = library()
    results = models_library.search(" ".join(words))
    in_catalog = {spec.repo_id.lower() for spec in models_library.models()}
    if as_json:
        found = [
            {**asdict(model), "in_catalog": model.repo_id.lower() in in_catalog} for model in results.models
        ]
        click.echo(json.dumps({"query": results.query, "endpoint": results.endpoint, "models": found,
                               "quantized_copies_left_out": results.copies_left_out}))  # fmt: skip
        return 0
    if not results.models:
        click.echo(f"No chat model for transformers has {results.query!r} in its name ({results.endpoint}).")
    for model in results.models:
        parameters = format_count(model.parameters) if model.parameters else "?"
        size = format_bytes(model.download_bytes) if model.download_bytes else "?"
        added = model.repo_id.lower() in in_catalog
        notes = [note for note, holds in (("gated", model.gated), ("in the catalog", added)) if holds]
        downloads = format_count(model.downloads)
        line = f"{model.repo_id:<48} {parameters:>6} {size:>9} {downloads:>7} downloads"
        click.echo(line + (f"  ({', '.join(notes)})" if notes else ""))
    if results.copies_left_out:
        click.echo(f"Quantized copies left out (-AWQ, -GPTQ, ...): {results.copies_left_out}. This app "
                   "quantizes the original model itself.")  # fmt: skip
    return 0


def _new_notes(before: tuple[str, ...], now: tuple[str, ...]) -> tuple[str, ...]:
    """The notes of `now` that came after `before` (a job keeps its last 20: the oldest slide out)."""
    for shift in range(len(before) + 1):
        kept = before[shift:]
        if now[: len(kept)] == kept:
            return now[len(kept) :]
    return now


def _resolve_or_add(models_library: ModelLibrary, asked: str) -> str:
    """A catalog key, a repo id or a model page's address: the catalog's model, else one added."""
    try:
        return models_library.get(asked).key
    except NotFoundError:
        if "/" not in asked:
            raise
        return models_library.add_custom(asked).key


@click.command(short_help="download and verify a model (resumes; any chat repo id)")
@click.argument("model", metavar="KEY_OR_REPO_ID")
@click.option("--endpoint", "endpoints", multiple=True, metavar="URL",
              help="endpoint to download from, in order (repeatable); default: the saved order")  # fmt: skip
def download(model: str, endpoints: tuple[str, ...]) -> int:
    """Download a model and verify every file; resumes a partial download. Any chat repo id
    (org/name) is checked and added to the catalog first. Exit 0 only when every file is verified."""
    from tqdm import tqdm

    models_library = library(list(endpoints) or None)
    key = _resolve_or_add(models_library, model)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not models_library.download(key):
            warn(f"error: {key} is already being downloaded by another process.")
            return 1
        notes: tuple[str, ...] = ()
        with tqdm(unit="B", unit_scale=True, unit_divisor=1000, desc=key, dynamic_ncols=True) as bar:
            while models_library.manager.is_running(key):
                if stop.is_set():
                    models_library.manager.cancel(key)
                models_library.manager.wait(key, timeout=0.25)
                progress = models_library.progress(key)
                for note in _new_notes(notes, progress.notes):  # retries, a switch to the next endpoint
                    bar.write(note, file=sys.stderr)
                notes = progress.notes
                bar.total = progress.bytes_total or None
                bar.n = progress.bytes_done
                listing = f"asking {shown_origin(progress.endpoint or '')} for the file list"
                bar.set_postfix_str(progress.current_file or listing, refresh=False)
                bar.refresh()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    final = models_library.progress(key)
    if final.state == "completed":
        click.echo(f"{key}: every file verified in {models_library.directory(key)}")
        return 0
    if final.state == "cancelled":
        click.echo(f"{key}: paused at {format_bytes(final.bytes_done)}; run the same command to resume.")
        return 130
    warn(f"error: {final.error}")
    return 2 if is_bad_input(final.error_code) else 1


@click.command(short_help="check every file of a downloaded model (size and hash)")
@click.argument("model", metavar="KEY")
def verify(model: str) -> int:
    """Check every file of a downloaded model (size and hash); a bad file is repaired by the next download."""
    models_library = library()
    key = models_library.get(model).key
    bad = [check for check in models_library.verify(key) if not check.ok]
    for check in bad:
        warn(f"{check.path}: {check.problem}")
    if bad:
        warn(f"{key}: {len(bad)} file(s) failed; run `localllm download {key}` to repair.")
        return 1
    click.echo(f"{key}: every file verified")
    return 0
