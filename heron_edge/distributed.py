"""The environment's distributed mode: every microgrid behind a ProxyAgent, messages over a broker.

The plant still runs in process (each agent reaches its devices through a PlantDeviceIO); the
agents see only their local state plus what the system operator and their peers sent. One private
asyncio loop drives the agents, the operator and the broker, so ``env.step`` stays synchronous.
A step: agents report telemetry -> the operator sends price (and setpoints), the microgrids run
the dispatch consensus -> agents collect their observation; next call: agents apply their actions
-> orders and clearing (trading) -> the plant steps.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

import gymnasium
import numpy as np

from heron_edge import observations as ob
from heron_edge.agents import ExternalPolicy, MicrogridAgent, ProxyAgent, Ratings, SystemOperator
from heron_edge.agents.proxy import ProxyStats
from heron_edge.brokers import Broker, InMemoryBroker
from heron_edge.brokers.impaired import ImpairedBroker
from heron_edge.config import EnvConfig, default_site
from heron_edge.coordination import UPSTREAM_ID, Coordination, MicrogridRoles, Signals
from heron_edge.deviceio import PlantDeviceIO
from heron_edge.eager import gather_eagerly, run_eagerly
from heron_edge.errors import UsageError
from heron_edge.protocols import Clearing, Link, PriceSignal
from heron_edge.simtime import SimulatedTimeLoop
from heron_edge.site_graph import site_graph
from sim.plant import Measurements, Plant, Setpoints


@dataclass
class Exchange:
    """What one call's message exchange (a reset, a step) did per agent: messages on its topics lost and late
    (NaN without an impairment), and whether it decided on fallback values (1.0) or not (0.0)."""

    lost: np.ndarray
    late: np.ndarray
    fallback: np.ndarray

    def fields(self, i: int) -> dict[str, float]:
        """Agent ``i``'s entries of :class:`heron_edge.infos.StepInfo`."""
        return {"messages_lost": float(self.lost[i]), "messages_late": float(self.late[i]),
                "fallback": float(self.fallback[i])}


class DistributedRunner:
    """Wires agents, proxies, operator and broker for one environment, and steps them (on ``config.site``; when
    that is None, on a namespace of its own, :func:`heron_edge.config.default_site`)."""

    def __init__(self, plant: Plant, config: EnvConfig, coordination: Coordination,
                 local_bounds: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.plant = plant
        self.coordination = coordination
        self.site: str = config.site if config.site is not None else default_site()
        site = self.site
        broker: Broker = config.message_broker if config.message_broker is not None else InMemoryBroker()
        self.impaired: ImpairedBroker | None = None
        """With ``config.impairment``: the wrapper every message goes through (its ``stats`` count the run)."""
        if config.impairment is not None:
            self.impaired = broker = ImpairedBroker(broker, config.impairment, deadline_s=config.step_timeout_s)
        self.broker = broker
        self.request = Setpoints.zeros(plant.n)
        self.policies = [ExternalPolicy() for _ in plant.names]
        scenario = plant.scenario
        graph = site_graph(plant.names, config.site_graph)
        self.proxies = [
            ProxyAgent(agent_id=name, broker=self.broker, upstream_id=UPSTREAM_ID, site=site, peers=plant.names,
                       neighbours=graph.neighbours[name], step_timeout_s=config.step_timeout_s,
                       actual_agent=MicrogridAgent(name, PlantDeviceIO(plant, i, self.request), self.policies[i],
                                                   Ratings(mg.battery.p_max_mw, mg.generator.p_max_mw)),
                       roles=MicrogridRoles(coordination, Link(self.broker, site=site, agent_id=name,
                                                               timeout_s=config.step_timeout_s), i))
            for i, (name, mg) in enumerate(zip(plant.names, scenario.microgrids, strict=True))
        ]
        self.operator = SystemOperator(UPSTREAM_ID, self.broker, coordination, site=site,
                                       step_timeout_s=config.step_timeout_s, price_of=plant.price)
        k = coordination.n_features
        self.observation_spaces = {
            name: gymnasium.spaces.Box(
                np.concatenate([ob.CONTEXT_LOW, low, ob.AGGREGATES_LOW, np.full(k, -np.inf)]).astype(np.float32),
                np.concatenate([ob.CONTEXT_HIGH, high, ob.AGGREGATES_HIGH, np.full(k, np.inf)]).astype(np.float32),
                dtype=np.float32)
            for name, (low, high) in zip(plant.names, local_bounds, strict=True)
        }
        self.signals: Signals | None = None
        nan = np.full(plant.n, np.nan)
        self.exchange = Exchange(nan, nan.copy(), nan.copy())
        """The last call's exchange, per agent."""
        # impaired in memory, waits are simulated: which message beats which timeout never depends on the machine
        in_memory = self.impaired is not None and isinstance(self.impaired.inner, InMemoryBroker)
        self._loop = SimulatedTimeLoop() if in_memory else asyncio.new_event_loop()
        self._observations: list[np.ndarray] = []
        try:
            self._loop.run_until_complete(self._start())
        except BaseException:  # e.g. the broker cannot be reached: leave nothing open behind the error
            self.close()
            raise

    async def _start(self) -> None:
        await self.broker.connect()
        await self.operator.start()
        for proxy in self.proxies:
            await proxy.start()

    def reset(self) -> dict[str, np.ndarray]:
        step = self.plant.t
        self.operator.reset(step)
        for proxy in self.proxies:
            proxy.steps_per_day = self.plant.profiles.steps_per_day
            proxy.reset(step)
        return run_eagerly(self._loop, self._reset_exchange())

    async def _reset_exchange(self) -> dict[str, np.ndarray]:
        before = await self._begin()
        try:
            return await self._observe_all()
        finally:
            self._end(before)

    def _fallbacks(self) -> np.ndarray:
        """Per agent, how often it fell back so far: steps with a price or peers' telemetry missing, protocol waits
        that ended without their message."""
        return np.array([proxy.stats.late + (proxy.roles.link.stats.timeouts if proxy.roles else 0)
                         for proxy in self.proxies])

    async def _begin(self) -> np.ndarray:
        """Open one call's exchange (the impairment's step and deadline); the fallback counts before it."""
        if self.impaired is not None:
            await self.impaired.begin_step()
        return self._fallbacks()

    def _end(self, before: np.ndarray) -> None:
        """Close the exchange: who fell back, what was lost or late."""
        fallback = (self._fallbacks() > before).astype(np.float64)
        if self.impaired is None:
            self.exchange = Exchange(np.full(len(fallback), np.nan), np.full(len(fallback), np.nan), fallback)
            return
        self.impaired.end_step()
        window = self.impaired.window
        self.exchange = Exchange(np.array([float(window.lost_by_agent[name]) for name in self.plant.names]),
                                 np.array([float(window.late_by_agent[name]) for name in self.plant.names]), fallback)

    async def _observe_all(self) -> dict[str, np.ndarray]:
        plant, step = self.plant, self.plant.t
        last = plant.latest()  # PlantStateError before the plant's reset()
        # Every agent reports and the operator sends the price (and setpoints, from the reported
        # needs), then the protocols' pre-decision roles run, then each agent collects. Eagerly
        # gathered, in that order: over MQTT the PUBACK waits and the protocol rounds overlap, in
        # memory the operator finds every report already delivered, nothing suspends and no task is made.
        operator = self.operator.before_decision(step, plant.price(), self.coordination.head_loading_pu(last))
        results: list[object] = await gather_eagerly(*(proxy.report(step) for proxy in self.proxies), operator)
        price, setpoints = cast(tuple[PriceSignal, "np.ndarray | None"], results[-1])
        await gather_eagerly(*(proxy.coordinate(step) for proxy in self.proxies))
        self._observations = [await proxy.collect(step) for proxy in self.proxies]
        dispatch = None
        if self.coordination.consensus:
            dispatch = np.array([proxy.dispatch_mw if proxy.dispatch_mw is not None else np.nan for proxy in self.proxies])
        self.signals = Signals(price=price, setpoint_mw=setpoints, dispatch_mw=dispatch,
                               consensus_rounds=max(proxy.consensus_rounds for proxy in self.proxies))
        return dict(zip(self.plant.names, self._observations, strict=True))

    def step(self, actions: np.ndarray) -> tuple[Measurements, Signals, Clearing | None, dict[str, np.ndarray]]:
        """Each agent applies its action (normalised, one row per agent) through its devices; the plant steps.

        Returns the measurements, the signals the step ran under, the market's clearing (or None)
        and the next observations.
        """
        return run_eagerly(self._loop, self._step(actions))

    async def _step(self, actions: np.ndarray) -> tuple[Measurements, Signals, Clearing | None, dict[str, np.ndarray]]:
        step, signals = self.plant.t, self.signals
        if signals is None:
            raise UsageError("step before reset(): call reset() first")
        before = await self._begin()
        try:
            return await self._act_and_observe(step, signals, actions)
        finally:
            self._end(before)

    async def _act_and_observe(self, step: int, signals: Signals, actions: np.ndarray
                               ) -> tuple[Measurements, Signals, Clearing | None, dict[str, np.ndarray]]:
        for proxy, policy, action, observation in zip(self.proxies, self.policies, actions, self._observations, strict=True):
            policy.next_action = action
            await proxy.actual_agent.apply(proxy.actual_agent.act(observation))
        clearing = None
        if self.coordination.p2p:
            clearing, *_ = await gather_eagerly(self.operator.market(step),
                                                *(proxy.settle(step, action) for proxy, action in zip(self.proxies, actions, strict=True)))
        last = self.plant.step(self.request)
        return last, signals, clearing, await self._observe_all()

    @property
    def stats(self) -> dict[str, ProxyStats]:
        """Each agent's message counters (received, rejected by reason, late, stale, ignored)."""
        return {proxy.agent_id: proxy.stats for proxy in self.proxies}

    def close(self) -> None:
        """Stop the agents and the operator, close the broker (closing twice is harmless)."""
        if self._loop.is_closed():
            return

        async def _close() -> None:
            try:
                for proxy in self.proxies:
                    await proxy.close()
                await self.operator.close()
            finally:
                await self.broker.close()  # whatever the agents managed, the connection goes

        try:
            self._loop.run_until_complete(_close())
        finally:
            self._loop.close()
