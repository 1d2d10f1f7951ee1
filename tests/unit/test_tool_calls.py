"""Tools a reply calls through `core serve` (OpenAI's chat completions `tools`), spoken to by the official
openai client over loopback: a real tiny model with Qwen2.5's own chat template. Its random weights
never write a call of their own accord, so a call the model chooses to make is read from text (every
cut of a streamed reply), and calls the client asks for (tool_choice "required" or a named function)
are made by the model, held to the tool's parameters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import openai
import pytest
from pydantic import BaseModel, Field

from core.api.calls import CallArguments, CallBegun, CallsMade, with_calls
from core.api.shapes import ResponseShape
from core.errors import MessageError
from core.inference.chat_tokenizer import ChatTokenizer
from core.inference.engine import LocalEngine
from core.inference.events import Event, Finished, ReplyStats, TextDelta
from core.inference.formats import checked_format
from core.inference.prompts import ToolUse, prompt_ids
from core.inference.tool_calls import HERMES, LLAMA_JSON, CallStyle, ToolCall
from tests.fixtures.serving import serving
from tests.fixtures.tiny_models import QWEN25_TEMPLATE, build_tiny_model, install_ready

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city over the next days",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "杭州"]}, "days": {"type": "integer", "minimum": 1,
                                                                        "maximum": 7}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}  # fmt: skip
CLOCK = {
    "type": "function",
    "function": {
        "name": "now",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
}
TOOLS = [WEATHER, CLOCK]
ASKED = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMES = frozenset({"get_weather", "now"})


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("tools") / "m", endless=True, context=4096, chat_template=QWEN25_TEMPLATE
    )


@pytest.fixture(scope="module")
def llama_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("llama") / "m", "llama3", endless=True, context=4096)


@pytest.fixture
def engine(tmp_path: Path, tool_model: Path) -> LocalEngine:
    install_ready(tmp_path / "models", "tiny", tool_model)
    return LocalEngine(tmp_path / "models", idle_unload_s=0)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)


def _weather(arguments: str) -> dict:
    """The arguments of a get_weather call, checked against its parameters."""
    given = json.loads(arguments)
    assert set(given) == {"city", "days"} and given["city"] in ("Paris", "杭州") and 1 <= given["days"] <= 7
    return given


def test_a_named_call_is_made_with_arguments_that_fit_its_parameters(engine: LocalEngine) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    with serving(engine, ["tiny"]) as url:
        client = _client(url)
        for temperature in (0.0, 1.0):
            reply = client.chat.completions.create(
                model="tiny", messages=ASKED, tools=TOOLS, tool_choice=named, temperature=temperature,
                max_tokens=100, seed=3,
            )  # fmt: skip
            message = reply.choices[0].message
            assert reply.choices[0].finish_reason == "tool_calls" and message.content is None
            [call] = message.tool_calls
            assert call.type == "function" and call.function.name == "get_weather"
            assert call.id.startswith("call_") and len(call.id) == 29
            _weather(call.function.arguments)
        streamed = list(client.chat.completions.create(
            model="tiny", messages=ASKED, tools=TOOLS, tool_choice=named, temperature=0, max_tokens=100,
            stream=True, stream_options={"include_usage": True},
        ))  # fmt: skip
        whole = client.chat.completions.create(model="tiny", messages=ASKED, tools=TOOLS, tool_choice=named,
                                               temperature=0, max_tokens=100)  # fmt: skip
    deltas = [call for chunk in streamed if chunk.choices for call in chunk.choices[0].delta.tool_calls or ()]
    # Named in its first chunk, its arguments after it as the model writes them, as OpenAI streams them
    # (in pieces: every cut below; a busy reader may take the tiny model's whole call at once).
    assert [(d.index, d.function.name, bool(d.id)) for d in deltas[:2]] == [(0, "get_weather", True),
                                                                           (0, None, False)]  # fmt: skip
    assert {d.index for d in deltas} == {0} and deltas[0].function.arguments == ""
    streamed_arguments = "".join(d.function.arguments for d in deltas)
    assert streamed_arguments == whole.choices[0].message.tool_calls[0].function.arguments  # greedy
    assert not "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "tool_calls"
    assert streamed[-1].usage.completion_tokens == whole.usage.completion_tokens > 5


def test_required_makes_a_call_of_one_of_the_tools_and_its_result_goes_back_in(engine: LocalEngine) -> None:
    with serving(engine, ["tiny"]) as url:
        client = _client(url)
        first = client.chat.completions.create(
            model="tiny", messages=ASKED, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
            temperature=1.0, max_tokens=100,
        )  # fmt: skip
        [call] = first.choices[0].message.tool_calls
        assert call.function.name in NAMES
        assert (
            json.loads(call.function.arguments) == {}
            if call.function.name == "now"
            else _weather(call.function.arguments)
        )
        # The client runs the tool and sends the conversation back with the call and its result.
        answered = [*ASKED, first.choices[0].message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21°C"}]  # fmt: skip
        second = client.chat.completions.create(model="tiny", messages=answered, tools=TOOLS, max_tokens=4)
    assert second.choices[0].finish_reason == "length" and second.choices[0].message.content
    tokenizer = engine.tokenizer("tiny")
    sent = [*ASKED, {"role": "assistant", "content": "", "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": call.function.name,
                                                          "arguments": json.loads(call.function.arguments)}}
    ]}, {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21°C"}]  # fmt: skip
    assert second.usage.prompt_tokens == len(prompt_ids(tokenizer, ToolUse(tuple(sent), tuple(TOOLS))))


@pytest.mark.parametrize(
    ("model", "written"),
    [("tool_model", "<tool_response>\n21°C\n</tool_response>"),
     ("llama_model", 'ipython<|end_header_id|>\n\n"21°C"')],
    ids=["qwen2.5", "llama3.2"],
)  # fmt: skip
def test_a_conversation_with_tools_reads_as_transformers_renders_it(
    model: str, written: str, request: pytest.FixtureRequest
) -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(request.getfixturevalue(model))
    ours = ChatTokenizer.from_transformers(reference)
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "杭州", "days": 2}}}
    conversation = (*ASKED, {"role": "assistant", "content": "", "tool_calls": [call]},
                    {"role": "tool", "content": '{"sky": "sunny"}'},
                    {"role": "tool", "content": "21°C"})  # fmt: skip
    expected = reference.apply_chat_template(list(conversation), tools=TOOLS, add_generation_prompt=True)
    if not isinstance(expected, list):  # transformers 5 returns a BatchEncoding
        expected = expected["input_ids"]
    assert prompt_ids(ours, ToolUse(conversation, tuple(TOOLS))) == expected
    text = ours.decode(expected, skip_special_tokens=False)
    assert '"name": "get_weather"' in text and written in text


def test_a_llama_model_makes_its_call_as_its_whole_reply(tmp_path: Path, llama_model: Path) -> None:
    """Llama 3's template: the call is the reply, its arguments `parameters`; read into OpenAI's call."""
    install_ready(tmp_path / "models", "tiny", llama_model)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    named = {"type": "function", "function": {"name": "get_weather"}}
    with serving(engine, ["tiny"]) as url:
        client = _client(url)
        reply = client.chat.completions.create(model="tiny", messages=ASKED, tools=TOOLS, tool_choice=named,
                                               temperature=1.0, max_tokens=100)  # fmt: skip
        [call] = reply.choices[0].message.tool_calls
        answered = [*ASKED, reply.choices[0].message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21°C"}]  # fmt: skip
        second = client.chat.completions.create(model="tiny", messages=answered, tools=TOOLS, max_tokens=4)
        free = client.chat.completions.create(model="tiny", messages=ASKED, tools=TOOLS, max_tokens=8)
    assert reply.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    _weather(call.function.arguments)
    assert second.choices[0].finish_reason == "length"  # the call and its result were read back in
    # Left to itself the random model writes no JSON: its text comes back as text.
    assert free.choices[0].finish_reason == "length" and free.choices[0].message.tool_calls is None


def _events(pieces: list[str], reason: str = "stop") -> Iterator[Event]:
    yield from (TextDelta(piece) for piece in pieces)
    yield Finished(ReplyStats(5, len(pieces), 0.1, 10.0, reason, "tiny"))


def _read(pieces: list[str], style: CallStyle = HERMES) -> tuple[str, tuple, str]:
    text, calls, reason = [], (), ""
    for event in with_calls(_events(pieces), style, NAMES):
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, CallsMade):
            calls = event.calls
        elif isinstance(event, Finished):
            reason = event.stats.finish_reason
    return "".join(text), calls, reason


def test_a_call_the_model_writes_is_read_however_the_stream_cuts_it() -> None:
    said = "Let me look that up.\n"
    block = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'
    reply = said + block + '\n<tool_call>\n{"name": "now", "arguments": "{}"}\n</tool_call>'
    calls = (ToolCall("get_weather", '{"city": "Paris", "days": 2}'), ToolCall("now", "{}"))
    for cut in range(1, len(reply)):
        assert _read([reply[:cut], reply[cut:]]) == (said.strip() + "\n", calls, "tool_calls")
    assert _read(list(reply)) == (said.strip() + "\n", calls, "tool_calls")  # a character a token
    # The block of a call cut at the token limit is the last one, left open: still read.
    assert _read([block.removesuffix("</tool_call>")])[1:] == (calls[:1], "tool_calls")


def _streamed(pieces: list[str], style: CallStyle = HERMES, reason: str = "stop") -> tuple:
    """A streamed reply as read: its text, the calls begun, their arguments as they came, how it ended."""
    text, begun, arguments, made, ended = [], [], {}, None, ""
    for event in with_calls(_events(pieces, reason), style, NAMES, streamed=True):
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, CallBegun):
            begun.append((event.index, event.name))
        elif isinstance(event, CallArguments):
            arguments[event.index] = arguments.get(event.index, "") + event.text
        elif isinstance(event, CallsMade):
            made = event
        elif isinstance(event, Finished):
            ended = event.stats.finish_reason
    return "".join(text), begun, arguments, made, ended


def test_a_streamed_reply_says_each_call_as_the_model_writes_it_however_the_stream_cuts_it() -> None:
    said = "Let me look that up.\n"
    weather = '{"city": "Pa}r\\"is", "days": [2, {"x": "]"}]}'  # braces and quotes inside strings
    reply = (f'{said}<tool_call>\n{{"name": "get_weather", "arguments": {weather}}}\n</tool_call>\n'
             '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>')  # fmt: skip
    calls = (ToolCall("get_weather", weather), ToolCall("now", "{}"))
    whole = (said, [(0, "get_weather"), (1, "now")], {0: weather, 1: "{}"}, CallsMade(calls), "tool_calls")
    for cut in range(1, len(reply)):
        assert _streamed([reply[:cut], reply[cut:]]) == whole
    assert _streamed(list(reply)) == whole  # a character a token
    # Cut at the token limit inside a call begun: the stream ends it there, the finish reason as it is.
    inside = reply.index("Pa}r")
    assert _streamed(list(reply[:inside]), reason="length") == (
        said,
        [(0, "get_weather")],
        {0: '{"city": "'},
        CallsMade((), cut=True),
        "length",
    )
    # Cut before the call's name was out: sent as the text it is, as a whole reply's would be.
    assert _streamed(list(reply[: reply.index("weather")]), reason="length") == (
        reply[: reply.index("weather")],
        [],
        {},
        None,
        "length",
    )
    llama = ' {"name": "get_weather", "parameters": {"city": "杭州", "days": 2}}'
    expected = ("", [(0, "get_weather")], {0: '{"city": "杭州", "days": 2}'}, "tool_calls")
    for cut in range(1, len(llama)):
        text, begun, arguments, made, ended = _streamed([llama[:cut], llama[cut:]], LLAMA_JSON)
        assert (text, begun, arguments, ended) == expected and made.calls[0].name == "get_weather"


def test_text_that_is_no_call_of_the_tools_is_sent_as_written() -> None:
    for reply in (
        "Use <tool> tags, or a <tool_call", "2 < 3 and <tool_call>\n{not json}\n</tool_call>",
        '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>',
        '<tool_call>{"name": "now", "arguments": 3}',
    ):  # fmt: skip
        for cut in range(1, len(reply)):
            assert _read([reply[:cut], reply[cut:]]) == (reply, (), "stop")
    for reply in ("Use {braces}", '{"name": "rm_rf", "parameters": {}}', '{"answer": 42}', "{not json"):
        for cut in range(1, len(reply)):
            assert _read([reply[:cut], reply[cut:]], LLAMA_JSON) == (reply, (), "stop")


def test_a_llama_reply_that_is_a_call_is_read_however_the_stream_cuts_it() -> None:
    """Llama 3's calls: the whole reply is the call's JSON, with its arguments as `parameters`."""
    reply = ' {"name": "get_weather", "parameters": {"city": "杭州", "days": 2}}'
    call = ToolCall("get_weather", '{"city": "杭州", "days": 2}')
    for cut in range(1, len(reply)):
        assert _read([reply[:cut], reply[cut:]], LLAMA_JSON) == ("", (call,), "tool_calls")
    assert _read(list("Sure: " + reply), LLAMA_JSON) == (
        "Sure: " + reply,
        (),
        "stop",
    )  # a call starts a reply


def test_what_a_client_gets_wrong_about_tools_is_named(engine: LocalEngine) -> None:
    called = {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": "{oops"}}
    ]}  # fmt: skip
    wrong = [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
         "tool_choice", "'get_time', which is not among"),
        ({"tool_choice": "required"}, "tool_choice", "lists no 'tools'"),
        ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools[0].function.name",
         "should match pattern"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type", "Input should be 'function'"),
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "tools", "tools or a format"),
        ({"functions": [WEATHER["function"]]}, "functions", "send them as 'tools'"),
        ({"tools": [WEATHER | {"function": {"name": "f", "parameters": {"type": "nonsense"}}}]}, "tools",
         "The parameters of 'f' cannot hold a reply: Invalid type: nonsense."),
        ({"tools": TOOLS, "messages": [*ASKED, called]}, "messages[1].tool_calls[0].function.arguments",
         "expected a JSON object's text"),
    ]  # fmt: skip
    with serving(engine, ["tiny"]) as url:
        client = _client(url)
        for asked, param, said in wrong:
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(
                    **({"model": "tiny", "messages": ASKED, "max_tokens": 2} | asked)
                )
            assert (refused.value.body["param"], said in refused.value.body["message"]) == (param, True), (
                asked
            )


def test_the_responses_api_calls_tools_as_openais_sdk_reads_them(engine: LocalEngine) -> None:
    """The Responses API's shapes (the Agents SDK's default): tools and calls with name and arguments
    at the top, calls as output items, their results sent back as `function_call_output` items."""
    tools = [{"type": "function", **WEATHER["function"]}, {"type": "function", **CLOCK["function"]}]
    named = {"type": "function", "name": "get_weather"}
    with serving(engine, ["tiny"]) as url:
        client = _client(url)
        first = client.responses.create(model="tiny", input=ASKED, tools=tools, tool_choice=named,
                                        temperature=0, max_output_tokens=100)  # fmt: skip
        with client.responses.stream(model="tiny", input=ASKED, tools=tools, tool_choice=named, temperature=0,
                                     max_output_tokens=100) as stream:  # fmt: skip
            kinds = [event.type for event in stream]  # the helper raises on events out of order
            streamed = stream.get_final_response()
        [call] = first.output
        result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21°C"}
        answered = [*ASKED, call.model_dump(exclude_none=True), result]
        second = client.responses.create(model="tiny", input=answered, tools=tools, max_output_tokens=4)
        in_parts = [*answered[:-1], result | {"output": [{"type": "input_text", "text": "sunny, 21°C"}]}]
        parts = client.responses.create(model="tiny", input=in_parts, tools=tools, max_output_tokens=4)
        made = {"id": call.call_id, "type": "function",
                "function": {"name": call.name, "arguments": call.arguments}}  # fmt: skip
        chat = client.chat.completions.create(model="tiny", tools=TOOLS, max_tokens=4, messages=[
            *ASKED, {"role": "assistant", "tool_calls": [made]},
            {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21°C"},
        ])  # fmt: skip
    assert (call.type, call.name, call.status, first.status) == ("function_call", "get_weather", "completed",
                                                                  "completed")  # fmt: skip
    assert (
        call.id.startswith("fc_")
        and call.call_id.startswith("call_")
        and first.tool_choice.name == "get_weather"
    )
    _weather(call.arguments)
    [streamed_call] = streamed.output
    assert (streamed_call.name, streamed_call.arguments) == (call.name, call.arguments)  # greedy
    deltas = kinds.count("response.function_call_arguments.delta")  # the arguments as they are written
    assert deltas >= 1 and kinds == ["response.created", "response.in_progress", "response.output_item.added",
                                    *["response.function_call_arguments.delta"] * deltas,
                                    "response.function_call_arguments.done", "response.output_item.done",
                                    "response.completed"]  # fmt: skip
    # The call and its result read as the same conversation through either API.
    assert (
        second.usage.input_tokens == chat.usage.prompt_tokens == parts.usage.input_tokens
    )  # output in parts
    assert second.output[0].type == "message" and second.output_text == chat.choices[0].message.content


def test_a_response_that_says_something_then_calls_closes_its_message_before_the_call() -> None:
    """The Responses API's stream for a reply of text and a call, as OpenAI sends it: the message item
    whole (output 0) before the call's item (output 1); the final response holds both."""
    shape = ResponseShape("tiny", {})
    stats = ReplyStats(5, 9, 0.1, 10.0, "tool_calls", "tiny")
    made = (ToolCall("get_weather", '{"city": "Paris", "days": 2}'),)
    written = [
        *shape.opening(),
        *shape.piece("Let me check."),
        *shape.calls(made),
        *shape.closing(stats, False),
    ]
    events = [json.loads(event.partition("data: ")[2]) for event in written]
    message_events = [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    call_events = [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert [(e["type"], e.get("output_index")) for e in events] == [
        ("response.created", None), ("response.in_progress", None), *((kind, 0) for kind in message_events),
        *((kind, 1) for kind in call_events), ("response.completed", None),
    ]  # fmt: skip
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    message, call = events[-1]["response"]["output"]
    assert message["content"][0]["text"] == "Let me check." and call["name"] == "get_weather"
    assert call == events[-2]["item"]  # the same id and call id in the stream and in the response


def test_a_response_cut_inside_a_streamed_call_ends_it_incomplete() -> None:
    shape = ResponseShape("tiny", {})
    written = [*shape.opening(), *shape.call_begun(0, "get_weather"), *shape.call_arguments(0, '{"city": '),
               *shape.call_arguments(0, '"Pa'), *shape.calls((), cut=True),
               *shape.closing(ReplyStats(5, 9, 0.1, 10.0, "length", "tiny"), False)]  # fmt: skip
    events = [json.loads(event.partition("data: ")[2]) for event in written]
    assert [e["type"] for e in events][2:] == [
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.incomplete",
    ]  # fmt: skip
    [call] = events[-1]["response"]["output"]
    assert (call["arguments"], call["status"]) == ('{"city": "Pa', "incomplete") and call == events[-2][
        "item"
    ]


def test_once_the_model_writes_a_call_what_follows_is_held_to_the_tools(tool_model: Path) -> None:
    """Before `<tool_call>` the reply is free (no mask, the sampler's fast path kept); after it, only a
    call of a listed tool with arguments that fit, written as the template writes calls, then the end.
    A thinking model's reasoning may name a call: only one after </think> is held."""
    from transformers import AutoTokenizer

    from core.inference.formats import FormatGuide
    from core.inference.sampler import Sampling, TokenChooser

    tokenizer = ChatTokenizer.from_transformers(AutoTokenizer.from_pretrained(tool_model))
    backend, end = tokenizer.backend, tokenizer.eos_token_id
    vocabulary = backend.get_vocab_size()

    def allowed(guide: FormatGuide) -> set[str]:
        return {
            tokenizer.decode([token], skip_special_tokens=False)
            for token in guide.allowed().nonzero().flatten().tolist()
        }

    guide = FormatGuide(
        HERMES.calls_format(TOOLS, forced=False, many=False), backend, vocabulary, frozenset({end})
    )
    chooser = TokenChooser(Sampling(temperature=0.7, top_k=20), vocabulary, "cpu", guide=guide)
    for token in tokenizer.encode("Let me check. <tool_"):
        assert guide.allowed() is None and chooser.shortlist > 0  # free text: nothing masked
        chooser.observe(token)
    for token in tokenizer.encode("call>"):  # the trigger completes, cut across tokens
        chooser.observe(token)
    assert guide.holding and chooser.shortlist == 0
    assert allowed(guide) == {"\n"}
    written = '\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'
    for token in tokenizer.encode(written):
        assert guide.allowed()[token], tokenizer.decode([token])
        guide.advance(token)
    assert allowed(guide) == {"<|im_end|>"}  # one call (parallel_tool_calls false), then the end
    thinking = FormatGuide(
        HERMES.calls_format(TOOLS, forced=False, many=False, thinks=True),
        backend,
        vocabulary,
        frozenset({end}),
    )
    for token in tokenizer.encode("<think>Shall I write <tool_call> now?</think>"):  # a thought, not a call
        thinking.advance(token)
    assert not thinking.holding
    for token in tokenizer.encode("\n<tool_call>"):
        thinking.advance(token)
    assert thinking.holding and allowed(thinking) == {"\n"}
    spaced = FormatGuide(
        HERMES.calls_format(TOOLS, forced=True, many=True), backend, vocabulary, frozenset({end})
    )
    assert allowed(spaced) == {"<"}  # a call that must be made: held from the first token
    for token in tokenizer.encode('<tool_call>\n{"name":'):
        spaced.advance(token)
    assert allowed(spaced) == {" "}  # ": " between a key and its value, as the template writes calls


def test_a_llama_call_is_held_only_where_it_starts_the_reply(llama_model: Path) -> None:
    from transformers import AutoTokenizer

    from core.inference.formats import FormatGuide

    tokenizer = ChatTokenizer.from_transformers(AutoTokenizer.from_pretrained(llama_model))
    lazy = LLAMA_JSON.calls_format(TOOLS, forced=False, many=False)
    ends = frozenset({tokenizer.eos_token_id})
    started, talking = (FormatGuide(lazy, tokenizer.backend, tokenizer.backend.get_vocab_size(), ends)
                        for _ in range(2))  # fmt: skip
    for token in tokenizer.encode("\n {"):
        assert started.allowed() is None
        started.advance(token)
    assert started.holding
    assert {tokenizer.decode([token]) for token in started.allowed().nonzero().flatten().tolist()} == {'"'}
    for token in tokenizer.encode("Hi {"):  # text first: a brace later is text
        talking.advance(token)
    assert not talking.holding and talking.allowed() is None


def test_tools_too_many_to_hold_a_call_to_are_refused_in_a_sentence() -> None:
    """Each schema may compile alone and all of them together not: bounded, and said plainly."""
    options = {f"p{i}": {"enum": [f"v{j}" for j in range(50)]} for i in range(40)}
    tools = [{"type": "function", "function": {"name": f"f{k}", "parameters": {"type": "object",
              "properties": options, "required": list(options)}}} for k in range(128)]  # fmt: skip
    with pytest.raises(MessageError) as refused:
        HERMES.calls_format(tools, forced=False, many=True)
    said = refused.value.message
    assert said.startswith("The tools' parameters together cannot hold a reply: ") and "too big" in said
    assert said.endswith("; send fewer or smaller tools.") and "%json" not in said  # no grammar dumped


class City(BaseModel):
    name: str = Field(max_length=12)
    country: Literal["FR", "CN"]


class Trip(BaseModel):
    """Tools as OpenAI's SDK and the Agents SDK make them from pydantic models: nested models referred
    to as `#/$defs/…` from the tool's parameters."""

    city: City
    days: int = Field(ge=1, le=7)


def test_a_tool_made_from_pydantic_models_is_called_with_arguments_that_parse(engine: LocalEngine) -> None:
    tool = openai.pydantic_function_tool(Trip)
    named = {"type": "function", "function": {"name": "Trip"}}
    with serving(engine, ["tiny"]) as url:
        reply = _client(url).chat.completions.parse(
            model="tiny", messages=ASKED, tools=[tool], tool_choice=named, max_tokens=200, temperature=0
        )
    [call] = reply.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, Trip)  # the SDK parsed them into the model
    assert call.function.parsed_arguments.city.country in ("FR", "CN")


def test_a_tools_keywords_that_cannot_hold_a_value_are_passed_over_as_openai_takes_them() -> None:
    """A tool describes a function: `uniqueItems`, `not`, a format of the app's own are taken (OpenAI's
    non-strict tools take them) and left to the model, where a reply's own schema would be refused."""
    parameters = {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "phone": {"type": "string", "format": "phone"}, "other": {"not": {"type": "null"}}}}  # fmt: skip
    tool = {"type": "function", "function": {"name": "save", "parameters": parameters}}
    assert HERMES.calls_format([tool], forced=True, many=False).lark
    with pytest.raises(MessageError, match="Unimplemented keys"):
        checked_format(parameters)  # a reply held to this very schema is refused: it could not be held
