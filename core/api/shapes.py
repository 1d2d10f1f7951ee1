"""How a reply is written: a chat completion, a text completion, or a response (OpenAI's Responses API),
whole or as the server-sent events of a stream. One writer a reply: a response's stream numbers its
events and repeats the whole text when it is done."""

from __future__ import annotations

import codecs
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.api.errors import APIError
from core.api.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionTokensDetails,
    Delta,
    FunctionCalled,
    FunctionDelta,
    PromptTokensDetails,
    TextChoice,
    TextCompletion,
    TextLogprobs,
    TokenLogprobOut,
    ToolCallDelta,
    ToolCallOut,
    Usage,
)
from core.inference.events import ReplyStats, TokenLogprob
from core.inference.tool_calls import ToolCall

DONE = "data: [DONE]\n\n"


def usage_of(stats: ReplyStats) -> Usage:
    return usage_of_choices([stats], 1)


def usage_of_choices(stats: list[ReplyStats], per_prompt: int) -> Usage:
    """The usage of a request's choices, `per_prompt` in a row for each prompt: each prompt's tokens counted
    once (its first choice's, as OpenAI and vLLM count them), every reply's tokens."""
    prompts = stats[::per_prompt]
    read, written = sum(s.prompt_tokens for s in prompts), sum(s.completion_tokens for s in stats)
    cached, reasoning = sum(s.cached_tokens for s in prompts), sum(s.reasoning_tokens for s in stats)
    return Usage(
        prompt_tokens=read, completion_tokens=written, total_tokens=read + written,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning),
    )  # fmt: skip


def finish_reason(stats: ReplyStats) -> str:
    return stats.finish_reason if stats.finish_reason in ("length", "tool_calls") else "stop"


def call_id() -> str:
    """A call's id, for the tool's answer to name (OpenAI's form: call_ and 24 characters)."""
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class WholeReply:
    """A reply read to its end: its answer, statistics, the calls it makes, its tokens' log-probabilities
    (None: not asked) and its reasoning (a thinking model's, apart from its answer)."""

    text: str
    stats: ReplyStats
    calls: tuple[ToolCall, ...] = ()
    chances: tuple[TokenLogprob, ...] | None = None
    reasoning: str = ""


class ReplyShape:
    """A reply's writer. A stream is `opening()`, `piece()` for each text, then `closing()`; the tokens'
    log-probabilities, where asked, go out with the next piece (`logprobs_came`)."""

    prefix = "reply-"
    media_type = "text/event-stream"  # of a stream
    reasoning_apart = False  # writes a thinking model's reasoning apart from its answer (`reasoning`)
    streams_calls = False  # a stream says each call as the model writes it (`call_begun`, `call_arguments`)

    def __init__(self, model: str, logprobs_asked: bool = False, index: int = 0) -> None:
        """`index`: the choice this writer writes, where a request asks several (OpenAI's `n`, or a list of
        prompts)."""
        self.model = model
        self.id = f"{self.prefix}{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.logprobs_asked = logprobs_asked
        self.index = index
        self._pending: list[TokenLogprob] = []

    def whole(self, reply: WholeReply) -> dict[str, Any]:
        raise NotImplementedError

    def logprobs_came(self, tokens: tuple[TokenLogprob, ...]) -> None:
        self._pending += tokens

    def _taken(self) -> tuple[TokenLogprob, ...]:
        """The log-probabilities that came since the last piece."""
        taken, self._pending = tuple(self._pending), []
        return taken

    def opening(self) -> list[str]:
        return []

    def piece(self, text: str) -> list[str]:
        raise NotImplementedError

    def calls(self, calls: tuple[ToolCall, ...], cut: bool = False) -> list[str]:
        """The calls a reply makes, read once it ended, those not begun in the stream (chats and responses
        only: a text completion has no tools); `cut`: the reply ended inside a call begun."""
        raise NotImplementedError

    def call_begun(self, index: int, name: str) -> list[str]:
        """A call named as the model wrote it (`streams_calls`): its arguments follow."""
        raise NotImplementedError

    def call_arguments(self, index: int, text: str) -> list[str]:
        """A piece of a begun call's arguments (`streams_calls`)."""
        raise NotImplementedError

    def reasoning(self, text: str) -> list[str]:
        """A thinking model's reasoning, apart from its answer (chats only)."""
        raise NotImplementedError

    def closing(self, stats: ReplyStats, include_usage: bool) -> list[str]:
        raise NotImplementedError

    def failure(self, message: str) -> list[str]:
        """A failure after the stream began: OpenAI's error body as one event."""
        return [f"data: {APIError(500, message, 'server_error').response().body.decode()}\n\n"]


class _ChunkedShape(ReplyShape):
    """A stream of OpenAI's older APIs: chunks of choices, the last with the finish reason, then the usage
    where asked, then [DONE]."""

    chunk_kind: type[ChatCompletionChunk] | type[TextCompletion]

    def closing(self, stats: ReplyStats, include_usage: bool) -> list[str]:
        return [self.ending(stats), *self.finale(usage_of(stats) if include_usage else None)]

    def ending(self, stats: ReplyStats) -> str:
        """The choice's last chunk, with its finish reason."""
        return self._chunk([self._last_choice(finish_reason(stats))])

    def finale(self, usage: Usage | None) -> list[str]:
        """What follows the last choice's ending: the usage where asked, then [DONE]."""
        return [*([self._chunk([], usage)] if usage is not None else []), DONE]

    def with_choices(self, wholes: list[dict[str, Any]], usage: Usage) -> dict[str, Any]:
        """One reply of several choices, each written whole by its own writer, with their usage."""
        return wholes[0] | {"choices": [choice for whole in wholes for choice in whole["choices"]],
                            "usage": usage.model_dump()}  # fmt: skip

    def _last_choice(self, reason: str) -> Any:
        raise NotImplementedError

    def _chunk(self, choices: list[Any], usage: Usage | None = None) -> str:
        chunk = self.chunk_kind(id=self.id, created=self.created, model=self.model, choices=choices,
                                usage=usage)  # fmt: skip
        return f"data: {chunk.model_dump_json(exclude_none=usage is None)}\n\n"


class ChatShape(_ChunkedShape):
    """POST /v1/chat/completions: a `chat.completion`, or `chat.completion.chunk` events."""

    prefix = "chatcmpl-"
    chunk_kind = ChatCompletionChunk
    reasoning_apart = streams_calls = True

    def __init__(self, model: str, logprobs_asked: bool = False, index: int = 0) -> None:
        super().__init__(model, logprobs_asked, index)
        self._begun = 0  # calls begun in the stream

    def whole(self, reply: WholeReply) -> dict[str, Any]:
        made = [ToolCallOut(id=call_id(), function=FunctionCalled(name=c.name, arguments=c.arguments))
                for c in reply.calls]  # fmt: skip
        text = reply.text
        message = AssistantMessage(content=(text or None) if made else text, tool_calls=made or None,
                                   reasoning_content=reply.reasoning or None)  # fmt: skip
        logprobs = None if reply.chances is None else _choice_logprobs(reply.chances)
        choice = Choice(index=self.index, message=message, finish_reason=finish_reason(reply.stats),
                        logprobs=logprobs)  # fmt: skip
        return ChatCompletion(id=self.id, created=self.created, model=self.model, choices=[choice],
                              usage=usage_of(reply.stats)).model_dump()  # fmt: skip

    def opening(self) -> list[str]:
        return [self._chunk([ChunkChoice(index=self.index, delta=Delta(role="assistant", content=""))])]

    def piece(self, text: str) -> list[str]:
        return [
            self._chunk([ChunkChoice(index=self.index, delta=Delta(content=text), logprobs=self._logprobs())])
        ]

    def _logprobs(self) -> ChoiceLogprobs | None:
        taken = self._taken()
        return _choice_logprobs(taken) if taken else None

    def reasoning(self, text: str) -> list[str]:
        return [self._chunk([ChunkChoice(index=self.index, delta=Delta(reasoning_content=text))])]

    def calls(self, calls: tuple[ToolCall, ...], cut: bool = False) -> list[str]:
        return [self._call_chunk(index, call.name, call.arguments) for index, call in
                enumerate(calls) if index >= self._begun]  # fmt: skip

    def call_begun(self, index: int, name: str) -> list[str]:
        self._begun = index + 1
        return [self._call_chunk(index, name, "")]

    def call_arguments(self, index: int, text: str) -> list[str]:
        return [self._call_chunk(index, None, text)]

    def _call_chunk(self, index: int, name: str | None, arguments: str) -> str:
        """A chunk of a call: its id, type and name where `name` is given (its first), and arguments."""
        named = {"id": call_id(), "type": "function"} if name is not None else {}
        call = ToolCallDelta(index=index, **named, function=FunctionDelta(name=name, arguments=arguments))
        return self._chunk([ChunkChoice(index=self.index, delta=Delta(tool_calls=[call]))])

    def _last_choice(self, reason: str) -> ChunkChoice:
        return ChunkChoice(index=self.index, delta=Delta(), finish_reason=reason, logprobs=self._logprobs())


class TextShape(_ChunkedShape):
    """POST /v1/completions: a `text_completion`, whole or in chunks of the same object."""

    prefix = "cmpl-"
    chunk_kind = TextCompletion

    def __init__(self, model: str, logprobs_asked: bool = False, index: int = 0) -> None:
        super().__init__(model, logprobs_asked, index)
        self._offset = 0  # characters of the text before the next token
        self._characters = codecs.getincrementaldecoder("utf-8")("ignore")  # tokens may split one

    def whole(self, reply: WholeReply) -> dict[str, Any]:
        logprobs = None if reply.chances is None else self._text_logprobs(reply.chances)
        choices = [TextChoice(index=self.index, text=reply.text, finish_reason=finish_reason(reply.stats),
                              logprobs=logprobs)]  # fmt: skip
        return TextCompletion(id=self.id, created=self.created, model=self.model, choices=choices,
                              usage=usage_of(reply.stats)).model_dump()  # fmt: skip

    def piece(self, text: str) -> list[str]:
        return [self._chunk([TextChoice(index=self.index, text=text, finish_reason=None,
                                        logprobs=self._logprobs())])]  # fmt: skip

    def _last_choice(self, reason: str) -> TextChoice:
        return TextChoice(index=self.index, text="", finish_reason=reason, logprobs=self._logprobs())

    def _logprobs(self) -> TextLogprobs | None:
        taken = self._taken()
        return self._text_logprobs(taken) if taken else None

    def _text_logprobs(self, tokens: tuple[TokenLogprob, ...]) -> TextLogprobs:
        """OpenAI's legacy shape; each token's offset counts the characters before it in the text."""
        offsets = []
        for token in tokens:
            offsets.append(self._offset)
            self._offset += len(self._characters.decode(token.raw))
        tops = [None if token.logprob is None else {other.token: other.logprob for other in token.top}
                for token in tokens]  # fmt: skip
        return TextLogprobs(
            tokens=[token.token for token in tokens], token_logprobs=[token.logprob for token in tokens],
            top_logprobs=tops, text_offset=offsets,
        )  # fmt: skip


def _choice_logprobs(tokens: tuple[TokenLogprob, ...]) -> ChoiceLogprobs:
    """A chat completion's log-probabilities: each token with its text, bytes and likeliest rivals."""
    return ChoiceLogprobs(content=[TokenLogprobOut(**item) for item in logprob_items(tokens)])


def logprob_items(tokens: tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    """Each token with its text, bytes and likeliest rivals, as OpenAI's APIs write them."""

    def item(token: TokenLogprob) -> dict[str, Any]:
        return {"token": token.token, "logprob": token.logprob, "bytes": list(token.raw)}

    return [item(token) | {"top_logprobs": [item(other) for other in token.top]} for token in tokens]


class ResponseShape(ReplyShape):
    """POST /v1/responses (OpenAI's Responses API, stateless): a `response` whose output is a thinking
    model's reasoning item, the assistant's message and the function calls it makes, or its stream of
    typed events: created, in_progress; the reasoning item added at its first text, its deltas, done;
    the message and its text part added at the first text, text deltas, each done; each call added, its
    arguments, done; then completed (incomplete: cut at `max_output_tokens`). Each item's output index
    is its place among those the reply made."""

    prefix = "resp_"  # OpenAI's ids of responses and their items: resp_…, rs_…, msg_…, fc_…
    reasoning_apart = streams_calls = True

    def __init__(
        self,
        model: str,
        settings: dict[str, Any],
        logprobs_asked: bool = False,
        keep: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """`settings`: what the request said that a response repeats (instructions, temperature, ...);
        `keep`: given the response once it is finished, to be followed (None: `store` false)."""
        super().__init__(model, logprobs_asked)
        self.settings = settings
        self.keep = keep
        self.message_id = f"msg_{uuid.uuid4().hex}"
        self.reasoning_id = f"rs_{uuid.uuid4().hex}"
        self._text: list[str] = []
        self._thought: list[str] = []
        self._places: dict[str, int] = {}  # "reasoning", "message": output indexes, once announced
        self._closed: set[str] = set()
        self._made: list[dict[str, Any]] = []  # the function_call items
        self._call_places: list[int] = []  # their output indexes
        self._open_call = False  # the last call's arguments are being streamed
        self._logprobs: list[dict[str, Any]] = []  # the text's, where asked
        self._sequence = 0

    def whole(self, reply: WholeReply) -> dict[str, Any]:
        self._made = self._made or [self._call_item(call) for call in reply.calls]
        if reply.chances is not None:
            self._logprobs = logprob_items(reply.chances)
        status = "incomplete" if reply.stats.finish_reason == "length" else "completed"
        thought = [self._reasoning(reply.reasoning, "completed")] if reply.reasoning else []
        message = [self._message(reply.text, "completed")] if reply.text or not self._made else []
        response = self._response(status, [*thought, *message, *self._made], reply.stats)
        if self.keep is not None:
            self.keep(response)
        return response

    def opening(self) -> list[str]:
        started = self._response("in_progress", [], None)
        return [
            self._event("response.created", response=started),
            self._event("response.in_progress", response=started),
        ]

    def reasoning(self, text: str) -> list[str]:
        self._thought.append(text)
        opened = self._opened("reasoning", item=self._reasoning(None, "in_progress"))
        where = {"item_id": self.reasoning_id, "output_index": self._places["reasoning"], "content_index": 0}
        return [*opened, self._event("response.reasoning_text.delta", **where, delta=text)]

    def piece(self, text: str) -> list[str]:
        self._text.append(text)
        opened = self._message_opened()
        logprobs = logprob_items(self._taken())
        self._logprobs += logprobs
        return [
            *opened,
            self._event("response.output_text.delta", **self._where(), delta=text, logprobs=logprobs),
        ]

    def calls(self, calls: tuple[ToolCall, ...], cut: bool = False) -> list[str]:
        written = self._call_closed("incomplete" if cut else "completed")
        for index, call in enumerate(calls[len(self._made) :], len(self._made)):
            written += [*self.call_begun(index, call.name), *self.call_arguments(index, call.arguments),
                        *self._call_closed("completed")]  # fmt: skip
        return written

    def call_begun(self, index: int, name: str) -> list[str]:
        written = [*self._reasoning_closed(), *self._message_closed(), *self._call_closed("completed")]
        item = self._call_item(ToolCall(name, "")) | {"status": "in_progress"}
        self._call_places.append(len(self._places) + len(self._made))
        self._made.append(item)
        self._open_call = True
        return [*written, self._event("response.output_item.added", output_index=self._call_places[-1],
                                      item=item)]  # fmt: skip

    def call_arguments(self, index: int, text: str) -> list[str]:
        self._made[-1]["arguments"] += text
        return [self._event("response.function_call_arguments.delta", **self._call_where(), delta=text)]

    def _call_closed(self, status: str) -> list[str]:
        """The call being streamed ended: its arguments whole, its item `status`."""
        if not self._open_call:
            return []
        self._open_call = False
        item = self._made[-1]
        item["status"] = status
        return [
            self._event("response.function_call_arguments.done", **self._call_where(),
                        arguments=item["arguments"]),
            self._event("response.output_item.done", output_index=self._call_places[-1], item=item),
        ]  # fmt: skip

    def _call_where(self) -> dict[str, Any]:
        return {"item_id": self._made[-1]["id"], "output_index": self._call_places[-1]}

    def closing(self, stats: ReplyStats, include_usage: bool) -> list[str]:
        closed = self._reasoning_closed()
        opened = self._message_opened() if not self._made else []  # an empty reply is an empty message
        self._logprobs += logprob_items(self._taken())
        whole = self.whole(WholeReply("".join(self._text), stats, reasoning="".join(self._thought)))
        return [
            *closed,
            *opened,
            *self._message_closed(),
            self._event(f"response.{whole['status']}", response=whole),
        ]

    def _opened(self, kind: str, item: dict[str, Any]) -> list[str]:
        """The item's announcement, the first time (after the items before it)."""
        if kind in self._places:
            return []
        self._places[kind] = len(self._places) + len(self._made)
        return [self._event("response.output_item.added", output_index=self._places[kind], item=item)]

    def _reasoning_closed(self) -> list[str]:
        if "reasoning" not in self._places or "reasoning" in self._closed:
            return []
        self._closed.add("reasoning")
        text, index = "".join(self._thought), self._places["reasoning"]
        where = {"item_id": self.reasoning_id, "output_index": index, "content_index": 0}
        return [
            self._event("response.reasoning_text.done", **where, text=text),
            self._event(
                "response.output_item.done", output_index=index, item=self._reasoning(text, "completed")
            ),
        ]

    def _message_opened(self) -> list[str]:
        closed = self._reasoning_closed()
        opened = self._opened("message", self._message(None, "in_progress"))
        if not opened:
            return closed
        return [
            *closed,
            *opened,
            self._event("response.content_part.added", **self._where(), part=self._part("")),
        ]

    def _message_closed(self) -> list[str]:
        if "message" not in self._places or "message" in self._closed:
            return []
        self._closed.add("message")
        text = "".join(self._text)
        return [
            self._event("response.output_text.done", **self._where(), text=text, logprobs=self._logprobs),
            self._event("response.content_part.done", **self._where(), part=self._part(text)),
            self._event("response.output_item.done", output_index=self._places["message"],
                        item=self._message(text, "completed")),
        ]  # fmt: skip

    def _reasoning(self, text: str | None, status: str) -> dict[str, Any]:
        content = [] if text is None else [{"type": "reasoning_text", "text": text}]
        return {
            "type": "reasoning",
            "id": self.reasoning_id,
            "summary": [],
            "content": content,
            "status": status,
        }

    @staticmethod
    def _call_item(call: ToolCall) -> dict[str, Any]:
        return {"type": "function_call", "id": f"fc_{uuid.uuid4().hex}", "call_id": call_id(),
                "name": call.name, "arguments": call.arguments, "status": "completed"}  # fmt: skip

    def failure(self, message: str) -> list[str]:
        return [self._event("error", code="server_error", message=message, param=None)]

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.message_id, "output_index": self._places["message"], "content_index": 0}

    def _part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": self._logprobs}

    def _message(self, text: str | None, status: str) -> dict[str, Any]:
        content = [] if text is None else [self._part(text)]
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant",
                "content": content}  # fmt: skip

    def _response(
        self, status: str, output: list[dict[str, Any]], stats: ReplyStats | None
    ) -> dict[str, Any]:
        usage = None
        if stats is not None:
            usage = {
                "input_tokens": stats.prompt_tokens,
                "input_tokens_details": {"cached_tokens": stats.cached_tokens},
                "output_tokens": stats.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": stats.reasoning_tokens},
                "total_tokens": stats.prompt_tokens + stats.completion_tokens,
            }
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "model": self.model, "output": output, "usage": usage, "error": None,
            "incomplete_details": incomplete, "store": self.keep is not None,
            "text": {"format": {"type": "text"}},
            **self.settings,
        }  # fmt: skip

    def _event(self, kind: str, **fields: Any) -> str:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"
