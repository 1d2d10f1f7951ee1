"""Pages of the dashboard are never shown inside another site's frame.

The `Host` and `Origin` checks (core.access.hosts) stop another site from reaching the dashboard itself,
but a page framing it loads it from its own address: the frame's requests and websocket are same-origin
and pass. Under a page that hides it behind decoys, the user's clicks would land on the dashboard's
buttons (clickjacking: Delete, Use for chat, settings). Every HTTP response therefore allows framing by
the dashboard's own pages only (its components' frames), in the header each generation of browsers reads.
"""

from __future__ import annotations

from core.access.hosts import ASGIApp, Message, Receive, Scope, Send

FRAMING_HEADERS = (
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"content-security-policy", b"frame-ancestors 'self'"),
)


class NoForeignFramesMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *FRAMING_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
