"""What a request asks, read into what the engine runs: its prompt (messages under the chat template,
with the tools it lists and the calls and results it holds), the format its reply is held to (OpenAI's
`response_format`, vLLM's guided_*), and how the reply may call tools. Each fault is a 400 naming the
parameter, before the model is touched."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.api.errors import APIError
from core.api.schemas import (
    ChatCompletionRequest,
    FunctionCallItem,
    FunctionCallOutputItem,
    GenerationRequest,
    ReasoningItem,
    ResponseFormat,
    ResponseRequest,
)
from core.errors import MessageError
from core.inference.formats import ReplyFormat, checked_format, checked_pattern, choice_pattern
from core.inference.infill import infill_style
from core.inference.params import LogitBias
from core.inference.prompts import Continuation, Prompt, RawPrompt, TokenPrompt, ToolUse
from core.inference.tool_calls import CallStyle

if TYPE_CHECKING:
    from core.inference.chat_tokenizer import ChatTokenizer


@dataclass(frozen=True)
class Calling:
    """How a reply may call tools: the tools as the chat template lists them, how the model writes a
    call, and the format its calls are held to."""

    tools: tuple[dict[str, Any], ...]
    style: CallStyle
    held: ReplyFormat

    @property
    def names(self) -> frozenset[str]:
        return frozenset(tool["function"]["name"] for tool in self.tools)


@dataclass(frozen=True)
class ToolsAsked:
    """The tools a request lists, the function it names (None: any), whether a call must be made, and
    whether several may be."""

    tools: tuple[dict[str, Any], ...]
    named: str | None
    forced: bool
    many: bool

    def held_by(self, style: CallStyle, thinks: bool) -> Calling:
        """The calls as `style` writes them (`thinks`: after the model's reasoning); 400 where a tool's
        parameters are no schema."""
        try:
            held = style.calls_format(
                self.tools, self.named, forced=self.forced, many=self.many, thinks=thinks
            )
        except MessageError as exc:
            raise APIError(400, exc.message, code="invalid_json_schema", param="tools") from exc
        return Calling(self.tools, style, held)


def tools_asked(body: ChatCompletionRequest | ResponseRequest) -> ToolsAsked | None:
    """The tools a reply may call (None: none, or tool_choice "none": clients that always list their
    tools send it to have text only); 400 where the choice names no listed tool, or is not the only
    format asked."""
    choice, tools = body.tool_asked, body.listed_tools
    if not tools:
        if choice not in (None, "none", "auto"):
            raise APIError(400, "tool_choice asks for a call, but the request lists no 'tools'.",
                           code="invalid_request", param="tool_choice")  # fmt: skip
        return None
    if choice == "none":
        return None
    named = None if choice in (None, "auto", "required") else choice
    if named is not None and named not in {tool["function"]["name"] for tool in tools}:
        raise APIError(400, f"tool_choice names {named!r}, which is not among the request's tools.",
                       code="invalid_request", param="tool_choice")  # fmt: skip
    asked = body.format_asked[0]
    guided = [name for name in GUIDED if getattr(body, name) is not None]
    if (asked is not None and asked.type != "text") or guided:
        raise APIError(400, "A reply that may call tools is not held to a format: send tools or a format, "
                       "not both.", code="invalid_request", param="tools")  # fmt: skip
    # A named function is called once, as OpenAI does.
    many = body.parallel_tool_calls and named is None
    return ToolsAsked(tools, named, choice == "required" or named is not None, many)


GUIDED = ("guided_json", "guided_regex", "guided_choice")  # vLLM's names for a format


def held_format(body: GenerationRequest) -> ReplyFormat | None:
    """What a reply is held to: OpenAI's `response_format` (a response's `text.format`), JSON mode or a
    schema's, or vLLM's guided_json, guided_regex or guided_choice; 400 naming the parameter where it
    cannot be held (an unknown type, a schema or pattern llguidance cannot compile, two formats)."""
    asked, param = body.format_asked
    given = {name: value for name in GUIDED if (value := getattr(body, name)) is not None}
    if asked is not None and asked.type != "text":
        given[param] = asked
    if len(given) > 1:
        raise APIError(400, f"Ask for one format, not {' and '.join(given)}.", code="invalid_request",
                       param=list(given)[1])  # fmt: skip
    if not given:
        return None
    [(name, value)] = given.items()
    try:
        if name == "guided_regex":
            return checked_pattern(value)
        if name == "guided_choice":
            return checked_pattern(choice_pattern(value))
        return checked_format(value if name == "guided_json" else _schema_asked(value, param))
    except MessageError as exc:
        code = "invalid_format" if name in ("guided_regex", "guided_choice") else "invalid_json_schema"
        raise APIError(400, exc.message, code=code, param=name) from exc


def _schema_asked(asked: ResponseFormat, param: str) -> dict[str, Any] | None:
    """The schema of a `response_format` of type json_object (None) or json_schema."""
    if asked.type not in ("json_object", "json_schema"):
        raise APIError(400, f"'{param}' is of type text, json_object or json_schema, not {asked.type!r}.",
                       code="invalid_request", param=f"{param}.type")  # fmt: skip
    if asked.type == "json_object":
        return None
    if asked.schema_given is None:
        where = f"{param}.json_schema.schema" if param == "response_format" else f"{param}.schema"
        raise APIError(400, f"Missing required parameter: '{where}'.", code="invalid_request", param=where)
    return asked.schema_given


def _messages(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The messages as the chat template reads them: text, and the calls an assistant made with their
    arguments as objects (Qwen's template writes them with tojson, as transformers' callers pass them)."""
    cleaned = []
    for index, message in enumerate(body.messages):
        if others := message.parts_other_than_text():
            raise APIError(400, f"Messages may hold text only; message {index} has {', '.join(others)}.",
                           code="unsupported_content", param=f"messages[{index}].content")  # fmt: skip
        role = "system" if message.role == "developer" else message.role
        turn: dict[str, Any] = {"role": role, "content": message.text()}
        if message.tool_calls:
            turn["tool_calls"] = [
                {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments":
                 _arguments(call.function.arguments, f"messages[{index}].tool_calls[{place}].function")}}
                for place, call in enumerate(message.tool_calls)
            ]  # fmt: skip
        if message.tool_call_id is not None:
            turn["tool_call_id"] = message.tool_call_id
        cleaned.append(turn)
    return cleaned


def _arguments(text: str, where: str) -> dict[str, Any]:
    """A call's arguments sent back as JSON text: the object; 400 where they are not one."""
    try:
        arguments = json.loads(text)
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise APIError(400, f"Invalid value for '{where}.arguments': expected a JSON object's text.",
                       param=f"{where}.arguments")  # fmt: skip
    return arguments


def completion_prompt(prompt: str | list[int], vocabulary: int) -> RawPrompt | TokenPrompt:
    """A completion's prompt: its text, or its token ids, each one of the `vocabulary` the model's
    tokenizer knows."""
    if isinstance(prompt, str):
        return RawPrompt(prompt)
    return TokenPrompt(tuple(known_ids(prompt, vocabulary, "prompt")))


def infilled(before: str, suffix: str, tokenizer: ChatTokenizer, model: str) -> RawPrompt:
    """A completion's prompt, the text `before` the cursor, and its `suffix`, the text after it, as a
    fill-in-the-middle prompt (core.inference.infill); 400 where the model has no tokens for it."""
    style = infill_style(tokenizer)
    if style is None:
        raise APIError(400, f"The model {model!r} does not fill in the middle (its tokenizer has none of the "
                       "tokens for it, as Qwen2.5-Coder's <|fim_prefix|> or StarCoder's <fim_prefix>): send "
                       "the text before the cursor alone, without 'suffix'.", code="unsupported_parameter",
                       param="suffix")  # fmt: skip
    return RawPrompt(style.prompt(before, suffix))


def logit_bias(body: GenerationRequest, vocabulary: int) -> LogitBias:
    """The request's logit_bias as token ids, each one of the `vocabulary` the model's tokenizer knows;
    else 400 naming the first that is not."""
    bias = []
    for key, added in (body.logit_bias or {}).items():
        if not (key.isascii() and key.isdigit()):
            raise APIError(400, f"logit_bias's keys are token ids, not {key[:40]!r}.", code="invalid_request",
                           param="logit_bias")  # fmt: skip
        bias.append((int(key), added))
    known_ids([token for token, _ in bias], vocabulary, "logit_bias")
    return tuple(bias)


def known_ids(ids: list[int], vocabulary: int, param: str) -> list[int]:
    """`ids`, each one of the `vocabulary` the model's tokenizer knows; else 400 naming the first not."""
    if (unknown := next((token for token in ids if token >= vocabulary), None)) is not None:
        raise APIError(400, f"Token id {unknown} in '{param}' is not in this model's vocabulary (0 to "
                       f"{vocabulary - 1}).", code="invalid_request", param=param)  # fmt: skip
    return ids


def chat_prompt(body: ChatCompletionRequest, calling: Calling | None = None) -> Prompt:
    """The conversation under the chat template, with the tools its reply may call; with vLLM's
    `continue_final_message` (and `add_generation_prompt` false, as vLLM asks) the last message, the
    assistant's, goes on: a prefill."""
    messages = _messages(body)
    if calling is not None:
        if body.continue_final_message:
            raise APIError(400, "A reply that goes on in the last message does not call tools: send it "
                           "without tools.", param="continue_final_message")  # fmt: skip
        return ToolUse(tuple(messages), calling.tools)
    if body.continue_final_message and body.add_generation_prompt:
        raise APIError(400, "continue_final_message goes with add_generation_prompt false (as vLLM takes "
                       "them): a reply goes on in the last message or starts a new one, not both.",
                       param="add_generation_prompt")  # fmt: skip
    if not body.add_generation_prompt and not body.continue_final_message:
        raise APIError(400, "add_generation_prompt false is taken with continue_final_message true only (a "
                       "prefilled reply that goes on).", param="add_generation_prompt")  # fmt: skip
    if not body.continue_final_message:
        return messages
    if messages[-1]["role"] != "assistant":
        raise APIError(400, "continue_final_message goes on from the last message, which must be the "
                       "assistant's.", param="messages")  # fmt: skip
    return Continuation(tuple(messages))


def input_messages(body: ResponseRequest) -> list[dict[str, Any]]:
    """A response's instructions and input as the chat template's messages: the calls the model made
    join the assistant's message before them (as a chat completion's `tool_calls`), each call's output
    is a `tool` message."""
    messages: list[dict[str, Any]] = (
        [{"role": "system", "content": body.instructions}] if body.instructions else []
    )
    for index, item in enumerate(body.input_items):
        if isinstance(item, ReasoningItem):
            continue
        if isinstance(item, FunctionCallOutputItem):
            if others := item.parts_other_than_text():
                raise APIError(400, f"A tool's output may hold text only; item {index} has "
                               f"{', '.join(others)}.", code="unsupported_content",
                               param=f"input[{index}].output")  # fmt: skip
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text()})
            continue
        if isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function", "function": {
                "name": item.name, "arguments": _arguments(item.arguments, f"input[{index}]")}}  # fmt: skip
            if not messages or messages[-1]["role"] != "assistant":
                messages.append({"role": "assistant", "content": ""})
            messages[-1].setdefault("tool_calls", []).append(call)
            continue
        if others := item.parts_other_than_text():
            raise APIError(400, f"Input may hold text only; item {index} has {', '.join(others)}.",
                           code="unsupported_content", param=f"input[{index}].content")  # fmt: skip
        role = "system" if item.role == "developer" else item.role
        messages.append({"role": role, "content": item.text()})
    return messages
