"""SystemOperator: the microgrids' upstream. Every step it broadcasts the price, and runs the operator
side of the configured protocols (setpoints from the microgrids' reported needs, the market).

The microgrid agents accept price and commands only from their configured upstream id.
"""
from __future__ import annotations

import logging
import time
from collections import Counter

import numpy as np

from heron_edge.brokers import Broker, Subscription
from heron_edge.coordination import Coordination, OperatorRoles
from heron_edge.messages import DecodeError, TelemetryBody, agent_filter, decode
from heron_edge.protocols import Clearing, Link, PriceSignal

log = logging.getLogger(__name__)


class SystemOperator:
    """The operator role over a broker: price broadcast, setpoints, market clearing."""

    def __init__(self, agent_id: str, broker: Broker, coordination: Coordination, *, site: str = "sim",
                 step_timeout_s: float = 2.0) -> None:
        self.agent_id = agent_id
        self.broker = broker
        self.coordination = coordination
        self.site = site
        self.step_timeout_s = step_timeout_s
        self.roles = OperatorRoles(coordination, Link(broker, site=site, agent_id=agent_id, timeout_s=step_timeout_s))
        self.stats: Counter[str] = Counter()
        self._telemetry: Subscription | None = None
        self._started = False
        self._needs = np.zeros(len(coordination.names))
        self._index = {name: i for i, name in enumerate(coordination.names)}

    async def start(self) -> None:
        """Subscribe what the operator listens to (idempotent: every step calls it)."""
        if self._started:
            return
        await self.broker.connect()
        await self.roles.prepare()
        if self.coordination.setpoint:
            self._telemetry = await self.broker.subscribe(agent_filter(self.site, "telemetry"))
        self._started = True

    def reset(self, step: int) -> None:
        self.roles.reset(step)

    async def before_decision(self, step: int, hourly_price: float, head_loading_pu: float) -> tuple[PriceSignal, np.ndarray | None]:
        """Broadcast this step's price, and the setpoints when that protocol runs."""
        await self.start()
        needs = await self._collect_needs(step) if self.coordination.setpoint else None
        return await self.roles.before_decision(step, hourly_price, head_loading_pu, needs)

    async def market(self, step: int) -> Clearing | None:
        return await self.roles.market(step)

    async def _collect_needs(self, step: int) -> np.ndarray:
        """Each microgrid's need (load - PV - wind, MW) from its telemetry of ``step``; last value if late."""
        assert self._telemetry is not None
        fresh = np.zeros(len(self._needs), dtype=bool)
        deadline = time.monotonic() + self.step_timeout_s
        while not fresh.all():
            delivery = self._telemetry.get_nowait()
            if delivery is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.stats["late"] += 1
                    log.warning("%s: telemetry of step %d missing from %s; using last needs", self.agent_id, step,
                                [n for n, ok in zip(self.coordination.names, fresh) if not ok])
                    break
                try:
                    delivery = await self._telemetry.get(timeout=remaining)
                except TimeoutError:
                    continue
            try:
                envelope = decode(delivery.payload)
            except DecodeError as exc:
                self.stats[f"rejected_{exc.reason}"] += 1
                continue
            i = self._index.get(envelope.sender)
            if i is None or not isinstance(envelope.body, TelemetryBody) or not delivery.topic.endswith(f"/{envelope.sender}/telemetry"):
                self.stats["rejected_sender"] += 1
                continue
            if envelope.step != step:
                self.stats["stale"] += 1
                continue
            values = envelope.body.values
            self._needs[i] = self.coordination.needs_mw(values.get("load_mw", 0.0), values.get("pv_mw", 0.0),
                                                        values.get("wind_mw", 0.0))
            fresh[i] = True
        return self._needs.copy()

    async def close(self) -> None:
        if self._telemetry is not None:
            await self.broker.unsubscribe(self._telemetry)
            self._telemetry = None
        self._started = False
        await self.roles.link.close()
