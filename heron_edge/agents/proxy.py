"""ProxyAgent: turns any agent into a distributed one that sees only local state plus messages.

Each step it publishes its local telemetry, runs its side of the configured protocols (setpoint,
consensus), takes what the upstream (price, aggregates) and its site-graph neighbours (telemetry) sent
for this step, builds the distributed observation (layouts in ``heron_edge.observations`` and
``heron_edge.coordination``),
asks the wrapped agent for an action, applies it to the devices and, when trading runs, posts its
order and takes the clearing back.
Every received payload is decoded and validated; a malformed, unknown, expired or unexpected one
is rejected, logged and counted in ``stats`` and the agent keeps going. Only messages stamped with
the current step count; others are ``stale`` (a step number is the step of the profile year, so an
episode that restarts on another day never mixes with the last one). A message that does not
arrive within ``step_timeout_s`` is replaced by the last value received (counted as ``late``).
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from heron_edge import observations as ob
from heron_edge.agents.microgrid import MicrogridAgent
from heron_edge.brokers import Broker, Subscription
from heron_edge.brokers.base import get_any
from heron_edge.coordination import MicrogridRoles
from heron_edge.counters import Rejections, int_fields
from heron_edge.errors import BrokerError, UsageError
from heron_edge.messages import (
    LIMITS,
    AggregatesBody,
    DecodeError,
    PriceBody,
    StatusBody,
    TelemetryBody,
    agent_topic,
    decode_on,
    encode,
    make_envelope,
)
from heron_edge.protocols import Clearing
from heron_edge.site_graph import site_graph

log = logging.getLogger(__name__)

@dataclass
class ProxyStats:
    """What a ProxyAgent did with its per-step stream (the upstream's price and aggregates, the neighbours'
    telemetry)."""

    received: int = 0
    late: int = 0
    """Steps whose price, aggregates or neighbours' telemetry did not all come within the step timeout (last values
    used)."""
    stale: int = 0
    """Messages of another step."""
    ignored: int = 0
    rejected: Rejections = field(default_factory=Rejections)


class ProxyAgent:
    """A distributed wrapper of ``actual_agent``: messages in, local devices, decision, messages out.

    ``peers`` are the site's agents in feeder order (itself among them); it subscribes to the telemetry of its
    ``neighbours`` only: given, or its site-graph neighbours in that order (``heron_edge.site_graph``, "feeder":
    the agents before and after it)."""

    def __init__(self, agent_id: str, actual_agent: MicrogridAgent, broker: Broker, upstream_id: str, *,
                 site: str = "sim", peers: Sequence[str] = (), steps_per_day: int = 24, step_timeout_s: float = 2.0,
                 roles: MicrogridRoles | None = None, step_of_day: Callable[[int], int] | None = None,
                 neighbours: Sequence[str] | None = None) -> None:
        self.agent_id = agent_id
        self.actual_agent = actual_agent
        self.broker = broker
        self.upstream_id = upstream_id
        self.site = site
        self.peers = [p for p in peers if p != agent_id]
        if neighbours is None:
            order = list(peers) if agent_id in peers else [agent_id, *self.peers]
            neighbours = site_graph(order).neighbours[agent_id]
        self.neighbours = [p for p in neighbours if p != agent_id]
        self.steps_per_day = steps_per_day
        self.step_of_day = step_of_day  # the hour features' step of the day (a field gateway: its data's time zone)
        self.step_timeout_s = step_timeout_s
        self.stats = ProxyStats()
        self.next_step = 0
        self._price = 0.0
        self._price_step = -1
        self.price_received_at = -math.inf  # time.monotonic() of the last price accepted for its step
        d = len(self.neighbours)
        # lists, not arrays: scalar updates on every message
        self._neighbour_rows = [[0.0] * ob.N_LOCAL for _ in range(d)]  # each neighbour's last telemetry (local features)
        self._neighbour_step = [-1] * d
        self._operator = [0.0] * ob.N_OPERATOR  # the last aggregates, as observation entries
        self._aggregates_step = -1
        self.roles = roles
        self._local = np.zeros(ob.N_LOCAL)
        self.setpoint_mw: float | None = None
        self.dispatch_mw: float | None = None
        self.consensus_rounds = 0
        self.last_clearing: Clearing | None = None
        self._streams: tuple[Subscription, ...] | None = None  # (price, aggregates, each neighbour's telemetry)
        self._telemetry_topic = agent_topic(site, agent_id, "telemetry")
        self._price_topic = agent_topic(site, upstream_id, "price")
        self._aggregates_topic = agent_topic(site, upstream_id, "aggregates")
        self._power_limit_mw = roles.coordination.power_limit_mw if roles else LIMITS.power_mw
        self._neighbour_of_topic = {agent_topic(site, p, "telemetry"): i for i, p in enumerate(self.neighbours)}
        self._protocol_start = ob.N_LOCAL_BASE
        self._n_observation = self._protocol_start + (roles.coordination.n_features if roles else 0)

    @property
    def price_step(self) -> int:
        """Step of the last price accepted from the upstream (-1: none yet); equal to a step = fresh for it."""
        return self._price_step

    @property
    def last_local(self) -> np.ndarray:
        """The local features read by the last ``report`` (zeros before the first)."""
        return self._local

    @property
    def observation_size(self) -> int:
        return self._n_observation

    async def start(self) -> None:
        """Connect, subscribe to the price, the aggregates and the neighbours' telemetry (and, through the roles,
        our commands), announce ourselves online."""
        if self._streams is not None:
            return
        await self.broker.connect()
        # QoS 0 for these per-step streams (publishers still send at QoS 1): sessions start clean, so a
        # QoS 1 delivery is never resent and its PUBACK would buy nothing; what does not arrive is the
        # step timeout's business (last value, counted late).
        self._streams = (await self.broker.subscribe(self._price_topic, qos=0),
                         await self.broker.subscribe(self._aggregates_topic, qos=0),
                         *[await self.broker.subscribe(topic, qos=0) for topic in self._neighbour_of_topic])
        if self.roles:
            await self.roles.prepare()  # commands (setpoints), market and consensus arrive on the roles' link
        await self._publish_status("online")

    async def close(self) -> None:
        """Say offline and drop our subscriptions (closing twice is harmless)."""
        if self._streams is None:
            return
        streams, self._streams = self._streams, None
        try:
            await self._publish_status("offline")
        except BrokerError as exc:  # the broker is gone: still drop what we hold
            log.info("%s: offline status not sent: %s", self.agent_id, exc)
        for stream in streams:
            await self.broker.unsubscribe(stream)
        if self.roles:
            await self.roles.link.close()

    async def _publish_status(self, state: str) -> None:
        body = StatusBody(state=state, counters=int_fields(self.stats),  # type: ignore[arg-type]
                          rejected={"message": self.stats.rejected.as_dict()})
        await self.broker.publish(agent_topic(self.site, self.agent_id, "status"),
                                  make_envelope(self.agent_id, body, step=max(self.next_step, 0)), retain=True)

    # ------------------------------------------------------------------ one step
    async def step_distributed(self) -> np.ndarray:
        """One full cycle: observe (local + messages), decide, apply, trade; returns the applied action."""
        step = self.next_step
        observation = await self.observe(step)
        action = self.actual_agent.act(observation)
        await self.actual_agent.apply(action)
        await self.settle(step, action)
        self.next_step = step + 1
        return action

    async def observe(self, step: int) -> np.ndarray:
        """Publish our telemetry for ``step``, run the protocols' pre-decision roles, collect; the observation."""
        await self.report(step)
        await self.coordinate(step)
        return await self.collect(step)

    async def coordinate(self, step: int) -> None:
        """Receive this step's setpoint and take part in the dispatch consensus (when those protocols run)."""
        if self.roles:
            self.setpoint_mw, self.dispatch_mw, self.consensus_rounds = await self.roles.before_decision(step, self._local)

    async def settle(self, step: int, action: np.ndarray) -> Clearing | None:
        """Post this step's order and take the clearing back (when trading runs)."""
        if not self.roles:
            return None
        self.last_clearing = await self.roles.after_decision(step, self._local, action, self._price)
        return self.last_clearing

    def skip_market(self) -> None:
        """No order this step (the agent failed safe): no trades to show in the next observation."""
        self.last_clearing = None

    def reset(self, step: int) -> None:
        """A new episode starting at ``step``: forget protocol state carried between steps."""
        self.next_step = step
        self.last_clearing = None
        if self.roles:
            self.roles.reset(step)

    async def report(self, step: int) -> None:
        """Read the local devices and publish them as telemetry for ``step`` (peers use our exchange)."""
        if self._streams is None:
            await self.start()
        self.next_step = step
        self._local = await self.actual_agent.observe_local()
        body = TelemetryBody(values=ob.LocalTelemetry.values_of(self._local))
        await self.broker.publish(self._telemetry_topic, encode(make_envelope(self.agent_id, body, step=step)))

    async def collect(self, step: int) -> np.ndarray:
        """Wait (bounded) for this step's price, aggregates and neighbours' telemetry; the observation of ``step``."""
        await self._receive(step)
        obs = np.empty(self._n_observation, dtype=np.float32)
        day_step = step if self.step_of_day is None else self.step_of_day(step)
        ob.context(day_step, self.steps_per_day, self._price, obs[: ob.N_CONTEXT])
        start, protocol = ob.N_CONTEXT + ob.N_LOCAL, self._protocol_start
        obs[ob.N_CONTEXT : start] = self._local
        obs[start : start + ob.N_NEIGHBOUR] = ob.neighbour_mean(self._neighbour_rows)
        obs[start + ob.N_NEIGHBOUR : protocol] = self._operator
        if protocol < self._n_observation:
            assert self.roles is not None
            clearing = self.last_clearing
            traded = float(clearing.net_mw([self.agent_id])[0]) if clearing else 0.0
            price = clearing.price_usd_per_mwh if clearing and clearing.price_usd_per_mwh is not None else 0.0
            obs[protocol:] = self.roles.coordination.agent_features(self.setpoint_mw, self.dispatch_mw, traded, price)
        return obs

    def _complete(self, step: int) -> bool:
        return (self._price_step == step and self._aggregates_step == step
                and self._neighbour_step.count(step) == len(self._neighbour_step))

    def _missing(self, step: int) -> list[Subscription]:
        """The streams still owing this step's message."""
        price, aggregates, *telemetry = self._started_streams()
        missing = [price] if self._price_step != step else []
        if self._aggregates_step != step:
            missing.append(aggregates)
        missing += [sub for sub, seen in zip(telemetry, self._neighbour_step, strict=True) if seen != step]
        return missing

    def _started_streams(self) -> tuple[Subscription, ...]:
        if self._streams is None:
            raise UsageError(f"{self.agent_id}: the ProxyAgent was not started: await start() (or report()) first")
        return self._streams

    def take_queued(self, step: int) -> None:
        """Handle whatever has arrived for ``step`` without waiting (e.g. a price re-sent on a repeated step)."""
        for stream in self._started_streams():
            while (delivery := stream.get_nowait()) is not None:
                self._handle(delivery.topic, delivery.payload, step)

    async def _receive(self, step: int) -> None:
        self._started_streams()
        clock = asyncio.get_running_loop().time  # the loop's clock: simulated on a SimulatedTimeLoop
        deadline = clock() + self.step_timeout_s
        self.take_queued(step)
        while not self._complete(step):
            remaining = deadline - clock()
            if remaining <= 0:
                self.stats.late += 1
                log.warning("%s: step %d incomplete after %.2fs (price step %d, aggregates step %d, neighbours %s); "
                            "using last values", self.agent_id, step, self.step_timeout_s, self._price_step,
                            self._aggregates_step, dict(zip(self.neighbours, self._neighbour_step, strict=True)))
                return
            try:  # wait on whichever is still missing, then take everything that came
                _, delivery = await get_any(self._missing(step), remaining)
            except TimeoutError:
                continue
            self._handle(delivery.topic, delivery.payload, step)
            self.take_queued(step)

    def _handle(self, topic: str, payload: bytes, step: int) -> None:
        """Decode one delivery and keep what it says; anything unusable is rejected and counted."""
        if topic == self._telemetry_topic:
            return  # our own report, echoed back by the broker
        self.stats.received += 1
        try:
            envelope = decode_on(topic, payload)
        except DecodeError as exc:
            self._reject(exc.reason, topic, exc)
            return
        body: Any = envelope.body
        if topic == self._price_topic and isinstance(body, PriceBody):
            if envelope.step == step:
                self._price = body.price_usd_per_mwh + body.congestion_adder_usd_per_mwh
                self._price_step = step
                self.price_received_at = time.monotonic()
            else:
                self.stats.stale += 1
            return
        if topic == self._aggregates_topic and isinstance(body, AggregatesBody):
            if envelope.step != step:
                self.stats.stale += 1
                return
            means = (body.mean_load_mw, body.mean_pv_mw, body.mean_wind_mw, body.mean_exchange_mw)
            if max(map(abs, means)) > self._power_limit_mw:
                self._reject("bounds", topic, f"site means {means} MW beyond +/-{self._power_limit_mw:g} MW")
                return
            site = (body.mean_load_mw, body.mean_pv_mw, body.mean_wind_mw, body.mean_soc, body.mean_exchange_mw)
            outlook = (body.price_day_min_usd_per_mwh, body.price_day_mean_usd_per_mwh, body.price_day_max_usd_per_mwh,
                       body.price_quantile, body.price_rest_min_usd_per_mwh, body.price_rest_max_usd_per_mwh)
            self._operator = ob.operator_features(site, outlook)
            self._aggregates_step = step
            return
        if isinstance(body, TelemetryBody) and topic.endswith("/telemetry"):
            i = self._neighbour_of_topic.get(topic)
            if i is None:
                self._reject("sender", topic, f"telemetry from {envelope.sender!r}, not a neighbour")
                return
            if envelope.step != step:
                self.stats.stale += 1
                return
            values = body.values
            powers = [values.get(name, 0.0) for name in ("load_mw", "pv_mw", "wind_mw", "exchange_mw")]
            if max(map(abs, powers)) > self._power_limit_mw:
                self._reject("bounds", topic, f"powers {powers} MW beyond +/-{self._power_limit_mw:g} MW")
                return
            ob.LocalTelemetry.into_row(values, self._neighbour_rows[i])
            self._neighbour_step[i] = step
            return
        self.stats.ignored += 1  # well-formed, but not a price, aggregates or telemetry (another body on these topics)

    def _reject(self, reason: str, topic: str, detail: object) -> None:
        self.stats.rejected.record(reason, log, self.agent_id, topic, detail)
