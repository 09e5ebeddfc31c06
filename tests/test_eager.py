"""gather_eagerly and run_eagerly: the results and errors of asyncio's, no loop work for coroutines that never suspend."""
from __future__ import annotations

import asyncio

import pytest

from heron_edge.eager import gather_eagerly, run_eagerly


async def immediate(value: int) -> int:
    return value


async def sleeping(value: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return value


async def failing(message: str) -> int:
    raise ValueError(message)


async def fail_after_sleep(message: str) -> int:
    await asyncio.sleep(0.01)
    raise ValueError(message)


def test_results_in_order_and_waits_overlap() -> None:
    async def main() -> tuple[list[int], float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        out = await gather_eagerly(immediate(1), sleeping(2, 0.5), immediate(3), sleeping(4, 0.5))
        return out, loop.time() - start

    results, elapsed = asyncio.run(main())
    assert results == [1, 2, 3, 4]
    assert elapsed < 0.9  # the two 0.5 s waits overlapped


def test_no_task_for_coroutines_that_finish_at_once() -> None:
    async def main() -> int:
        before = len(asyncio.all_tasks())
        seen = []

        async def count() -> int:
            seen.append(len(asyncio.all_tasks()))
            return 0

        await gather_eagerly(count(), count(), count())
        return max(seen) - before

    assert asyncio.run(main()) == 0


@pytest.mark.parametrize("bad", [failing, fail_after_sleep])
def test_errors_propagate_and_nothing_is_left_running(bad) -> None:
    finished = []

    async def slow() -> int:
        await asyncio.sleep(0.3)
        finished.append(True)
        return 1

    async def main() -> set:
        with pytest.raises(ValueError, match="boom"):
            await gather_eagerly(slow(), bad("boom"), immediate(3))
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}

    assert asyncio.run(main()) == set()  # nothing left running once the error is out
    assert finished == []  # the slow one was cancelled, not left to finish


def test_cancellation_reaches_the_suspended_coroutines() -> None:
    cancelled = []

    async def waits() -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return 0

    async def main() -> None:
        outer = asyncio.ensure_future(gather_eagerly(waits(), waits()))
        await asyncio.sleep(0.01)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer

    asyncio.run(main())
    assert cancelled == [True, True]


def test_run_eagerly_finishes_without_the_loop_when_nothing_suspends() -> None:
    loop = asyncio.new_event_loop()
    ran_once = []
    original = loop._run_once  # type: ignore[attr-defined]
    loop._run_once = lambda: (ran_once.append(1), original())  # type: ignore[attr-defined]

    async def sees_the_loop() -> float:
        assert asyncio.get_running_loop() is loop  # futures and loop.time() work as in run_until_complete
        return loop.time()

    try:
        assert run_eagerly(loop, sees_the_loop()) > 0.0
        assert ran_once == []
        assert asyncio.events._get_running_loop() is None  # nothing is left looking like a running loop
        assert run_eagerly(loop, sleeping(7, 0.01)) == 7  # suspends: continues inside the loop
        assert ran_once
        with pytest.raises(ValueError, match="boom"):
            run_eagerly(loop, failing("boom"))
        with pytest.raises(ValueError, match="late"):
            run_eagerly(loop, fail_after_sleep("late"))
    finally:
        loop.close()


def test_run_eagerly_refuses_inside_a_running_loop() -> None:
    inner = asyncio.new_event_loop()

    async def main() -> None:
        with pytest.raises(RuntimeError, match="another loop is running"):
            run_eagerly(inner, immediate(1))
        assert asyncio.get_running_loop() is not inner  # the outer loop is still the running one

    try:
        asyncio.run(main())
    finally:
        inner.close()
