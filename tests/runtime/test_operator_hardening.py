"""The system operator against well-formed messages with extreme values, forged senders and silent microgrids:
it rejects, logs and counts them, keeps serving genuine steps, and its retained status carries the counters."""
from __future__ import annotations

import asyncio
import json
import logging
import time

import numpy as np
import pytest

from heron_edge.agents import SystemOperator
from heron_edge.brokers import InMemoryBroker
from heron_edge.coordination import UPSTREAM_ID, Coordination
from heron_edge.messages import (
    ClearingBody,
    ClockBody,
    OrderBody,
    PriceBody,
    SetpointBody,
    StatusBody,
    TelemetryBody,
    agent_topic,
    command_topic,
    decode,
    make_envelope,
)
from heron_edge.runtime.operator import CoordinationService, OperatorRuntime
from sim.scenario import load_scenario
from tests.conftest import run_async

SITE = "hard"
NAMES = ("mg1", "mg2", "mg3")


def _raw(sender: str, step: int, body: dict[str, object]) -> bytes:
    """A wire envelope written by hand (what a client that is not ours could send)."""
    return json.dumps({"id": f"{time.monotonic_ns():032x}", "sender": sender, "recipient": None, "step": step,
                       "ts": time.time(), "expires": None, "body": body}).encode()


class Site:
    """An operator runtime on the bus clock over InMemoryBroker, with a plant clock and microgrids driven by the test."""

    def __init__(self, protocols: list[str], *, telemetry_wait_s: float = 0.2) -> None:
        self.broker = InMemoryBroker()
        scenario = load_scenario("ieee34_3x13")
        self.coordination = Coordination(scenario, protocols, {})
        self.operator = SystemOperator(UPSTREAM_ID, self.broker, self.coordination, site=SITE, step_timeout_s=0.5,
                                       telemetry_wait_s=telemetry_wait_s)
        prices = np.linspace(20.0, 40.0, 8760)
        self.runtime = OperatorRuntime(self.broker, site=SITE, operator_id=UPSTREAM_ID, step_limit=len(prices),
                                       services=[CoordinationService(self.operator, lambda step: float(prices[step]))])

    async def start(self) -> asyncio.Future[None]:
        await self.broker.connect()
        self.done = await self.broker.subscribe(agent_topic(SITE, UPSTREAM_ID, "done"))
        self.prices = await self.broker.subscribe(agent_topic(SITE, UPSTREAM_ID, "price"))
        task = asyncio.ensure_future(self.runtime.run())
        await self._until(lambda: self.operator._started, "the operator subscribed")
        return task

    async def _until(self, condition, what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            await asyncio.sleep(0.005)

    async def announce(self, step: int) -> None:
        await self.broker.publish(agent_topic(SITE, "plant", "clock"), make_envelope("plant", ClockBody(step=step), step=step))

    async def done_with(self, step: int) -> None:
        """Wait until the operator said done for ``step`` (it served the step)."""
        delivery = await self.done.get(timeout=10)
        assert decode(delivery.payload).step == step

    async def status(self) -> StatusBody:
        sub = await self.broker.subscribe(agent_topic(SITE, UPSTREAM_ID, "status"))
        body = decode((await sub.get(timeout=5)).payload).body
        await self.broker.unsubscribe(sub)
        assert isinstance(body, StatusBody)
        return body

    async def stop(self, task: asyncio.Future[None]) -> None:
        self.runtime.stop()
        await asyncio.wait_for(task, 5)
        await self.operator.close()
        await self.broker.close()


def test_clock_steps_past_the_year_are_rejected_and_the_next_step_is_served(caplog: pytest.LogCaptureFixture) -> None:
    site = Site([])

    async def main() -> StatusBody:
        task = await site.start()
        clock = agent_topic(SITE, "plant", "clock")
        for step in (8760, 50_000):  # in bounds of the wire, past the profile year: what crashed it (IndexError)
            await site.announce(step)
        await site.broker.publish(clock, _raw("plant", 1, {"kind": "clock", "step": 10**30}), retain=True)
        await site.broker.publish(clock, _raw("mg1", 2, {"kind": "clock", "step": 2}))  # forged sender
        await site.announce(3)
        await site.done_with(3)
        status = await site.status()
        await site.stop(task)
        return status

    with caplog.at_level(logging.WARNING):
        status = run_async(main())
    assert status.rejected["clock"] == {"bounds": 3, "sender": 1}
    assert status.counters["steps"] == 1 and site.runtime.done_step == 3
    assert sum("rejected a clock message" in r.getMessage() or "beyond the last step" in r.getMessage()
               for r in caplog.records) == 4


def test_extreme_telemetry_is_rejected_and_setpoints_still_go_out() -> None:
    site = Site(["setpoint"])

    async def main() -> tuple[list[float], StatusBody]:
        task = await site.start()
        setpoints = [await site.broker.subscribe(command_topic(SITE, n, "setpoint")) for n in NAMES]
        await site.announce(5)
        telemetry = {n: agent_topic(SITE, n, "telemetry") for n in NAMES}
        await site.broker.publish(telemetry["mg1"], _raw("mg1", 5, {"kind": "telemetry",
                                                                   "values": {"load_mw": 1e308, "pv_mw": -1e308}}))
        await site.broker.publish(telemetry["mg2"], make_envelope("mg2", TelemetryBody(  # in the wire's bounds, not mg2's
            values={"load_mw": 5e4, "pv_mw": 0.0}), step=5))
        await site.broker.publish(telemetry["mg3"], make_envelope("mg1", TelemetryBody(values={"load_mw": 1.0}), step=5))
        for name in NAMES:
            await site.broker.publish(telemetry[name], make_envelope(name, TelemetryBody(
                values={"load_mw": 1.0, "pv_mw": 0.2, "wind_mw": 0.1}), step=5))
        await site.done_with(5)
        sent = [decode((await s.get(timeout=5)).payload).body for s in setpoints]
        status = await site.status()
        await site.stop(task)
        return [b.p_mw for b in sent if isinstance(b, SetpointBody)], status

    p_mw, status = run_async(main())
    assert len(p_mw) == 3 and all(np.isfinite(p_mw)) and max(abs(p) for p in p_mw) < 10
    assert status.rejected["message"] == {"bounds": 2, "sender": 1}
    assert status.counters.get("late", 0) == 0 and status.counters.get("step_failed", 0) == 0


def test_extreme_orders_are_rejected_and_the_market_clears_the_genuine_ones() -> None:
    site = Site(["p2p_trading"])

    async def main() -> tuple[ClearingBody, StatusBody]:
        task = await site.start()
        clearing = await site.broker.subscribe(agent_topic(SITE, UPSTREAM_ID, "clearing"))
        await site.announce(7)
        market = {n: agent_topic(SITE, n, "market") for n in NAMES}
        order = {"kind": "order", "side": "bid", "quantity_mw": 1.0, "limit_price_usd_per_mwh": 1.7e308}
        await site.broker.publish(market["mg1"], _raw("mg1", 7, order))  # what cleared at inf
        await site.broker.publish(market["mg2"], _raw("mg2", 7, {**order, "side": "ask", "limit_price_usd_per_mwh": 1.5e308}))
        await site.broker.publish(market["mg2"], make_envelope("mg2", OrderBody(  # the wire allows it, the market does not
            side="ask", quantity_mw=9e4, limit_price_usd_per_mwh=10.0), step=7))
        genuine = {"mg1": OrderBody(side="bid", quantity_mw=1.0, limit_price_usd_per_mwh=40.0),
                   "mg2": OrderBody(side="ask", quantity_mw=2.0, limit_price_usd_per_mwh=30.0),
                   "mg3": OrderBody(side="bid", quantity_mw=0.0, limit_price_usd_per_mwh=0.0)}
        for name, body in genuine.items():
            await site.broker.publish(market[name], make_envelope(name, body, step=7, recipient=UPSTREAM_ID))
        await site.done_with(7)
        body = decode((await clearing.get(timeout=5)).payload).body
        status = await site.status()
        await site.stop(task)
        assert isinstance(body, ClearingBody)
        return body, status

    body, status = run_async(main())
    assert body.clearing_price_usd_per_mwh == 35.0 and [t.quantity_mw for t in body.trades] == [1.0]
    assert status.rejected["protocol"] == {"bounds": 3}


def test_a_silent_microgrid_delays_the_price_by_the_telemetry_wait_only() -> None:
    site = Site(["setpoint"], telemetry_wait_s=0.3)

    async def main() -> tuple[float, StatusBody]:
        task = await site.start()
        await site.announce(9)
        t0 = time.monotonic()
        for name in ("mg1", "mg3"):  # mg2 is dead
            await site.broker.publish(agent_topic(SITE, name, "telemetry"), make_envelope(name, TelemetryBody(
                values={"load_mw": 1.0, "pv_mw": 0.0, "wind_mw": 0.0}), step=9))
        delivery = await site.prices.get(timeout=5)
        waited = time.monotonic() - t0
        assert isinstance(decode(delivery.payload).body, PriceBody)
        await site.done_with(9)
        status = await site.status()
        await site.stop(task)
        return waited, status

    waited, status = run_async(main())
    assert 0.25 <= waited < 0.5 * 2.0  # the wait, well under an agents' upstream timeout of 2 s
    assert status.counters["late"] == 1 and status.counters["late_mg2"] == 1 and "late_mg1" not in status.counters


def test_a_failing_step_is_counted_and_the_operator_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    site = Site([])
    calls: list[int] = []

    def price_of(step: int) -> float:
        calls.append(step)
        if step == 11:
            raise ZeroDivisionError("a bug in a service")
        return 30.0

    site.runtime.services[0].price_of = price_of  # type: ignore[attr-defined]

    async def main() -> StatusBody:
        task = await site.start()
        await site.announce(11)
        await site.announce(12)
        await site.done_with(12)
        status = await site.status()
        await site.stop(task)
        return status

    with caplog.at_level(logging.ERROR):
        status = run_async(main())
    assert calls == [11, 12] and status.counters["step_failed"] == 1 and status.counters["steps"] == 1
    assert any("step 11 failed" in r.getMessage() and r.exc_info for r in caplog.records)
