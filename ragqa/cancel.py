"""Stopping a generation from another thread.

A front end that runs a generation in a thread of its own (the HTTP API's relay) runs it inside
``cancellable(token)``; a model call in progress registers how to abort itself with
``on_cancel(hook)`` (the openai backend: shut its socket down, which wakes a read blocked in a
long prompt's prefill and closes the request at the server). ``token.cancel()`` from any thread
runs the hooks. Outside ``cancellable`` nothing is registered and nothing changes.

Work before the model (embedding the question, retrieval, abstention's calibration) cannot be
interrupted mid-call, so it asks ``check_cancelled()`` between its steps: a question whose
client left stops at the next step instead of running to the end.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ragqa.errors import RagqaError

log = logging.getLogger(__name__)


class CancelToken:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: list[Callable[[], None]] = []
        self.cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            _run(hook)

    def add(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Run ``hook`` on cancel (at once if cancelled already); -> a function that unregisters it."""
        with self._lock:
            if not self.cancelled:
                self._hooks.append(hook)
                return lambda: self._remove(hook)
        _run(hook)
        return lambda: None

    def _remove(self, hook: Callable[[], None]) -> None:
        with self._lock:
            if hook in self._hooks:
                self._hooks.remove(hook)


_current: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar("ragqa_cancel", default=None)


@contextmanager
def cancellable(token: CancelToken) -> Iterator[CancelToken]:
    reset = _current.set(token)
    try:
        yield token
    finally:
        _current.reset(reset)


class Cancelled(RagqaError):
    """The caller went away (a client that disconnected): the work stopped."""


def check_cancelled() -> None:
    """Raise Cancelled if the work running in this context was cancelled."""
    token = _current.get()
    if token is not None and token.cancelled:
        raise Cancelled("cancelled: the client went away")


def on_cancel(hook: Callable[[], None]) -> Callable[[], None]:
    """Register ``hook`` with the generation running in this context; -> unregister."""
    token = _current.get()
    return token.add(hook) if token is not None else (lambda: None)


def _run(hook: Callable[[], None]) -> None:
    try:
        hook()
    except Exception as exc:  # noqa: BLE001 - a hook that fails must not stop the others
        log.debug("cancel hook failed: %s", exc)
