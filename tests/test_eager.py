"""gather_eagerly: same results and errors as asyncio.gather, no Task for coroutines that never suspend."""
from __future__ import annotations

import asyncio

import pytest

from heron_edge.eager import gather_eagerly


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
        out = await gather_eagerly(immediate(1), sleeping(2, 0.2), immediate(3), sleeping(4, 0.2))
        return out, loop.time() - start

    results, elapsed = asyncio.run(main())
    assert results == [1, 2, 3, 4]
    assert elapsed < 0.35  # the two 0.2 s waits overlapped


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
    async def main() -> set:
        with pytest.raises(ValueError, match="boom"):
            await gather_eagerly(sleeping(1, 0.05), bad("boom"), immediate(3))
        await asyncio.sleep(0.1)
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}

    assert asyncio.run(main()) == set()


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
