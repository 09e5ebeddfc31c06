"""The field's timer clock: step N is the wall-clock period ``[N * period_s, (N + 1) * period_s)`` of unix time.

Gateways and the operator on NTP-synchronised hosts all start step N at its boundary, so they meet on
the same step without a bus clock (the operator's price for N is out a few milliseconds after the
boundary; each cycle waits for it at most ``step_timeout_s``).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable

__all__ = ["hour_of_year_index", "seconds_to_next", "step_at", "timer_steps"]

log = logging.getLogger(__name__)


def step_at(period_s: float, now: float | None = None) -> int:
    """The step whose period contains ``now`` (unix seconds, default: the current time)."""
    return int((time.time() if now is None else now) // period_s)


def seconds_to_next(period_s: float, now: float | None = None) -> float:
    """Seconds from ``now`` to the start of the next step."""
    now = time.time() if now is None else now
    return (step_at(period_s, now) + 1) * period_s - now


def hour_of_year_index(unix_s: float, step_hours: float, n_steps: int) -> int:
    """Index into a profile of ``n_steps`` steps of ``step_hours`` for the UTC time ``unix_s``: the same
    position in the profile's year (a leap day or a short profile wraps around)."""
    moment = dt.datetime.fromtimestamp(unix_s, tz=dt.UTC)
    start = dt.datetime(moment.year, 1, 1, tzinfo=dt.UTC)
    return int((moment - start).total_seconds() // (step_hours * 3600.0)) % n_steps


async def timer_steps(period_s: float, stop: asyncio.Event,
                      clock: Callable[[], float] = time.time) -> AsyncIterator[int]:
    """Each step once, as its period starts, until ``stop`` is set. A step whose period has already
    passed when the previous one finished is skipped: a late consumer catches up instead of queuing.
    When the wall clock is set back (an NTP step, a gateway booted with a stale clock) the steps
    follow it at once rather than pausing until the old step number comes round again."""
    last: int | None = None
    while not stop.is_set():
        now = clock()
        step = step_at(period_s, now)
        if step == last:  # still inside the last step (or woke a hair early)
            try:
                await asyncio.wait_for(stop.wait(), seconds_to_next(period_s, now) + 1e-4)
            except TimeoutError:
                pass
            continue
        if last is not None and step < last:
            log.warning("wall clock went back %.1f s: continuing at step %d", (last - step) * period_s, step)
        last = step
        yield step
