"""The OpenAI-compatible routes: GET /v1/models (and /v1/models/{id}), POST /v1/chat/completions and
POST /v1/completions (text the model continues, without the chat template), with or without SSE;
GET /health.

Internal logic of a completion:
1. the guards (host, origin, body size) have run; the bearer token is checked;
2. the body is validated into a ChatCompletionRequest or CompletionRequest (400 with the parameter at
   fault; 400 for what this server cannot honour, never ignored);
3. the prompt is measured against the model's context window before anything is allocated for it
   (400 `context_length_exceeded`), and `max_tokens` is capped to what the context leaves;
4. the engine streams the reply; a client that goes away, streaming or not, sets the stop event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
import time
import uuid
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
from core.api.errors import APIError, asgi_refusal, from_core, from_validation, install_handlers
from core.api.limits import DEFAULT_MAX_BODY_BYTES, BodyLimitMiddleware, BodyTooLargeError
from core.api.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    CompletionRequest,
    Delta,
    GenerationRequest,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    TextChoice,
    TextCompletion,
    Usage,
)
from core.api.stops import until_stop_sequence
from core.errors import ContextLengthError, LocalLLMError
from core.inference.events import Event, Finished, ReplyStats, TextDelta
from core.inference.params import GenerationParams
from core.inference.prompts import Prompt, RawPrompt

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

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    def list_models() -> dict[str, Any]:
        return ModelList(data=[ModelCard(id=key) for key in models()]).model_dump()

    @app.get("/v1/models/{model:path}", dependencies=[Depends(require_key)])
    def retrieve_model(model: str) -> dict[str, Any]:
        if model not in models():
            raise APIError(404, f"The model {model[:200]!r} does not exist or is not downloaded.",
                           code="model_not_found", param="model")  # fmt: skip
        return ModelCard(id=model).model_dump()

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

    async def reply(request: Request, body: GenerationRequest, prompt: Prompt, shape: _Shape) -> Any:
        wanted = body.wanted_tokens or GenerationParams().max_new_tokens
        try:
            fit = await run_in_threadpool(engine.fit_prompt, body.model, prompt, wanted)
        except ContextLengthError as exc:
            raise from_core(exc, "prompt" if shape.text else "messages") from exc
        defaults = await run_in_threadpool(engine.default_params, body.model)  # the model's own, as vLLM
        params = _params(body, replace(defaults, max_new_tokens=fit.max_new_tokens))
        stop = threading.Event()
        # A client's later turns may start from its earlier replies' caches, never from another's.
        client = request.client.host if request.client else ""
        events = engine.stream(body.model, prompt, params, stop, owner=f"api-{client}")
        if body.stop_sequences:
            events = until_stop_sequence(events, body.stop_sequences, stop)
        try:
            first = await run_in_threadpool(next, events)  # the queue cap is checked on the first step
        except LocalLLMError as exc:
            raise from_core(exc) from exc
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _EngineStream(_sse(request, shape, first, events, include_usage), stop, events)
        return await _until_done_or_gone(request, stop, lambda: _complete(shape, first, events))

    @app.post("/v1/chat/completions", dependencies=[Depends(require_key)])
    async def chat_completions(request: Request) -> Any:
        body = await read(request, ChatCompletionRequest)
        return await reply(request, body, _messages(body), _Shape.new(body.model, text=False))

    @app.post("/v1/completions", dependencies=[Depends(require_key)])
    async def completions(request: Request) -> Any:
        body = await read(request, CompletionRequest)
        return await reply(request, body, RawPrompt(body.text), _Shape.new(body.model, text=True))

    return app


Body = TypeVar("Body", ChatCompletionRequest, CompletionRequest)


def _parse(raw: bytes, kind: type[Body]) -> Body:
    try:
        body = kind.model_validate_json(raw)
    except ValidationError as exc:
        if any(error["type"] in ("json_invalid", "model_type") for error in exc.errors()):
            raise APIError(400, "The body is not a JSON object.", code="invalid_json") from None
        raise from_validation(exc) from None
    if body.logit_bias:  # {}, which clients send by default, means none
        raise APIError(400, "This server does not apply 'logit_bias': send the request without it.",
                       code="unsupported_parameter", param="logit_bias")  # fmt: skip
    if isinstance(body, CompletionRequest):
        _check_completion(body)
    else:
        _check_chat(body)
    return body


def _check_completion(body: CompletionRequest) -> None:
    """What a text completion may ask that this server cannot give: 400 naming it, never ignored."""
    if body.logprobs is not None:
        raise APIError(400, "This server does not return log-probabilities: send the request without "
                       "'logprobs'.", code="logprobs_not_supported", param="logprobs")  # fmt: skip
    for name, asked in (("echo", body.echo), ("suffix", body.suffix), ("best_of", (body.best_of or 1) > 1)):
        if asked:
            raise APIError(400, f"This server does not take '{name}' with a completion: send the request "
                           "without it (a fill-in-the-middle prompt is written into 'prompt').",
                           code="unsupported_parameter", param=name)  # fmt: skip


def _check_chat(body: ChatCompletionRequest) -> None:
    """What a chat completion may ask that this server cannot give: 400 naming it, never ignored."""
    if body.tools:
        raise APIError(400, "This server's models do not call tools: send the request without 'tools'.",
                       code="tools_not_supported", param="tools")  # fmt: skip
    if body.logprobs or body.top_logprobs:
        raise APIError(400, "This server does not return log-probabilities: send the request without "
                       "'logprobs'.", code="logprobs_not_supported", param="logprobs")  # fmt: skip
    if body.response_format and body.response_format.type != "text":
        raise APIError(400, f"This server does not hold replies to a format ('{body.response_format.type}'): "
                       "send the request without 'response_format', and ask for JSON in the prompt.",
                       code="response_format_not_supported", param="response_format")  # fmt: skip


def _messages(body: ChatCompletionRequest) -> list[dict[str, str]]:
    cleaned = []
    for index, message in enumerate(body.messages):
        if others := message.parts_other_than_text():
            raise APIError(400, f"Messages may hold text only; message {index} has {', '.join(others)}.",
                           code="unsupported_content", param=f"messages.{index}.content")  # fmt: skip
        if message.role == "tool" or message.tool_calls:
            raise APIError(400, "This server's models do not call tools: tool messages are not accepted.",
                           code="tools_not_supported", param=f"messages.{index}")  # fmt: skip
        role = "system" if message.role == "developer" else message.role
        cleaned.append({"role": role, "content": message.text()})
    return cleaned


def _params(body: GenerationRequest, defaults: GenerationParams) -> GenerationParams:
    """The request's sampling settings over `defaults` (what it leaves out)."""
    names = ("temperature", "top_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "top_k",
             "min_p", "seed")  # fmt: skip
    given = {name: getattr(body, name) for name in names}
    options = body.chat_template_kwargs if isinstance(body, ChatCompletionRequest) else None
    given["thinking"] = options.enable_thinking if options else None
    return replace(defaults, **{name: value for name, value in given.items() if value is not None})


def _usage(stats: ReplyStats) -> Usage:
    total = stats.prompt_tokens + stats.completion_tokens
    return Usage(
        prompt_tokens=stats.prompt_tokens, completion_tokens=stats.completion_tokens, total_tokens=total,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=stats.cached_tokens),
    )  # fmt: skip


def _finish_reason(stats: ReplyStats) -> str:
    return "length" if stats.finish_reason == "length" else "stop"


def _chain(first: Event, events: Iterator[Event]) -> Iterator[Event]:
    yield first
    yield from events


@dataclass(frozen=True)
class _Shape:
    """How a reply is written: as a chat completion, or as a text completion (`text`)."""

    model: str
    text: bool
    id: str
    created: int

    @classmethod
    def new(cls, model: str, *, text: bool) -> _Shape:
        return cls(model, text, f"{'cmpl' if text else 'chatcmpl'}-{uuid.uuid4().hex}", int(time.time()))

    def whole(self, text: str, stats: ReplyStats) -> dict[str, Any]:
        finish, usage = _finish_reason(stats), _usage(stats)
        if self.text:
            choices = [TextChoice(text=text, finish_reason=finish)]
            return TextCompletion(id=self.id, created=self.created, model=self.model, choices=choices,
                                  usage=usage).model_dump()  # fmt: skip
        choice = Choice(message=AssistantMessage(content=text), finish_reason=finish)
        return ChatCompletion(id=self.id, created=self.created, model=self.model, choices=[choice],
                              usage=usage).model_dump()  # fmt: skip

    def opening(self) -> str | None:
        """A chat stream's first chunk names the role; a text stream has none."""
        return None if self.text else self._chunk([ChunkChoice(delta=Delta(role="assistant", content=""))])

    def piece(self, text: str) -> str:
        if self.text:
            return self._chunk([TextChoice(text=text, finish_reason=None)])
        return self._chunk([ChunkChoice(delta=Delta(content=text))])

    def finish(self, stats: ReplyStats) -> str:
        if self.text:
            return self._chunk([TextChoice(text="", finish_reason=_finish_reason(stats))])
        return self._chunk([ChunkChoice(delta=Delta(), finish_reason=_finish_reason(stats))])

    def usage(self, stats: ReplyStats) -> str:
        return self._chunk([], usage=_usage(stats))

    def _chunk(self, choices: list[Any], usage: Usage | None = None) -> str:
        kind = TextCompletion if self.text else ChatCompletionChunk
        payload = kind(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)
        return f"data: {payload.model_dump_json(exclude_none=usage is None)}\n\n"


def _complete(shape: _Shape, first: Event, events: Iterator[Event]) -> dict[str, Any]:
    text, stats = [], None
    for event in _chain(first, events):
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, Finished):
            stats = event.stats
    assert stats is not None  # the engine always ends with Finished
    return shape.whole("".join(text), stats)


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
    request: Request, shape: _Shape, first: Event, events: Iterator[Event], include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events. The server may drop writes to a closed connection without an error, so
    the disconnect is checked after every event."""
    sentinel = object()
    try:
        if opening := shape.opening():
            yield opening
        event: Any = first
        while event is not sentinel:
            if isinstance(event, TextDelta):
                yield shape.piece(event.text)
            elif isinstance(event, Finished):
                yield shape.finish(event.stats)
                if include_usage:
                    yield shape.usage(event.stats)
            if await request.is_disconnected():
                return
            event = await run_in_threadpool(next, events, sentinel)
        yield "data: [DONE]\n\n"
    except LocalLLMError as exc:
        yield f"data: {APIError(500, exc.message, 'server_error').response().body.decode()}\n\n"


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
