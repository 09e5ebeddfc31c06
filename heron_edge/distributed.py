"""The environment's distributed mode: every microgrid behind a ProxyAgent, messages over a broker.

The plant still runs in process (each agent reaches its devices through a PlantDeviceIO); the
agents see only their local state plus what the system operator and their peers sent. One private
asyncio loop drives the agents and the broker, so ``env.step`` stays synchronous.
"""
from __future__ import annotations

import asyncio

import gymnasium
import numpy as np

from heron_edge import observations as ob
from heron_edge.agents import ExternalPolicy, MicrogridAgent, ProxyAgent, Ratings, SystemOperator
from heron_edge.brokers import Broker, InMemoryBroker
from heron_edge.config import EnvConfig
from heron_edge.deviceio import PlantDeviceIO
from sim.plant import Measurements, Plant, Setpoints

UPSTREAM_ID = "system_operator"


class DistributedRunner:
    """Wires agents, proxies, operator and broker for one environment, and steps them."""

    def __init__(self, plant: Plant, config: EnvConfig, local_bounds: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.plant = plant
        self.broker: Broker = config.message_broker if config.message_broker is not None else InMemoryBroker()
        self.request = Setpoints.zeros(plant.n)
        self.policies = [ExternalPolicy() for _ in plant.names]
        scenario = plant.scenario
        self.proxies = [
            ProxyAgent(agent_id=name, broker=self.broker, upstream_id=UPSTREAM_ID, site=config.site, peers=plant.names,
                       step_timeout_s=config.step_timeout_s,
                       actual_agent=MicrogridAgent(name, PlantDeviceIO(plant, i, self.request), self.policies[i],
                                                   Ratings(mg.battery.p_max_mw, mg.generator.p_max_mw)))
            for i, (name, mg) in enumerate(zip(plant.names, scenario.microgrids))
        ]
        self.operator = SystemOperator(UPSTREAM_ID, self.broker, site=config.site)
        n_peers = plant.n - 1
        self.observation_spaces = {
            name: gymnasium.spaces.Box(
                np.concatenate([ob.CONTEXT_LOW, low, np.full(n_peers, -np.inf)]).astype(np.float32),
                np.concatenate([ob.CONTEXT_HIGH, high, np.full(n_peers, np.inf)]).astype(np.float32), dtype=np.float32)
            for name, (low, high) in zip(plant.names, local_bounds)
        }
        self._loop = asyncio.new_event_loop()
        self._observations: list[np.ndarray] = []
        self._loop.run_until_complete(self._start())

    async def _start(self) -> None:
        await self.broker.connect()
        for proxy in self.proxies:
            proxy.steps_per_day = self.plant.profiles.steps_per_day if self.plant.last else proxy.steps_per_day
            await proxy.start()

    def reset(self, last: Measurements) -> dict[str, np.ndarray]:
        for proxy in self.proxies:
            proxy.steps_per_day = self.plant.profiles.steps_per_day
        return self._loop.run_until_complete(self._observe_all())

    async def _observe_all(self) -> dict[str, np.ndarray]:
        step = self.plant.t
        await self.operator.publish_price(step, self.plant.price())
        # Every agent reports first (concurrently: over MQTT each publish waits for its PUBACK),
        # then collects; by then the peers' reports are in flight, so collecting rarely waits.
        await asyncio.gather(*(proxy.report(step) for proxy in self.proxies))
        observations = [await proxy.collect(step) for proxy in self.proxies]
        self._observations = observations
        return dict(zip(self.plant.names, observations))

    def step(self, actions: np.ndarray) -> tuple[Measurements, dict[str, np.ndarray]]:
        """Each agent applies its action (normalised, one row per agent) through its devices; the plant steps."""
        return self._loop.run_until_complete(self._step(actions))

    async def _step(self, actions: np.ndarray) -> tuple[Measurements, dict[str, np.ndarray]]:
        for proxy, policy, action, observation in zip(self.proxies, self.policies, actions, self._observations):
            policy.next_action = action
            await proxy.actual_agent.apply(proxy.actual_agent.act(observation))
        last = self.plant.step(self.request)
        return last, await self._observe_all()

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        """Each agent's message counters (received, rejected by reason, late, ignored)."""
        return {proxy.agent_id: dict(proxy.stats) for proxy in self.proxies}

    def close(self) -> None:
        """Stop the agents and close the broker (closing twice is harmless)."""
        if self._loop.is_closed():
            return
        async def _close() -> None:
            for proxy in self.proxies:
                await proxy.close()
            await self.broker.close()
        try:
            self._loop.run_until_complete(_close())
        finally:
            self._loop.close()
