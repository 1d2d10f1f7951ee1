"""An OpenAI-compatible HTTP API over the local engine: GET /v1/models, POST /v1/chat/completions.

Uses the same LocalEngine (and so the same FIFO queue) as the dashboard. Bound to a non-loopback
address it requires a bearer token; on loopback the token is optional.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from core.access import lan_addresses
from core.engine import Event, Finished, LocalEngine, ReplyStats, TextDelta
from core.errors import (
    ConfigError,
    EngineError,
    InsufficientMemoryError,
    ModelNotReadyError,
    QueueFullError,
)
from core.generation import GenerationParams
from core.storage.db import Database

RETRY_AFTER_S = 5


def error_response(status: int, message: str, kind: str, code: str, **headers: str) -> JSONResponse:
    """An OpenAI-style error body."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _params(body: dict[str, Any]) -> GenerationParams:
    defaults = GenerationParams()
    return GenerationParams(
        temperature=float(body.get("temperature", defaults.temperature)),
        top_p=float(body.get("top_p", defaults.top_p)),
        max_new_tokens=int(
            body.get("max_completion_tokens") or body.get("max_tokens") or defaults.max_new_tokens
        ),
        repetition_penalty=float(body.get("repetition_penalty", defaults.repetition_penalty)),
    )


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ConfigError("'messages' must be a non-empty list.")
    cleaned = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ConfigError("Each message needs a 'role' and a 'content'.")
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise ConfigError("Each message needs a 'role' and a 'content'.")
        cleaned.append({"role": message["role"], "content": content})
    return cleaned


def _usage(stats: ReplyStats) -> dict[str, int]:
    total = stats.prompt_tokens + stats.completion_tokens
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "total_tokens": total,
    }


def _finish_reason(stats: ReplyStats) -> str:
    return "length" if stats.finish_reason == "length" else "stop"


def create_app(engine: LocalEngine, models: Callable[[], list[str]], api_key: str | None = None) -> FastAPI:
    """`models` lists the keys of ready models; `api_key`, when set, is required as a bearer token."""
    app = FastAPI(title="LocalLLM Dashboard API", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def require_token(request: Request, call_next: Callable) -> Any:
        if api_key:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return error_response(
                    401, "Invalid or missing API key.", "invalid_request_error", "invalid_api_key"
                )
        return await call_next(request)

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        data = [{"id": key, "object": "model", "created": 0, "owned_by": "localllm"} for key in models()]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as exc:
            return error_response(400, f"Malformed JSON body: {exc}", "invalid_request_error", "invalid_json")
        model = body.get("model")
        if model not in models():
            return error_response(
                404, f"The model {model!r} does not exist or is not downloaded.", "invalid_request_error",
                "model_not_found",
            )  # fmt: skip
        try:
            messages, params = _messages(body), _params(body)
        except (ConfigError, TypeError, ValueError) as exc:
            message = exc.message if isinstance(exc, ConfigError) else str(exc)
            return error_response(400, message, "invalid_request_error", "invalid_request")
        stop = threading.Event()
        events = engine.stream(model, messages, params, stop)
        try:
            first = await run_in_threadpool(next, events)  # the queue cap is checked on the first step
        except QueueFullError as exc:
            return error_response(
                429, exc.message, "rate_limit_exceeded", "queue_full", **{"Retry-After": str(RETRY_AFTER_S)}
            )
        except (InsufficientMemoryError, ModelNotReadyError, EngineError) as exc:
            return error_response(503, exc.message, "server_error", exc.code.removeprefix("error."))
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return _EngineStream(_sse(request, model, first, events, include_usage), stop, events)
        return await run_in_threadpool(_complete, model, first, events)

    return app


def _complete(model: str, first: Event, events: Iterator[Event]) -> dict[str, Any]:
    text, stats = [], None
    for event in _chain(first, events):
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, Finished):
            stats = event.stats
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(text)},
                "finish_reason": _finish_reason(stats),
            }
        ],
        "usage": _usage(stats),
    }


def _chain(first: Event, events: Iterator[Event]) -> Iterator[Event]:
    yield first
    yield from events


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
    request: Request, model: str, first: Event, events: Iterator[Event], include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events. The server may drop writes to a closed connection without an error, so
    the disconnect is checked after every event."""
    chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict[str, str], finish: str | None = None, **extra: Any) -> str:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish}] if delta is not None else []
        payload = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": choices, **extra}  # fmt: skip
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    sentinel = object()
    try:
        yield chunk({"role": "assistant", "content": ""})
        event: Any = first
        while event is not sentinel:
            if isinstance(event, TextDelta):
                yield chunk({"content": event.text})
            elif isinstance(event, Finished):
                yield chunk({}, _finish_reason(event.stats))
                if include_usage:
                    yield chunk(None, usage=_usage(event.stats))  # type: ignore[arg-type]
            if await request.is_disconnected():
                return
            event = await run_in_threadpool(next, events, sentinel)
        yield "data: [DONE]\n\n"
    except EngineError as exc:
        yield f"data: {json.dumps({'error': {'message': exc.message, 'type': 'server_error'}})}\n\n"


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


SERVER_STATUS_SETTING = "server.status"


def server_urls(host: str, port: int) -> list[str]:
    """The base URLs a client would use for a server bound to `host`."""
    hosts = lan_addresses() if host in ("0.0.0.0", "::") else [host]
    return [f"http://{h}:{port}/v1" for h in hosts] or [f"http://127.0.0.1:{port}/v1"]


def server_status(db: Database) -> dict[str, Any] | None:
    """The running `core serve` (pid, host, port, token_required), or None when none is running."""
    import psutil

    from core.storage import repo

    with db.begin() as session:
        status = repo.get_setting(session, SERVER_STATUS_SETTING)
    if not status or not psutil.pid_exists(int(status["pid"])):
        return None
    return status
