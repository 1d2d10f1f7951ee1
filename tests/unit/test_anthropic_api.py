"""`core serve` spoken to by Anthropic's own Python SDK (`anthropic`), over loopback, with real tiny
models: the programs written for Anthropic's Messages API use the local model as they would Claude.
Each reply is the one OpenAI's chat completion gives the same conversation (one engine, one prompt)."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest

from core.inference.engine import LocalEngine
from tests.fixtures.serving import serving
from tests.fixtures.tiny_models import QWEN25_TEMPLATE, build_tiny_model, install_ready
from tests.unit.test_thinking_api import R1_TEMPLATE

ASKED = [{"role": "user", "content": "What is the weather in Paris?"}]
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("anthropic")
    tools = build_tiny_model(root / "qwen", endless=True, context=4096, chat_template=QWEN25_TEMPLATE)
    install_ready(root / "models", "tiny", tools)
    thinking = build_tiny_model(root / "r1", "llama", endless=True, chat_template=R1_TEMPLATE)
    install_ready(root / "models", "r1", thinking)
    return root / "models"


@pytest.fixture
def engine(models: Path) -> LocalEngine:
    return LocalEngine(models, idle_unload_s=0)


def clients(url: str, key: str = "unused") -> tuple[anthropic.Anthropic, openai.OpenAI]:
    root = url.removesuffix("/v1")
    return (anthropic.Anthropic(base_url=root, api_key=key, max_retries=0),
            openai.OpenAI(base_url=url, api_key=key, max_retries=0))  # fmt: skip


def test_a_message_whole_streamed_and_cut_at_a_stop_sequence(engine: LocalEngine) -> None:
    same = {"model": "tiny", "max_tokens": 8}
    greedy = {"extra_body": {"temperature": 0}}  # as older clients send it (the SDK has no parameter now)
    with serving(engine, ["tiny", "r1"]) as url:
        claude, gpt = clients(url)
        whole = claude.messages.create(**same, **greedy, system="You are brief.", messages=ASKED)
        system = [{"role": "system", "content": "You are brief."}]
        chat = gpt.chat.completions.create(**same, temperature=0, messages=[*system, *ASKED])
        with claude.messages.stream(**same, **greedy, system="You are brief.", messages=ASKED) as stream:
            streamed_text = "".join(stream.text_stream)
            streamed = stream.get_final_message()
        text = whole.content[0].text
        stop = text[len(text) // 2 :][:2]  # the reply ends before its first occurrence
        cut = claude.messages.create(
            **same, **greedy, system="You are brief.", messages=ASKED, stop_sequences=[stop]
        )
        counted = claude.messages.count_tokens(model="tiny", system="You are brief.", messages=ASKED)
        listed = [model.id for model in claude.models.list()]
    assert (whole.type, whole.role, whole.model, whole.id[:4]) == ("message", "assistant", "tiny", "msg_")
    assert [block.type for block in whole.content] == ["text"]
    assert text == chat.choices[0].message.content
    assert (whole.stop_reason, whole.stop_sequence) == ("max_tokens", None)
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (chat.usage.prompt_tokens, 8)
    assert counted.input_tokens == chat.usage.prompt_tokens
    assert streamed_text == text and streamed.content[0].text == text
    assert (streamed.stop_reason, streamed.usage.output_tokens) == ("max_tokens", 8)
    assert (
        streamed.usage.input_tokens + (streamed.usage.cache_read_input_tokens or 0)
        == chat.usage.prompt_tokens
    )
    assert cut.content[0].text == text[: text.find(stop)]
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", stop)
    assert listed == ["tiny", "r1"]


def test_a_tool_is_called_with_its_input_and_its_result_read(engine: LocalEngine) -> None:
    """A tool as Anthropic lists it (an input_schema); tool_choice naming it: a tool_use block whose input
    fits the schema, whole or streamed; the tool's result sent back in a tool_result block is read. And a
    reply held to a JSON schema (output_config.format, Anthropic's structured outputs)."""
    tools = [{"name": "get_weather", "description": "The weather in a city", "input_schema": CITY}]
    asked = {"model": "tiny", "max_tokens": 200, "extra_body": {"temperature": 0}, "tools": tools,
             "tool_choice": {"type": "tool", "name": "get_weather"}}  # fmt: skip
    with serving(engine, ["tiny"]) as url:
        claude, _ = clients(url)
        called = claude.messages.create(**asked, messages=ASKED)
        with claude.messages.stream(**asked, messages=ASKED) as stream:
            pieces = [e.partial_json for e in stream if e.type == "input_json"]  # as the model writes them
            streamed = stream.get_final_message()
        schema = {"format": {"type": "json_schema", "schema": CITY}}
        held = claude.messages.create(model="tiny", max_tokens=200, messages=ASKED, output_config=schema)
        [use] = [block for block in called.content if block.type == "tool_use"]
        result = {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 °C"}
        answered = claude.messages.create(model="tiny", max_tokens=4, tools=tools, messages=[
            *ASKED, {"role": "assistant", "content": [block.model_dump() for block in called.content]},
            {"role": "user", "content": [result]},
        ])  # fmt: skip
    assert called.stop_reason == "tool_use" and use.name == "get_weather"
    assert set(use.input) == {"city"} and isinstance(use.input["city"], str)
    assert use.id.startswith("toolu_")
    [streamed_use] = [block for block in streamed.content if block.type == "tool_use"]
    assert (streamed.stop_reason, streamed_use.name, streamed_use.input) == ("tool_use", use.name, use.input)
    # As the model writes it (in pieces: test_tool_calls.py's every cut; a busy reader may take the tiny
    # model's whole call at once), joining to the block's input.
    assert pieces and json.loads("".join(pieces)) == use.input
    assert answered.stop_reason in ("max_tokens", "end_turn") and answered.usage.input_tokens > 0
    assert set(json.loads(held.content[0].text)) == {"city"}  # structured output: held to the schema


def test_a_thinking_models_reasoning_comes_as_a_thinking_block(engine: LocalEngine) -> None:
    """The tiny model never closes the reasoning its template opened: all it writes is a thinking block,
    whole or streamed (thinking_delta events); with thinking disabled it is the text, as written."""
    same = {"model": "r1", "max_tokens": 8, "extra_body": {"temperature": 0}, "messages": ASKED}
    with serving(engine, ["r1"]) as url:
        claude, gpt = clients(url)
        whole = claude.messages.create(**same)
        with claude.messages.stream(**same) as stream:
            kinds = [event.type for event in stream]
            streamed = stream.get_final_message()
        plain = claude.messages.create(**same, thinking={"type": "disabled"})
        chat = gpt.chat.completions.create(model="r1", max_tokens=8, temperature=0, messages=ASKED)
    reasoning = chat.choices[0].message.reasoning_content
    assert [block.type for block in whole.content] == ["thinking"] and whole.content[0].thinking == reasoning
    assert [block.type for block in streamed.content] == ["thinking"] and streamed.content[
        0
    ].thinking == reasoning
    assert "thinking" in kinds and kinds[-1] == "message_stop"
    assert [block.type for block in plain.content] == ["text"] and plain.content[0].text.strip() == reasoning


def test_refusals_come_as_anthropics_errors(engine: LocalEngine) -> None:
    with serving(engine, ["tiny"], api_key="right") as url:
        claude, _ = clients(url, key="right")
        refused = {}
        # The SDK itself asks for max_tokens: a program of another kind may leave it out.
        bare = httpx2.post(f"{url.removesuffix('/v1')}/v1/messages", headers={"x-api-key": "right"},
                           json={"model": "tiny", "messages": ASKED})  # fmt: skip
        refused["no max_tokens"] = (bare.status_code, *bare.json()["error"].values())
        nested = '{"type": "tool_result", "tool_use_id": "a", "content": [' * 5000  # blocks in blocks
        deep = (f'{{"model": "tiny", "max_tokens": 4, "messages": [{{"role": "user", "content": [{nested}'
                f'{{"type": "text", "text": "x"}}{"]}" * 5000}]}}]}}')  # fmt: skip
        too_deep = httpx2.post(f"{url.removesuffix('/v1')}/v1/messages", headers={"x-api-key": "right"},
                               content=deep)  # fmt: skip
        refused["too deep"] = (too_deep.status_code, *too_deep.json()["error"].values())
        image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGk="}}
        for name, asked in {
            "an image": {"max_tokens": 4, "messages": [{"role": "user", "content": [image]}]},
            "a server tool": {"max_tokens": 4, "messages": ASKED,
                              "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        }.items():  # fmt: skip
            with pytest.raises(anthropic.BadRequestError) as caught:
                claude.messages.create(model="tiny", **asked)
            refused[name] = (caught.value.body["error"]["type"], caught.value.body["error"]["message"])
        with pytest.raises(anthropic.NotFoundError) as unknown:
            claude.messages.create(model="claude-sonnet-4", max_tokens=4, messages=ASKED)
        with pytest.raises(anthropic.AuthenticationError) as wrong_key:
            clients(url, key="wrong")[0].messages.create(model="tiny", max_tokens=4, messages=ASKED)
    assert refused == {
        "no max_tokens": (400, "invalid_request_error", "Missing required parameter: 'max_tokens'."),
        "too deep": (400, "invalid_request_error", "The body nests its JSON too deep to be read."),
        "an image": ("invalid_request_error", "Messages may hold text, tool_use and tool_result blocks only; "
                     "messages[0].content[0] is 'image'."),
        "a server tool": ("invalid_request_error", "This server runs no tools of its own "
                          "('web_search_20250305'): send functions, each with a name and an input_schema."),
    }  # fmt: skip
    assert unknown.value.body["error"] == {
        "type": "not_found_error",
        "message": "The model 'claude-sonnet-4' does not exist or is not downloaded.",
    }
    assert wrong_key.value.body["error"]["type"] == "authentication_error"
    assert engine.loaded is None  # each refused before the model was touched
