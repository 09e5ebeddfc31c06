"""The field's timer clock: step N is the wall-clock period ``[N * period_s, (N + 1) * period_s)`` of unix time.

Gateways and the operator on NTP-synchronised hosts all start step N at its boundary, so they meet on
the same step without a bus clock (the operator's price for N is out a few milliseconds after the
boundary; each cycle waits for it at most ``step_timeout_s``).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator

__all__ = ["hour_of_year_index", "seconds_to_next", "step_at", "timer_steps"]


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
    moment = dt.datetime.fromtimestamp(unix_s, tz=dt.timezone.utc)
    start = dt.datetime(moment.year, 1, 1, tzinfo=dt.timezone.utc)
    return int((moment - start).total_seconds() // (step_hours * 3600.0)) % n_steps


async def timer_steps(period_s: float, stop: asyncio.Event) -> AsyncIterator[int]:
    """Each step once, as its period starts, until ``stop`` is set. A step whose period has already
    passed when the previous one finished is skipped: a late consumer catches up instead of queuing."""
    last: int | None = None
    while not stop.is_set():
        step = step_at(period_s)
        if last is not None and step <= last:  # woke a hair early, or still inside the last step
            try:
                await asyncio.wait_for(stop.wait(), seconds_to_next(period_s) + 1e-4)
            except asyncio.TimeoutError:
                pass
            continue
        last = step
        yield step
