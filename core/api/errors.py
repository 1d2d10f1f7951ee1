"""OpenAI-style errors, rendered in one place: every refusal of the API has this shape and one sentence."""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from core.access.hosts import Receive, Scope, Send
from core.api.schemas import ErrorBody, ErrorDetail
from core.errors import (
    ContextLengthError,
    EngineError,
    LocalLLMError,
    ModelNotReadyError,
    QueueFullError,
)

RETRY_AFTER_S = 5
Body = TypeVar("Body", bound=BaseModel)
logger = logging.getLogger(__name__)


class APIError(Exception):
    """A refusal with its HTTP status, OpenAI's error type and code, and the parameter at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        detail = ErrorDetail(message=self.message, type=self.kind, param=self.param, code=self.code)
        return ErrorBody(error=detail).model_dump()

    def response(self) -> JSONResponse:
        logger.log(logging.WARNING if self.status >= 500 else logging.INFO, "answered %d %s: %s", self.status,
                   self.code, self.message)  # fmt: skip
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    async def send(self, send: Send) -> None:
        """The same answer at the ASGI level, for middleware that refuses before the app runs."""
        payload = json.dumps(self.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


# pydantic's error types that mean "not of this type", as OpenAI names what it expected
_EXPECTED = {"string_type": "a string", "list_type": "an array", "dict_type": "an object",
             "model_type": "an object", "model_attributes_type": "an object", "int_type": "an integer",
             "float_type": "a number", "bool_type": "a boolean"}  # fmt: skip


def validated(kind: type[Body], raw: bytes) -> Body:
    """The JSON body `raw` as `kind`; 400 in one sentence where it is no JSON object or not valid."""
    try:
        return kind.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors()
        if any("recursion limit" in error["msg"] for error in errors if error["type"] == "json_invalid"):
            raise APIError(400, "The body nests its JSON too deep to be read.", code="invalid_json") from None
        if any(error["type"] in ("json_invalid", "model_type") and not error["loc"] for error in errors):
            raise APIError(400, "The body is not a JSON object.", code="invalid_json") from None
        raise from_validation(exc, json.loads(raw)) from None


def validated_fields(kind: type[Body], fields: dict[str, Any]) -> Body:
    """`fields` (what another API's request means, read into this one's) as `kind`; 400 naming the
    parameter where they are not valid."""
    try:
        return kind.model_validate(fields)
    except ValidationError as exc:
        raise from_validation(exc, fields) from None


def from_validation(exc: ValidationError, body: object) -> APIError:
    """What pydantic found wrong with `body`, in one sentence naming the parameter as OpenAI does
    (`messages[0].content`); of a union's members, the one that got furthest into the value speaks, and
    one of the right type before those of other types."""
    found = [(_place(error, body), error) for error in exc.errors()]
    place = max((place for place, _ in found), key=len)
    at_fault = [error for where, error in found if len(where) == len(place)]
    param = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in place).lstrip(".")
    expected = [_EXPECTED.get(error["type"]) for error in at_fault]
    first = next((error for error in at_fault if error["type"] not in _EXPECTED), at_fault[0])
    if not param:
        message = f"Invalid body: {first['msg']}."
    elif all(expected):
        message = f"Invalid type for '{param}': expected {' or '.join(dict.fromkeys(expected))}."
    elif first["type"] == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        message = f"Invalid value for '{param}': {first['msg']}."
    return APIError(400, message, code="invalid_request", param=param or None)


def _place(error: Any, body: object) -> tuple[str | int, ...]:
    """Where in `body` the error is: its location less the tags pydantic gives a union's members."""
    place: list[str | int] = []
    node, last = body, len(error["loc"]) - 1
    for index, part in enumerate(error["loc"]):
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and type(part) is int and 0 <= part < len(node)
        ):
            node = node[part]
        elif not (index == last and error["type"] == "missing"):
            continue  # a union member's tag (`str`, `list[ContentPart]`), not a place in the body
        place.append(part)
    return tuple(place)


def from_core(exc: LocalLLMError, prompt: str = "messages") -> APIError:
    """A product error as the API reports it; `prompt`: the parameter that holds the prompt."""
    if isinstance(exc, ContextLengthError):
        return APIError(400, exc.message, code="context_length_exceeded", param=prompt)
    if isinstance(exc, QueueFullError):
        return APIError(429, exc.message, "rate_limit_exceeded", "queue_full",
                        headers={"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
    if isinstance(exc, ModelNotReadyError):
        return APIError(404, exc.message, code="model_not_found", param="model")
    if isinstance(exc, EngineError):
        return APIError(503, exc.message, "server_error", exc.code.removeprefix("error."))
    if exc.bad_input:
        return APIError(400, exc.message, code=exc.code.removeprefix("error."))
    return APIError(500, exc.message, "server_error", exc.code.removeprefix("error."))


async def asgi_refusal(scope: Scope, receive: Receive, send: Send, status: int, reason: str) -> None:
    """What the host, origin and size guards answer on this API: an OpenAI-style error."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    kind = "permission_error" if status == 403 else "invalid_request_error"
    await APIError(status, reason, kind, "request_refused").send(send)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _answer(request, exc)

    @app.exception_handler(LocalLLMError)
    async def core_error(request: Request, exc: LocalLLMError) -> JSONResponse:
        return _answer(request, from_core(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        said = _no_such_endpoint(request) if code else str(exc.detail)
        return _answer(request, APIError(exc.status_code, said, code=code, headers=dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("request failed")
        return _answer(request, APIError(500, f"The server failed to answer ({exc.__class__.__name__}).",
                                         "server_error", "internal_error"))  # fmt: skip


# Anthropic's error types, by status (its Messages API's errors: {"type": "error", "error": {...}}).
_ANTHROPIC_KINDS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    503: "overloaded_error"}  # fmt: skip


def anthropic_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _ANTHROPIC_KINDS.get(status, "api_error"), "message": message}}


def _answer(request: Request, exc: APIError) -> JSONResponse:
    """The refusal in the shape of the API asked: OpenAI's, Ollama's `{"error": "..."}` under /api/, or
    Anthropic's under /v1/messages."""
    path = request.url.path
    if path.startswith(("/api/", "/v1/messages")):
        exc.response()  # logged as any refusal
        said = {"error": exc.message} if path.startswith("/api/") else anthropic_body(exc.status, exc.message)
        return JSONResponse(said, status_code=exc.status, headers=exc.headers)
    return exc.response()


def _no_such_endpoint(request: Request) -> str:
    """What a client that asks for an endpoint this server lacks (embeddings, images) is told."""
    served = [
        f"{method} {route.path}"
        for route in request.app.routes
        if isinstance(route, APIRoute) and route.path.startswith("/v1/") and "{" not in route.path
        for method in sorted(route.methods - {"HEAD"})
    ]
    asked = f"{request.method} {request.url.path}"[:200]
    return f"This server does not answer {asked}; it answers {', '.join(served)}."
