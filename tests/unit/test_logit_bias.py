"""OpenAI's logit_bias through `core serve`, with the official openai client, on both runners (the
engine's decoder, int4; transformers' generate, 16-bit): +100 on a token makes a greedy reply that token
throughout, -100 on a reply's first token makes it start otherwise, sampled or not."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from core.inference.engine import LocalEngine
from tests.fixtures.serving import serving
from tests.fixtures.tiny_models import build_tiny_model, install_ready

MESSAGES = [{"role": "user", "content": "Hello 你好"}]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("bias") / "m", "llama", hidden_size=64, endless=True)


@pytest.mark.parametrize(("quantization", "runner"), [("int4", "decoder"), ("none", "generate")])
def test_a_logit_bias_lifts_or_bans_a_token_on_each_runner(
    tmp_path: Path, source: Path, quantization: str, runner: str
) -> None:
    install_ready(tmp_path / "models", "tiny", source)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0, quantization=quantization)
    tokenizer = engine.tokenizer("tiny")
    word = tokenizer.encode(" blue")[0]  # a token the reply would not choose by itself
    asked = {"model": "tiny", "messages": MESSAGES, "max_tokens": 6, "logprobs": True}
    with serving(engine, ["tiny"]) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        plain = client.chat.completions.create(**asked, temperature=0)
        first = tokenizer.encode(plain.choices[0].logprobs.content[0].token)[0]
        lifted = client.chat.completions.create(**asked, temperature=0, logit_bias={str(word): 100})
        banned = [
            client.chat.completions.create(**asked, temperature=t, seed=1, logit_bias={str(first): -100})
            for t in (0, 0.8)
        ]
    assert engine.loaded is not None and engine.loaded.runner == runner
    assert word != first
    assert [tokenizer.encode(t.token)[0] for t in lifted.choices[0].logprobs.content] == [word] * 6
    for reply in banned:
        assert tokenizer.encode(reply.choices[0].logprobs.content[0].token)[0] != first
