"""A request body limit, enforced before the body is read: announced sizes at once, chunked ones as
they arrive. A 100 MB body never reaches memory."""

from __future__ import annotations

import logging

from core.access.hosts import ASGIApp, Message, Receive, Refusal, Scope, Send

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
logger = logging.getLogger(__name__)


class BodyTooLargeError(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, refuse: Refusal) -> None:
        self.app, self.max_bytes, self.refuse = app, max_bytes, refuse

    def _sentence(self) -> str:
        logger.info("refused a request body over %d bytes", self.max_bytes)
        return f"The request body is larger than this server's limit of {self.max_bytes // 1024**2} MiB."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        announced = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if announced is not None and (not announced.isdigit() or int(announced) > self.max_bytes):
            await self.refuse(scope, receive, send, 413, self._sentence())
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLargeError:
            if not started:
                await self.refuse(scope, receive, send, 413, self._sentence())
