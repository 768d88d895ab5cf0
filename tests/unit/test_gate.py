"""The gate in front of the model: slots, a bounded line, arrival order, places given up."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ragqa.gate import Gate, QueueFullError


def test_slots_then_a_bounded_line_then_429() -> None:
    gate = Gate(slots=2, queue=2)
    tickets = [gate.enter() for _ in range(4)]
    assert [t.wait(0) for t in tickets] == [True, True, False, False]
    with pytest.raises(QueueFullError) as full:
        gate.enter()
    assert full.value.retry_after >= 1
    assert gate.stats()["running"] == 2 and gate.stats()["waiting"] == 2


def test_the_line_is_first_come_first_served() -> None:
    gate = Gate(slots=1, queue=3)
    first = gate.enter()
    assert first.wait(0)
    order: list[int] = []
    waiting = [gate.enter() for _ in range(3)]

    def wait(n: int) -> None:
        waiting[n].wait()
        order.append(n)
        waiting[n].release()

    threads = []
    for n in range(3):  # they get in line in this order
        threads.append(threading.Thread(target=wait, args=(n,)))
        threads[-1].start()
        while gate.stats()["waiting"] < n + 1:
            pass
    first.release()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2]


def test_a_caller_who_gives_up_frees_its_place_and_its_slot() -> None:
    gate = Gate(slots=1, queue=1)
    running, waiting = gate.enter(), gate.enter()
    assert running.wait(0) and not waiting.wait(0)
    waiting.release()  # a client that disconnected while in line
    assert gate.stats() | {} == {"slots": 1, "queue": 1, "admitted": 1, "running": 1, "waiting": 0, "peak_running": 1}
    third = gate.enter()  # its place is free again
    running.release()  # and the slot goes to the next in line, not to the one that left
    assert third.wait(0)
    third.release()
    assert gate.stats()["admitted"] == 0


def test_a_prepared_question_holds_no_slot_until_it_asks() -> None:
    """Admitted questions retrieve without a slot: a slot is taken only by wait()."""
    gate = Gate(slots=1, queue=1)
    preparing = gate.enter()
    other = gate.enter()
    assert other.wait(0)  # the first is still retrieving: the second generates first
    assert not preparing.wait(0)
    other.release()
    assert preparing.granted


def test_async_waiters_are_woken_from_another_thread() -> None:
    gate = Gate(slots=1, queue=1)
    holder = gate.enter()
    holder.wait()

    async def main() -> bool:
        ticket = gate.enter()
        threading.Timer(0.1, holder.release).start()
        await asyncio.wait_for(ticket.wait_async(), 5)
        ticket.release()
        return ticket.granted

    assert asyncio.run(main())


def test_the_line_keeps_admission_order_even_when_retrieval_finishes_out_of_order() -> None:
    gate = Gate(slots=1, queue=3)
    holder = gate.enter()
    holder.wait()
    early, late = gate.enter(), gate.enter()
    assert not late.wait(0)  # the later question finished retrieving first
    assert not early.wait(0)
    holder.release()
    assert early.granted and not late.granted  # first admitted, first served
