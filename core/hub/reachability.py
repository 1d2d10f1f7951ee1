"""Which download endpoints failed lately in this process: asked after the others for a while."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

REMEMBER_S = 600.0


class RecentFailures:
    """Endpoints whose every try failed lately (no connection, no answer, a server error): asked after
    the others for `remember_s`, so that the next check, download or search of this process goes to a
    mirror at once instead of after the failing one's timeouts (30 s of them where huggingface.co drops
    connections). An endpoint that answers is forgotten."""

    def __init__(self, remember_s: float = REMEMBER_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._remember_s = remember_s
        self._clock = clock
        self._failed: dict[str, float] = {}
        self._lock = threading.Lock()

    def failed(self, endpoint: str) -> None:
        with self._lock:
            self._failed[endpoint] = self._clock()

    def answered(self, endpoint: str) -> None:
        with self._lock:
            self._failed.pop(endpoint, None)

    def failing(self, endpoints: Sequence[str]) -> list[str]:
        """Those of `endpoints` that failed within `remember_s`, in their order."""
        now = self._clock()
        with self._lock:
            recent = {endpoint for endpoint, at in self._failed.items() if now - at < self._remember_s}
        return [e for e in endpoints if e in recent]

    def ordered(self, endpoints: Sequence[str]) -> list[str]:
        """`endpoints` in their order, those that failed within `remember_s` last."""
        failing = self.failing(endpoints)
        return [e for e in endpoints if e not in failing] + failing
