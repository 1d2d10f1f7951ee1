"""Replies held to JSON (core.inference.formats): whatever the model prefers, each token it may choose
keeps the reply in the schema, and the reply ends once the value is whole. Real tiny models (random
weights: left alone they write noise), through both decoders."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from core.errors import MessageError
from core.inference.engine import LocalEngine
from core.inference.events import Finished, TextDelta
from core.inference.formats import MAX_SCHEMA_CHARS, checked_format
from core.inference.params import GenerationParams
from tests.fixtures.tiny_models import build_tiny_model, install_ready

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Hangzhou", "Paris"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"], ids=["lean-decoder", "transformers-generate"])
def test_a_reply_held_to_a_schema_fits_it_and_ends_there(tmp_path: Path, arch: str) -> None:
    install_ready(tmp_path / "models", "m", build_tiny_model(tmp_path / arch, arch, endless=True))
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    messages = [{"role": "user", "content": "Where to, and for how long?"}]
    for temperature in (0.0, 1.0):
        params = GenerationParams(temperature=temperature, max_new_tokens=60, seed=7)
        events = list(engine.stream("m", messages, params, reply_format=checked_format(SCHEMA)))
        reply = json.loads("".join(event.text for event in events if isinstance(event, TextDelta)))
        assert reply["city"] in ("Hangzhou", "Paris") and 1 <= reply["days"] <= 9 and len(reply) == 2
        assert events[-1].stats.finish_reason == "stop"  # ended with the value, not at 60 tokens
    alone = list(engine.stream("m", messages, GenerationParams(temperature=0, max_new_tokens=20)))
    assert isinstance(alone[-1], Finished) and alone[-1].stats.finish_reason == "length"  # not held: noise


def test_a_schema_no_reply_can_fit_is_refused_in_a_sentence() -> None:
    with pytest.raises(MessageError, match="cannot hold a reply: Invalid type: nonsense") as refused:
        checked_format({"type": "nonsense"})
    assert refused.value.params["reason"] == "format_invalid"
    with pytest.raises(MessageError, match="longer than") as long:
        checked_format({"enum": ["x" * MAX_SCHEMA_CHARS]})
    assert long.value.params["reason"] == "schema_too_long"
    assert checked_format(None).schema is None  # JSON mode: any object


def test_a_reply_held_to_a_schema_and_one_that_is_not_share_a_batch_untouched(tmp_path: Path) -> None:
    """Replies asked at once run in one batch (up to 4 by default): the format's mask is its own reply's,
    the other writes as it does alone."""
    install_ready(tmp_path / "models", "m", build_tiny_model(tmp_path / "m", endless=True))
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    params = GenerationParams(temperature=0, max_new_tokens=120)
    free = [{"role": "user", "content": "Write freely"}]

    def text(events: list) -> str:
        return "".join(event.text for event in events if isinstance(event, TextDelta))

    alone = text(list(engine.stream("m", free, params)))
    replies: dict[str, str] = {}
    threads = [
        threading.Thread(
            target=lambda: replies.__setitem__("free", text(list(engine.stream("m", free, params))))
        ),
        threading.Thread(
            target=lambda: replies.__setitem__(
                "held", text(list(engine.stream("m", free, params, reply_format=checked_format(SCHEMA))))
            )
        ),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert replies["free"] == alone
    assert json.loads(replies["held"])["city"] in ("Hangzhou", "Paris")
