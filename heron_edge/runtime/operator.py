"""The system operator as its own process: it follows a clock and runs its per-step services.

The clock is the bus clock (lock-step SIL or a site orchestrator; the operator answers ``done``) or,
in the field, the timer clock of ``heron_edge.runtime.wallclock``: the operator runs step N as its
wall-clock period starts, the moment the gateways on the same timer clock run it.

The service is :class:`CoordinationService`: the environment's ``SystemOperator`` with the same
``Coordination`` (price always; setpoints from the microgrids' telemetry; the market after the
agents decided, with the clearing broadcast). After its services ran for step N the operator says
``done`` for N on the clock topic: the lock-step plant advances only when the operator and every
agent said done, so the market always clears after the decisions and before the plant steps.

A repeated announcement of a step already done (the plant repeats while it waits, e.g. for an agent
back from a broker restart) re-broadcasts that step's price and aggregates and says done again; it does not
re-run the waits (telemetry, orders), whose messages are gone. A step that failed (broker error) is
run again in full on its next announcement.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from heron_edge.agents import SystemOperator
from heron_edge.brokers import Broker, Subscription
from heron_edge.counters import Rejections, RejectSource, int_fields
from heron_edge.errors import BrokerError, ConfigError
from heron_edge.messages import (
    ClockBody,
    DecodeError,
    StatusBody,
    TelemetryBody,
    agent_topic,
    decode_on,
    make_envelope,
)
from heron_edge.protocols import Clearing, PriceSignal
from heron_edge.runtime.wallclock import timer_steps

__all__ = ["METER_KIND", "CoordinationService", "FeederMeter", "OperatorRuntime", "StepService", "ledger_row"]

log = logging.getLogger(__name__)

METER_KIND = "meter"
"""``heron/{site}/{plant}/meter``: the feeder-head reading (TelemetryBody ``feeder_head_mw``, MW, + import)
of the last step, stamped with the step about to run (the substation meter; in SIL the plant sends it)."""


class StepService(Protocol):
    """One thing the operator does for every step (publish a price, clear a market, ...)."""

    async def start(self) -> None:
        """Subscribe what the service listens to (before the operator says online: nothing is missed)."""

    async def on_step(self, step: int) -> None:
        """Run step ``step`` (its first announcement, or a retry after a failure)."""

    async def on_repeat(self, step: int) -> None:
        """The step already ran and is announced again: re-send what needs no new input."""

    def counters(self) -> dict[str, int]:
        """The service's counts, for the operator's status."""

    def rejections(self) -> dict[RejectSource, dict[str, int]]:
        """The messages the service rejected, by source and reason."""


class FeederMeter:
    """The feeder-head reading of each step from the meter topic; bounded wait, None when missing.

    A reading beyond ``limit_mw`` (in either direction) is rejected (reason ``bounds``)."""

    def __init__(self, broker: Broker, *, site: str, meter_id: str, timeout_s: float, limit_mw: float = 1e4) -> None:
        self.broker = broker
        self.topic = agent_topic(site, meter_id, METER_KIND)
        self.meter_id = meter_id
        self.timeout_s = timeout_s
        self.limit_mw = limit_mw
        self.late = 0
        """Steps without a reading in time."""
        self.rejected = Rejections()
        self._sub: Subscription | None = None
        self._readings: dict[int, float | None] = {}

    async def start(self) -> None:
        if self._sub is None:
            self._sub = await self.broker.subscribe(self.topic)

    def _take(self, topic: str, payload: bytes) -> None:
        try:
            envelope = decode_on(topic, payload)
        except DecodeError as exc:
            self.rejected[exc.reason] += 1
            log.warning("operator: rejected a meter reading on %s: %s", topic, exc)
            return
        if not isinstance(envelope.body, TelemetryBody):
            self.rejected["topic"] += 1
            return
        reading = envelope.body.values.get("feeder_head_mw")
        if reading is not None and abs(reading) > self.limit_mw:
            self.rejected["bounds"] += 1
            log.warning("operator: feeder-head reading %r MW beyond +/-%g MW rejected", reading, self.limit_mw)
            return
        self._readings[envelope.step] = reading
        while len(self._readings) > 64:
            del self._readings[next(iter(self._readings))]

    async def reading(self, step: int) -> float | None:
        """The feeder-head import (MW) stamped ``step``; None (counted ``meter_late``) when it does not come in time."""
        await self.start()
        assert self._sub is not None
        deadline = time.monotonic() + self.timeout_s
        for delivery in self._sub.drain():
            self._take(delivery.topic, delivery.payload)
        while step not in self._readings:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.late += 1
                log.warning("operator: no feeder-head reading for step %d", step)
                return None
            try:
                delivery = await self._sub.get(timeout=remaining)
            except TimeoutError:
                continue
            self._take(delivery.topic, delivery.payload)
        return self._readings[step]


def ledger_row(step: int, price: PriceSignal, setpoints: Sequence[float] | None, clearing: Clearing | None,
               head_loading_pu: float) -> dict[str, Any]:
    """What the operator told the site for one step, as one JSON-ready record (see :class:`CoordinationService`)."""
    return {
        "step": step, "price_usd_per_mwh": price.price_usd_per_mwh,
        "congestion_adder_usd_per_mwh": price.congestion_adder_usd_per_mwh, "head_loading_pu": head_loading_pu,
        "setpoint_mw": None if setpoints is None else [float(x) for x in setpoints],
        "clearing": None if clearing is None else {
            "price_usd_per_mwh": clearing.price_usd_per_mwh, "fee_usd_per_mwh": clearing.fee_usd_per_mwh,
            "trades": [[t.buyer, t.seller, t.quantity_mw, t.price_usd_per_mwh] for t in clearing.trades],
            "excluded": list(clearing.excluded)},
    }


def _append_line(path: Path, line: str) -> None:
    """Append one line (one write call, so a reader never sees half of it)."""
    with open(path, "a") as file:
        file.write(line + "\n")


class CoordinationService:
    """The SystemOperator's step: price (with the congestion adder from the feeder meter when price_signal runs)
    and setpoints before the agents decide, then the market; one ledger line per step when ``ledger`` is set.

    ``price_of(step)`` is the hourly price (USD/MWh). The ledger (JSON lines, :func:`ledger_row`) is what the
    operator signalled and cleared: with the plant's measured exchange it settles the step exactly as the
    environment does (``Coordination.settle_exchange``).
    """

    def __init__(self, operator: SystemOperator, price_of: Callable[[int], float], *,
                 meter: FeederMeter | None = None, ledger: Path | None = None) -> None:
        self.operator = operator
        self.price_of = price_of
        if operator.price_of is None:  # the aggregates' day-ahead outlook comes from the same prices
            operator.price_of = price_of
        self.meter = meter
        self.ledger = ledger
        self._loading: dict[int, float] = {}
        self._last_step: int | None = None

    async def start(self) -> None:
        await self.operator.start()
        if self.meter is not None:
            await self.meter.start()

    async def _head_loading(self, step: int) -> float:
        c = self.operator.coordination
        if "price_signal" not in c.protocols or self.meter is None:
            return 0.0  # no congestion rule: the loading does not change the price
        return c.head_loading_from_mw(await self.meter.reading(step))

    async def on_step(self, step: int) -> None:
        if self._last_step is not None and step < self._last_step:  # the clock went back: a new episode (SIL days)
            self.operator.reset(step)  # as the gateways do: no protocol state or kept message carries over
        if self._last_step is None or step < self._last_step:
            log.info("operator %s: episode starts at step %d", self.operator.agent_id, step)
        self._last_step = step
        loading = await self._head_loading(step)
        self._loading = {step: loading}
        price, setpoints = await self.operator.before_decision(step, self.price_of(step), loading)
        clearing = await self.operator.market(step)
        if self.ledger is not None:  # serialised now, appended off the event loop
            line = json.dumps(ledger_row(step, price, None if setpoints is None else setpoints.tolist(), clearing,
                                         loading))
            await asyncio.to_thread(_append_line, self.ledger, line)

    def counters(self) -> dict[str, int]:
        meter = {} if self.meter is None else {"meter_late": self.meter.late}
        return {**self.operator.counters(), **meter}

    def rejections(self) -> dict[RejectSource, dict[str, int]]:
        out = self.operator.rejections()
        if self.meter is not None and self.meter.rejected:
            out["meter"] = self.meter.rejected.as_dict()
        return out

    async def on_repeat(self, step: int) -> None:
        roles = self.operator.roles
        roles.link.step = step
        await self.operator.coordination.price.operator(roles.link, self.price_of(step), self._loading.get(step, 0.0))
        await self.operator.resend_aggregates(step)


@dataclass
class RuntimeStats:
    """Steps the operator ran, announcements of a step already done, and steps that failed."""

    steps: int = 0
    repeats: int = 0
    step_failed: int = 0


class OperatorRuntime:
    """Runs ``services`` on every step of its clock; ``await run()`` until :meth:`stop`.

    ``clock="bus"``: every step announced by ``clock_sender`` on its clock topic, answered with ``done``
    on the operator's own done topic; a step outside ``0 <= step < step_limit`` (e.g. past the profile
    year) is rejected (``rejected_bounds``). ``clock="timer"``: every ``period_s`` wall-clock period, as
    it starts (no ``done``: nobody waits for one). No step can end the process: whatever a step raises
    is logged and counted (``step_failed``) and the next announcement is served. The retained status
    carries the counters and rejections of the runtime and its services, republished after every step in
    which they changed.
    """

    def __init__(self, broker: Broker, *, site: str, operator_id: str, services: Sequence[StepService],
                 clock_sender: str = "plant", clock: Literal["bus", "timer"] = "bus", period_s: float = 1.0,
                 step_limit: int | None = None) -> None:
        if clock not in ("bus", "timer"):
            raise ConfigError(f"clock must be 'bus' or 'timer', not {clock!r}")
        if not period_s > 0:
            raise ConfigError(f"period_s must be positive, not {period_s!r}")
        self.broker = broker
        self.site = site
        self.operator_id = operator_id
        self.services = list(services)
        self.clock_sender = clock_sender
        self.clock = clock
        self.period_s = period_s
        self.step_limit = step_limit
        self.stats = RuntimeStats()
        self.clock_rejected = Rejections()
        self.done_step = -1
        self._stop = asyncio.Event()
        self._clock_topic = agent_topic(site, clock_sender, "clock")
        self._done_topic = agent_topic(site, operator_id, "done")
        self._status_topic = agent_topic(site, operator_id, "status")
        self._published: tuple[dict[str, int], dict[RejectSource, dict[str, int]]] | None = None

    def stop(self) -> None:
        self._stop.set()

    def counters(self) -> dict[str, int]:
        """The runtime's counts (steps, repeats, failed steps) and its services' (late telemetry, ...)."""
        merged = int_fields(self.stats)
        for service in self.services:
            merged.update(service.counters())
        return merged

    def rejections(self) -> dict[RejectSource, dict[str, int]]:
        """Rejected clock messages and the services' rejections, by source and reason."""
        merged: dict[RejectSource, dict[str, int]] = {}
        if self.clock_rejected:
            merged["clock"] = self.clock_rejected.as_dict()
        for service in self.services:
            for source, counts in service.rejections().items():
                merged[source] = {**merged.get(source, {}), **counts}
        return merged

    async def _status(self, state: str, detail: str = "") -> None:
        report = self.counters(), self.rejections()
        body = StatusBody(state=state, detail=detail, counters=report[0], rejected=report[1])  # type: ignore[arg-type]
        await self.broker.publish(self._status_topic, make_envelope(self.operator_id, body, step=max(self.done_step, 0)),
                                  retain=True)
        self._published = report

    async def run(self) -> None:
        await self.broker.connect()
        for service in self.services:
            await service.start()
        sub = await self.broker.subscribe(self._clock_topic) if self.clock == "bus" else None
        await self._status("online")
        log.info("operator %s: online on site %s, %s", self.operator_id, self.site,
                 f"timer clock every {self.period_s:g} s" if sub is None else f"bus clock from {self.clock_sender}")
        try:
            steps = timer_steps(self.period_s, self._stop) if sub is None else self._announced_steps(sub)
            async for step in steps:
                await self._run_step(step)
        finally:
            try:
                await self._status("offline", "stopped")
                if sub is not None:
                    await self.broker.unsubscribe(sub)
            except BrokerError:
                pass
            log.info("operator %s: stopped (last step done: %d)", self.operator_id, self.done_step)

    async def _announced_steps(self, sub: Subscription) -> AsyncIterator[int]:
        """Each step the clock sender announces on the bus clock, until :meth:`stop`."""
        while not self._stop.is_set():
            try:
                delivery = await sub.get(timeout=0.5)
            except TimeoutError:
                continue
            try:
                envelope = decode_on(delivery.topic, delivery.payload)
            except DecodeError as exc:
                self.clock_rejected[exc.reason] += 1
                log.warning("operator: rejected a clock message on %s: %s", delivery.topic, exc)
                continue
            body = envelope.body
            if not isinstance(body, ClockBody):
                continue
            if self.step_limit is not None and body.step >= self.step_limit:
                self.clock_rejected["bounds"] += 1
                log.warning("operator: clock step %d is beyond the last step %d; ignored", body.step, self.step_limit - 1)
                continue
            yield body.step

    async def _run_step(self, step: int) -> None:
        repeat = step == self.done_step
        try:
            for service in self.services:
                await (service.on_repeat(step) if repeat else service.on_step(step))
            if self.clock == "bus":
                await self.broker.publish(self._done_topic, make_envelope(
                    self.operator_id, ClockBody(step=step, done=True), step=step))
            if repeat:
                self.stats.repeats += 1
            else:
                self.stats.steps += 1
            self.done_step = step
        except BrokerError as exc:
            self.stats.step_failed += 1
            log.warning("operator: step %d not completed: %s", step, exc)
        except Exception:
            self.stats.step_failed += 1
            log.exception("operator: step %d failed", step)
        if (self.counters(), self.rejections()) != self._published:
            try:
                await self._status("online")
            except BrokerError as exc:
                log.info("operator: status not sent: %s", exc)
