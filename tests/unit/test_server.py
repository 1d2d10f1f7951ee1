"""`core serve` spoken to by the official openai client, over loopback, with a real tiny model."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import httpx2
import openai
import pytest
from pydantic import BaseModel, ConfigDict

from core.api.keys import lasting_api_key
from core.errors import ConfigError
from core.inference.engine import LocalEngine
from core.inference.events import TextDelta
from core.inference.params import GenerationParams
from core.inference.prompts import RawPrompt
from core.settings import PROJECT_ROOT
from tests.fixtures.serving import free_port
from tests.fixtures.serving import serving as served
from tests.fixtures.tiny_models import build_tiny_model, install_ready

MESSAGES = [{"role": "user", "content": "Hello 你好"}]


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("served") / "m", "llama", hidden_size=128, context=4096, endless=True
    )


@pytest.fixture
def engine(tmp_path: Path, long_model: Path) -> LocalEngine:
    install_ready(tmp_path / "models", "tiny", long_model)
    return LocalEngine(tmp_path / "models", idle_unload_s=0, max_waiting=1)


@contextmanager
def serving(engine: LocalEngine, api_key: str | None = None) -> Iterator[str]:
    with served(engine, ["tiny"], api_key) as url:
        yield url


def _client(url: str, key: str = "unused", local_address: str | None = None) -> openai.OpenAI:
    """An OpenAI client of the server; `local_address`: the loopback address it sends from."""
    transport = httpx2.HTTPTransport(local_address=local_address) if local_address else None
    http_client = httpx2.Client(transport=transport, timeout=30) if transport else None
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30, http_client=http_client)


def test_models_single_and_streamed_replies(engine: LocalEngine) -> None:
    with serving(engine) as url:
        client = _client(url)
        assert [m.id for m in client.models.list()] == ["tiny"]
        assert client.models.retrieve("tiny").id == "tiny"  # as clients check a model before using it
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("gpt-4o")
        assert httpx2.get(url.removesuffix("/v1") + "/health").json() == {"status": "ok"}  # for monitors

        reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10, temperature=0)
        assert reply.choices[0].message.role == "assistant"
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 10
        assert reply.usage.prompt_tokens > 3

        stream = client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=10, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == reply.choices[0].message.content  # greedy: the same reply either way
        assert chunks[-1].usage.completion_tokens == 10
        assert any(c.choices and c.choices[0].finish_reason == "length" for c in chunks)


def test_a_clients_next_turn_starts_from_its_earlier_replys_cache(
    engine: LocalEngine, caplog: pytest.LogCaptureFixture
) -> None:
    with serving(engine) as url, caplog.at_level(logging.INFO, logger="core.inference.batching"):
        client = _client(url)
        first = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0)
        turn = [*MESSAGES, {"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "And then?"}]  # fmt: skip
        second = client.chat.completions.create(model="tiny", messages=turn, max_tokens=8, temperature=0)
    ((prompt_tokens, shared),) = [
        r.args for r in caplog.records if r.getMessage().endswith("from a kept cache")
    ]
    assert first.usage.prompt_tokens <= shared < prompt_tokens == second.usage.prompt_tokens
    # The client is told, in OpenAI's field, how much of its prompt was not prefilled again.
    assert (
        first.usage.prompt_tokens_details.cached_tokens,
        second.usage.prompt_tokens_details.cached_tokens,
    ) == (0, shared)


def test_errors_are_openai_style(engine: LocalEngine) -> None:
    with serving(engine, api_key="secret-token") as url:
        with pytest.raises(openai.AuthenticationError):
            _client(url, "wrong").models.list()
        client = _client(url, "secret-token")
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.chat.completions.create(model="gpt-9", messages=MESSAGES)
        bad = httpx2.post(
            f"{url}/chat/completions", content=b"{not json", headers={"Authorization": "Bearer secret-token"}
        )
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "invalid_json"
        with pytest.raises(openai.BadRequestError, match="messages"):
            client.chat.completions.create(model="tiny", messages=[])


def test_beyond_the_queue_cap_gets_429_with_retry_after(engine: LocalEngine) -> None:
    engine.parallel = 1  # one reply runs, one waits: the third is refused
    with serving(engine) as url:
        client = _client(url)
        running = client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=3000, stream=True
        )
        next(iter(running))
        waiting = threading.Thread(
            target=lambda: client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4)
        )
        waiting.start()
        deadline = time.monotonic() + 10
        while engine.waiting < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        refused = httpx2.post(f"{url}/chat/completions", json={"model": "tiny", "messages": MESSAGES})
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "5"
        running.close()
        waiting.join(30)


def test_a_client_that_disconnects_stops_generation(engine: LocalEngine) -> None:
    with serving(engine) as url:
        stream = _client(url).chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=3000, temperature=0, stream=True
        )
        iterator = iter(stream)
        for _ in range(3):
            next(iterator)
        stream.close()
        deadline = time.monotonic() + 5
        while any(t.name.startswith("generate-") for t in threading.enumerate()):
            assert time.monotonic() < deadline, "generation went on after the client left"
            time.sleep(0.05)
        # the engine is free again
        reply = _client(url).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4)
        assert reply.choices[0].finish_reason in ("stop", "length")


def test_serve_off_loopback_generates_and_requires_a_token(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "LOCALLLM_API_KEY"}
    process = subprocess.Popen(
        [sys.executable, "-m", "core", "serve", "--host", "0.0.0.0", "--port", str(port)],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        first = process.stdout.readline()
        assert first.startswith("API key")
        key = first.strip().rsplit(" ", 1)[-1]
        # nothing downloaded in this data folder: the start says how to get a model
        assert process.stdout.readline().startswith(
            "No model is downloaded yet: `localllm download qwen2.5-0.5b`"
        )
        kept = Path(os.environ["LOCALLLM_DATA_DIR"]) / "api-key"  # the next start prints the same key
        assert kept.read_text().strip() == key and kept.stat().st_mode & 0o777 == 0o600
        url = f"http://127.0.0.1:{port}/v1/models"  # requests only ever go to loopback
        deadline = time.monotonic() + 30
        while True:
            try:
                unauthorized = httpx2.get(url)
                break
            except httpx2.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert unauthorized.status_code == 401
        authorized = httpx2.get(url, headers={"Authorization": f"Bearer {key}"})
        assert authorized.status_code == 200
        assert authorized.json()["object"] == "list"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


def test_sampling_settings_and_a_seed_reach_the_engine(engine: LocalEngine) -> None:
    with serving(engine) as url:
        client = _client(url)
        settings = {"temperature": 1.3, "top_p": 0.95, "presence_penalty": 0.5, "frequency_penalty": 0.3,
                    "seed": 11, "extra_body": {"top_k": 40, "min_p": 0.02}}  # fmt: skip

        def reply(**changes: object) -> str:
            answer = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24,
                                                    **(settings | changes))  # fmt: skip
            return answer.choices[0].message.content

        first = reply()
        # The same seed and settings, the same reply: asked from another address, so that it is computed
        # as the first was, not from this client's kept cache (the prompt's last token alone there:
        # bf16 rounds it differently, as llama.cpp's cache_prompt does; seeds are best effort, as
        # OpenAI's).
        again = _client(url, local_address="127.0.0.2").chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=24, **settings
        )
        assert again.choices[0].message.content == first
        assert reply(seed=12) != first
        assert reply(frequency_penalty=-2.0) != first  # a token the reply repeats is chosen more


def test_settings_a_request_leaves_out_are_the_models_own(engine: LocalEngine) -> None:
    # The tiny model's generation_config says do_sample false: greedy, the same reply every time. (The
    # product's own default, 0.7 without a seed, gave two different replies.) Asked from two addresses
    # so that neither comes from the other's kept cache.
    with serving(engine) as url:
        replies = [
            _client(url, local_address=address)
            .chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24)
            .choices[0]
            .message.content
            for address in ("127.0.0.1", "127.0.0.3")
        ]
    assert replies[0] == replies[1]


def test_vllms_chat_template_switch_and_openais_reasoning_effort_turn_a_qwen3s_reasoning_off(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    # Qwen3's template opens and closes an empty reasoning block in the prompt when thinking is off: asked
    # as vLLM does (the template's switch), or as OpenAI and Ollama do (`reasoning_effort` "none"; in the
    # Responses API `reasoning.effort`), which Ollama's clients send and this server ignored.
    install_ready(tmp_path / "models", "tiny", tiny_models["qwen3"])
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    with serving(engine) as url:
        client = _client(url)
        prompt_tokens = [
            client.chat.completions.create(
                model="tiny", messages=MESSAGES, max_tokens=1, extra_body=extra
            ).usage.prompt_tokens
            for extra in (None, {"chat_template_kwargs": {"enable_thinking": True}},
                          {"reasoning_effort": "low"}, {"chat_template_kwargs": {"enable_thinking": False}},
                          {"reasoning_effort": "none"},
                          {"reasoning_effort": "none", "chat_template_kwargs": {"enable_thinking": True}})
        ]  # fmt: skip
        ids = engine.tokenizer("tiny").encode("<think>\n\n</think>\n\n")
        on, off = prompt_tokens[0], prompt_tokens[0] + len(ids)
        assert prompt_tokens == [on, on, on, off, off, on]  # the template's own switch, where given, rules
        responses = [
            client.responses.create(
                model="tiny", input="Hello", max_output_tokens=1, **given
            ).usage.input_tokens
            for given in ({}, {"reasoning": {"effort": "none"}})
        ]
        assert responses[1] == responses[0] + len(ids)
        not_a_boolean = {"chat_template_kwargs": {"enable_thinking": "no"}}
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="tiny", messages=MESSAGES, max_tokens=1, extra_body=not_a_boolean
            )


def test_a_prefilled_reply_goes_on_from_the_last_message_as_vllms_does(engine: LocalEngine) -> None:
    # A client that starts the reply itself ("Sure, here is the JSON: {") asks vLLM to go on with it:
    # continue_final_message, add_generation_prompt false. The template then leaves the reply open.
    prefilled = [*MESSAGES, {"role": "assistant", "content": "Sure, here"}]
    go_on = {"continue_final_message": True, "add_generation_prompt": False}
    with serving(engine) as url:
        client = _client(url)
        asked = [
            client.chat.completions.create(model="tiny", messages=prefilled, max_tokens=3, extra_body=extra)
            for extra in (None, go_on)
        ]
        tokens = engine.tokenizer("tiny")
        opened = len(tokens.chat_ids(prefilled[:1])) + len(tokens.encode("Sure, here"))
        # Not closed, and no new turn after it.
        assert asked[1].usage.prompt_tokens <= opened < asked[0].usage.prompt_tokens
        empty = [*MESSAGES, {"role": "assistant", "content": ""}]  # nothing prefilled: a reply as usual
        plain = client.chat.completions.create(model="tiny", messages=empty, max_tokens=3, extra_body=go_on)
        assert plain.usage.prompt_tokens == len(tokens.chat_ids(MESSAGES))
        for extra, param in (
            ({"continue_final_message": True}, "add_generation_prompt"),  # both: vLLM refuses it too
            ({"add_generation_prompt": False}, "add_generation_prompt"),
        ):
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(
                    model="tiny", messages=prefilled, max_tokens=3, extra_body=extra
                )
            assert refused.value.body["param"] == param
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3, extra_body=go_on)
        assert "must be the assistant's" in refused.value.body["message"]


def test_a_stop_sequence_ends_the_reply_before_it_streamed_or_not(engine: LocalEngine) -> None:
    with serving(engine) as url:
        client = _client(url)
        full = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=40, temperature=0)
        text = full.choices[0].message.content
        stop = next(ch for ch in text[1:] if text.count(ch) == 1)  # a character the reply says once
        before = text[: text.find(stop)]
        # Room for 1,000 tokens: a reader that sees the stop sequence late (a busy machine; the tiny model
        # writes a token in milliseconds) still stops generation far before that.
        cut = client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=1000, temperature=0, stop=["never there", stop]
        )
        streamed = client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=40, temperature=0, stop=stop, stream=True
        )
        chunks = list(streamed)
    assert before and cut.choices[0].message.content == before and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < 1000  # generation stopped there too, not at its limit
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == before
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_a_text_completion_continues_the_prompt_as_written(engine: LocalEngine) -> None:
    """/v1/completions (code completion clients; vLLM, llama.cpp and Ollama serve it): the prompt without
    the chat template, the tokens the engine gives that raw text, streamed or not, 16 tokens unless told,
    stop sequences honoured; what it cannot honour (suffix, best_of, more than 20 alternatives to each
    token's logprob) refused (echo and token ids: test_logprobs.py; several prompts: test_choices.py)."""
    prompt = "def add(a, b):\n    return"
    events = engine.stream("tiny", RawPrompt(prompt), GenerationParams(temperature=0, max_new_tokens=12))
    expected = "".join(event.text for event in events if isinstance(event, TextDelta))
    prompt_tokens = len(engine.tokenizer("tiny").encode(prompt, special=True))
    with serving(engine) as url:
        client = _client(url)
        whole = client.completions.create(model="tiny", prompt=prompt, temperature=0, max_tokens=12)
        streamed = client.completions.create(model="tiny", prompt=[prompt], temperature=0, max_tokens=12,
                                             stream=True, stream_options={"include_usage": True})  # fmt: skip
        chunks = list(streamed)
        unbounded = client.completions.create(model="tiny", prompt=prompt, temperature=0)
        stop = next(ch for ch in expected[1:] if expected.count(ch) == 1)  # a character it writes once
        cut = client.completions.create(model="tiny", prompt=prompt, temperature=0, max_tokens=12, stop=stop)
        for extra in ({"suffix": "\n"}, {"logprobs": 21}, {"best_of": 2}):
            with pytest.raises(openai.BadRequestError) as refused:
                client.completions.create(**({"model": "tiny", "prompt": prompt, "max_tokens": 3} | extra))
            assert refused.value.body["param"].split(".")[0] == next(iter(extra)), (extra, refused.value.body)
    assert (whole.object, whole.choices[0].text, whole.choices[0].finish_reason) == (
        "text_completion",
        expected,
        "length",
    )
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (prompt_tokens, 12)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12 and all(c.object == "text_completion" for c in chunks)
    assert unbounded.usage.completion_tokens == 16  # OpenAI's and vLLM's default for a completion
    assert cut.choices[0].text == expected[: expected.find(stop)] and cut.choices[0].finish_reason == "stop"


def test_the_responses_api_answers_whole_and_streamed(engine: LocalEngine) -> None:
    """OpenAI's SDK starts with `client.responses.create` (its quickstart's first call was a 404 here):
    stateless and text only, the same reply as the chat completion of the same messages; its stream's
    events in the order the SDK's own helper checks. Each asked from another address, so that none
    starts from another's kept cache (bf16 rounds a cached prompt differently)."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello 你好"}]
    settings = {"model": "tiny", "temperature": 0, "instructions": "Be brief.", "max_output_tokens": 12}
    with serving(engine) as url:
        chat = _client(url, local_address="127.0.0.2").chat.completions.create(
            model="tiny", messages=messages, temperature=0, max_tokens=12
        )
        whole = _client(url, local_address="127.0.0.3").responses.create(input="Hello 你好", **settings)
        typed = [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello 你好"}]}
        ]
        events = list(
            _client(url, local_address="127.0.0.4").responses.create(input=typed, stream=True, **settings)
        )
        with _client(url, local_address="127.0.0.5").responses.stream(
            input="Hello 你好", **settings
        ) as stream:
            checked = [event.type for event in stream]  # the helper raises on events out of order
        client = _client(url)
        image = [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]
        refusals = (
            ({"tools": [{"type": "web_search"}]}, "tools[0].type"),  # functions only: web search is OpenAI's
            ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
            ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
            ({"input": image}, "input[0].content"),
        )
        for extra, param in refusals:
            with pytest.raises(openai.BadRequestError) as refused:
                client.responses.create(**({"model": "tiny", "input": "Hi", "max_output_tokens": 3} | extra))
            assert refused.value.body["param"] == param, (extra, refused.value.body)
    expected = chat.choices[0].message.content
    assert (whole.output_text, whole.status, whole.incomplete_details.reason) == (
        expected,
        "incomplete",
        "max_output_tokens",
    )
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (chat.usage.prompt_tokens, 12)
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete"]  # fmt: skip
    assert "".join(event.delta for event in events if event.type == "response.output_text.delta") == expected
    assert events[-1].response.output_text == expected and events[-2].item.content[0].text == expected
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert whole.id.startswith("resp_") and whole.output[0].id.startswith("msg_")
    # The same events, in the same order; how many deltas a text arrives in is a matter of timing.
    assert [kind for kind, _ in itertools.groupby(checked)] == [kind for kind, _ in itertools.groupby(kinds)]


class Verdict(BaseModel):
    """What a client asks its reply to be, as OpenAI's SDK takes it (`chat.completions.parse`)."""

    model_config = ConfigDict(extra="forbid")
    answer: bool
    score: Literal[1, 2, 3]


def test_a_reply_asked_in_json_is_json_that_fits_its_schema(engine: LocalEngine) -> None:
    """`response_format` (JSON mode, a JSON schema; a response's `text.format`) was refused: a client that
    parses its reply (OpenAI's `parse`, LangChain's structured output) could not use this server. The
    reply is now held to it token by token: even this random model's is the JSON asked for."""
    schema = {"name": "verdict", "schema": Verdict.model_json_schema(), "strict": True}
    with serving(engine) as url:
        client = _client(url)
        parsed = client.chat.completions.parse(model="tiny", messages=MESSAGES, response_format=Verdict)
        streamed = client.chat.completions.create(
            model="tiny", messages=MESSAGES, temperature=0.9, stream=True,
            response_format={"type": "json_schema", "json_schema": schema},
        )  # fmt: skip
        text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
        response = client.responses.parse(model="tiny", input="Hello", text_format=Verdict)  # text.format
        mode = client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=400, response_format={"type": "json_object"}
        )
    assert isinstance(parsed.choices[0].message.parsed, Verdict)
    assert parsed.choices[0].finish_reason == "stop"  # the value whole, the reply ended there
    assert Verdict.model_validate_json(text) and isinstance(response.output_parsed, Verdict)
    reply = mode.choices[0].message.content  # JSON mode: an object, whole unless cut at its length
    assert reply.startswith("{")
    assert mode.choices[0].finish_reason == "length" or isinstance(json.loads(reply), dict)


def test_vllms_guided_choice_and_regex_hold_a_reply_to_them(engine: LocalEngine) -> None:
    """vLLM's structured outputs as its clients send them (`extra_body`): one of a few texts (a small
    model as a classifier), or text a regular expression matches; asking two formats is a 400."""
    with serving(engine) as url:
        client = _client(url)

        def reply(**extra: object) -> openai.types.chat.ChatCompletion:
            return client.chat.completions.create(model="tiny", messages=MESSAGES, extra_body=extra)

        choices = ["positive", "negative", "São Paulo (x.y)"]
        chosen = [reply(guided_choice=choices, seed=seed).choices[0] for seed in range(3)]
        dated = reply(guided_regex=r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]").choices[0]
        with pytest.raises(openai.BadRequestError) as two:
            reply(guided_regex="a+", guided_choice=["a"])
        with pytest.raises(openai.BadRequestError) as unclosed:
            reply(guided_regex="[unclosed")
    assert all(choice.message.content in choices and choice.finish_reason == "stop" for choice in chosen)
    assert re.fullmatch(r"20\d\d-\d\d-\d\d", dated.message.content) and dated.finish_reason == "stop"
    assert two.value.body["param"] == "guided_choice" and "one format" in two.value.body["message"]
    assert unclosed.value.body["code"] == "invalid_format" and "unclosed" in unclosed.value.body["message"]


def test_what_this_server_cannot_honour_is_refused_not_ignored(engine: LocalEngine) -> None:
    """A schema no reply can be held to, top_logprobs without logprobs, a logit bias on a token the model
    lacks: a client that relies on them gets a 400 naming the parameter, not a reply without them; stop
    sequences past the limit likewise. What clients send by default (0, {}, a text format, logprobs
    false) is accepted."""
    nonsense = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}
    with serving(engine) as url:
        client = _client(url)
        for extra, param in (
            ({"response_format": nonsense}, "response_format"),
            ({"top_logprobs": 2}, "top_logprobs"),
            ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
            ({"logit_bias": {"400": -100}}, "logit_bias"),  # beyond the vocabulary
            ({"logit_bias": {"the": -100}}, "logit_bias"),
            ({"logit_bias": {"42": -101}}, "logit_bias"),
            ({"stop": [f"s{i}" for i in range(17)]}, "stop"),
            ({"stop": [""]}, "stop.list[constrained-str].0"),
        ):
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3, **extra)
            assert refused.value.body["param"].startswith(param.split(".")[0]), (extra, refused.value.body)
        assert engine.loaded is None  # each refused before the model was touched
        plain = client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            max_tokens=3,
            response_format={"type": "text"},
            logprobs=False,
            frequency_penalty=0,
            logit_bias={},
        )
        # An endpoint it does not have (images) is named with those it has (it said "Not Found").
        with pytest.raises(openai.NotFoundError) as missing:
            client.images.generate(model="tiny", prompt="Hello")
    assert plain.choices[0].finish_reason == "length"
    assert missing.value.body["message"] == (
        "This server does not answer POST /v1/images/generations; it answers GET /v1/models, POST "
        "/v1/chat/completions, POST /v1/completions, POST /v1/embeddings, POST /v1/messages, POST "
        "/v1/messages/count_tokens, POST /v1/responses."
    )


def test_the_generated_key_is_kept_across_restarts_until_a_new_one_is_asked_for(tmp_path: Path) -> None:
    """A new key at every start broke every client (Open WebUI on another machine, scripts) at the
    next restart with 401."""
    first = lasting_api_key(tmp_path / "data")
    assert lasting_api_key(tmp_path / "data") == first  # the next start
    renewed = lasting_api_key(tmp_path / "data", renew=True)  # --new-key
    assert renewed != first and lasting_api_key(tmp_path / "data") == renewed
    (tmp_path / "data" / "api-key").write_text("not a key\n")  # damaged by hand: a new one, never "not a key"
    assert lasting_api_key(tmp_path / "data") not in (renewed, "not a key")
    (tmp_path / "data" / "api-key").chmod(0)
    if os.geteuid() != 0:  # root reads it anyway
        with pytest.raises(ConfigError, match="cannot be used"):
            lasting_api_key(tmp_path / "data")
