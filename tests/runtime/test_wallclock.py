"""The field's timer clock: wall-clock steps, the profile index of a wall time, and the operator on that clock."""
from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from heron_edge.agents import SystemOperator
from heron_edge.brokers import InMemoryBroker
from heron_edge.coordination import UPSTREAM_ID, Coordination
from heron_edge.errors import ConfigError
from heron_edge.messages import ClockBody, PriceBody, agent_filter, agent_topic, decode
from heron_edge.runtime.operator import CoordinationService, OperatorRuntime
from heron_edge.runtime.wallclock import hour_of_year_index, seconds_to_next, step_at, timer_steps
from sim.scenario import load_scenario
from tests.conftest import run_async


def _utc(*args: int) -> float:
    return dt.datetime(*args, tzinfo=dt.UTC).timestamp()


def test_steps_are_wall_clock_periods() -> None:
    assert step_at(3600.0, 7200.0) == 2 and step_at(3600.0, 7199.999) == 1
    assert seconds_to_next(3600.0, 7200.0) == 3600.0
    assert seconds_to_next(0.5, 10.2) == pytest.approx(0.3)


def test_hour_of_year_index_wraps_leap_days_and_short_profiles() -> None:
    assert hour_of_year_index(_utc(2026, 1, 1), 1.0, 8760) == 0
    assert hour_of_year_index(_utc(2026, 1, 1, 5, 30), 1.0, 8760) == 5
    assert hour_of_year_index(_utc(2026, 1, 1, 5, 30), 0.25, 35040) == 22  # 15-minute steps
    assert hour_of_year_index(_utc(2026, 12, 31, 23), 1.0, 8760) == 8759
    assert hour_of_year_index(_utc(2024, 12, 31, 23), 1.0, 8760) == 8783 % 8760  # a leap year's last hour


def test_timer_steps_once_each_at_the_start_of_its_period() -> None:
    period = 0.1

    async def collect() -> list[tuple[int, float]]:
        stop = asyncio.Event()
        seen: list[tuple[int, float]] = []
        async for step in timer_steps(period, stop):
            seen.append((step, time.time()))
            if len(seen) == 6:
                stop.set()
            else:
                await asyncio.sleep(0.005)  # some work inside the step
        return seen

    seen = run_async(collect(), timeout=10)
    steps = [s for s, _ in seen]
    assert steps == list(range(steps[0], steps[0] + 6))  # consecutive, none twice
    for step, at in seen[1:]:  # after the first (joined mid-period) every step starts at its boundary
        assert step * period <= at < (step + 1) * period, (step, at - step * period)  # inside its own period


def test_timer_steps_skip_periods_that_passed() -> None:
    async def collect() -> list[int]:
        stop = asyncio.Event()
        seen: list[int] = []
        async for step in timer_steps(0.05, stop):
            seen.append(step)
            if len(seen) == 3:
                stop.set()
            elif len(seen) == 1:
                await asyncio.sleep(0.12)  # an overrun: more than two periods
        return seen

    first, second, third = run_async(collect(), timeout=10)
    assert second >= first + 2 and third == second + 1


def test_timer_steps_follow_a_clock_set_back() -> None:
    """An NTP step backwards: the next step comes after a period, not when the old number comes round."""
    offset = [0.0]

    def clock() -> float:
        return time.time() + offset[0]

    async def collect() -> tuple[list[int], float]:
        stop = asyncio.Event()
        seen: list[int] = []
        start = time.monotonic()
        async for step in timer_steps(0.1, stop, clock):
            seen.append(step)
            if len(seen) == 2:
                offset[0] = -3600.0  # set back an hour
            if len(seen) == 4:
                stop.set()
        return seen, time.monotonic() - start

    (a, b, c, d), elapsed = run_async(collect(), timeout=10)
    assert b == a + 1 and c <= b - 36_000 + 1 and d == c + 1
    assert elapsed < 1.0


def test_operator_on_the_timer_clock_prices_every_wall_clock_step() -> None:
    period = 0.1
    scenario = load_scenario("ieee34_3x13")

    def price_of(step: int) -> float:
        return 20.0 + step % 7

    async def run() -> tuple[list, list, OperatorRuntime]:
        broker = InMemoryBroker()
        await broker.connect()
        prices = await broker.subscribe(agent_topic("field", UPSTREAM_ID, "price"))
        clock = await broker.subscribe(agent_filter("field", "done"))
        operator = SystemOperator(UPSTREAM_ID, broker, Coordination(scenario, None, {}), site="field", step_timeout_s=0.05)
        runtime = OperatorRuntime(broker, site="field", operator_id=UPSTREAM_ID, clock="timer", period_s=period,
                                  services=[CoordinationService(operator, price_of)])
        task = asyncio.ensure_future(runtime.run())
        await asyncio.sleep(0.75)
        runtime.stop()
        await asyncio.wait_for(task, 2)
        return [decode(d.payload) for d in prices.drain()], clock.drain(), runtime

    messages, clock, runtime = run_async(run(), timeout=10)
    steps = [m.step for m in messages]
    assert len(steps) >= 6 and steps == list(range(steps[0], steps[0] + len(steps)))
    for m in messages:
        assert isinstance(m.body, PriceBody) and m.body.price_usd_per_mwh == price_of(m.step)
        assert m.step == step_at(period, m.ts)  # sent inside its own period
    assert not [d for d in clock if isinstance(decode(d.payload).body, ClockBody)]  # no done on a timer clock
    assert runtime.stats.steps == len(steps)


def test_operator_clock_settings_are_checked() -> None:
    broker = InMemoryBroker()
    with pytest.raises(ConfigError, match="clock"):
        OperatorRuntime(broker, site="s", operator_id="op", services=[], clock="cron")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="period_s"):
        OperatorRuntime(broker, site="s", operator_id="op", services=[], clock="timer", period_s=0.0)


def test_the_operator_starts_a_new_episode_when_the_step_goes_back() -> None:
    scenario = load_scenario("ieee34_3x13")

    async def run() -> list[tuple[int, bool]]:
        broker = InMemoryBroker()
        await broker.connect()
        operator = SystemOperator(UPSTREAM_ID, broker, Coordination(scenario, None, {}), site="s", step_timeout_s=0.05)
        service = CoordinationService(operator, lambda step: 30.0)
        await service.start()
        link = operator.roles.link
        seen = []
        for step in (10, 11, 5):
            link.memory["kept"] = step  # protocol state remembered between steps
            await service.on_step(step)
            seen.append((link.step, "kept" in link.memory))
        return seen

    assert run_async(run(), timeout=10) == [(10, True), (11, True), (5, False)]
