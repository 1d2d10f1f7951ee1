"""The OpenAI-compatible HTTP API (`core serve`) over the local engine: routes, request and response
bodies, errors, and the guards every request passes (host, origin, body size, token)."""

from core.api.routes import create_app
from core.api.status import server_status, server_urls

__all__ = ["create_app", "server_status", "server_urls"]
