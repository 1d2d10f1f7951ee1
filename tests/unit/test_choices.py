"""Several replies to one request: OpenAI's `n`, and a completion's list of prompts (as vLLM takes them,
and as lm-evaluation-harness sends them with a batch size). Through `core serve` with the official openai
client on loopback and a real tiny model on the engine's batched decoder (int4): each choice is the reply
its request gets alone, the choices run together in the engine's batch, and a client that goes away stops
them all."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from core.inference.engine import LocalEngine
from tests.fixtures.serving import serving
from tests.fixtures.tiny_models import build_tiny_model, install_ready

MESSAGES = [{"role": "user", "content": "Hello 你好"}]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("choices") / "m", "llama", hidden_size=128, context=4096,
                            endless=True)  # fmt: skip


@pytest.fixture
def engine(tmp_path: Path, source: Path) -> LocalEngine:
    install_ready(tmp_path / "models", "tiny", source)
    return LocalEngine(tmp_path / "models", idle_unload_s=0, max_waiting=1)


def client_of(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_n_replies_to_a_chat_each_read_the_conversation_and_are_sampled_apart(engine: LocalEngine) -> None:
    """Each of the n replies starts as the lone reply does (its first token, as likely: batched in bf16,
    later near-ties of this random model may round apart); sampled with a seed, each is sampled with its
    own (seed, seed + 1, ...): n different replies."""
    asked = {"model": "tiny", "messages": MESSAGES, "max_tokens": 12, "temperature": 0, "logprobs": True}
    with serving(engine, ["tiny"]) as url:
        client = client_of(url)
        alone = client.chat.completions.create(**asked)
        many = client.chat.completions.create(**asked, n=3)
        streamed = list(client.chat.completions.create(**asked, n=3, stream=True,
                                                       stream_options={"include_usage": True}))  # fmt: skip
        sampled = client.chat.completions.create(**(asked | {"temperature": 1.0}), seed=7, n=3)
    first = alone.choices[0].logprobs.content[0]
    assert [choice.index for choice in many.choices] == [0, 1, 2]
    for choice in many.choices:
        assert choice.finish_reason == "length" and len(choice.logprobs.content) == 12
        assert choice.logprobs.content[0].token == first.token
        assert choice.logprobs.content[0].logprob == pytest.approx(first.logprob, abs=0.05)
    # The prompt counted once, every reply's tokens.
    assert many.usage.prompt_tokens == alone.usage.prompt_tokens
    assert many.usage.completion_tokens == 3 * 12
    # Streamed: each chunk names its choice; one id; the usage of all after the last choice's end.
    tokens: dict[int, list[str]] = {0: [], 1: [], 2: []}
    ends = {}
    for chunk in streamed[:-1]:
        [choice] = chunk.choices
        tokens[choice.index] += [
            token.token for token in (choice.logprobs.content if choice.logprobs else [])
        ]
        if choice.finish_reason:
            ends[choice.index] = choice.finish_reason
    assert all(len(said) == 12 and said[0] == first.token for said in tokens.values())
    assert ends == {0: "length", 1: "length", 2: "length"}
    assert len({chunk.id for chunk in streamed}) == 1
    assert streamed[-1].choices == [] and streamed[-1].usage.completion_tokens == 36
    assert [choice.index for choice in sampled.choices] == [0, 1, 2]
    assert len({choice.message.content for choice in sampled.choices}) == 3


def test_a_completions_prompts_each_get_n_replies_in_order(engine: LocalEngine) -> None:
    prompts = ["def add(a, b):\n    return", "Once upon a time"]
    asked = {"model": "tiny", "max_tokens": 6, "temperature": 0, "logprobs": 0}
    with serving(engine, ["tiny"]) as url:
        client = client_of(url)
        alone = [client.completions.create(prompt=p, **asked).choices[0].logprobs for p in prompts]
        many = client.completions.create(prompt=prompts, n=2, **asked)
    firsts = [(said.tokens[0], said.token_logprobs[0]) for said in alone]
    assert firsts[0][0] != firsts[1][0]  # told apart by their first tokens
    # Choice i·n + j is prompt i's j-th.
    assert [choice.index for choice in many.choices] == [0, 1, 2, 3]
    for choice, (token, logprob) in zip(
        many.choices, [firsts[0], firsts[0], firsts[1], firsts[1]], strict=True
    ):
        assert len(choice.logprobs.tokens) == 6 and choice.logprobs.tokens[0] == token
        assert choice.logprobs.token_logprobs[0] == pytest.approx(logprob, abs=0.05)
    assert many.usage.completion_tokens == 4 * 6


def test_lm_evals_batch_of_scored_prompts_is_each_prompt_scored_alone(engine: LocalEngine) -> None:
    """lm-eval's loglikelihood requests with batch_size > 1: token-id prompts, echoed with their tokens'
    log-probabilities, no reply (max_tokens 0)."""
    tokenizer = engine.tokenizer("tiny")
    texts = ("Question: 你好 is Chinese for hello", "The sky is blue", "2 + 2 = 4")
    prompts = [tokenizer.encode(text, special=True) for text in texts]
    asked = {"model": "tiny", "echo": True, "max_tokens": 0, "logprobs": 1, "temperature": 0}
    with serving(engine, ["tiny"]) as url:
        client = client_of(url)
        together = client.completions.create(prompt=prompts, **asked)
        alone = [client.completions.create(prompt=ids, **asked).choices[0] for ids in prompts]
    assert [choice.index for choice in together.choices] == [0, 1, 2]
    for choice, lone, ids in zip(together.choices, alone, prompts, strict=True):
        assert choice.text == lone.text and len(choice.logprobs.token_logprobs) == len(ids)
        assert choice.logprobs.token_logprobs[0] is None  # nothing before the first token
        assert choice.logprobs.token_logprobs[1:] == pytest.approx(lone.logprobs.token_logprobs[1:], abs=1e-4)
    assert together.usage.prompt_tokens == sum(len(ids) for ids in prompts)


def test_the_choices_run_together_and_a_client_that_goes_away_stops_them_all(engine: LocalEngine) -> None:
    with serving(engine, ["tiny"]) as url:
        stream = client_of(url).chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=3000, n=3, stream=True
        )
        seen = set()
        for chunk in stream:
            seen |= {choice.index for choice in chunk.choices if choice.delta.content}
            if seen == {0, 1, 2}:
                break
        until(lambda: engine.running == 3, "the three replies did not run together")  # one batch
        stream.close()  # the client goes away
        until(lambda: engine.running == 0 and engine.waiting == 0, "the replies went on for nobody")


def test_choices_the_engine_refuses_are_refused_whole_before_a_reply_begins(
    tmp_path: Path, source: Path
) -> None:
    install_ready(tmp_path / "models", "tiny", source)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0, max_waiting=0)  # every request refused
    with serving(engine, ["tiny"]) as url:
        client = client_of(url)
        for stream in (False, True):
            with pytest.raises(openai.RateLimitError) as refused:
                client.chat.completions.create(model="tiny", messages=MESSAGES, n=2, stream=stream)
            assert refused.value.response.headers["retry-after"]
    assert engine.running == 0 and engine.waiting == 0


def test_a_short_prompt_that_ends_before_a_long_one_begins_does_not_hold_the_reply(
    engine: LocalEngine,
) -> None:
    """Two prompts read at once for their log-probabilities (lm-eval's batch): the short one is read and
    done before the long one says anything; the reply still comes, each prompt's as alone."""
    long, short = "Hello world, " * 250, "Hi"
    asked = {"model": "tiny", "echo": True, "max_tokens": 0, "logprobs": 1, "temperature": 0}
    with serving(engine, ["tiny"]) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30)
        client.completions.create(model="tiny", prompt="warm", max_tokens=1)  # loaded: both start at once
        both = client.completions.create(prompt=[long, short], **asked)
        alone = client.completions.create(prompt=short, **asked)
    assert [choice.index for choice in both.choices] == [0, 1]
    assert both.choices[1].logprobs.token_logprobs[1:] == pytest.approx(
        alone.choices[0].logprobs.token_logprobs[1:], abs=1e-4
    )
    assert len(both.choices[0].logprobs.tokens) > 500
