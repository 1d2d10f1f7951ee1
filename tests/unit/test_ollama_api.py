"""`core serve` spoken to by Ollama's own Python client (`ollama`), over loopback, with a real tiny model
(Qwen2.5's template, tools and all): the apps that speak only Ollama's API use the LAN's model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx2
import ollama
import openai
import pytest

from core.inference.engine import LocalEngine
from tests.fixtures.serving import serving
from tests.fixtures.tiny_models import QWEN25_TEMPLATE, build_tiny_model, install_ready

ASKED = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"temperature": 0, "repeat_penalty": 1.0}
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": CITY}}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("ollama") / "m", endless=True, context=4096, chat_template=QWEN25_TEMPLATE
    )


@pytest.fixture
def engine(tmp_path: Path, source: Path) -> LocalEngine:
    install_ready(tmp_path / "models", "tiny", source)
    return LocalEngine(tmp_path / "models", idle_unload_s=0)


def test_ollamas_client_lists_shows_chats_and_generates(engine: LocalEngine) -> None:
    with serving(engine, ["tiny"]) as url:
        client = ollama.Client(host=url.removesuffix("/v1"))
        listed = client.list().models
        shown = client.show("tiny:latest")
        whole = client.chat(model="tiny", messages=ASKED, options={"num_predict": 8, **GREEDY})
        parts = list(client.chat(model="tiny:latest", messages=ASKED, options={"num_predict": 8, **GREEDY},
                                 stream=True))  # fmt: skip
        generated = client.generate(
            model="tiny", prompt=ASKED[0]["content"], options={"num_predict": 8, **GREEDY}
        )
        raw = client.generate(model="tiny", prompt="Hello", raw=True, options={"num_predict": 5, **GREEDY})
        same = {"model": "tiny", "temperature": 0, "extra_body": {"repetition_penalty": 1.0}}
        openai_client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        chat = openai_client.chat.completions.create(messages=ASKED, max_tokens=8, **same)
        text = openai_client.completions.create(prompt="Hello", max_tokens=5, **same)
    assert [(m.model, m.details.family) for m in listed] == [("tiny:latest", "qwen2")] and listed[0].size > 0
    assert shown.capabilities == ["completion", "tools"] and shown.template == QWEN25_TEMPLATE
    assert shown.modelinfo["qwen2.context_length"] == 4096
    # The same reply whichever API asks it, and Ollama's counts that clients show speeds from.
    assert whole.message.content == chat.choices[0].message.content == generated.response
    assert (whole.done, whole.done_reason, whole.eval_count) == (True, "length", 8)
    assert whole.prompt_eval_count == chat.usage.prompt_tokens and whole.eval_duration > 0
    assert "".join(part.message.content for part in parts) == whole.message.content
    assert [part.done for part in parts] == [False] * (len(parts) - 1) + [True]
    assert raw.response == text.choices[0].text  # raw: the text continued as written, no template


def test_a_chat_held_to_a_format_and_a_conversation_with_tools(engine: LocalEngine) -> None:
    schema = {"type": "object", "properties": {"city": {"enum": ["Paris", "杭州"]}}, "required": ["city"],
              "additionalProperties": False}  # fmt: skip
    called = {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}  # fmt: skip
    conversation = [*ASKED, called, {"role": "tool", "content": "sunny, 21°C"}]
    with serving(engine, ["tiny"]) as url:
        client = ollama.Client(host=url.removesuffix("/v1"))
        held = client.chat(model="tiny", messages=ASKED, format=schema, options={"num_predict": 40})
        mode = client.chat(
            model="tiny", messages=ASKED, format="json", options={"num_predict": 40, "seed": 1}
        )
        answered = client.chat(
            model="tiny", messages=conversation, tools=[WEATHER], options={"num_predict": 2}
        )
        call = {"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
        messages = [*ASKED, {"role": "assistant", "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21°C"}]  # fmt: skip
        same = openai.OpenAI(base_url=url, api_key="unused", max_retries=0).chat.completions.create(
            model="tiny", tools=[WEATHER], max_tokens=2, messages=messages
        )
    assert json.loads(held.message.content) in ({"city": "Paris"}, {"city": "杭州"})
    assert mode.message.content.startswith("{")  # JSON mode (left alone the model writes blank lines)
    # The call and its result read as the same conversation through either API.
    assert answered.prompt_eval_count == same.usage.prompt_tokens


def test_logprobs_come_as_ollama_gives_them_the_same_as_openais(engine: LocalEngine) -> None:
    """Ollama's `logprobs` and `top_logprobs`: each token with its log-probability, bytes and likeliest
    rivals, whole or with each streamed line's own tokens; the same numbers as OpenAI's API gives."""
    asked = {"options": {"num_predict": 6, **GREEDY}, "logprobs": True, "top_logprobs": 2}
    with serving(engine, ["tiny"]) as url:
        client = ollama.Client(host=url.removesuffix("/v1"))
        whole = client.chat(model="tiny", messages=ASKED, **asked)
        parts = list(client.chat(model="tiny", messages=ASKED, stream=True, **asked))
        raw = client.generate(model="tiny", prompt="Hello", raw=True, **asked)
        plain = client.chat(model="tiny", messages=ASKED, options=asked["options"])
        with pytest.raises(ollama.ResponseError) as refused:
            client.chat(model="tiny", messages=ASKED, top_logprobs=2)
        same = {"model": "tiny", "temperature": 0, "max_tokens": 6, "extra_body": {"repetition_penalty": 1.0}}
        openai_client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        chat = openai_client.chat.completions.create(messages=ASKED, logprobs=True, top_logprobs=2, **same)
        text = openai_client.completions.create(prompt="Hello", logprobs=2, **same)
    # (A later request may start from an earlier one's kept cache: its numbers round apart in bf16.)
    expected = chat.choices[0].logprobs.content
    assert [(t.token, [o.token for o in t.top_logprobs]) for t in whole.logprobs] == [
        (t.token, [o.token for o in t.top_logprobs]) for t in expected
    ]
    assert [t.logprob for t in whole.logprobs] == pytest.approx([t.logprob for t in expected], abs=1e-3)
    assert len(expected) == 6 and plain.logprobs is None
    streamed = [t for part in parts for t in part.logprobs or ()]
    assert [t.token for t in streamed] == [t.token for t in expected]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in expected], abs=1e-3)
    assert [t.token for t in raw.logprobs] == text.choices[0].logprobs.tokens
    assert [t.logprob for t in raw.logprobs] == pytest.approx(
        text.choices[0].logprobs.token_logprobs, abs=1e-3
    )
    assert (refused.value.status_code, refused.value.error) == (400, "top_logprobs goes with logprobs true.")


def test_ollamas_errors_and_loading(engine: LocalEngine) -> None:
    with serving(engine, ["tiny"]) as url:
        client = ollama.Client(host=url.removesuffix("/v1"))
        for asked, status, said in (
            ({"model": "llama3"}, 404, "The model 'llama3' does not exist or is not downloaded."),
            ({"images": ["aGk="]}, 400, "Messages may hold text only; message 0 has images."),
            ({"options": {"temperature": "hot"}}, 400, "Invalid value for 'options.temperature'"),
        ):
            message = {**ASKED[0], **({"images": asked.pop("images")} if "images" in asked else {})}
            with pytest.raises(ollama.ResponseError) as refused:
                client.chat(**({"model": "tiny", "messages": [message]} | asked))
            assert (refused.value.status_code, said in refused.value.error) == (status, True), asked
        not_json = httpx2.post(f"{url.removesuffix('/v1')}/api/chat", content=b"{oops")
        loading = client.generate(model="tiny", prompt="")  # Ollama's way to load a model ahead
        loaded = engine.parts_of("tiny") is not None  # when it answers, as Ollama's
        chat_loading = client.chat(model="tiny", messages=[])
    assert not_json.status_code == 400 and not_json.json() == {"error": "The body is not a JSON object."}
    assert (
        (loading.done, loading.done_reason) == (chat_loading.done, chat_loading.done_reason) == (True, "load")
    )
    assert loaded
    assert engine.loaded is not None and engine.loaded.key == "tiny"


def test_ollamas_endpoints_need_the_key_as_openais_do(engine: LocalEngine) -> None:
    """A server on the LAN requires its bearer key on /api/* too (Ollama's clients send headers); only
    the version, as /health, answers without it."""
    with serving(engine, ["tiny"], api_key="secret-token") as url:
        base = url.removesuffix("/v1")
        anonymous = ollama.Client(host=base)
        keyed = ollama.Client(host=base, headers={"Authorization": "Bearer secret-token"})
        refused = []
        for call in (anonymous.list, anonymous.ps, lambda: anonymous.show("tiny"),
                     lambda: anonymous.chat(model="tiny", messages=ASKED)):  # fmt: skip
            with pytest.raises(ollama.ResponseError) as denied:
                call()
            refused.append((denied.value.status_code, denied.value.error))
        version = httpx2.get(f"{base}/api/version")
        listed = keyed.list().models
    assert refused == [(401, "Invalid or missing API key.")] * 4
    assert version.status_code == 200 and [model.model for model in listed] == ["tiny:latest"]


def test_ps_lists_every_loaded_model_and_an_unload_asked_for_one_leaves_the_others(
    engine: LocalEngine, tiny_models: dict[str, Path]
) -> None:
    """A chat model and a second one (an editor's completion model, say) stay loaded side by side."""
    install_ready(engine.models_dir, "other", tiny_models["llama"])
    short = {"options": GREEDY | {"num_predict": 2}}
    with serving(engine, ["tiny", "other"]) as url:
        client = ollama.Client(host=url.removesuffix("/v1"))
        client.chat(model="tiny", messages=ASKED, keep_alive="10m", **short)
        client.generate(model="other", prompt="", keep_alive=-1)  # loaded ahead, beside the first
        both, loaded = client.ps().models, engine.loaded_models
        unloaded = client.generate(model="other", prompt="", keep_alive=0)
        left = client.ps().models
    assert [(m.model, m.expires_at.year > 2300) for m in both] == [
        ("other:latest", True),
        ("tiny:latest", False),
    ]
    memory = {
        model.key: model.memory_bytes for model in loaded
    }  # what each takes (`ollama ps`), not its files
    assert [(m.size, m.size_vram) for m in both] == [(memory["other"], 0), (memory["tiny"], 0)]
    assert unloaded.done_reason == "unload" and [m.model for m in left] == ["tiny:latest"]


def test_keep_alive_unloads_after_the_reply_or_keeps_the_model_as_long_as_asked(engine: LocalEngine) -> None:
    """Ollama's `keep_alive`: 0 unloads the model once the reply is done, and with an empty prompt at once
    (Ollama's way to unload); a duration keeps it that long after the reply (/api/ps says until when);
    a negative one keeps it for good; after an unload, the server's own idle setting holds again."""
    short = {"options": GREEDY | {"num_predict": 4}}
    with serving(engine, ["tiny"]) as url:
        client = ollama.Client(host=url.removesuffix("/v1"))
        replied = client.generate(model="tiny", prompt="Hi", keep_alive=0, **short)
        deadline = time.monotonic() + 30
        while engine.loaded is not None:
            assert time.monotonic() < deadline, "keep_alive 0 did not unload the model after its reply"
            time.sleep(0.02)
        client.chat(model="tiny", messages=ASKED, keep_alive="10m", **short)
        ten_minutes, listed = engine.idle_seconds_left("tiny"), client.ps()
        client.chat(model="tiny", messages=ASKED, keep_alive=-1, **short)
        forever, listed_forever = engine.idle_seconds_left("tiny"), client.ps()
        unloaded = client.generate(model="tiny", prompt="", keep_alive=0)
        was_loaded = engine.loaded
        client.chat(model="tiny", messages=ASKED, **short)  # loaded again, no keep_alive asked
        setting = engine.idle_seconds_left("tiny")
        with pytest.raises(ollama.ResponseError) as refused:
            client.chat(model="tiny", messages=ASKED, keep_alive="5 minutes")
    assert replied.done and replied.response
    assert ten_minutes is not None and 590 < ten_minutes <= 600
    [model] = listed.models
    assert 590 < (model.expires_at - model.expires_at.now(model.expires_at.tzinfo)).total_seconds() <= 600
    assert forever is None and listed_forever.models[0].expires_at.year > 2300
    assert unloaded.done_reason == "unload" and was_loaded is None
    assert setting is None  # this engine's own setting: never unloaded when idle
    assert refused.value.status_code == 400
    assert refused.value.error.startswith("keep_alive '5 minutes' is not a duration: send seconds (300)")
