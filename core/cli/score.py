"""`localllm score`: how likely a text is under a model, token by token, and its perplexity."""

from __future__ import annotations

import json
from pathlib import Path

import click

from core.cli.common import library
from core.errors import MessageError
from core.inference.scoring import MAX_TEXT_CHARS
from core.preferences import QUANTIZATIONS


@click.command(short_help="per-token log-probabilities and perplexity of a text under a model")
@click.argument("model", metavar="KEY")
@click.option("--text-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="the text to score (UTF-8); longer than the context window: its first window")  # fmt: skip
@click.option("--quantization", type=click.Choice(QUANTIZATIONS), default=None,
              help="CPU weights for this run (default: the saved one); compare int4 with none")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="one JSON object with every token's log-probability")
def score(model: str, text_file: Path, quantization: str | None, as_json: bool) -> int:
    """Score a text teacher-forced: each token's log-probability given the text before it, the mean,
    and the perplexity (exp of minus the mean). Lower perplexity: the model finds the text likelier; the
    same text under int4 and under none (16-bit) shows what the faster weights cost."""
    from core.inference.engine import LocalEngine

    models_library = library()
    key = models_library.get(model).key
    options = {"idle_unload_s": 0} | ({"quantization": quantization} if quantization else {})
    engine = LocalEngine.from_preferences(models_library.preferences, **options)
    result = engine.score(key, _read_text(text_file))
    if as_json:
        tokens = [{"id": t.id, "token": t.text, "logprob": t.logprob} for t in result.tokens]
        click.echo(json.dumps({"model": result.model, "weights": result.weights, "tokens": tokens,
                               "mean_logprob": result.mean_logprob, "perplexity": result.perplexity,
                               "truncated": result.truncated}, ensure_ascii=False))  # fmt: skip
        return 0
    note = " (the first context window of the text)" if result.truncated else ""
    click.echo(f"{result.model} ({result.weights} weights): {len(result.tokens)} tokens scored{note}")
    click.echo(f"mean log-probability {result.mean_logprob:.4f}, perplexity {result.perplexity:.3f}")
    return 0


def _read_text(path: Path) -> str:
    """The text to score: UTF-8, at most MAX_TEXT_CHARS characters of it (a window's worth)."""
    try:
        with path.open(encoding="utf-8") as handle:
            return handle.read(MAX_TEXT_CHARS)
    except UnicodeDecodeError:
        raise MessageError(f"{path} is not UTF-8 text.") from None
    except OSError as exc:
        raise MessageError(f"{path} cannot be read: {exc.strerror or exc}.") from None
