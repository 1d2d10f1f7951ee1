"""The OpenAI-compatible routes: GET /v1/models (and /v1/models/{id}), POST /v1/chat/completions,
POST /v1/completions (text the model continues, without the chat template) and POST /v1/responses
(OpenAI's Responses API, stateless), with or without SSE (core.api.shapes writes each);
GET /health. A chat completion or a response may list tools its reply calls (core.api.calls reads
the calls).

Internal logic of a completion:
1. the guards (host, origin, body size) have run; the bearer token is checked;
2. the body is validated into a ChatCompletionRequest, CompletionRequest or ResponseRequest (400 with
   the parameter at fault; 400 for what this server cannot honour, never ignored);
3. the prompt is measured against the model's context window before anything is allocated for it
   (400 `context_length_exceeded`), and `max_tokens` is capped to what the context leaves;
4. the engine streams the reply; a client that goes away, streaming or not, sets the stop event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from core.access.hosts import HostPolicy, TrustedHostsMiddleware, load_host_policy
from core.api.calls import CallsMade, with_calls
from core.api.errors import APIError, asgi_refusal, from_core, from_validation, install_handlers
from core.api.limits import DEFAULT_MAX_BODY_BYTES, BodyLimitMiddleware, BodyTooLargeError
from core.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    FunctionCallItem,
    FunctionCallOutputItem,
    GenerationRequest,
    ModelCard,
    ModelList,
    ResponseFormat,
    ResponseRequest,
)
from core.api.shapes import ChatShape, ReplyShape, ResponseShape, TextShape
from core.api.stops import until_stop_sequence
from core.errors import ContextLengthError, LocalLLMError, MessageError
from core.inference.events import Event, Finished, Logprobs, TextDelta
from core.inference.formats import ReplyFormat, checked_format, checked_pattern, choice_pattern
from core.inference.params import GenerationParams
from core.inference.prompts import Continuation, Prompt, RawPrompt, ToolUse
from core.inference.tool_calls import CallStyle, call_style

if TYPE_CHECKING:  # the engine is handed in; only its type is needed here
    from core.inference.engine import LocalEngine


def create_app(
    engine: LocalEngine,
    models: Callable[[], list[str]],
    api_key: str | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    hosts: HostPolicy | None = None,
) -> FastAPI:
    """`models` lists the keys of ready models; `api_key`, when set, is required as a bearer token."""
    hosts = hosts or load_host_policy()
    middleware = [Middleware(TrustedHostsMiddleware, policy=hosts, refuse=asgi_refusal)]
    if hosts.allowed_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=sorted(hosts.allowed_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["*"]))  # fmt: skip
    middleware.append(Middleware(BodyLimitMiddleware, max_bytes=max_body_bytes, refuse=asgi_refusal))
    app = FastAPI(title="LocalLLM Dashboard API", docs_url=None, redoc_url=None, openapi_url=None,
                  middleware=middleware)  # fmt: skip
    install_handlers(app)

    def require_key(request: Request) -> None:
        if api_key is None:  # bound to loopback: this machine's programs need none, a proxy's clients do
            if hosts.names_this_machine(request.headers.get("host")):
                return
            raise APIError(
                401,
                "This server is reached through another name (a reverse proxy's): start it with "
                "LOCALLLM_API_KEY set, and send that key.",
                code="invalid_api_key",
            )
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "Invalid or missing API key.", code="invalid_api_key")

    @app.get("/health")
    def health() -> dict[str, str]:
        """For load balancers and monitors (as vLLM's and llama.cpp's): the server is up. No key needed."""
        return {"status": "ok"}

    def card(key: str) -> ModelCard:
        """A model as listed, with the context its requests may fill (as vLLM lists it: a dashboard that
        uses this server fits its conversations to it)."""
        try:
            return ModelCard(id=key, max_model_len=engine.context_tokens(key))
        except (LocalLLMError, OSError, ValueError):  # files changed since the list was read
            return ModelCard(id=key)

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    def list_models() -> dict[str, Any]:
        return ModelList(data=[card(key) for key in models()]).model_dump()

    @app.get("/v1/models/{model:path}", dependencies=[Depends(require_key)])
    def retrieve_model(model: str) -> dict[str, Any]:
        if model not in models():
            raise APIError(404, f"The model {model[:200]!r} does not exist or is not downloaded.",
                           code="model_not_found", param="model")  # fmt: skip
        return card(model).model_dump()

    async def read(request: Request, kind: type[Body]) -> Body:
        try:
            raw = await request.body()
        except BodyTooLargeError:
            raise APIError(413, f"The request body is larger than {max_body_bytes // 1024**2} MiB.") from None
        body = _parse(raw, kind)
        if body.model not in models():
            raise APIError(404, f"The model {body.model!r} does not exist or is not downloaded.",
                           code="model_not_found", param="model")  # fmt: skip
        return body

    async def reply(
        request: Request,
        body: GenerationRequest,
        prompt: Prompt,
        shape: ReplyShape,
        calling: Calling | None = None,
    ) -> Any:
        # The format is checked before the model is touched; a reply's calls are held to their own.
        reply_format = calling.held if calling else await run_in_threadpool(_reply_format, body)
        wanted = body.wanted_tokens or GenerationParams().max_new_tokens
        try:
            fit = await run_in_threadpool(engine.fit_prompt, body.model, prompt, wanted)
        except ContextLengthError as exc:
            raise from_core(exc, "prompt" if isinstance(shape, TextShape) else "messages") from exc
        defaults = await run_in_threadpool(engine.default_params, body.model)  # the model's own, as vLLM
        params = _params(body, replace(defaults, max_new_tokens=fit.max_new_tokens))
        stop = threading.Event()
        # A client's later turns may start from its earlier replies' caches, never from another's.
        client = request.client.host if request.client else ""
        events = engine.stream(body.model, prompt, params, stop, owner=f"api-{client}",
                               reply_format=reply_format, logprobs=body.logprobs_asked)  # fmt: skip
        if body.stop_sequences:
            events = until_stop_sequence(events, body.stop_sequences, stop)
        if calling:
            events = with_calls(events, calling.style, calling.names)
        try:
            first = await run_in_threadpool(next, events)  # the queue cap is checked on the first step
        except LocalLLMError as exc:
            raise from_core(exc) from exc
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _EngineStream(_sse(request, shape, first, events, include_usage), stop, events)
        return await _until_done_or_gone(request, stop, lambda: _complete(shape, first, events))

    def tool_use(body: ChatCompletionRequest | ResponseRequest) -> Calling | None:
        """How the reply may call tools (core.api.calls); 400 `tools_not_supported` where the request lists
        tools, or holds calls, and the model was not trained to call them as this server reads them."""
        asked = _tools_asked(body)
        if asked is None and not body.uses_tools:
            return None
        try:
            style = call_style(engine.tokenizer(body.model).chat_template or "")
        except (LocalLLMError, OSError, ValueError) as exc:  # files changed since the list was read
            raise APIError(404, f"The model {body.model!r} is not ready: {exc}", code="model_not_found",
                           param="model") from exc  # fmt: skip
        if style is None:
            raise APIError(400, f"The model {body.model!r} was not trained to call tools (its chat template "
                           "writes no calls in a form this server reads: Hermes' <tool_call>, as Qwen's, or "
                           "Llama 3's JSON): send the request without tools, or with tool_choice \"none\".",
                           code="tools_not_supported", param="tools")  # fmt: skip
        return asked.held_by(style) if asked else None

    @app.post("/v1/chat/completions", dependencies=[Depends(require_key)])
    async def chat_completions(request: Request) -> Any:
        body = await read(request, ChatCompletionRequest)
        calling = await run_in_threadpool(tool_use, body)
        shape = ChatShape(body.model, body.logprobs_asked is not None)
        return await reply(request, body, _chat_prompt(body, calling), shape, calling)

    @app.post("/v1/completions", dependencies=[Depends(require_key)])
    async def completions(request: Request) -> Any:
        body = await read(request, CompletionRequest)
        shape = TextShape(body.model, body.logprobs_asked is not None)
        return await reply(request, body, RawPrompt(body.text), shape)

    @app.post("/v1/responses", dependencies=[Depends(require_key)])
    async def responses(request: Request) -> Any:
        body = await read(request, ResponseRequest)
        said = {"instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
                "temperature": body.temperature, "top_p": body.top_p, "tools": body.tools_said,
                "tool_choice": body.tool_choice_said, "top_logprobs": body.top_logprobs,
                "parallel_tool_calls": body.parallel_tool_calls}  # fmt: skip
        calling = await run_in_threadpool(tool_use, body)
        messages = tuple(_input_messages(body))
        prompt = ToolUse(messages, calling.tools) if calling else list(messages)
        shape = ResponseShape(body.model, said, body.logprobs_asked is not None)
        return await reply(request, body, prompt, shape, calling)

    return app


Body = TypeVar("Body", ChatCompletionRequest, CompletionRequest, ResponseRequest)


def _parse(raw: bytes, kind: type[Body]) -> Body:
    try:
        body = kind.model_validate_json(raw)
    except ValidationError as exc:
        if any(
            error["type"] in ("json_invalid", "model_type") and not error["loc"] for error in exc.errors()
        ):
            raise APIError(400, "The body is not a JSON object.", code="invalid_json") from None
        raise from_validation(exc, json.loads(raw)) from None
    if body.logit_bias:  # {}, which clients send by default, means none
        raise APIError(400, "This server does not apply 'logit_bias': send the request without it.",
                       code="unsupported_parameter", param="logit_bias")  # fmt: skip
    if isinstance(body, CompletionRequest):
        _check_completion(body)
    elif isinstance(body, ResponseRequest):
        _check_response(body)
    else:
        _check_chat(body)
    return body


def _check_response(body: ResponseRequest) -> None:
    """What a response may ask that this server cannot give: 400 naming it, never ignored."""
    if body.previous_response_id:
        raise APIError(400, "This server keeps no responses: send the conversation in 'input' instead of "
                       "'previous_response_id'.", code="unsupported_parameter",
                       param="previous_response_id")  # fmt: skip


def _input_messages(body: ResponseRequest) -> list[dict[str, Any]]:
    """A response's instructions and input as the chat template's messages: the calls the model made
    join the assistant's message before them (as a chat completion's `tool_calls`), each call's output
    is a `tool` message."""
    messages: list[dict[str, Any]] = (
        [{"role": "system", "content": body.instructions}] if body.instructions else []
    )
    if isinstance(body.input, str):
        return [*messages, {"role": "user", "content": body.input}]
    for index, item in enumerate(body.input):
        if isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
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


def _check_completion(body: CompletionRequest) -> None:
    """What a text completion may ask that this server cannot give: 400 naming it, never ignored."""
    for name, asked in (("echo", body.echo), ("suffix", body.suffix), ("best_of", (body.best_of or 1) > 1)):
        if asked:
            raise APIError(400, f"This server does not take '{name}' with a completion: send the request "
                           "without it (a fill-in-the-middle prompt is written into 'prompt').",
                           code="unsupported_parameter", param=name)  # fmt: skip


def _check_chat(body: ChatCompletionRequest) -> None:
    """What a chat completion may ask that this server cannot give: 400 naming it, never ignored."""
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(
            400, "top_logprobs goes with logprobs true.", code="invalid_request", param="top_logprobs"
        )


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

    def held_by(self, style: CallStyle) -> Calling:
        """The calls as `style` writes them; 400 where a tool's parameters are no schema."""
        try:
            held = style.calls_format(self.tools, self.named, forced=self.forced, many=self.many)
        except MessageError as exc:
            raise APIError(400, exc.message, code="invalid_json_schema", param="tools") from exc
        return Calling(self.tools, style, held)


def _tools_asked(body: ChatCompletionRequest | ResponseRequest) -> ToolsAsked | None:
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


def _reply_format(body: GenerationRequest) -> ReplyFormat | None:
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


def _chat_prompt(body: ChatCompletionRequest, calling: Calling | None = None) -> Prompt:
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


def _params(body: GenerationRequest, defaults: GenerationParams) -> GenerationParams:
    """The request's sampling settings over `defaults` (what it leaves out)."""
    names = ("temperature", "top_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "top_k",
             "min_p", "seed")  # fmt: skip
    given = {name: getattr(body, name) for name in names} | {"thinking": body.thinking}
    return replace(defaults, **{name: value for name, value in given.items() if value is not None})


def _chain(first: Event, events: Iterator[Event]) -> Iterator[Event]:
    yield first
    yield from events


def _complete(shape: ReplyShape, first: Event, events: Iterator[Event]) -> dict[str, Any]:
    text, stats, calls, chances = [], None, (), []
    for event in _chain(first, events):
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, Logprobs):
            chances += event.tokens
        elif isinstance(event, CallsMade):
            calls = event.calls
        elif isinstance(event, Finished):
            stats = event.stats
    assert stats is not None  # the engine always ends with Finished
    return shape.whole("".join(text), stats, calls, tuple(chances) if shape.logprobs_asked else None)


async def _until_done_or_gone(request: Request, stop: threading.Event, work: Callable[[], Any]) -> Any:
    """Run `work` in a thread; if the client disconnects meanwhile, set `stop` (generation ends within
    a token) instead of finishing a reply nobody will read."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                stop.set()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await run_in_threadpool(work)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


class _EngineStream(StreamingResponse):
    """An SSE response that, however it ends (finished, client gone, cancelled), stops generation
    and frees the engine's queue. An abandoned body iterator's own cleanup would wait for garbage
    collection, which can hold the engine for good."""

    def __init__(self, content: AsyncIterator[str], stop: threading.Event, events: Iterator[Event]) -> None:
        super().__init__(content, media_type="text/event-stream")
        self._stop, self._events = stop, events

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._stop.set()
            threading.Thread(
                target=_close_when_free, args=(self._events,), name="close-stream", daemon=True
            ).start()


async def _sse(
    request: Request, shape: ReplyShape, first: Event, events: Iterator[Event], include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events. The server may drop writes to a closed connection without an error, so
    the disconnect is checked after every event."""
    sentinel = object()
    try:
        for written in shape.opening():
            yield written
        event: Any = first
        while event is not sentinel:
            if isinstance(event, TextDelta):
                for written in shape.piece(event.text):
                    yield written
            elif isinstance(event, Logprobs):
                shape.logprobs_came(event.tokens)
            elif isinstance(event, CallsMade):
                for written in shape.calls(event.calls):
                    yield written
            elif isinstance(event, Finished):
                for written in shape.closing(event.stats, include_usage):
                    yield written
            if await request.is_disconnected():
                return
            event = await run_in_threadpool(next, events, sentinel)
    except LocalLLMError as exc:
        for written in shape.failure(exc.message):
            yield written


def _close_when_free(events: Iterator[Event]) -> None:
    """Close the engine stream, freeing its turn in the queue, once no next() runs in it any more.

    A cancelled request may leave a next() running in a worker thread; close() raises until it ends,
    which is soon, since the stop event is set. Waiting for garbage collection could take forever.
    """
    while True:
        try:
            events.close()  # type: ignore[attr-defined]
            return
        except ValueError:  # "generator already executing"
            time.sleep(0.01)
