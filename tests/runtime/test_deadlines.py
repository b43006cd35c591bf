"""``node._Deadlines``: the ticker's proposal and wait timeouts."""

from __future__ import annotations

import asyncio

from ram.consensus.runtime.node import _Deadlines


async def test_expire_fails_only_what_is_due_and_not_done() -> None:
    loop = asyncio.get_running_loop()
    deadlines = _Deadlines()
    due, answered, later = (loop.create_future() for _ in range(3))
    deadlines.add(1.0, due, lambda: TimeoutError("due"))
    deadlines.add(1.0, answered, lambda: TimeoutError("answered"))
    deadlines.add(5.0, later, lambda: TimeoutError("later"))
    answered.set_result(7)
    deadlines.expire(0.5)
    assert not due.done()
    deadlines.expire(1.0)
    assert isinstance(due.exception(), TimeoutError) and answered.result() == 7 and not later.done()
    assert len(deadlines) == 1
    deadlines.expire(10.0)
    assert str(later.exception()) == "later" and len(deadlines) == 0


async def test_answered_futures_do_not_pile_up() -> None:
    """Answered futures wait in the heap for their deadline; a sweep keeps it near what is pending."""
    loop = asyncio.get_running_loop()
    deadlines = _Deadlines()
    pending = []
    for k in range(20 * _Deadlines.SWEEP_AT):
        future: asyncio.Future[None] = loop.create_future()
        deadlines.add(1000.0 + k, future, lambda: TimeoutError())
        if k % 100 == 0:
            pending.append(future)
        else:
            future.set_result(None)
        assert len(deadlines) <= max(_Deadlines.SWEEP_AT, 2 * len(pending)) + 1
    deadlines.expire(10**9)
    assert all(isinstance(f.exception(), TimeoutError) for f in pending)


async def test_after_close_every_wait_fails_at_once() -> None:
    """A stopped node's ticker expires nothing any more: waits still queued, and later ones, fail."""
    loop = asyncio.get_running_loop()
    deadlines = _Deadlines()
    queued: asyncio.Future[None] = loop.create_future()
    deadlines.add(loop.time() + 60, queued, lambda: TimeoutError("late"))
    deadlines.close(lambda: RuntimeError("stopped"))
    assert str(queued.exception()) == "stopped" and len(deadlines) == 0
    later: asyncio.Future[None] = loop.create_future()
    deadlines.add(loop.time() + 60, later, lambda: TimeoutError("late"))
    assert str(later.exception()) == "stopped"
