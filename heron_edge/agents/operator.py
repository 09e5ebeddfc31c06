"""SystemOperator: the microgrids' upstream. Every step it collects the microgrids' telemetry, broadcasts
the price, runs the operator side of the configured protocols (setpoints from the microgrids' reported
needs, the market) and publishes the step's aggregates (one ``aggregates`` message: the site means of the
telemetry and the day-ahead price outlook, ``heron_edge.observations``), so no agent needs every peer's
telemetry: the operator's work per step grows with the site, each agent's does not.

The microgrid agents accept price and commands only from their configured upstream id.

The operator waits for the microgrids' telemetry at most ``telemetry_wait_s`` per step, then goes on
with each missing microgrid's last need (counted ``late`` and ``late_<agent>``): one dead or frozen
microgrid must never delay the price so long that the healthy ones fail safe, so that wait must stay
well below the agents' upstream timeout (see :data:`TELEMETRY_WAIT_SHARE`). Telemetry whose powers lie
beyond ``Coordination.power_limit_mw`` is rejected (``rejected_bounds``).
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from heron_edge import observations as ob
from heron_edge.brokers import Broker, Delivery, Subscription
from heron_edge.coordination import Coordination, OperatorRoles
from heron_edge.counters import Rejections, RejectSource, int_fields
from heron_edge.errors import UsageError
from heron_edge.messages import AggregatesBody, DecodeError, TelemetryBody, agent_topic, decode_on
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
    """The operator role over a broker: price broadcast, setpoints, aggregates, market clearing.

    ``price_of(step)`` is the hourly price (USD/MWh) of any step of the year: the day-ahead outlook of the
    aggregates comes from it (without it, the outlook is the current price alone)."""

    def __init__(self, agent_id: str, broker: Broker, coordination: Coordination, *, site: str = "sim",
                 step_timeout_s: float = 2.0, telemetry_wait_s: float | None = None,
                 price_of: Callable[[int], float] | None = None) -> None:
        self.agent_id = agent_id
        self.broker = broker
        self.coordination = coordination
        self.site = site
        self.step_timeout_s = step_timeout_s
        self.telemetry_wait_s = step_timeout_s if telemetry_wait_s is None else min(telemetry_wait_s, step_timeout_s)
        self.roles = OperatorRoles(coordination, Link(broker, site=site, agent_id=agent_id, timeout_s=step_timeout_s))
        self.stats = OperatorStats()
        self._telemetry: list[Subscription] | None = None  # each microgrid's telemetry, in coordination.names order
        self._started = False
        self.price_of = price_of
        self.steps_per_day = coordination.scenario.steps_per_day
        self.last_aggregates: AggregatesBody | None = None
        """What the last step's aggregates said (re-sent as they were when a step is announced again)."""
        self._rows = np.zeros((len(coordination.names), ob.N_LOCAL))  # each microgrid's last telemetry
        self._day: tuple[int, np.ndarray] | None = None  # (first step of the day, its prices)
        self._aggregates_topic = agent_topic(site, agent_id, "aggregates")
        self._power_limit_mw = coordination.power_limit_mw

    async def start(self) -> None:
        """Subscribe what the operator listens to (idempotent: every step calls it)."""
        if self._started:
            return
        await self.broker.connect()
        await self.roles.prepare()
        # each microgrid's own topic, not the site's wildcard: on a connection the operator shares with agents (the
        # in-process distributed mode), one telemetry then reaches it and the sender's neighbours as one delivery.
        # QoS 0 as for the agents' streams: sessions start clean, so a PUBACK would buy nothing.
        self._telemetry = [await self.broker.subscribe(agent_topic(self.site, name, "telemetry"), qos=0)
                           for name in self.coordination.names]
        self._started = True

    def reset(self, step: int) -> None:
        self.roles.reset(step)
        self._day = None  # a new episode may run on another year's prices

    async def before_decision(self, step: int, hourly_price: float, head_loading_pu: float) -> tuple[PriceSignal, np.ndarray | None]:
        """Broadcast this step's price (and, with the setpoint protocol, the setpoints: after the telemetry they
        come from), then the aggregates of the step's telemetry. Without setpoints the price goes out first: it
        never waits for a microgrid's telemetry."""
        await self.start()
        c = self.coordination
        if c.setpoint:
            fresh = await self._collect(step)
            needs = c.needs_mw(self._rows[:, 0], self._rows[:, 1], self._rows[:, 2])
            result = await self.roles.before_decision(step, hourly_price, head_loading_pu, needs)
        else:
            result = await self.roles.before_decision(step, hourly_price, head_loading_pu, None)
            fresh = await self._collect(step)
        await self.publish_aggregates(step, hourly_price, reporting=fresh)
        return result

    def _outlook(self, step: int, hourly_price: float) -> np.ndarray:
        if self.price_of is None:
            return ob.price_outlook(np.array([hourly_price]), 0)
        start = step - step % self.steps_per_day
        if self._day is None or self._day[0] != start:
            self._day = (start, ob.day_prices(self.price_of, step, self.steps_per_day))
        return ob.price_outlook(self._day[1], step)

    def aggregates(self, step: int, hourly_price: float, reporting: int) -> AggregatesBody:
        """The step's aggregates from the telemetry collected (:func:`heron_edge.observations.site_means`) and
        the price outlook (:func:`heron_edge.observations.price_outlook`)."""
        load, pv, wind, soc, exchange = ob.site_means(self._rows).tolist()
        low, mean, high, quantile, rest_low, rest_high = self._outlook(step, hourly_price).tolist()
        return AggregatesBody(reporting=reporting, mean_load_mw=load, mean_pv_mw=pv, mean_wind_mw=wind,
                              mean_soc=min(max(soc, 0.0), 1.0), mean_exchange_mw=exchange,
                              price_day_min_usd_per_mwh=low, price_day_mean_usd_per_mwh=mean,
                              price_day_max_usd_per_mwh=high, price_quantile=quantile,
                              price_rest_min_usd_per_mwh=rest_low, price_rest_max_usd_per_mwh=rest_high)

    async def publish_aggregates(self, step: int, hourly_price: float, *, reporting: int) -> AggregatesBody:
        """Publish the step's aggregates once (every agent subscribes to them); returns them."""
        body = self.aggregates(step, hourly_price, reporting)
        link = self.roles.link
        link.step = step
        await link.send(self._aggregates_topic, body, ttl_s=self.coordination.price.config.ttl_s)
        self.last_aggregates = body
        return body

    async def resend_aggregates(self, step: int) -> None:
        """The last aggregates again (a step announced again: the telemetry they came from is gone)."""
        if self.last_aggregates is not None:
            link = self.roles.link
            link.step = step
            await link.send(self._aggregates_topic, self.last_aggregates, ttl_s=self.coordination.price.config.ttl_s)

    async def market(self, step: int) -> Clearing | None:
        return await self.roles.market(step)

    async def _collect(self, step: int) -> int:
        """Each microgrid's telemetry of ``step`` into its row (the last values stand in for one that is late);
        how many came in time."""
        if self._telemetry is None:
            raise UsageError("SystemOperator.start() was not awaited")
        fresh = [False] * len(self._telemetry)
        clock = asyncio.get_running_loop().time  # the loop's clock: simulated on a SimulatedTimeLoop
        deadline = clock() + self.telemetry_wait_s
        # in the microgrids' order, which is their reports' order: one wait at most per microgrid not yet heard,
        # and after the deadline only what has come
        for i, sub in enumerate(self._telemetry):
            while not fresh[i]:
                delivery = sub.get_nowait()
                if delivery is None:
                    remaining = deadline - clock()
                    if remaining <= 0:
                        break
                    try:
                        delivery = await sub.get(timeout=remaining)
                    except TimeoutError:
                        break
                fresh[i] = self._take(i, delivery, step)
        late = [name for name, ok in zip(self.coordination.names, fresh, strict=True) if not ok]
        if late:
            self.stats.late += 1
            self.stats.late_by_agent.update(late)
            log.warning("%s: telemetry of step %d missing from %s after %.2f s; using their last values",
                        self.agent_id, step, late, self.telemetry_wait_s)
        return len(fresh) - len(late)

    def _take(self, i: int, delivery: Delivery, step: int) -> bool:
        """Microgrid ``i``'s telemetry into its row; True when it is of ``step`` and usable."""
        try:
            envelope = decode_on(delivery.topic, delivery.payload)
        except DecodeError as exc:
            self._reject(exc.reason, delivery.topic, exc)
            return False
        body = envelope.body
        if not isinstance(body, TelemetryBody):  # decode_on admits only telemetry on a telemetry topic
            self._reject("topic", delivery.topic, f"a {body.kind} body")
            return False
        if envelope.step != step:
            self.stats.stale += 1
            return False
        values = body.values
        powers = [values.get(name, 0.0) for name in ("load_mw", "pv_mw", "wind_mw", "exchange_mw")]
        limit = self._power_limit_mw
        if max(map(abs, powers)) > limit:
            self._reject("bounds", delivery.topic, f"powers {powers} MW beyond +/-{limit:g} MW")
            return False
        ob.LocalTelemetry.into_row(values, self._rows[i])
        return True

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
            for sub in self._telemetry:
                await self.broker.unsubscribe(sub)
            self._telemetry = None
        self._started = False
        await self.roles.link.close()
