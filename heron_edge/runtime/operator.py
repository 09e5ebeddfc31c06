"""The system operator as its own process: it follows the bus clock and runs its per-step services.

Today's service is the price signal (``SystemOperator.publish_price``) from a price source; the
coordination protocols (setpoints, market clearing, consensus) plug in as further
:class:`StepService` objects, each called once per announced step, in order. After its services ran
for step N the operator says ``done`` for N on the clock topic (lock-step runs wait for it). A
repeated announcement of a step runs the services again (a message lost to a broker restart is
then sent again; receivers keep one per step).
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

from heron_edge.agents import SystemOperator
from heron_edge.brokers import Broker
from heron_edge.errors import BrokerError
from heron_edge.messages import ClockBody, DecodeError, StatusBody, agent_topic, bus_topic, decode, make_envelope

__all__ = ["OperatorRuntime", "PriceService", "StepService"]

log = logging.getLogger(__name__)


class StepService(Protocol):
    """One thing the operator does for every step (publish a price, clear a market, ...)."""

    async def on_step(self, step: int) -> None: ...


class PriceService:
    """Publishes ``price_of(step)`` (USD/MWh) for each step through a SystemOperator (its price-signal role).

    The SystemOperator's coordination decides what else goes out before the agents decide (setpoints
    when that protocol runs); ``head_loading_pu`` (the feeder head's loading, p.u.) is 0 here: the
    operator process does not see the plant, so a congestion adder never applies.
    """

    def __init__(self, operator: SystemOperator, price_of: Callable[[int], float]) -> None:
        self.operator = operator
        self.price_of = price_of

    async def on_step(self, step: int) -> None:
        await self.operator.before_decision(step, self.price_of(step), 0.0)


class OperatorRuntime:
    """Runs ``services`` on every step announced by ``clock_sender``; ``await run()`` until :meth:`stop`."""

    def __init__(self, broker: Broker, *, site: str, operator_id: str, services: Sequence[StepService],
                 clock_sender: str = "plant") -> None:
        self.broker = broker
        self.site = site
        self.operator_id = operator_id
        self.services = list(services)
        self.clock_sender = clock_sender
        self.stats: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._clock_topic = bus_topic(site, "clock")
        self._status_topic = agent_topic(site, operator_id, "status")

    def stop(self) -> None:
        self._stop.set()

    async def _status(self, state: str) -> None:
        body = StatusBody(state=state, counters={k: int(v) for k, v in self.stats.items()})  # type: ignore[arg-type]
        await self.broker.publish(self._status_topic, make_envelope(self.operator_id, body, step=0), retain=True)

    async def run(self) -> None:
        await self.broker.connect()
        sub = await self.broker.subscribe(self._clock_topic)
        await self._status("online")
        try:
            while not self._stop.is_set():
                try:
                    delivery = await sub.get(timeout=0.5)
                except (TimeoutError, asyncio.TimeoutError):
                    continue
                try:
                    envelope = decode(delivery.payload)
                except DecodeError as exc:
                    self.stats[f"rejected_{exc.reason}"] += 1
                    continue
                body = envelope.body
                if not isinstance(body, ClockBody) or body.done:
                    continue
                if envelope.sender != self.clock_sender:
                    self.stats["rejected_sender"] += 1
                    continue
                try:
                    for service in self.services:
                        await service.on_step(body.step)
                    await self.broker.publish(self._clock_topic, make_envelope(
                        self.operator_id, ClockBody(step=body.step, done=True), step=body.step))
                    self.stats["steps"] += 1
                except BrokerError as exc:
                    self.stats["step_failed"] += 1
                    log.warning("operator: step %d not completed: %s", body.step, exc)
        finally:
            try:
                await self._status("offline")
                await self.broker.unsubscribe(sub)
            except BrokerError:
                pass
