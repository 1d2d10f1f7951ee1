"""The log-probabilities of a reply's tokens (OpenAI's `logprobs`): the model's own, read from its raw
logits whatever the sampling, through both runners (the engine's decoder, int4; transformers' generate,
16-bit), checked against the same weights in float32 through transformers; and through `core serve` as
the official openai client reads them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch

from core.inference.engine import LocalEngine
from core.inference.events import Event, Finished, Logprobs, TextDelta
from core.inference.params import GenerationParams
from core.inference.prompts import RawPrompt, prompt_ids
from tests.fixtures.serving import serving
from tests.fixtures.tiny_models import build_tiny_model, install_ready

PROMPT = RawPrompt("Hello 你好")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("logprobs") / "m", "llama", hidden_size=128, context=4096,
                            endless=True)  # fmt: skip


@pytest.mark.parametrize(("quantization", "runner"), [("int4", "decoder"), ("none", "generate")])
def test_each_tokens_logprob_is_the_models_whatever_the_sampling(
    tmp_path: Path, source: Path, quantization: str, runner: str
) -> None:
    from transformers import AutoModelForCausalLM

    install_ready(tmp_path / "models", "tiny", source)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0, quantization=quantization)
    # Sampled, tempered and penalised: the tokens are not always the likeliest, their logprobs are raw.
    params = GenerationParams(temperature=1.3, repetition_penalty=1.5, top_k=0, max_new_tokens=10, seed=4)
    events = list(engine.stream("tiny", PROMPT, params, logprobs=3))
    assert engine.loaded is not None and engine.loaded.runner == runner
    tokens = [token for event in events if isinstance(event, Logprobs) for token in event.tokens]
    text = "".join(event.text for event in events if isinstance(event, TextDelta))
    assert isinstance(events[-1], Finished) and len(tokens) == events[-1].stats.completion_tokens == 10
    assert b"".join(token.raw for token in tokens).decode("utf-8", "replace") == text
    ids = prompt_ids(engine.tokenizer("tiny"), PROMPT)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids + [token.id for token in tokens]])).logits[0, len(ids) - 1 : -1]
    expected = torch.log_softmax(logits, -1)
    for place, token in enumerate(tokens):
        assert token.logprob == pytest.approx(float(expected[place, token.id]), abs=0.03)
        # The likeliest three, as likely as the reference has them (int4 may swap two near-ties).
        assert [other.logprob for other in token.top] == pytest.approx(
            [float(expected[place, other.id]) for other in token.top], abs=0.03
        )
        assert [other.logprob for other in token.top] == pytest.approx(
            expected[place].topk(3).values, abs=0.03
        )
    assert any(token.id != token.top[0].id for token in tokens)  # sampled: not only the likeliest


def test_logprobs_through_the_api_as_the_openai_client_reads_them(tmp_path: Path, source: Path) -> None:
    install_ready(tmp_path / "models", "tiny", source)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    asked = {"model": "tiny", "max_tokens": 8, "temperature": 0, "extra_body": {"repetition_penalty": 1.0}}
    messages = [{"role": "user", "content": "Hello 你好"}]
    with serving(engine, ["tiny"]) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        whole = client.chat.completions.create(messages=messages, logprobs=True, top_logprobs=2, **asked)
        chunks = list(client.chat.completions.create(messages=messages, logprobs=True, top_logprobs=2,
                                                     stream=True, **asked))  # fmt: skip
        plain = client.chat.completions.create(messages=messages, **asked)
        text = client.completions.create(prompt=PROMPT.text, logprobs=2, **asked)
        with pytest.raises(openai.BadRequestError, match="top_logprobs goes with logprobs true"):
            client.chat.completions.create(messages=messages, top_logprobs=2, **asked)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens == 8 and plain.choices[0].logprobs is None
    joined = bytes(b for token in content for b in token.bytes)
    assert joined.decode("utf-8", "replace") == whole.choices[0].message.content
    for token in content:  # greedy, no penalty: the token chosen is the likeliest (or tied with it)
        assert token.logprob == token.top_logprobs[0].logprob
        assert len(token.top_logprobs) == 2 and token.top_logprobs[1].logprob <= token.logprob < 0
    streamed = [token for chunk in chunks if chunk.choices and chunk.choices[0].logprobs
                for token in chunk.choices[0].logprobs.content]  # fmt: skip
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
    # A text completion's legacy shape: the same tokens as the engine gives for the same request.
    greedy = GenerationParams(temperature=0, repetition_penalty=1.0, max_new_tokens=8)
    events = engine.stream("tiny", PROMPT, greedy, logprobs=2)
    direct = [token for event in events if isinstance(event, Logprobs) for token in event.tokens]
    legacy = text.choices[0].logprobs
    assert legacy.tokens == [token.token for token in direct] and len(direct) == 8
    assert legacy.token_logprobs == pytest.approx([token.logprob for token in direct])
    assert [list(top) for top in legacy.top_logprobs] == [[o.token for o in t.top] for t in direct]
    assert legacy.text_offset[0] == 0 and legacy.text_offset == sorted(legacy.text_offset)


def test_a_response_gives_its_texts_logprobs_where_include_asks(tmp_path: Path, source: Path) -> None:
    """The Responses API's way: `include: ["message.output_text.logprobs"]` and `top_logprobs`; the
    same tokens as a chat completion of the same input, in each delta, the text's done event and part."""
    install_ready(tmp_path / "models", "tiny", source)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    asked = {"model": "tiny", "temperature": 0, "extra_body": {"repetition_penalty": 1.0}}
    with serving(engine, ["tiny"]) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        said = [{"role": "user", "content": "Hello 你好"}]
        chat = client.chat.completions.create(
            messages=said, max_tokens=6, logprobs=True, top_logprobs=2, **asked
        )
        options = {"input": "Hello 你好", "max_output_tokens": 6, "top_logprobs": 2,
                   "include": ["message.output_text.logprobs"], **asked}  # fmt: skip
        whole = client.responses.create(**options)
        with client.responses.stream(**options) as stream:
            events = list(stream)
        plain = client.responses.create(input="Hello 你好", max_output_tokens=6, **asked)
    expected = [
        (token.token, token.logprob, len(token.top_logprobs)) for token in chat.choices[0].logprobs.content
    ]
    given = whole.output[0].content[0].logprobs
    assert [(token.token, token.logprob, len(token.top_logprobs)) for token in given] == expected
    deltas = [
        token for event in events if event.type == "response.output_text.delta" for token in event.logprobs
    ]
    assert [(token.token, token.logprob) for token in deltas] == [entry[:2] for entry in expected]
    done = next(event for event in events if event.type == "response.output_text.done")
    assert [token.token for token in done.logprobs] == [entry[0] for entry in expected]
    assert plain.output[0].content[0].logprobs == []  # not asked: none


def test_no_logprobs_come_for_tokens_past_a_stop_sequence() -> None:
    import threading

    from core.api.stops import until_stop_sequence
    from core.inference.events import ReplyStats, TokenLogprob

    def chance(text: str) -> Logprobs:
        return Logprobs((TokenLogprob(0, text, text.encode(), -1.0),))

    def reply() -> Iterator[Event]:  # as the engine streams it (a generator: it is closed at the end)
        yield from (
            chance("It"),
            TextDelta("It"),
            chance(" ends"),
            TextDelta(" ends\n\nUser:"),
            chance(" more"),
        )
        yield from (TextDelta(" more"), Finished(ReplyStats(3, 3, None, None, "length", "tiny")))

    stop = threading.Event()
    kept = list(until_stop_sequence(reply(), ("\n\nUser:",), stop))
    assert [event.tokens[0].token for event in kept if isinstance(event, Logprobs)] == ["It", " ends"]
    assert (
        "".join(event.text for event in kept if isinstance(event, TextDelta)) == "It ends" and stop.is_set()
    )
