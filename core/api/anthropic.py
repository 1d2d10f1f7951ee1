"""Anthropic's Messages API beside OpenAI's, for the programs written with its SDK (as vLLM, llama.cpp's
server and Ollama serve it): POST /v1/messages, whole or as its typed server-sent events, and POST
/v1/messages/count_tokens. A request is read into the chat completion it means (its system prompt, its
text, tool_use and tool_result blocks as OpenAI's messages, tools and tool calls) and runs the same way:
the same checks, queue, formats and tools; its reply is written as Anthropic's message (thinking, text
and tool_use blocks, its stop reason), its errors as Anthropic's `{"type": "error", "error": {...}}`.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from core.api.errors import APIError, anthropic_body, validated, validated_fields
from core.api.schemas import MAX_MESSAGES, MAX_STOP_SEQUENCES, MAX_TOOLS, ChatCompletionRequest, FiniteFloat
from core.api.shapes import ReplyShape, WholeReply
from core.inference.events import ReplyStats
from core.inference.tool_calls import ToolCall

VERSION_HEADER = "anthropic-version"  # every request of Anthropic's SDK carries it


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)  # cache_control, metadata, ...: nothing to do


class Block(_Body):
    """A content block: text, tool_use (an assistant's call), tool_result (its answer, in a user turn),
    thinking (an assistant's earlier reasoning: not read again, as Anthropic's models do not)."""

    type: str = Field(max_length=40)
    text: str | None = None
    id: str | None = Field(None, max_length=200)
    name: str | None = Field(None, max_length=64)
    input: dict[str, Any] | None = None
    tool_use_id: str | None = Field(None, max_length=200)
    content: str | list[Block] | None = None
    is_error: StrictBool | None = None


class Message(_Body):
    role: Literal["user", "assistant"]
    content: str | Annotated[list[Block], Field(max_length=MAX_MESSAGES)]


class Tool(_Body):
    name: str = Field(max_length=64)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = Field(None, max_length=60)  # "custom", or one of Anthropic's own (web search, ...)


class ToolChoice(_Body):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(None, max_length=64)
    disable_parallel_tool_use: StrictBool = False


class Thinking(_Body):
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]  # only "disabled" turns it off here


class OutputFormat(_Body):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Body):
    """Structured outputs (`format`: the JSON schema the reply is held to); `effort` is Claude's to weigh."""

    format: OutputFormat | None = None


class _Asked(_Body):
    model: str = Field(max_length=200)
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    system: str | list[Block] | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None


class MessagesRequest(_Asked):
    max_tokens: StrictInt = Field(ge=1)
    stream: StrictBool = False
    output_config: OutputConfig | None = None
    stop_sequences: Annotated[list[Annotated[str, Field(min_length=1, max_length=500)]],
                              Field(max_length=MAX_STOP_SEQUENCES)] | None = None  # fmt: skip
    # Sampling, as Anthropic's API took it before its SDK dropped it (older clients send it)
    temperature: FiniteFloat | None = Field(None, ge=0, le=1)
    top_p: FiniteFloat | None = Field(None, gt=0, le=1)
    top_k: StrictInt | None = Field(None, ge=0, le=1000)


def _text(blocks: str | list[Block] | None, where: str) -> str:
    """The text of a turn's, a system prompt's or a tool result's blocks; 400 for what is not text."""
    if blocks is None or isinstance(blocks, str):
        return blocks or ""
    for index, block in enumerate(blocks):
        if block.type != "text":
            raise APIError(400, f"{where} may hold text only; block {index} is {block.type[:40]!r}.",
                           code="unsupported_content", param=f"{where}[{index}]")  # fmt: skip
    return "".join(block.text or "" for block in blocks)


def _turns(message: Message, index: int) -> list[dict[str, Any]]:
    """A message as OpenAI's: a user turn's tool results as tool messages (first), then its text; an
    assistant turn's text with its tool_use blocks as tool calls."""
    where = f"messages[{index}].content"
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    said, calls, results = [], [], []
    for place, block in enumerate(message.content):
        if block.type == "text":
            said.append(block.text or "")
        elif block.type == "tool_use" and message.role == "assistant":
            arguments = json.dumps(block.input or {}, ensure_ascii=False)
            calls.append({"id": block.id or f"toolu_{index}_{place}", "type": "function",
                          "function": {"name": block.name or "", "arguments": arguments}})  # fmt: skip
        elif block.type == "tool_result" and message.role == "user":
            text = _text(block.content, f"{where}[{place}].content")
            results.append({"role": "tool", "tool_call_id": block.tool_use_id or "",
                            "content": f"Error: {text}" if block.is_error else text})  # fmt: skip
        elif block.type not in ("thinking", "redacted_thinking"):
            raise APIError(400, f"Messages may hold text, tool_use and tool_result blocks only; "
                           f"{where}[{place}] is {block.type[:40]!r}.", code="unsupported_content",
                           param=f"{where}[{place}]")  # fmt: skip
    text = "".join(said)
    if message.role == "assistant":
        return [{"role": "assistant", "content": text or None, **({"tool_calls": calls} if calls else {})}]
    return [*results, *([{"role": "user", "content": text}] if text or not results else [])]


def _tools(asked: _Asked) -> dict[str, Any]:
    """The tools and the choice among them as OpenAI's."""
    for index, tool in enumerate(asked.tools or ()):
        if tool.type not in (None, "custom"):
            raise APIError(400, f"This server runs no tools of its own ({tool.type!r}): send functions, each "
                           "with a name and an input_schema.", code="unsupported_parameter",
                           param=f"tools[{index}]")  # fmt: skip
    tools = [
        {"type": "function", "function": {"name": tool.name, "description": tool.description,
                                          "parameters": tool.input_schema or {"type": "object"}}}
        for tool in asked.tools or ()
    ]  # fmt: skip
    choice = asked.tool_choice
    fields: dict[str, Any] = {"tools": tools or None}
    if choice is not None and tools:
        fields["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name or ""}} if choice.type == "tool"
            else {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        )  # fmt: skip
        fields["parallel_tool_calls"] = not choice.disable_parallel_tool_use
    return fields


def _chat(asked: _Asked, **fields: Any) -> ChatCompletionRequest:
    system = [{"role": "system", "content": _text(asked.system, "system")}] if asked.system else []
    messages = [turn for index, message in enumerate(asked.messages) for turn in _turns(message, index)]
    if asked.thinking is not None and asked.thinking.type == "disabled":
        fields["chat_template_kwargs"] = {"enable_thinking": False}
    return validated_fields(
        ChatCompletionRequest,
        {"model": asked.model, "messages": [*system, *messages], **_tools(asked), **fields},
    )


def messages_request(raw: bytes) -> ChatCompletionRequest:
    """POST /v1/messages's body as the chat completion it means."""
    asked: MessagesRequest = validated(MessagesRequest, raw)
    sampling = {"temperature": asked.temperature, "top_p": asked.top_p, "top_k": asked.top_k,
                "stop": asked.stop_sequences}  # fmt: skip
    held = asked.output_config.format if asked.output_config else None
    if held is not None:
        sampling["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": held.schema_},
        }
    return _chat(asked, max_tokens=asked.max_tokens, stream=asked.stream,
                 **{name: value for name, value in sampling.items() if value is not None})  # fmt: skip


def counted_request(raw: bytes) -> ChatCompletionRequest:
    """POST /v1/messages/count_tokens's body as the chat completion whose prompt is counted."""
    return _chat(validated(_Asked, raw))


def _stop_reason(stats: ReplyStats) -> str:
    if stats.finish_reason == "length":
        return "max_tokens"
    if stats.finish_reason == "tool_calls":
        return "tool_use"
    return "stop_sequence" if stats.stop_sequence is not None else "end_turn"


def _usage(stats: ReplyStats | None) -> dict[str, int]:
    if stats is None:
        return {"input_tokens": 0, "output_tokens": 0}
    return {"input_tokens": stats.prompt_tokens - stats.cached_tokens,
            "output_tokens": stats.completion_tokens, "cache_read_input_tokens": stats.cached_tokens,
            "cache_creation_input_tokens": 0}  # fmt: skip


class MessagesShape(ReplyShape):
    """A reply as Anthropic writes it: a `message` whose content is a thinking model's reasoning (a
    thinking block), its text and the tool_use blocks of its calls; or its stream of typed events:
    message_start, each block's content_block_start, deltas (thinking_delta, text_delta, input_json_delta)
    and content_block_stop, then message_delta (the stop reason, the usage) and message_stop."""

    prefix = "msg_"
    reasoning_apart = streams_calls = True

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self._blocks = 0  # blocks begun so far
        self._open: str | None = None  # the kind of the block being written ("thinking", "text", "tool_use")
        self._begun = 0  # calls begun in the stream

    def whole(self, reply: WholeReply) -> dict[str, Any]:
        blocks = [_thinking_block(reply.reasoning)] if reply.reasoning else []
        blocks += [{"type": "text", "text": reply.text}] if reply.text or not (blocks or reply.calls) else []
        blocks += [_tool_use_block(call) for call in reply.calls]
        return self._message(blocks, reply.stats)

    def opening(self) -> list[str]:
        return [_event("message_start", message=self._message([], None))]

    def reasoning(self, text: str) -> list[str]:
        return [*self._opened("thinking"), self._delta({"type": "thinking_delta", "thinking": text})]

    def piece(self, text: str) -> list[str]:
        return [*self._opened("text"), self._delta({"type": "text_delta", "text": text})]

    def calls(self, calls: tuple[ToolCall, ...], cut: bool = False) -> list[str]:
        written = self._closed()
        for index, call in enumerate(calls[self._begun :], self._begun):
            written += [*self.call_begun(index, call.name), *self.call_arguments(index, call.arguments),
                        *self._closed()]  # fmt: skip
        return written

    def call_begun(self, index: int, name: str) -> list[str]:
        written = self._closed()
        self._open, self._begun = "tool_use", index + 1
        begun = _tool_use_block(ToolCall(name, "{}"))  # its input follows, as JSON text
        return [*written, _event("content_block_start", index=self._blocks, content_block=begun)]

    def call_arguments(self, index: int, text: str) -> list[str]:
        return [self._delta({"type": "input_json_delta", "partial_json": text})]

    def closing(self, stats: ReplyStats, include_usage: bool) -> list[str]:
        return [
            *self._closed(),
            _event("message_delta", usage=_usage(stats),
                   delta={"stop_reason": _stop_reason(stats), "stop_sequence": stats.stop_sequence}),
            _event("message_stop"),
        ]  # fmt: skip

    def failure(self, message: str) -> list[str]:
        return [f"event: error\ndata: {json.dumps(anthropic_body(500, message), ensure_ascii=False)}\n\n"]

    def _opened(self, kind: str) -> list[str]:
        """The block of this kind begun, the one before it ended, unless it is being written."""
        if self._open == kind:
            return []
        written = self._closed()
        block = {"type": "thinking", "thinking": ""} if kind == "thinking" else {"type": "text", "text": ""}
        self._open = kind
        return [*written, _event("content_block_start", index=self._blocks, content_block=block)]

    def _closed(self) -> list[str]:
        """The block being written ended (a thinking block with its signature, empty: none is made here)."""
        if self._open is None:
            return []
        signed = (
            [self._delta({"type": "signature_delta", "signature": ""})] if self._open == "thinking" else []
        )
        ended = _event("content_block_stop", index=self._blocks)
        self._open, self._blocks = None, self._blocks + 1
        return [*signed, ended]

    def _delta(self, delta: dict[str, Any]) -> str:
        return _event("content_block_delta", index=self._blocks, delta=delta)

    def _message(self, blocks: list[dict[str, Any]], stats: ReplyStats | None) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": blocks,
                "stop_reason": _stop_reason(stats) if stats else None,
                "stop_sequence": stats.stop_sequence if stats else None, "usage": _usage(stats)}  # fmt: skip


def model_info(key: str) -> dict[str, Any]:
    """A model as Anthropic's API lists it."""
    return {"type": "model", "id": key, "display_name": key, "created_at": "1970-01-01T00:00:00Z"}


def model_list(keys: list[str]) -> dict[str, Any]:
    """GET /v1/models as Anthropic's SDK reads it (one page)."""
    return {"data": [model_info(key) for key in keys], "has_more": False,
            "first_id": keys[0] if keys else None, "last_id": keys[-1] if keys else None}  # fmt: skip


def _event(kind: str, **fields: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields}, ensure_ascii=False)}\n\n"


def _thinking_block(text: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": text, "signature": ""}


def _tool_use_block(call: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": call.name,
            "input": json.loads(call.arguments)}  # fmt: skip
