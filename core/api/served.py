"""The API served from inside the dashboard: `localllm serve`'s app on a thread of the dashboard's own
process, over its engine, so that browser chats and API clients share one model in memory and one batch
(a second process would load a second copy). Started, moved and stopped from the Settings page."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.access.policy import cannot_listen, is_loopback, port_in_use
from core.api.keys import api_key_for
from core.api.routes import create_app
from core.api.status import forget_server, record_server
from core.errors import ConfigError
from core.storage.db import Database

if TYPE_CHECKING:
    import uvicorn

    from core.hub.library import ModelLibrary
    from core.inference.engine import LocalEngine

START_TIMEOUT_S = 30.0
SERVING_HOSTS = {"off": None, "local": "127.0.0.1", "lan": "0.0.0.0"}  # the `api_serving` setting's
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listening:
    """Where the dashboard's API answers, and the key it asks for (None on loopback)."""

    host: str
    port: int
    api_key: str | None


class DashboardApi:
    """At most one API server on a thread of this process; `serve` moves or stops it."""

    def __init__(
        self, engine: LocalEngine, models: Callable[[], list[str]], db: Database, data_dir: Path,
        library: ModelLibrary | None = None,
    ) -> None:  # fmt: skip
        """`library`: the catalog Ollama's /api/pull downloads into, for this machine's programs."""
        self._engine, self._models, self._db, self._data_dir = engine, models, db, data_dir
        self._library = library
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.listening: Listening | None = None
        self.problem: ConfigError | None = None  # why the last `serve` could not listen

    def serve(self, host: str | None, port: int) -> None:
        """Answer on host:port from now on (None: stop); nothing changes where it already does. Raises
        ConfigError, in one sentence (kept in `problem`), where it cannot listen there: the server before
        goes on where the new port is taken, and stops where it is the port's (a move to the LAN)."""
        with self._lock:
            if self.listening and (self.listening.host, self.listening.port) == (host, port):
                return
            self.problem = None
            try:
                if host is not None and self.listening is not None and self.listening.port != port:
                    _check_free(host, port)  # before the one running stops
                self._stop()
                if host is not None:
                    _check_free(host, port)
                    self._start(host, port, api_key_for(host, self._data_dir))
            except ConfigError as exc:
                self.problem = exc
                raise

    def serve_as(self, serving: str, port: int) -> None:
        """`serve` as the `api_serving` setting says: off, local (loopback) or lan (every address)."""
        self.serve(SERVING_HOSTS[serving], port)

    def _start(self, host: str, port: int, api_key: str | None) -> None:
        import uvicorn

        app = create_app(self._engine, self._models, api_key, library=self._library)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, name="dashboard-api", daemon=True)
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not server.started:
            server.should_exit = True
            raise _cannot_listen(port, "it did not start")
        self._server, self._thread = server, thread
        self.listening = Listening(host, port, api_key)
        record_server(self._db, host, port, api_key is not None, os.getpid())
        logger.info(
            "the dashboard's API answers on %s:%d%s", host, port, "" if is_loopback(host) else " (LAN)"
        )

    def _stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._server = self._thread = self.listening = None
        forget_server(self._db, os.getpid())
        logger.info("the dashboard's API stopped")


def _check_free(host: str, port: int) -> None:
    """ConfigError where a server could not listen on host:port."""
    if problem := cannot_listen(host, port):
        if port_in_use(problem):
            raise ConfigError(f"Port {port} is in use (another localllm serve, or another program): choose "
                              "another.", reason="port_in_use", port=port)  # fmt: skip
        raise _cannot_listen(port, str(problem.strerror or problem))


def _cannot_listen(port: int, cause: str) -> ConfigError:
    return ConfigError(f"The API cannot listen on port {port}: {cause}.", reason="cannot_listen", port=port,
                       cause=cause)  # fmt: skip
