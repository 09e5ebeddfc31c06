"""The field's timer clock: step N is the wall-clock period ``[N * period_s, (N + 1) * period_s)`` of unix time.

Gateways and the operator on NTP-synchronised hosts all start step N at its boundary, so they meet on
the same step without a bus clock (the operator's price for N is out a few milliseconds after the
boundary; each cycle waits for it at most ``step_timeout_s``).

Hours are the data's: a policy trained on hourly data recorded in one time zone (the shipped data: California
local time, ``America/Los_Angeles``) must see the hour of day of that zone's wall clock, not UTC's
(:func:`step_of_day`, :func:`hour_of_year_index` with ``tz``). Hourly data has 24 rows a day, so positions
count wall-clock hours: across a daylight-saving change a local hour is skipped or repeated, as in the data.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["hour_of_year_index", "seconds_to_next", "step_at", "step_of_day", "step_of_day_function", "timer_steps", "zone"]

log = logging.getLogger(__name__)


def step_at(period_s: float, now: float | None = None) -> int:
    """The step whose period contains ``now`` (unix seconds, default: the current time)."""
    return int((time.time() if now is None else now) // period_s)


def seconds_to_next(period_s: float, now: float | None = None) -> float:
    """Seconds from ``now`` to the start of the next step."""
    now = time.time() if now is None else now
    return (step_at(period_s, now) + 1) * period_s - now


@lru_cache(maxsize=32)
def zone(name: str) -> dt.tzinfo:
    """The IANA time zone ``name`` (``UTC``, ``America/Los_Angeles``, ...); ValueError naming it when unknown."""
    if name.upper() == "UTC":
        return dt.UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as 'Europe/Berlin' or 'UTC')") from exc


def _wall_seconds(moment: dt.datetime, since: dt.datetime) -> float:
    """Wall-clock seconds from ``since`` to ``moment`` (both in the same zone, offsets ignored)."""
    return (moment.replace(tzinfo=None) - since.replace(tzinfo=None)).total_seconds()


def hour_of_year_index(unix_s: float, step_hours: float, n_steps: int, tz: dt.tzinfo = dt.UTC) -> int:
    """Index into a profile of ``n_steps`` steps of ``step_hours`` for the time ``unix_s``: the same wall-clock
    position in the profile's year in the zone ``tz`` (a leap day or a short profile wraps around)."""
    moment = dt.datetime.fromtimestamp(unix_s, tz=tz)
    start = dt.datetime(moment.year, 1, 1, tzinfo=tz)
    return int(_wall_seconds(moment, start) // (step_hours * 3600.0)) % n_steps


def step_of_day(unix_s: float, steps_per_day: int, tz: dt.tzinfo = dt.UTC) -> int:
    """The step of the day (0 .. steps_per_day - 1) whose wall-clock period in ``tz`` contains ``unix_s``."""
    moment = dt.datetime.fromtimestamp(unix_s, tz=tz)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return int(_wall_seconds(moment, midnight) // (86_400.0 / steps_per_day)) % steps_per_day


def step_of_day_function(*, timer: bool, period_s: float, steps_per_day: int, time_zone: str) -> Callable[[int], int]:
    """How a gateway turns its step into the step of the day: with a timer clock the wall-clock step of the day in
    ``time_zone`` of the step's start (``step * period_s``); with a bus clock (steps of the data's year) ``step %
    steps_per_day``."""
    if not timer:
        return lambda step: step % steps_per_day
    tz = zone(time_zone)
    return lambda step: step_of_day(step * period_s, steps_per_day, tz)


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
