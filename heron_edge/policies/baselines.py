"""Baseline policies for one microgrid agent: a price-driven rule, uniform random actions, idle devices.

Each maps ONE agent's observation to ONE agent's action (Box(4): battery in [-1, 1] of its power
rating, + discharge; generator in [0, 1] of its rating; PV and wind curtailment in [0, 1]), so the
same object runs in the centralized loop and later inside a distributed agent. Import-light: numpy
only, no simulator.

Finding its own slice (see ``heron_edge.observations``): a ``RulePolicy`` is told its
``agent_index``, the number of agents ``n_agents`` and the ``layout`` of the observation it gets:
  "centralized": context (3) | local features of every microgrid (8 n) | one-hot agent index (n);
                 its local features are entries 3 + 8 i .. 3 + 8 i + 8, and the one-hot must say i.
  "distributed": context (3) | own local features (8) | neighbour aggregates (3) | operator aggregates (11) (the
                 ``local`` layout, the same size for any n, which the centralized loop also gives with
                 ``"observation": "local"``).
In both, the price of the step being dispatched is context[2] * 100 USD/MWh. When coordination
protocols run, their per-agent features (``protocol_features``, names from
``heron_edge.coordination``) follow: after the one-hot, every agent's block in agent order
(centralized), or after the operator aggregates (distributed).
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Literal

import numpy as np

from heron_edge.errors import ActionError, ConfigError
from heron_edge.observations import N_CONTEXT, N_LOCAL, N_LOCAL_BASE, PRICE_SCALE

if TYPE_CHECKING:
    from sim.scenario import Scenario

Layout = Literal["centralized", "distributed"]

_SOC = 3  # index of the state of charge in the local features


class RulePolicy:
    """Price rules for one microgrid (all prices USD/MWh, powers MW).

    - Battery: charge at full power when the price is negative or at most the ``charge_quantile`` of
      the prices seen over the last ``window_steps`` steps (the current one included); discharge when
      the price is at least the ``discharge_quantile`` and still pays for the round-trip losses
      (price * round_trip_efficiency > the charge quantile), at most the microgrid's net load (load -
      PV - wind - generator) so the battery does not export (reverse flow raises the voltage);
      otherwise idle. Until ``min_history`` prices have been seen the battery idles. The plant
      enforces the state of charge limits.
    - Generator: economic dispatch against the price, which is what a MWh bought or sold is worth:
      output p* = (price - cost_b) / (2 cost_a) clipped to [0, p_max], i.e. run only when the price
      is above the marginal cost cost_b + 2 cost_a p, and only if the step's fuel cost (with the
      no-load cost cost_c) stays below the energy's value. The plant enforces the ramp limit.
    - PV and wind: curtail fully when the price is negative, never otherwise.
    - With the setpoint protocol, the battery tracks the exchange setpoint instead (it covers net
      load - generator - setpoint, within its rating); with consensus, the generator runs at the
      agreed dispatch instead of its own price rule.
    """

    def __init__(self, *, agent_index: int, n_agents: int, layout: Layout = "centralized",
                 battery_p_max_mw: float, generator_p_max_mw: float, round_trip_efficiency: float = 1.0,
                 cost_a_usd_per_mw2h: float, cost_b_usd_per_mwh: float,
                 cost_c_usd_per_h: float = 0.0, window_steps: int = 24, charge_quantile: float = 0.25,
                 discharge_quantile: float = 0.75, min_history: int = 4, protocol_features: tuple[str, ...] = ()) -> None:
        if not 0 <= agent_index < n_agents:
            raise ConfigError(f"agent_index must be in [0, {n_agents}), got {agent_index}")
        if layout not in ("centralized", "distributed"):
            raise ConfigError(f"layout must be 'centralized' or 'distributed', got {layout!r}")
        if not 0.0 <= charge_quantile < discharge_quantile <= 1.0:
            raise ConfigError(f"need 0 <= charge_quantile < discharge_quantile <= 1, got {charge_quantile}, {discharge_quantile}")
        if not 0.0 < round_trip_efficiency <= 1.0:
            raise ConfigError(f"round_trip_efficiency must be in (0, 1], got {round_trip_efficiency}")
        if battery_p_max_mw <= 0 or generator_p_max_mw <= 0 or window_steps < 1 or min_history < 1:
            raise ConfigError("battery_p_max_mw, generator_p_max_mw, window_steps and min_history must be positive")
        self.battery_p_max_mw = battery_p_max_mw
        self.round_trip_efficiency = round_trip_efficiency
        self.agent_index = agent_index
        self.n_agents = n_agents
        self.layout: Layout = layout
        self.generator_p_max_mw = generator_p_max_mw
        self.cost_a = cost_a_usd_per_mw2h
        self.cost_b = cost_b_usd_per_mwh
        self.cost_c = cost_c_usd_per_h
        self.charge_quantile = charge_quantile
        self.discharge_quantile = discharge_quantile
        self.min_history = min_history
        self._prices: deque[float] = deque(maxlen=window_steps)
        self.protocol_features = tuple(protocol_features)
        k = len(self.protocol_features)
        if layout == "centralized":
            base = N_CONTEXT + (N_LOCAL + 1) * n_agents
            self.obs_size = base + k * n_agents
            self._local = slice(N_CONTEXT + N_LOCAL * agent_index, N_CONTEXT + N_LOCAL * (agent_index + 1))
            self._protocol = base + k * agent_index
        else:
            self._protocol = N_LOCAL_BASE
            self.obs_size = self._protocol + k
            self._local = slice(N_CONTEXT, N_CONTEXT + N_LOCAL)

    @classmethod
    def from_scenario(cls, scenario: Scenario, agent_index: int, *, layout: Layout = "centralized",
                      protocol_features: tuple[str, ...] = (), **rules: float) -> RulePolicy:
        """The rule for microgrid ``agent_index`` of ``scenario`` (ratings, efficiency, generator costs from it; window = one day)."""
        mg = scenario.microgrids[agent_index]
        gen = mg.generator
        rules.setdefault("window_steps", scenario.steps_per_day)
        return cls(agent_index=agent_index, n_agents=len(scenario.microgrids), layout=layout,
                   battery_p_max_mw=mg.battery.p_max_mw, round_trip_efficiency=mg.battery.efficiency ** 2,
                   generator_p_max_mw=gen.p_max_mw, cost_a_usd_per_mw2h=gen.cost_a_usd_per_mw2h,
                   cost_b_usd_per_mwh=gen.cost_b_usd_per_mwh, cost_c_usd_per_h=gen.cost_c_usd_per_h,
                   protocol_features=protocol_features, **rules)  # type: ignore[arg-type]

    def reset(self) -> None:
        """Forget the price history."""
        self._prices.clear()

    def local_features(self, observation: np.ndarray) -> np.ndarray:
        """This agent's 8 local features (``heron_edge.observations.LOCAL_NAMES``) out of its observation."""
        obs = np.asarray(observation)
        if obs.shape != (self.obs_size,):
            raise ActionError(f"a {self.layout} observation for {self.n_agents} agents has shape ({self.obs_size},), got {obs.shape}")
        if self.layout == "centralized":
            one_hot = obs[N_CONTEXT + N_LOCAL * self.n_agents : N_CONTEXT + (N_LOCAL + 1) * self.n_agents]
            if one_hot[self.agent_index] != 1.0:
                raise ActionError(f"this observation belongs to agent {int(np.argmax(one_hot))}, not {self.agent_index}")
        return obs[self._local]

    def generator_mw(self, price_usd_per_mwh: float) -> float:
        """Profit-maximising generator output (MW) at this price, ignoring the ramp."""
        if self.cost_a > 0:
            p = (price_usd_per_mwh - self.cost_b) / (2.0 * self.cost_a)
        else:
            p = self.generator_p_max_mw if price_usd_per_mwh > self.cost_b else 0.0
        p = min(max(p, 0.0), self.generator_p_max_mw)
        fuel = self.cost_a * p * p + self.cost_b * p + self.cost_c
        return p if p > 0.0 and price_usd_per_mwh * p > fuel else 0.0

    def act(self, observation: np.ndarray) -> np.ndarray:
        """The action (float32, shape (4,)) for this agent's observation; records the price seen."""
        local = self.local_features(observation)  # checks the shape and whose observation it is
        price = float(observation[2]) * PRICE_SCALE
        self._prices.append(price)
        generator_mw = self.generator_mw(price)
        if "dispatch_mw" in self.protocol_features:  # the agreed dispatch replaces the price rule, before the battery sizes
            generator_mw = min(max(self._feature(observation, "dispatch_mw"), 0.0), self.generator_p_max_mw)
        curtail = 1.0 if price < 0.0 else 0.0
        battery = 0.0
        if price < 0.0:
            battery = -1.0
        elif len(self._prices) >= self.min_history:
            history = np.fromiter(self._prices, dtype=np.float64)
            low = float(np.quantile(history, self.charge_quantile))
            if price <= low:
                battery = -1.0
            elif price >= np.quantile(history, self.discharge_quantile) and price * self.round_trip_efficiency > low:
                net_load_mw = float(local[0] - local[1] - local[2]) - generator_mw
                battery = min(max(net_load_mw, 0.0) / self.battery_p_max_mw, 1.0)
        if "setpoint_mw" in self.protocol_features:
            used = 0.0 if curtail else float(local[1] + local[2])
            cover_mw = float(local[0]) - used - generator_mw - self._feature(observation, "setpoint_mw")
            battery = min(max(cover_mw / self.battery_p_max_mw, -1.0), 1.0)
        return np.array([battery, generator_mw / self.generator_p_max_mw, curtail, curtail], dtype=np.float32)

    def _feature(self, observation: np.ndarray, name: str) -> float:
        return float(observation[self._protocol + self.protocol_features.index(name)])


class RandomPolicy:
    """Uniform random actions in [low, high] from its own seeded generator (ignores the observation)."""

    def __init__(self, low: np.ndarray, high: np.ndarray, *, seed: int | None = None) -> None:
        self.low = np.asarray(low, dtype=np.float32)
        self.high = np.asarray(high, dtype=np.float32)
        if self.low.shape != self.high.shape or (self.low > self.high).any():
            raise ConfigError("low and high must have the same shape with low <= high")
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Nothing to forget."""

    def act(self, observation: np.ndarray) -> np.ndarray:
        """A uniform random action (float32) inside the bounds."""
        return self._rng.uniform(self.low, self.high).astype(np.float32)


class IdlePolicy:
    """Every device idle: battery and generator at 0, no curtailment (a reference for costs)."""

    def reset(self) -> None:
        """Nothing to forget."""

    def act(self, observation: np.ndarray) -> np.ndarray:
        """The idle action (float32, shape (4,))."""
        return np.zeros(4, dtype=np.float32)
