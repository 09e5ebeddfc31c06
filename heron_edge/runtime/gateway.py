"""The edge gateway: one microgrid agent as one asyncio process (``heron-edge agent --config FILE``).

Built on the environment's own agents: a ``MicrogridAgent`` (policy + DeviceIO) inside a
``ProxyAgent`` (telemetry out; price, the operator's aggregates and its site-graph neighbours' telemetry in:
never the whole site), with a Modbus DeviceIO. With
``coordination`` configured the ProxyAgent carries the environment's ``MicrogridRoles`` (setpoint,
consensus, p2p trading: the very classes the environment's distributed mode runs). Each cycle:
read devices -> publish telemetry -> receive the setpoint / run the consensus -> collect price and
peers -> decide -> write setpoints -> post the order and take the clearing -> publish status (and,
with a bus clock, ``done``: so a lock-step plant advances only after the market). Telemetry goes through a bounded SQLite outbox whenever it cannot be published
and is sent in order after reconnect. Failsafe rules: ``heron_edge.runtime.failsafe``.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from heron_edge.agents import MicrogridAgent, Policy, ProxyAgent, Ratings
from heron_edge.brokers import MqttBroker
from heron_edge.brokers.base import BrokerWrapper, Payload, Subscription, payload_bytes
from heron_edge.brokers.mqtt import TlsOptions
from heron_edge.coordination import Coordination, MicrogridRoles
from heron_edge.counters import Rejections, RejectSource, int_fields
from heron_edge.errors import BrokerError, ConfigError, DeviceError
from heron_edge.messages import (
    ClockBody,
    DecodeError,
    StatusBody,
    agent_topic,
    command_filter,
    decode_on,
    make_envelope,
)
from heron_edge.observations import local_layout
from heron_edge.policies import RulePolicy
from heron_edge.protocols import Link
from heron_edge.runtime.commands import CommandInbox, GuardedBroker
from heron_edge.runtime.config import GatewayConfig, OnnxPolicySettings
from heron_edge.runtime.failsafe import FailsafeState, safe_setpoints
from heron_edge.runtime.forecast import forecast_source
from heron_edge.runtime.modbus_io import ModbusDeviceIO
from heron_edge.runtime.outbox import Outbox
from heron_edge.runtime.wallclock import step_of_day_function, timer_steps

__all__ = ["CycleTiming", "Gateway", "OutboxBroker", "make_broker", "make_policy"]

log = logging.getLogger(__name__)

_FLUSH_SHARE = 0.25
"""The share of a cycle's period the outbox backlog may take."""


def make_policy(config: GatewayConfig, coordination: Coordination | None = None) -> Policy:
    """The gateway's policy: the rule, or a policy bundle whose manifest fits this gateway (its local layout for
    the site's agents and protocol features, its protocols and ratings); ConfigError naming the first mismatch."""
    agents = config.agents
    if coordination is None and config.coordination is not None:
        coordination = config.coordination.build()
    features = coordination.feature_names if coordination is not None else ()
    p = config.policy
    if isinstance(p, OnnxPolicySettings):
        from heron_edge.policies.bundle import check_compatible, load_bundle

        ratings = Ratings(config.battery_p_max_mw, config.generator_p_max_mw)
        try:
            bundle = load_bundle(p.path)
            check_compatible(bundle.manifest, layout=local_layout(features),
                             protocols=list(coordination.protocols) if coordination is not None else [],
                             ratings={config.agent_id: ratings}, where=f"gateway {config.agent_id}")
        except ConfigError as exc:
            raise ConfigError(f"policy.path {p.path}: {exc}") from None
        return bundle.policy(ratings)
    # RulePolicy scales the generator by its rating; a site without a generator gets a zero-rated one.
    return RulePolicy(
        agent_index=agents.index(config.agent_id), n_agents=len(agents), layout="distributed",
        battery_p_max_mw=config.battery_p_max_mw, generator_p_max_mw=config.generator_p_max_mw or 1e-9,
        round_trip_efficiency=p.round_trip_efficiency, cost_a_usd_per_mw2h=p.cost_a_usd_per_mw2h,
        cost_b_usd_per_mwh=p.cost_b_usd_per_mwh, cost_c_usd_per_h=p.cost_c_usd_per_h, window_steps=p.window_steps,
        charge_quantile=p.charge_quantile, discharge_quantile=p.discharge_quantile, min_history=p.min_history,
        protocol_features=features)


def make_broker(config: GatewayConfig) -> MqttBroker:
    """The gateway's MqttBroker: one client id per gateway, the password from the environment, last will offline."""
    b = config.broker
    tls = None
    if b.tls is not None:
        tls = TlsOptions(ca_file=b.tls.ca_file, cert_file=b.tls.cert_file, key_file=b.tls.key_file,
                         check_hostname=b.tls.check_hostname)
        try:
            tls.context()  # a missing or unreadable CA / certificate / key: say which setting, at start
        except ConfigError as exc:
            raise ConfigError(f"broker.tls: {exc}") from None
    return MqttBroker(b.url, client_id=b.client_id or f"heron-{config.site}-{config.agent_id}", username=b.username,
                      password=b.password(), tls=tls, status_topic=agent_topic(config.site, config.agent_id, "status"),
                      keepalive=b.keepalive_s, reconnect_min_delay_s=b.reconnect_min_delay_s,
                      reconnect_max_delay_s=b.reconnect_max_delay_s, allow_insecure=b.allow_insecure)


class OutboxBroker(BrokerWrapper):
    """A Broker wrapper: publishes on ``telemetry_topic`` that fail (or would overtake queued ones) go to the outbox.

    Everything else passes through unchanged (and raises as the wrapped broker does).
    """

    def __init__(self, broker: MqttBroker, outbox: Outbox, telemetry_topic: str) -> None:
        super().__init__(broker)
        self.inner: MqttBroker = broker
        self.outbox = outbox
        self.telemetry_topic = telemetry_topic
        self.telemetry = 0  # telemetry records handed to us (published now or queued)

    async def publish(self, topic: str, payload: Payload, *, qos: int = 1, retain: bool = False) -> None:
        if topic != self.telemetry_topic:
            await self.inner.publish(topic, payload, qos=qos, retain=retain)
            return
        data = payload_bytes(payload)
        self.telemetry += 1
        if len(self.outbox) == 0 and self.inner.connected:
            try:
                await self.inner.publish(topic, data, qos=qos, retain=retain)
                return
            except BrokerError as exc:
                log.info("telemetry to the outbox: %s", exc)
        await self.outbox.put(topic, data)  # off the loop; a disk failure is logged and counted, not raised

    async def flush(self, budget_s: float) -> int:
        """Send the outbox in order for at most ``budget_s`` (stops at the first failure); how many went out."""
        if len(self.outbox) == 0 or not self.inner.connected:
            return 0
        return await self.outbox.flush(lambda topic, data: self.inner.publish(topic, data, qos=1), budget_s=budget_s)


@dataclass
class CycleTiming:
    """Cumulated cycle time split, seconds: Modbus requests, the decision (policy), messaging (the rest:
    MQTT publishes and the wait for this step's price, aggregates and neighbours' telemetry)."""

    cycles: int = 0
    total_s: float = 0.0
    modbus_s: float = 0.0
    decision_s: float = 0.0
    last_ms: float = 0.0

    @property
    def mqtt_s(self) -> float:
        return max(0.0, self.total_s - self.modbus_s - self.decision_s)

    def as_dict(self) -> dict[str, float]:
        n = max(self.cycles, 1)
        return {"cycles": self.cycles, "cycle_ms": 1e3 * self.total_s / n, "modbus_ms": 1e3 * self.modbus_s / n,
                "mqtt_ms": 1e3 * self.mqtt_s / n, "decision_ms": 1e3 * self.decision_s / n}


@dataclass
class GatewayStats:
    """What the gateway's own cycle did (the proxy, the inbox, the outbox and the failsafe count the rest)."""

    cycles: int = 0
    episodes: int = 0
    """Times the clock went back (a new SIL episode)."""
    connect_failures: int = 0
    outbox_sent: int = 0
    outbox_flush_failed: int = 0
    write_failed: int = 0
    """Device writes that failed (the decision's or the failsafe's)."""
    settle_failed: int = 0
    setpoint_applied: int = 0
    action_policy: int = 0
    """Steps decided by the gateway's own policy."""
    action_external: int = 0
    """Steps decided by a fresh ``cmd/action`` (an external policy service's action for this very step)."""
    status_not_sent: int = 0
    done_not_sent: int = 0


class Gateway:
    """One microgrid's controller on an edge gateway. ``await gateway.run()`` until :meth:`stop`."""

    def __init__(self, config: GatewayConfig, *, broker: MqttBroker | None = None) -> None:
        self.config = config
        self.agent_id = config.agent_id
        self.site = config.site
        agents = config.agents
        self.raw_broker = broker if broker is not None else make_broker(config)
        self.outbox = Outbox(config.outbox.path, max_records=config.outbox.max_records)
        self.broker = OutboxBroker(self.raw_broker, self.outbox, agent_topic(config.site, config.agent_id, "telemetry"))
        self.coordination = config.coordination.build() if config.coordination is not None else None
        cycle = config.cycle
        self.step_of_day = step_of_day_function(timer=cycle.clock == "timer", period_s=cycle.period_s,
                                                steps_per_day=cycle.steps_per_day, time_zone=cycle.time_zone)
        limit_mw = self.coordination.power_limit_mw if self.coordination is not None else None
        self.forecast = forecast_source(config, self.step_of_day, **({} if limit_mw is None else {"limit_mw": limit_mw}))
        self.devices = ModbusDeviceIO(config.devices, self.forecast)
        self.ratings = Ratings(config.battery_p_max_mw, config.generator_p_max_mw)
        self.policy = make_policy(config, self.coordination)
        self.agent = MicrogridAgent(config.agent_id, self.devices, self.policy, self.ratings)
        self.inbox = CommandInbox(config.agent_id, config.upstream_id, key=config.command_key())
        roles = None
        if self.coordination is not None:  # commands reach the protocols only through the inbox's guard
            link = Link(GuardedBroker(self.broker, self.inbox, site=config.site),
                        site=config.site, agent_id=config.agent_id, timeout_s=config.cycle.step_timeout_s)
            roles = MicrogridRoles(self.coordination, link, agents.index(config.agent_id))
        self.proxy = ProxyAgent(config.agent_id, self.agent, self.broker, config.upstream_id,
                                site=config.site, peers=agents, steps_per_day=config.cycle.steps_per_day,
                                step_timeout_s=config.cycle.step_timeout_s, roles=roles, step_of_day=self.step_of_day,
                                neighbours=config.neighbours)
        self._setpoint_protocol = self.coordination is not None and self.coordination.setpoint is not None
        self.failsafe = FailsafeState()
        self.stats = GatewayStats()
        self.clock_rejected = Rejections()
        self._status_writer = _FileWriter("status_file", latest_only=True)  # the disk, off the loop
        self._journal_writer = _FileWriter("journal_file")
        self._closing = False
        self.timing = CycleTiming()
        self.step = 0
        self.done_step = -1
        self._dirty = False  # a failsafe cycle ran since the last completed step
        self._action_source = "policy"  # who decided the last step: the policy or an external cmd/action
        self._observation: np.ndarray | None = None  # what it decided on (raw, float32; journaled)
        self._started_at = time.monotonic()  # the upstream counts as heard at start
        self._clock_sub: Subscription | None = None
        self._cmd_sub: Subscription | None = None
        self._started = False
        self._link_up = False  # the broker connection as last seen by _ensure_connected: its changes are logged
        self._stop = asyncio.Event()
        self._status_topic = agent_topic(config.site, config.agent_id, "status")
        self._clock_topic = agent_topic(config.site, config.cycle.clock_sender, "clock")
        self._done_topic = agent_topic(config.site, config.agent_id, "done")

    # ------------------------------------------------------------------ lifecycle
    async def _ensure_connected(self) -> bool:
        """Connect (first time) and subscribe; True when the broker is usable now."""
        if self._started:
            connected = self.raw_broker.connected
            if connected != self._link_up:  # changed since the last cycle: lost, or back after a reconnect
                self._link_up = connected
                if connected:
                    log.info("%s: reconnected to %s", self.agent_id, self.config.broker.url)
                else:
                    log.warning("%s: disconnected from %s; reconnecting", self.agent_id, self.config.broker.url)
            return connected
        try:
            await self.raw_broker.connect()
            if self.config.cycle.clock == "bus":
                self._clock_sub = await self.raw_broker.subscribe(self._clock_topic)
            self._cmd_sub = await self.raw_broker.subscribe(command_filter(self.site, self.agent_id))
            await self.forecast.start(self.raw_broker)
            await self.proxy.start()
        except BrokerError as exc:
            self.stats.connect_failures += 1
            log.warning("%s: broker not reachable: %s", self.agent_id, exc)
            return False
        self._started = True
        self._link_up = True
        log.info("%s: connected to %s", self.agent_id, self.config.broker.url)
        return True

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current cycle."""
        self._stop.set()

    async def close(self) -> None:
        """Say a final status (retained ``offline`` / ``stopped``, stamped now) before disconnecting, so the
        broker's last will ("connection lost") is not fired; then close the broker, the devices, the file
        writers (every queued write finished) and the outbox (twice is harmless)."""
        if self._started:
            self._started = False
            try:
                await self.forecast.close()
                await self.proxy.close()  # its own "offline" (no detail) goes first; ours below is the last word
            except BrokerError:
                pass
        said_final = False
        if not self._closing:
            self._closing = True
            said_final = await self._publish_final_status()
            log.info("%s: stopped at step %d; final status %s", self.agent_id, self.step,
                     "published" if said_final else "not published (the broker's will says offline)")
        await self.raw_broker.close(will=not said_final)  # the will would overwrite our final status
        await self.devices.close()
        await self._status_writer.drain()
        await self._journal_writer.drain()
        await self.outbox.aclose()

    async def _publish_final_status(self) -> bool:
        """The status file and the retained status: ``offline``, ``stopped`` (after :meth:`stop`) or ``closed``.
        The envelope is made here, so its ``ts`` is the stop time. True when it was published: the broker then
        closes with a plain disconnect (the will would overwrite it with the connect-time ``connection lost``)."""
        detail = "stopped" if self._stop.is_set() else "closed"
        status = {**self.status(), "state": "offline", "detail": detail}
        if self.config.status_file:
            self._write_status(status)
        if not self.raw_broker.connected:
            return False  # the broker's will says offline (connection lost) for us
        cycle_ms = status["cycle_ms"] if math.isfinite(status["cycle_ms"]) else None
        body = StatusBody(state="offline", detail=detail, counters=status["counters"], rejected=status["rejected"],
                          cycle_ms=cycle_ms)
        try:
            await self.raw_broker.publish(self._status_topic, make_envelope(self.agent_id, body, step=max(self.step, 0)),
                                          retain=True)
        except BrokerError as exc:
            self.stats.status_not_sent += 1
            log.info("%s: final status not sent: %s", self.agent_id, exc)
            return False
        return True

    async def __aenter__(self) -> Gateway:
        await self.devices.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # ------------------------------------------------------------------ main loops
    async def run(self) -> None:
        """Cycle until :meth:`stop`: on each bus clock announcement, or every ``period_s`` with a timer clock."""
        devices: list[str] = []  # for the start-up line: what this gateway talks to
        for role in ("battery", "generator", "pv", "wind", "meter"):
            device = getattr(self.config.devices, role)
            if device is not None:
                where = device.serial_port if device.transport == "rtu" else f"{device.host}:{device.port}"
                via = f" (link {device.link})" if device.link else ""
                described = f", map {device.map}" if device.map else ""
                devices.append(f"{role} {where}{via} unit {device.unit_id}{described}")
        log.info("%s: starting on site %s: broker %s, %s clock every %g s (hours of %s), devices %s, %s forecast",
                 self.agent_id, self.site, self.config.broker.url, self.config.cycle.clock, self.config.cycle.period_s,
                 self.config.cycle.time_zone, ", ".join(devices), self.forecast.kind)
        await self.devices.open()
        if self.config.cycle.clock == "timer":
            await self._run_timer()
        else:
            await self._run_bus()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), max(0.0, seconds))
        except TimeoutError:
            pass

    async def _run_timer(self) -> None:
        async for step in timer_steps(self.config.cycle.period_s, self._stop):
            if self._due(step):
                await self.cycle(step)

    def _due(self, step: int) -> bool:
        """Whether ``step`` gets a cycle: always, unless ``cycle.every_steps`` makes this a slower agent and its last
        cycle (not a failsafe one) ran fewer steps ago in this episode."""
        every = self.config.cycle.every_steps
        return every == 1 or self._dirty or not self.done_step <= step < self.done_step + every

    async def _run_bus(self) -> None:
        period = self.config.cycle.period_s
        while not self._stop.is_set():
            connected = await self._ensure_connected()
            step = await self._next_clock(period) if connected else None
            if not connected:
                await self._sleep(period)
            if self._stop.is_set():
                return
            if step is not None and not self._due(step):
                continue  # a slower agent (cycle.every_steps): not its step; the clock is alive, its devices hold
            if step is not None and (step != self.done_step or self._dirty):
                await self.cycle(step)
                continue
            if step is not None:  # a repeated announcement: our done may have been lost; the price may come again
                self.proxy.take_queued(step)
                await self._publish_done(step)
            # no new step: the watchdog (the clock alone does not keep us out of failsafe, a price does)
            if not self.raw_broker.connected or self._upstream_silent_s() > self.config.failsafe.upstream_timeout_s:
                await self.watchdog_cycle()

    async def _next_clock(self, timeout: float) -> int | None:
        """The next step announced by the clock sender within ``timeout`` s (the newest if several), else None."""
        assert self._clock_sub is not None
        deadline = time.monotonic() + timeout
        newest: int | None = None
        while newest is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stop.is_set():
                return None
            try:
                delivery = await self._clock_sub.get(timeout=remaining)
            except TimeoutError:
                return None
            for d in [delivery, *self._clock_sub.drain()]:
                step = self._clock_step(d.topic, d.payload)
                if step is not None:
                    newest = step if newest is None else max(newest, step)
        return newest

    def _upstream_silent_s(self) -> float:
        """Seconds since the upstream's last price for its step (or since start)."""
        return time.monotonic() - max(self._started_at, self.proxy.price_received_at)

    def _clock_step(self, topic: str, payload: bytes) -> int | None:
        try:
            envelope = decode_on(topic, payload)
        except DecodeError as exc:
            self.clock_rejected[exc.reason] += 1
            log.warning("%s: rejected a clock message on %s: %s", self.agent_id, topic, exc)
            return None
        if not isinstance(envelope.body, ClockBody):
            return None
        last = self.config.cycle.max_step
        if last is not None and envelope.body.step > last:
            self.clock_rejected["bounds"] += 1
            log.warning("%s: clock step %d on %s is past the last step %d; ignored", self.agent_id, envelope.body.step,
                        topic, last)
            return None
        return envelope.body.step

    # ------------------------------------------------------------------ one cycle
    def _drain_commands(self) -> None:
        if self._cmd_sub is None:
            return
        for delivery in self._cmd_sub.drain():
            if self._setpoint_protocol and delivery.topic.endswith("/cmd/setpoint"):
                continue  # the setpoint protocol's own (guarded) subscription takes these
            self.inbox.handle(delivery.topic, delivery.payload)

    async def cycle(self, step: int) -> None:
        """One cycle for ``step``: read the devices and report, coordinate, decide (or fail safe), write, say done.

        Each stage is its own method; any of them may add a failsafe reason (device, broker, upstream)."""
        start = self._cycle_start()
        if step < self.done_step:  # the clock went back: a new episode (SIL days)
            self.proxy.reset(step)
            self.inbox.new_episode()
            self.stats.episodes += 1
        self.step = step
        self.inbox.guard.current_step = step  # commands for steps far ahead are refused, never a replay mark
        connected = await self._connect_and_flush()
        reasons = await self._read_and_report(step)
        observation = await self._coordinate(step, reasons) if connected and self.raw_broker.connected else None
        self._drain_commands()  # after the waits: a setpoint sent in answer to this step's telemetry counts now
        self._update_failsafe(reasons)
        decision_s = 0.0
        action: np.ndarray | None = None
        if self.failsafe.active or observation is None:
            await self._fail_safe()
        else:
            action, decision_s = await self._decide_and_apply(step, observation)
        self._journal(step, action, coordinated=observation is not None)
        self.done_step = step
        self._dirty = False
        self._cycle_end(start, decision_s)
        await self._publish_status()
        if self.config.cycle.clock == "bus":
            await self._publish_done(step)

    async def watchdog_cycle(self) -> None:
        """A cycle forced by silence (no clock, or the upstream quiet): read the devices and, since there is no
        step to decide, hold them in failsafe. No journal row, no ``done``; a repeated announcement of the step
        re-runs it, since the devices now hold failsafe commands."""
        start = self._cycle_start()
        await self._connect_and_flush()
        reasons = await self._read_and_report(self.step)
        self._update_failsafe(reasons)
        await self._fail_safe()
        self._dirty = True
        self._cycle_end(start, 0.0)
        await self._publish_status()

    # -- the stages
    def _cycle_start(self) -> tuple[float, float]:
        return time.perf_counter(), self.devices.timing.read_s + self.devices.timing.write_s

    def _cycle_end(self, start: tuple[float, float], decision_s: float) -> None:
        t0, modbus_before = start
        elapsed = time.perf_counter() - t0
        self.stats.cycles += 1
        t = self.timing
        t.cycles += 1
        t.total_s += elapsed
        t.modbus_s += self.devices.timing.read_s + self.devices.timing.write_s - modbus_before
        t.decision_s += decision_s
        t.last_ms = 1e3 * elapsed

    async def _connect_and_flush(self) -> bool:
        """Connect if needed and send a share of the outbox's backlog; True when the broker is usable."""
        connected = await self._ensure_connected()
        if connected:
            try:
                # a share of the period: a long outage's backlog drains over cycles, never stalls one
                self.stats.outbox_sent += await self.broker.flush(_FLUSH_SHARE * self.config.cycle.period_s)
            except BrokerError as exc:
                self.stats.outbox_flush_failed += 1
                log.info("%s: outbox not flushed: %s", self.agent_id, exc)
        return connected

    async def _read_and_report(self, step: int) -> dict[str, str]:
        """Read the devices and publish telemetry (queued in the outbox when it cannot go out); failsafe reasons."""
        self.devices.begin_step(step)  # the forecast is of the step about to be dispatched
        try:
            if self._started:
                await self.proxy.report(step)
            else:
                await self.devices.read()  # never connected yet: still watch the devices
        except DeviceError as exc:
            return {"device": str(exc)}
        return {}

    async def _coordinate(self, step: int, reasons: dict[str, str]) -> np.ndarray | None:
        """The step's setpoint and consensus, then the price, the aggregates and the neighbours: the observation
        (None when the broker failed, which becomes a failsafe reason)."""
        try:
            await self.proxy.coordinate(step)  # setpoint, consensus (no-op without coordination)
            return await self.proxy.collect(step)
        except BrokerError as exc:
            reasons["broker"] = f"coordination: {exc}"
            return None

    def _update_failsafe(self, reasons: dict[str, str]) -> None:
        if not self.raw_broker.connected:
            reasons["broker"] = "disconnected"
        silent_s = self._upstream_silent_s()
        if silent_s > self.config.failsafe.upstream_timeout_s:
            reasons["upstream"] = f"no price from {self.config.upstream_id} for {silent_s:.1f} s"
        if self.failsafe.update(reasons):
            log.warning("%s: %s", self.agent_id,
                        f"failsafe: {self.failsafe.detail}" if self.failsafe.active else "left failsafe")

    async def _fail_safe(self) -> None:
        """Write the documented safe commands; no order goes to the market this step."""
        await self._write_safe()
        self.failsafe.cycles += self.failsafe.active
        self.proxy.skip_market()

    async def _decide_and_apply(self, step: int, observation: np.ndarray) -> tuple[np.ndarray, float]:
        """A fresh external action (``cmd/action`` for this step, not expired) or else the policy's, written to the
        devices, then trade; (the action, the decision time in s)."""
        t0 = time.perf_counter()
        external = self.inbox.action(step)
        self._action_source = "policy" if external is None else "external"
        self._observation = observation
        if external is not None:
            action = external
            self.stats.action_external += 1
        else:
            action = self.agent.act(observation)
            self.stats.action_policy += 1
            if not self._setpoint_protocol:  # with the protocol, the policy itself tracks the setpoint
                action = self._track_setpoint(action, self.proxy.last_local)
        decision_s = time.perf_counter() - t0
        try:
            await self.agent.apply(action)
        except DeviceError as exc:
            self.stats.write_failed += 1
            log.warning("%s: %s", self.agent_id, exc)
        if self.coordination is not None and self.coordination.p2p is not None:
            try:
                await self.proxy.settle(step, action)  # order -> clearing, before done: the plant waits
            except BrokerError as exc:
                self.stats.settle_failed += 1
                log.warning("%s: market: %s", self.agent_id, exc)
        return action, decision_s

    def _journal(self, step: int, action: np.ndarray | None, coordinated: bool) -> None:
        """One JSON line: the step, failsafe or not, what the protocols said this step (None when they did
        not run: not the last step's values), the action taken, who chose it (``policy`` or ``external``) and
        the observation it was decided on (so a run can be replayed through the policy)."""
        clearing = self.proxy.last_clearing if action is not None else None
        p = self.proxy
        row = {"step": step, "failsafe": action is None,
               "action": None if action is None else [float(a) for a in action],
               "action_source": None if action is None else self._action_source,
               "observation": None if action is None or self._observation is None else self._observation.tolist(),
               "forecast": self._forecast_used() if action is not None else None,
               "setpoint_mw": p.setpoint_mw if coordinated else None, "dispatch_mw": p.dispatch_mw if coordinated else None,
               "consensus_rounds": p.consensus_rounds if coordinated else 0,
               "traded_mw": float(clearing.net_mw([self.agent_id])[0]) if clearing is not None else None,
               "clearing_price_usd_per_mwh": clearing.price_usd_per_mwh if clearing is not None else None}
        if self.config.journal_file is not None:  # serialised now, appended off the loop, in order
            self._journal_writer.submit(functools.partial(_append_line, self.config.journal_file, json.dumps(row)))

    def _forecast_used(self) -> str | None:
        """The source of the forecast in this cycle's observation (``mqtt``, ``profile``, ``persistence``), None when
        the devices were not read fresh."""
        forecast = self.devices.forecast
        return forecast.source if forecast is not None and self.devices.meter_fresh else None

    def _track_setpoint(self, action: np.ndarray, local: np.ndarray) -> np.ndarray:
        """With a valid exchange setpoint, re-dispatch the battery so the forecast import meets it."""
        body = self.inbox.setpoint()
        if body is None:
            return action
        target_import_mw = -body.p_mw  # on the wire: + = injected into the feeder
        a = np.asarray(action, dtype=np.float64).copy()
        generator_mw = a[1] * self.ratings.generator_p_max_mw
        renewables_mw = local[1] * (1.0 - a[2]) + local[2] * (1.0 - a[3])
        battery_mw = local[0] - renewables_mw - generator_mw - target_import_mw
        a[0] = min(max(battery_mw / self.ratings.battery_p_max_mw, -1.0), 1.0)
        self.stats.setpoint_applied += 1
        return a

    async def _write_safe(self) -> None:
        forecast = self.devices.forecast if self.devices.meter_fresh else None
        sp = safe_setpoints(self.config.failsafe,
                            load_mw=forecast.load_mw if forecast else None,
                            pv_available_mw=forecast.pv_mw if forecast else None,
                            wind_available_mw=forecast.wind_mw if forecast else None)
        try:
            await self.devices.write(sp.battery_mw, sp.generator_mw, sp.pv_curtailment, sp.wind_curtailment)
        except DeviceError as exc:
            self.stats.write_failed += 1
            log.warning("%s: failsafe write: %s", self.agent_id, exc)

    # ------------------------------------------------------------------ reporting
    def counters(self) -> dict[str, int]:
        """Every count but the rejections (:meth:`rejections`): messages (proxy), commands, protocols, cycles,
        outbox, files, Modbus read failures per role, failsafe, broker; named once, here."""
        c = {**int_fields(self.proxy.stats), **int_fields(self.inbox.stats, "cmd_"), **int_fields(self.stats)}
        c["cmd_accepted"] = self.inbox.guard.stats.accepted
        if self.proxy.roles is not None:  # the protocols' link: market, consensus and setpoint messages
            link = self.proxy.roles.link.stats
            c["protocol_timeouts"] = link.timeouts
            c["protocol_stale"] = link.stale
        for writer in (self._status_writer, self._journal_writer):
            c[f"{writer.name}_dropped"], c[f"{writer.name}_write_failed"] = writer.dropped, writer.failed
        for role, n in self.devices.timing.read_failures.items():
            c[f"read_failed_{role}"] = n
        for role, n in self.devices.timing.write_mismatches.items():  # acknowledged, but the read-back differed
            c[f"write_mismatch_{role}"] = n
        c["keepalive_writes"] = self.devices.keepalive_writes
        for source, n in self.forecast.stats.given.items():  # which forecast the observations used
            c[f"forecast_{source}"] = n
        c["forecast_late"] = self.forecast.stats.late
        c.update(telemetry=self.broker.telemetry, outbox_pending=len(self.outbox), outbox_queued=self.outbox.queued,
                 outbox_overflow=self.outbox.overflow, outbox_write_failed=self.outbox.failures,
                 failsafe_entries=self.failsafe.entries, failsafe_cycles=self.failsafe.cycles,
                 broker_reconnects=self.raw_broker.reconnects)
        return {k: int(v) for k, v in c.items()}

    def rejections(self) -> dict[RejectSource, dict[str, int]]:
        """Rejected messages by source and reason (each one was also logged where it was rejected)."""
        out: dict[RejectSource, dict[str, int]] = {
            "message": self.proxy.stats.rejected.as_dict(), "command": self.inbox.rejected.as_dict(),
            "clock": self.clock_rejected.as_dict(), "forecast": self.forecast.stats.rejected.as_dict()}
        if self.proxy.roles is not None:
            out["protocol"] = self.proxy.roles.link.stats.rejected.as_dict()
        return {source: counts for source, counts in out.items() if counts}

    def status(self) -> dict[str, Any]:
        """The status as a plain dict (what the status file holds)."""
        return {"agent_id": self.agent_id, "state": "failsafe" if self.failsafe.active else "online",
                "detail": self.failsafe.detail, "since": self.failsafe.since, "step": self.step,
                "cycle_ms": self.timing.last_ms, "timing": self.timing.as_dict(), "counters": self.counters(),
                "forecast": {"kind": self.forecast.kind, "last": self._forecast_used()},
                "rejected": self.rejections(),
                "transitions": self.failsafe.transitions[-20:], "time": time.time()}

    def _write_status(self, status: dict[str, Any]) -> None:
        """Queue the status file's rewrite (serialised now; written off the loop; only the newest waits)."""
        if self.config.status_file:
            self._status_writer.submit(functools.partial(_write_json, Path(self.config.status_file), json.dumps(status)))

    async def _publish_status(self) -> None:
        status = self.status()
        if self.config.status_file:
            self._write_status(status)
        if not self.raw_broker.connected:
            return
        cycle_ms = status["cycle_ms"] if math.isfinite(status["cycle_ms"]) else None
        body = StatusBody(state=status["state"], detail=status["detail"][:500], counters=status["counters"],
                          rejected=status["rejected"], cycle_ms=cycle_ms)
        try:
            await self.raw_broker.publish(self._status_topic, make_envelope(self.agent_id, body, step=max(self.step, 0)),
                                          retain=True)
        except BrokerError:
            self.stats.status_not_sent += 1

    async def _publish_done(self, step: int) -> None:
        if not self.raw_broker.connected:
            return
        try:
            await self.raw_broker.publish(self._done_topic, make_envelope(self.agent_id, ClockBody(step=step, done=True), step=step))
        except BrokerError:
            self.stats.done_not_sent += 1


def _write_json(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (a reader never sees half a file); blocking: a worker thread's job."""
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk: leave no half-written temporary behind
        raise


def _append_line(path: str, line: str) -> None:
    """Append one line to ``path`` with one O_APPEND write (a concurrent reader never sees half a line);
    blocking: a worker thread's job."""
    data = (line + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


class _FileWriter:
    """One file's writes, run in submission order on a worker thread (``asyncio.to_thread``), so a slow or
    full disk never blocks the event loop. ``latest_only``: a queued write not yet started is replaced by a
    newer one (a status file needs only the newest). At most ``max_pending`` wait; beyond that a write is
    dropped (counted in ``dropped``). A failed write (disk full, directory removed) is logged and counted in
    ``failed``, never raised. :meth:`drain` waits until every queued write has run."""

    def __init__(self, name: str, *, latest_only: bool = False, max_pending: int = 10_000) -> None:
        self.name = name
        self.dropped = 0
        self.failed = 0
        self._latest_only = latest_only
        self._max_pending = max_pending
        self._pending: deque[Callable[[], None]] = deque()
        self._task: asyncio.Task[None] | None = None

    def submit(self, write: Callable[[], None]) -> None:
        """Queue ``write`` (a blocking callable) behind the ones already queued; returns at once."""
        if self._latest_only and self._pending:
            self._pending[-1] = write
        elif len(self._pending) >= self._max_pending:
            self.dropped += 1
            return
        else:
            self._pending.append(write)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        while self._pending:
            write = self._pending.popleft()
            try:
                await asyncio.to_thread(write)
            except Exception as exc:  # mostly OSError; whatever a write raises, the gateway goes on
                self.failed += 1
                if self.failed == 1 or self.failed % 100 == 0:  # a full disk fails every cycle: do not flood the log
                    log.warning("%s write failed (%d so far): %s", self.name, self.failed, exc)

    async def drain(self) -> None:
        """Wait until every queued write has run (or failed)."""
        while self._task is not None and not self._task.done():
            await asyncio.wait([self._task])
