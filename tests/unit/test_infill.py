"""Fill in the middle (code completion clients: the text before the cursor as the prompt, the text after
it as `suffix`), through OpenAI's /v1/completions and Ollama's /api/generate (Continue's tab completion
with its Ollama provider sends it there), against a tiny model with Qwen2.5-Coder's tokens: the model
reads the prompt in the form its tokens make, and a model without them is told in a sentence."""

from __future__ import annotations

from pathlib import Path

import ollama
import openai
import pytest

from core.inference.engine import LocalEngine
from core.inference.events import TextDelta
from core.inference.params import GenerationParams
from core.inference.prompts import RawPrompt
from tests.fixtures.serving import serving
from tests.fixtures.tiny_models import build_tiny_model, install_ready

BEFORE, AFTER = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
FILLED = f"<|fim_prefix|>{BEFORE}<|fim_suffix|>{AFTER}<|fim_middle|>"  # Qwen2.5-Coder's form


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("infill")
    install_ready(
        root / "models", "coder", build_tiny_model(root / "coder", "qwen2coder", context=1024, endless=True)
    )
    install_ready(root / "models", "chat", build_tiny_model(root / "chat", "qwen2", context=1024))
    return root / "models"


def test_a_suffix_is_filled_in_before_as_the_models_tokens_write_it(models: Path) -> None:
    engine = LocalEngine(models, idle_unload_s=0)
    greedy = GenerationParams(temperature=0, max_new_tokens=8)
    expected = "".join(
        e.text for e in engine.stream("coder", RawPrompt(FILLED), greedy) if isinstance(e, TextDelta)
    )
    read = len(engine.tokenizer("coder").encode(FILLED, special=True))
    with serving(engine, ["coder", "chat"]) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        filled = client.completions.create(
            model="coder", prompt=BEFORE, suffix=AFTER, max_tokens=8, temperature=0
        )
        ollamas = ollama.Client(host=url.removesuffix("/v1")).generate(
            model="coder", prompt=BEFORE, suffix=AFTER, options={"temperature": 0, "num_predict": 8}
        )
        refused = {}
        for name, asked in {
            "no such tokens": {"model": "chat", "prompt": BEFORE},
            "echo": {"model": "coder", "prompt": BEFORE, "echo": True},
            "token ids": {"model": "coder", "prompt": [5, 6]},
        }.items():
            with pytest.raises(openai.BadRequestError) as caught:
                client.completions.create(suffix=AFTER, max_tokens=4, **asked)
            refused[name] = (caught.value.body["param"], caught.value.body["message"])
    assert (filled.choices[0].text, filled.usage.prompt_tokens, filled.usage.completion_tokens) == (
        expected,
        read,
        8,
    )
    assert (ollamas.response, ollamas.prompt_eval_count) == (expected, read)
    for_cursor = "'suffix' goes with a prompt of text, the text before the cursor, and without echo."
    no_tokens = ("The model 'chat' does not fill in the middle (its tokenizer has none of the tokens for it, "
                 "as Qwen2.5-Coder's <|fim_prefix|> or StarCoder's <fim_prefix>): send the text before the "
                 "cursor alone, without 'suffix'.")  # fmt: skip
    assert refused == {
        "no such tokens": ("suffix", no_tokens),
        "echo": ("suffix", for_cursor),
        "token ids": ("suffix", for_cursor),
    }
