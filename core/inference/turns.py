"""Whose turn it is: up to its capacity replies of a model run together (its batch), beside the replies
of other models already loaded; the others wait in a FIFO with their places in line and a cap on how
many may wait."""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass

from core.errors import QueueFullError
from core.inference.events import Queued


@dataclass(frozen=True)
class Ticket:
    """A place in line for `key`'s model; an exclusive one runs alone (scoring)."""

    number: int
    key: str
    exclusive: bool = False


class TurnQueue:
    """Replies of a running model join it while there is room, and those of a model that may run beside
    the running ones (`beside`: loaded, or quick to load) start; the others wait in order and are told
    their place whenever it changes. The line is FIFO: a request for a model that must wait for the
    running ones to end (to be loaded at length) holds those behind it too."""

    def __init__(self, max_waiting: int = 4, beside: Callable[[str], bool] = lambda _key: False) -> None:
        self.max_waiting = max_waiting
        self._beside = beside
        self._capacities: dict[str, int] = {}  # a model's replies that may run together (unknown: 1)
        self._turn = threading.Condition()
        self._waiting: deque[Ticket] = deque()
        self._running: list[Ticket] = []
        self._numbers = itertools.count(1)

    def enter(self, key: str, *, exclusive: bool = False) -> Ticket:
        """A ticket in line; QueueFullError when `max_waiting` requests already wait."""
        with self._turn:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFullError(
                    f"{len(self._waiting)} requests are already waiting; please try again in a moment.",
                    waiting=len(self._waiting),
                )
            ticket = Ticket(next(self._numbers), key, exclusive)
            self._waiting.append(ticket)
            return ticket

    def set_capacity(self, key: str, capacity: int | None) -> None:
        """How many replies of `key`'s model may run together from now on (at least 1; None: not known,
        one at a time until it is)."""
        with self._turn:
            if capacity is None:
                self._capacities.pop(key, None)
            else:
                self._capacities[key] = max(1, capacity)
            self._turn.notify_all()

    def capacity(self, key: str) -> int:
        with self._turn:
            return self._capacities.get(key, 1)

    def _may_join(self, ticket: Ticket) -> bool:
        if not self._running:
            return True
        if ticket.exclusive or any(running.exclusive for running in self._running):
            return False
        same = sum(running.key == ticket.key for running in self._running)
        return same < self._capacities.get(ticket.key, 1) if same else self._beside(ticket.key)

    def wait(self, ticket: Ticket, stop: threading.Event) -> Generator[Queued, None, bool]:
        """Yield the place in line whenever it changes; return True once this request may run (False
        when `stop` was set first)."""
        last: int | None = None
        while not stop.is_set():
            with self._turn:
                index, joins = self._waiting.index(ticket), self._may_join(ticket)
                if index == 0 and joins:
                    self._running.append(self._waiting.popleft())
                    self._turn.notify_all()  # the next in line may join too
                    return True
                ahead = index + (0 if joins else 1)
                if ahead == last:
                    self._turn.wait(0.25)
                    continue
            last = ahead
            yield Queued(ahead)
        return False

    def wait_quietly(self, ticket: Ticket, stop: threading.Event) -> bool:
        """`wait` without reporting the places: True once this request may run."""
        waiting = self.wait(ticket, stop)
        while True:
            try:
                next(waiting)
            except StopIteration as done:
                return done.value

    def leave(self, ticket: Ticket, running: bool) -> None:
        with self._turn:
            if running:
                self._running.remove(ticket)
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
            self._turn.notify_all()

    @property
    def busy(self) -> bool:
        with self._turn:
            return bool(self._running)

    @property
    def running(self) -> int:
        with self._turn:
            return len(self._running)

    @property
    def waiting(self) -> int:
        with self._turn:
            return len(self._waiting)

    @property
    def idle(self) -> bool:
        with self._turn:
            return not self._running and not self._waiting

    def running_models(self) -> set[str]:
        """The models whose replies run now."""
        with self._turn:
            return {ticket.key for ticket in self._running}

    def wanted(self, key: str) -> bool:
        """A request for `key`'s model runs or waits."""
        with self._turn:
            return any(ticket.key == key for ticket in (*self._running, *self._waiting))
