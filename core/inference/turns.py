"""Whose turn it is: a FIFO of requests with their places in line and a cap on how many may wait."""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Generator

from core.errors import QueueFullError
from core.inference.events import Queued


class TurnQueue:
    """One reply runs at a time; the others wait in order and are told their place whenever it changes."""

    def __init__(self, max_waiting: int = 4) -> None:
        self.max_waiting = max_waiting
        self._turn = threading.Condition()
        self._waiting: deque[int] = deque()
        self._busy = False
        self._tickets = itertools.count(1)

    def enter(self) -> int:
        """A ticket in line; QueueFullError when `max_waiting` requests already wait."""
        with self._turn:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFullError(
                    f"{len(self._waiting)} requests are already waiting; please try again in a moment.",
                    waiting=len(self._waiting),
                )
            ticket = next(self._tickets)
            self._waiting.append(ticket)
            return ticket

    def wait(self, ticket: int, stop: threading.Event) -> Generator[Queued, None, bool]:
        """Yield the place in line whenever it changes; return True once this request may run (False
        when `stop` was set first)."""
        last: int | None = None
        while not stop.is_set():
            with self._turn:
                ahead = self._waiting.index(ticket) + (1 if self._busy else 0)
                if ahead == 0:
                    self._waiting.popleft()
                    self._busy = True
                    return True
                if ahead == last:
                    self._turn.wait(0.25)
                    continue
            last = ahead
            yield Queued(ahead)
        return False

    def wait_quietly(self, ticket: int, stop: threading.Event) -> bool:
        """`wait` without reporting the places: True once this request may run."""
        waiting = self.wait(ticket, stop)
        while True:
            try:
                next(waiting)
            except StopIteration as done:
                return done.value

    def leave(self, ticket: int, running: bool) -> None:
        with self._turn:
            if running:
                self._busy = False
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
            self._turn.notify_all()

    @property
    def busy(self) -> bool:
        with self._turn:
            return self._busy

    @property
    def waiting(self) -> int:
        with self._turn:
            return len(self._waiting)

    @property
    def idle(self) -> bool:
        with self._turn:
            return not self._busy and not self._waiting
