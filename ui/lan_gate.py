"""Before a LAN browser signs in it reaches the sign-in page and nothing else.

The page itself (HTML, Streamlit's static files, the health check and the websocket that renders the
sign-in form) is open; every endpoint that carries data or takes it in (uploads, media, components,
metrics, the agent API) needs the session cookie of a signed-in user. The machine itself (loopback)
is the admin and passes. Checked in the HTTP layer, before Streamlit sees the request.
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit

from core.access.hosts import ASGIApp, Receive, Scope, Send, header, load_host_policy, plain_refusal
from core.access.policy import is_loopback, load_access_policy
from core.access.sign_in import SignInGate
from core.errors import StorageError
from core.settings import load_settings
from core.storage.db import Database

SESSION_COOKIE = "localllm_session"
OPEN_PATHS = ("/_stcore/health", "/_stcore/host-config", "/_stcore/stream", "/static/")
GUARDED_PREFIXES = ("/_stcore/", "/media/", "/component/", "/app/static/")


def needs_sign_in(path: str) -> bool:
    return path.startswith(GUARDED_PREFIXES) and not path.startswith(OPEN_PATHS)


def session_token(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"cookie":
            try:
                morsel = SimpleCookie(value.decode("latin-1")).get(SESSION_COOKIE)
            except CookieError:
                return None
            return morsel.value if morsel else None
    return None


class LanGateMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._hosts = load_host_policy()
        self._gate: SignInGate | None = None

    def _signed_in(self, token: str | None) -> bool:
        if not token:
            return False
        try:
            if self._gate is None:
                self._gate = SignInGate(load_access_policy(), Database(load_settings().db_url))
            return self._gate.resume(token) is not None
        except StorageError:
            return False  # a database that cannot be read opens nothing

    def _from_this_machine(self, scope: Scope) -> bool:
        """This machine's own user: from loopback, addressed to this machine, from a page of this machine
        (not a reverse proxy's name, whose every visitor comes from loopback when it does not pass
        X-Forwarded-For; one that rewrites Host leaves the page's name in Origin)."""
        origin = header(scope, b"origin")
        return (
            is_loopback((scope.get("client") or ("",))[0])
            and self._hosts.names_this_machine(header(scope, b"host"))
            and (origin is None or self._hosts.names_this_machine(urlsplit(origin).netloc))
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = scope["type"] in ("http", "websocket") and needs_sign_in(scope["path"])
        if guarded and not self._from_this_machine(scope) and not self._signed_in(session_token(scope)):
            await plain_refusal(scope, receive, send, 403, "Sign in first.")
            return
        await self.app(scope, receive, send)
