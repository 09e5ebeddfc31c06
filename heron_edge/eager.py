"""Eager coroutines: run each at once until it first suspends, and only then involve the event loop.

``gather_eagerly`` is asyncio.gather that way; ``run_eagerly`` is ``loop.run_until_complete``.

A coroutine that finishes without suspending (a publish to the in-memory broker) then costs a
function call instead of a Task and a trip through the event loop; one that suspends (waiting for
an MQTT PUBACK) continues as a Task, so waits still overlap. This is what Python 3.12's
``asyncio.eager_task_factory`` does for every task; this package supports Python 3.11+.
"""
from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


@types.coroutine
def _resume(coro: Coroutine[Any, Any, T], yielded: Any) -> Generator[Any, Any, T]:
    """Drive ``coro`` on from where it suspended on ``yielded`` (the future it awaits)."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                result: T = stop.value
                return result
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                result = stop.value
                return result


def run_eagerly(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """``loop.run_until_complete(coro)``, but a coroutine that never suspends runs as a plain call.

    The coroutine sees ``loop`` as the running loop (futures, ``loop.time()`` and ``call_soon`` work);
    once it suspends it continues inside ``loop.run_until_complete``. Like that call, it refuses to
    run inside another running loop.
    """
    # asyncio._get_running_loop / _set_running_loop: the loop implementers' API (in asyncio.__all__); Python 3.11
    # has no public way to make a loop current without running it (3.12's eager_task_factory needs 3.12)
    if asyncio._get_running_loop() is not None:
        coro.close()
        raise RuntimeError("Cannot run the event loop while another loop is running")
    asyncio._set_running_loop(loop)
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        asyncio._set_running_loop(None)
    return loop.run_until_complete(_resume(coro, yielded))


async def gather_eagerly(*coros: Coroutine[Any, Any, T]) -> list[T]:
    """Results of ``coros`` in order; the first exception propagates once the others are cancelled
    (those suspended) or closed (those not started)."""
    results: list[Any] = [None] * len(coros)
    pending: dict[int, asyncio.Future[T]] = {}
    started = 0
    try:
        for i, coro in enumerate(coros):
            started = i + 1
            try:
                yielded = coro.send(None)
            except StopIteration as stop:
                results[i] = stop.value
                continue
            pending[i] = asyncio.ensure_future(_resume(coro, yielded))
        if pending:
            for i, value in zip(pending, await asyncio.gather(*pending.values()), strict=True):
                results[i] = value
    except BaseException:
        for coro in coros[started:]:  # never started: close them so they do not warn
            coro.close()
        for task in pending.values():  # asyncio.gather leaves the others running: stop them
            task.cancel()
        await asyncio.gather(*pending.values(), return_exceptions=True)
        raise
    return results
