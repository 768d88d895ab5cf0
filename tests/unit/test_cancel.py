"""ragqa.cancel: a generation's model call is stopped from another thread by the hooks it registered."""

from __future__ import annotations

import threading

from ragqa.cancel import CancelToken, cancellable, on_cancel


def test_hooks_registered_inside_run_on_cancel_from_another_thread() -> None:
    token, ran = CancelToken(), []
    registered = threading.Event()

    def generation() -> None:
        with cancellable(token):
            on_cancel(lambda: ran.append("shut"))
            undo = on_cancel(lambda: ran.append("never"))
            undo()  # a call that finished unregisters
            registered.set()

    worker = threading.Thread(target=generation)
    worker.start()
    registered.wait(5)
    worker.join(5)
    canceller = threading.Thread(target=token.cancel)
    canceller.start()
    canceller.join(5)
    assert ran == ["shut"]


def test_a_hook_added_after_cancel_runs_at_once_and_outside_nothing_registers() -> None:
    token, ran = CancelToken(), []
    token.cancel()
    with cancellable(token):
        on_cancel(lambda: ran.append(1))
    assert ran == [1]
    on_cancel(lambda: ran.append(2))()  # no generation running here: nothing happens
    assert ran == [1]


def test_a_failing_hook_does_not_stop_the_others() -> None:
    token, ran = CancelToken(), []
    with cancellable(token):
        on_cancel(lambda: 1 / 0)
        on_cancel(lambda: ran.append("second"))
    token.cancel()
    assert ran == ["second"]
