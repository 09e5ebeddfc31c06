"""SystemOperator: the microgrids' upstream. Every step it broadcasts the price, and runs the operator
side of the configured protocols (setpoints from the microgrids' reported needs, the market).

The microgrid agents accept price and commands only from their configured upstream id.

The operator waits for the microgrids' telemetry at most ``telemetry_wait_s`` per step, then goes on
with each missing microgrid's last need (counted ``late`` and ``late_<agent>``): one dead or frozen
microgrid must never delay the price so long that the healthy ones fail safe, so that wait must stay
well below the agents' upstream timeout (see :data:`TELEMETRY_WAIT_SHARE`). Telemetry whose powers lie
beyond ``Coordination.power_limit_mw`` is rejected (``rejected_bounds``).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from heron_edge.brokers import Broker, Subscription
from heron_edge.coordination import Coordination, OperatorRoles
from heron_edge.counters import Rejections, RejectSource, int_fields
from heron_edge.errors import UsageError
from heron_edge.messages import DecodeError, TelemetryBody, agent_filter, decode_on
from heron_edge.observations import LocalTelemetry
from heron_edge.protocols import Clearing, Link, PriceSignal

log = logging.getLogger(__name__)

TELEMETRY_WAIT_SHARE = 0.5
"""The operator's telemetry wait as a share of the agents' upstream timeout (the rest is left for the
price to reach them): ``telemetry_wait_s = TELEMETRY_WAIT_SHARE * upstream_timeout_s``."""


@dataclass
class OperatorStats:
    """What the operator did with the microgrids' telemetry."""

    late: int = 0
    """Steps in which some microgrid's telemetry did not come within the wait (its last need was used)."""
    stale: int = 0
    late_by_agent: Counter[str] = field(default_factory=Counter)
    rejected: Rejections = field(default_factory=Rejections)


class SystemOperator:
    """The operator role over a broker: price broadcast, setpoints, market clearing."""

    def __init__(self, agent_id: str, broker: Broker, coordination: Coordination, *, site: str = "sim",
                 step_timeout_s: float = 2.0, telemetry_wait_s: float | None = None) -> None:
        self.agent_id = agent_id
        self.broker = broker
        self.coordination = coordination
        self.site = site
        self.step_timeout_s = step_timeout_s
        self.telemetry_wait_s = step_timeout_s if telemetry_wait_s is None else min(telemetry_wait_s, step_timeout_s)
        self.roles = OperatorRoles(coordination, Link(broker, site=site, agent_id=agent_id, timeout_s=step_timeout_s))
        self.stats = OperatorStats()
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
        if self._telemetry is None:
            raise UsageError("SystemOperator.start() was not awaited")
        fresh = np.zeros(len(self._needs), dtype=bool)
        deadline = time.monotonic() + self.telemetry_wait_s
        limit = self.coordination.power_limit_mw
        while not fresh.all():
            delivery = self._telemetry.get_nowait()
            if delivery is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = [n for n, ok in zip(self.coordination.names, fresh, strict=True) if not ok]
                    self.stats.late += 1
                    self.stats.late_by_agent.update(missing)
                    log.warning("%s: telemetry of step %d missing from %s after %.2f s; using their last needs",
                                self.agent_id, step, missing, self.telemetry_wait_s)
                    break
                try:
                    delivery = await self._telemetry.get(timeout=remaining)
                except TimeoutError:
                    continue
            try:
                envelope = decode_on(delivery.topic, delivery.payload)
            except DecodeError as exc:
                self._reject(exc.reason, delivery.topic, exc)
                continue
            i = self._index.get(envelope.sender)
            if i is None or not isinstance(envelope.body, TelemetryBody):
                self._reject("sender", delivery.topic, f"telemetry from {envelope.sender!r}, not a microgrid")
                continue
            if envelope.step != step:
                self.stats.stale += 1
                continue
            reported = LocalTelemetry.from_values(envelope.body.values)
            powers = [p or 0.0 for p in (reported.load_mw, reported.pv_mw, reported.wind_mw)]
            if any(abs(p) > limit for p in powers):
                self._reject("bounds", delivery.topic, f"powers {powers} MW beyond +/-{limit:g} MW")
                continue
            self._needs[i] = self.coordination.needs_mw(*powers)
            fresh[i] = True
        return self._needs.copy()

    def _reject(self, reason: str, topic: str, detail: object) -> None:
        self.stats.rejected.record(reason, log, self.agent_id, topic, detail)

    def counters(self) -> dict[str, int]:
        """Telemetry and protocol-link counts for the status (late per microgrid as ``late_<agent>``)."""
        link = self.roles.link.stats
        return {**int_fields(self.stats), **{f"late_{agent}": n for agent, n in sorted(self.stats.late_by_agent.items())},
                "protocol_timeouts": link.timeouts, "protocol_stale": link.stale}

    def rejections(self) -> dict[RejectSource, dict[str, int]]:
        """Rejected telemetry (``message``) and protocol messages (orders: ``protocol``), by reason."""
        out: dict[RejectSource, dict[str, int]] = {"message": self.stats.rejected.as_dict(),
                                                    "protocol": self.roles.link.stats.rejected.as_dict()}
        return {source: counts for source, counts in out.items() if counts}

    async def close(self) -> None:
        if self._telemetry is not None:
            await self.broker.unsubscribe(self._telemetry)
            self._telemetry = None
        self._started = False
        await self.roles.link.close()
