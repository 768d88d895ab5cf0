"""Admission to the model: at most ``slots`` generations at once, at most ``queue`` more admitted, FIFO.

One ``Gate`` per running model, shared by every front end of a process (the HTTP API and the web
page), so together they never send the model more than it can take and never serialise what it
can batch. Admission is decided at once: ``enter()`` either admits (a ticket) or raises
``QueueFullError`` (HTTP 429 with ``Retry-After``) when ``slots + queue`` questions are in already.
An admitted question retrieves its chunks holding no slot; then it waits for a slot, in arrival
order (the order they were admitted in, not the order their retrieval finished), from a thread
(``wait``) or from asyncio (``wait_async``). ``release`` frees the slot (or
the place of a caller that gave up: a client that disconnected) and grants the next in line.

>>> gate = Gate(slots=1, queue=1)
>>> first, second = gate.enter(), gate.enter()
>>> first.wait(0), second.wait(0)
(True, False)
>>> gate.enter()
Traceback (most recent call last):
...
ragqa.gate.QueueFullError: the model is busy: 1 generating, 1 waiting (the most this server takes); retry in a few seconds
>>> first.release(); second.granted
True
"""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
from typing import Any

from ragqa.errors import RagqaError


class QueueFullError(RagqaError):
    """Every generation slot is taken and the waiting line is full: come back later."""

    exit_code = 1

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Ticket:
    """One admitted caller: preparing (not yet asking for a slot), waiting in line, or granted (a
    slot is theirs). Release it exactly once (a ``with`` block does), whatever its state."""

    def __init__(self, gate: "Gate", seq: int) -> None:
        self.gate = gate
        self.seq = seq  # admission order: the line is kept in this order
        self.granted = False
        self.queued = False
        self.released = False
        self.granted_at = 0.0
        self._event = threading.Event()
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def _grant(self) -> None:  # under the gate's lock
        self.granted, self.granted_at = True, time.monotonic()
        self._event.set()
        for loop, future in self._futures:
            loop.call_soon_threadsafe(_resolve, future)

    def wait(self, timeout: float | None = None) -> bool:
        """Get in line for a slot and block until granted; False if ``timeout`` passed first (the
        ticket stays in line)."""
        self.gate._queue_up(self)
        return self._event.wait(timeout)

    async def wait_async(self) -> None:
        """The same in asyncio, holding no thread. Cancelling the waiting task leaves the ticket in
        line: release it (the caller's ``finally``)."""
        self.gate._queue_up(self)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self.gate._lock:
            if self.granted:
                return
            self._futures.append((loop, future))
        await future

    def release(self) -> None:
        self.gate._release(self)

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Gate:
    """``slots`` generations at once; ``slots + queue`` questions admitted at most."""

    def __init__(self, slots: int, queue: int) -> None:
        if slots < 1 or queue < 0:
            raise ValueError(f"a gate needs slots >= 1 and queue >= 0 (got {slots}, {queue})")
        self.slots, self.queue = slots, queue
        self._lock = threading.Lock()
        self._admitted = 0  # tickets not released: preparing, waiting or running
        self._running = 0
        self._waiting: list[Ticket] = []  # by admission order
        self._admissions = 0
        self._seconds_per_job = 5.0  # a running estimate of a generation's length, for Retry-After
        self.peak_running = 0  # the most generations in flight at once so far (for tests and stats)

    def enter(self) -> Ticket:
        """Admit a question (QueueFullError when ``slots + queue`` are in already)."""
        with self._lock:
            if self._admitted >= self.slots + self.queue:
                ahead = self._admitted - self.slots + 1
                retry = max(1, round(self._seconds_per_job * ahead / self.slots))
                raise QueueFullError(
                    f"the model is busy: {self._running} generating, {self._admitted - self._running} waiting (the "
                    "most this server takes); retry in a few seconds", retry)
            self._admitted += 1
            self._admissions += 1
            return Ticket(self, self._admissions)

    def _queue_up(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket.queued or ticket.released:
                return
            ticket.queued = True
            bisect.insort(self._waiting, ticket, key=lambda t: t.seq)
            self._grant_waiting()

    def _grant_waiting(self) -> None:  # under the lock
        while self._waiting and self._running < self.slots:
            nxt = self._waiting.pop(0)
            self._running += 1
            self.peak_running = max(self.peak_running, self._running)
            nxt._grant()

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket.released:
                return
            ticket.released = True
            self._admitted -= 1
            if ticket.granted:
                held = time.monotonic() - ticket.granted_at
                self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * max(0.1, held)
                self._running -= 1
                self._grant_waiting()
            elif ticket.queued:
                try:
                    self._waiting.remove(ticket)  # gave up while waiting
                except ValueError:
                    pass

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"slots": self.slots, "queue": self.queue, "admitted": self._admitted, "running": self._running,
                    "waiting": len(self._waiting), "peak_running": self.peak_running}
