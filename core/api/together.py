"""A request's several choices (OpenAI's `n`, a completion's list of prompts), each a stream of the
engine's, their events merged in the order they come. As many start at once as the engine runs together,
the rest as those end: one request never fills the line by itself. Where that is not known yet (the model
is not loaded), the first starts alone and the others join it once it runs. The engine's batch generates
the ones that run at once together."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from starlette.concurrency import run_in_threadpool

from core.inference.events import Event, Queued

Start = Callable[[threading.Event], Awaitable[Iterator[Event]]]  # a choice's events, ended by its stop
Item = tuple[int, Event | Exception | None]  # a choice's index, and its event, failure or end (None)

_END = object()


class Choices:
    """`begin()`, then `rest()`; `stop()` ends them all within a token, whatever the reader does next.
    `at_once()`: how many replies the engine runs together now (None: not known until the model loads)."""

    def __init__(self, starts: list[Start], at_once: Callable[[], int | None]) -> None:
        self._starts = starts
        self._at_once = at_once
        self._stops = [threading.Event() for _ in starts]
        self._items: asyncio.Queue[Item] = asyncio.Queue()  # at most every choice's tokens: bounded
        self._room = asyncio.Condition()
        self._active = 0
        self._first_runs = asyncio.Event()
        self._ended = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._starts)

    async def begin(self) -> list[Item]:
        """Start the choices; return what came until the first and those that joined it at once each
        run: what the engine refuses (a full line, a model that cannot load) is raised before a reply is
        begun, every choice stopped."""
        self._spawn(self._schedule())
        came: list[Item] = []
        ran: set[int] = set()  # the choices that gave something other than their place in line
        waiting = set(range(min(len(self), self._at_once() or 1)))
        while waiting:
            index, item = await self._items.get()
            came.append((index, item))
            if isinstance(item, Exception):
                self.stop()
                raise item
            if item is None:
                self._ended += 1
            if not isinstance(item, Queued):
                ran.add(index)
                if index == 0:  # the model is loaded: the first round is as wide as the batch
                    waiting |= set(range(min(len(self), self._at_once() or 1)))
                waiting -= ran
        return came

    async def rest(self) -> AsyncIterator[Item]:
        """Every item after those `begin` returned, until each choice has ended."""
        while self._ended < len(self):
            index, item = await self._items.get()
            if item is None:
                self._ended += 1
            yield index, item

    def stop(self) -> None:
        for stop in self._stops:
            stop.set()

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def _schedule(self) -> None:
        for index in range(len(self)):
            if index == 1 and self._at_once() is None:
                await self._first_runs.wait()
            async with self._room:
                await self._room.wait_for(lambda: self._active < max(1, self._at_once() or 1))
                self._active += 1
            self._spawn(self._run(index))

    async def _run(self, index: int) -> None:
        stop = self._stops[index]
        try:
            if stop.is_set():
                return
            events = await self._starts[index](stop)
            try:
                while (event := await run_in_threadpool(next, events, _END)) is not _END:
                    if not isinstance(event, Queued):
                        self._first_runs.set()
                    self._items.put_nowait((index, event))  # type: ignore[arg-type]
            except Exception as exc:  # said to the reader, who answers it as a lone reply's
                self._items.put_nowait((index, exc))
            finally:
                stop.set()
                await run_in_threadpool(events.close)  # type: ignore[attr-defined]  # frees its turn
        except Exception as exc:  # the start's own checks
            self._items.put_nowait((index, exc))
        finally:
            self._first_runs.set()  # a first that ended lets the others go on (or end, where stopped)
            self._items.put_nowait((index, None))
            async with self._room:
                self._active -= 1
                self._room.notify_all()
