"""MultiAgentMicrogrids: a PettingZoo ParallelEnv of microgrids on one plant, centralized or distributed.

One agent per microgrid. Its action is a Box(4) of normalised setpoints:
  0 battery   in [-1, 1]: fraction of the battery's power rating, + discharge / - charge
  1 generator in [0, 1]:  fraction of the generator's rating
  2 pv_curtailment   in [0, 1]: fraction of the available PV power withheld
  3 wind_curtailment in [0, 1]: fraction of the available wind power withheld
The plant clamps what a device cannot do this step (state of charge, ramp) and reports it in infos.
Reward (USD, per agent, per step): -(fuel cost + energy bought at the signalled price - energy sold
at the export credit, net of peer-to-peer trades) minus penalties for its buses outside 0.95-1.05
p.u., its lines and transformers over 100 % and a non-converged power flow (rates per hour times the step
length, see ``sim.scenario.PenaltyConfig``); with ``share_reward`` every agent gets
the mean. Observations: see ``heron_edge.observations``, plus the protocol features of
``heron_edge.coordination`` when ``protocol`` is set. ``"observation": "local"`` gives each agent, in the
centralized loop too, exactly what its distributed twin sees (bit for bit: with consensus the centralized
loop then runs the nodes' own iteration in lock step); ``"normalize": True`` divides each entry by its
microgrid's rating; ``env.layout`` names the entries, ``state()`` / ``state_space`` are the critic's view.
Training aids (see ``EnvConfig``): ``initial_soc="random"`` and ``terminal_energy_value``, which adds
the value of the stored energy gained (or lost) over the episode to the last step's reward, so a
policy does not learn to drain the battery for free. Episodes are ``max_episode_steps`` long;
``train`` picks a random day of 2023 per episode (seeded by ``reset(seed=)``), otherwise 2024 is
walked day by day. In distributed mode the messages go on ``heron/{site}/...``: without a ``site``
each instance takes its own (``sim-`` + 8 random hex digits, in ``env.config.site``), so several
environments can share one broker.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium
import numpy as np
from pettingzoo import ParallelEnv

from heron_edge import observations as ob
from heron_edge.config import EnvConfig, default_site, parse_config
from heron_edge.coordination import Coordination, Settlement, Signals
from heron_edge.errors import ActionError, ConfigError, UsageError
from heron_edge.infos import CLAMPED_FIELDS, StepInfo
from heron_edge.protocols import Clearing, tracking_error
from heron_edge.site_graph import site_graph
from heron_edge.trajectory import tap_columns
from sim.plant import Measurements, Plant, Setpoints

ACTION_LOW = np.array([-1.0, 0.0, 0.0, 0.0], dtype=np.float32)
ACTION_HIGH = np.array([1.0, 1.0, 1.0, 1.0], dtype=np.float32)
ACTION_NAMES = ("battery", "generator", "pv_curtailment", "wind_curtailment")
_TOLERANCE = 1e-6  # float32 policies may land a hair outside [low, high]


class MultiAgentMicrogrids(ParallelEnv):  # type: ignore[misc]  # pettingzoo ships no type information
    """Microgrids sharing one distribution feeder, as a PettingZoo ParallelEnv (both modes)."""

    metadata: ClassVar[dict[str, Any]] = {"name": "multi_agent_microgrids_v0", "render_modes": [],
                                          "is_parallelizable": True}
    render_mode: str | None = None

    def __init__(self, config: EnvConfig | dict[str, Any] | None = None) -> None:
        self.config = parse_config(config)
        if self.config.site is None:  # this instance's own namespace: a shared broker never mixes environments
            self.config = self.config.model_copy(update={"site": default_site()})
        self.plant = Plant(self.config.scenario)
        sc = self.plant.scenario
        local = self.config.observation_kind == "local"
        try:
            options: dict[str, Mapping[str, Any]] = {str(k): v for k, v in self.config.protocol_options.items()}
            self.coordination = Coordination(sc, self.config.protocol, options,
                                             consensus_form="lockstep" if local else "closed")
        except (ValueError, TypeError) as exc:  # a protocol's own config validation
            raise ConfigError(f"invalid protocol configuration: {exc}") from exc
        k = self.coordination.n_features
        features = self.coordination.feature_names
        self.possible_agents: list[str] = list(self.plant.names)
        self.agents: list[str] = []
        n = self.plant.n
        self._index = {a: i for i, a in enumerate(self.possible_agents)}
        self._scale = np.array([[m.battery.p_max_mw, m.generator.p_max_mw, 1.0, 1.0] for m in sc.microgrids])
        self.ratings = {m.name: ob.Ratings(m.battery.p_max_mw, m.generator.p_max_mw) for m in sc.microgrids}
        """Each microgrid's ratings: they scale its actions and, with ``normalize``, its observation."""
        self.action_spaces = {a: gymnasium.spaces.Box(ACTION_LOW, ACTION_HIGH, dtype=np.float32) for a in self.possible_agents}
        lows, highs = zip(*(ob.local_bounds(m.battery.p_max_mw, m.generator.p_max_mw, m.pv_mw, m.wind_mw) for m in sc.microgrids), strict=True)
        self.layout = ob.local_layout(features) if local else ob.global_layout(self.possible_agents, features)
        """Names and order of every agent's observation (the same for all agents)."""
        self.state_layout = ob.state_layout(self.possible_agents, features)
        self._scales = np.stack([ob.feature_scales(self.layout, self.ratings[a], self.ratings) for a in self.possible_agents])
        self._state_scales = ob.feature_scales(self.state_layout, self.ratings[self.possible_agents[0]], self.ratings)
        if local:
            bounds = [(np.concatenate([ob.CONTEXT_LOW, lo, ob.AGGREGATES_LOW, np.full(k, -np.inf)]),
                       np.concatenate([ob.CONTEXT_HIGH, hi, ob.AGGREGATES_HIGH, np.full(k, np.inf)]))
                      for lo, hi in zip(lows, highs, strict=True)]
        else:
            low = np.concatenate([ob.CONTEXT_LOW, *lows, np.zeros(n), np.full(n * k, -np.inf)])
            high = np.concatenate([ob.CONTEXT_HIGH, *highs, np.ones(n), np.full(n * k, np.inf)])
            bounds = [(low, high)] * n
        self.observation_spaces = self._spaces(bounds)
        state_low = np.concatenate([ob.CONTEXT_LOW, *lows, np.full(n * k, -np.inf)])
        state_high = np.concatenate([ob.CONTEXT_HIGH, *highs, np.full(n * k, np.inf)])
        if self.config.normalize:
            state_low, state_high = state_low / self._state_scales, state_high / self._state_scales
        self.state_space = gymnasium.spaces.Box(state_low.astype(np.float32), state_high.astype(np.float32), dtype=np.float32)
        """The space of :meth:`state` (``state_layout``)."""
        if self.config.centralized:
            self._runner = None
        else:
            from heron_edge.distributed import DistributedRunner

            self._runner = DistributedRunner(self.plant, self.config, self.coordination, list(zip(lows, highs, strict=True)))
        self._actions = np.zeros((n, 4))
        self._one_hot = np.eye(n, dtype=np.float32)
        self.site_graph = site_graph(self.possible_agents, self.config.site_graph)
        """Whose telemetry each agent observes (``heron_edge.site_graph``): its neighbour aggregates."""
        self._neighbours = self.site_graph.index_arrays()
        self._day: tuple[tuple[int, int], np.ndarray] | None = None  # ((year, first step of the day), its prices)
        self._local = np.zeros((n, ob.N_LOCAL))
        self._context = np.zeros(ob.N_CONTEXT)
        self._signals: Signals | None = None
        self._rng = np.random.default_rng()
        self._episode = -1  # test-year episodes walk day by day
        self._steps = 0
        self._start_energy = np.zeros(n)
        self._energy_value = 0.0

    def _spaces(self, bounds: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, gymnasium.spaces.Box]:
        """Each agent's observation space; normalised, one Box shared by every agent (the union of their bounds),
        so one policy can be shared."""
        if not self.config.normalize:
            return {a: gymnasium.spaces.Box(lo.astype(np.float32), hi.astype(np.float32), dtype=np.float32)
                    for a, (lo, hi) in zip(self.possible_agents, bounds, strict=True)}
        lows = np.stack([lo / s for (lo, _), s in zip(bounds, self._scales, strict=True)])
        highs = np.stack([hi / s for (_, hi), s in zip(bounds, self._scales, strict=True)])
        shared = gymnasium.spaces.Box(lows.min(axis=0).astype(np.float32), highs.max(axis=0).astype(np.float32),
                                      dtype=np.float32)
        return dict.fromkeys(self.possible_agents, shared)

    # ------------------------------------------------------------------ spaces
    def observation_space(self, agent: str) -> gymnasium.spaces.Box:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> gymnasium.spaces.Box:
        return self.action_spaces[agent]

    # ------------------------------------------------------------------ episode
    def reset(self, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        """Start an episode. ``options``: ``{"start_step": k}`` pins the first step of the year (else by the
        train/test rule); ``{"soc": x}`` the initial state of charge (a fraction, one for every battery, a
        sequence in agent order or a mapping agent -> fraction; clipped to each battery's limits), else by
        ``initial_soc``."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            self._episode = -1
        options = options or {}  # other keys are left to wrappers, as Gymnasium does
        year = 2023 if self.config.train else 2024
        self.plant.load_year(year)  # the year's length decides the start step
        start = self._start_step(options)
        last = self.plant.reset(year=year, start_step=start, soc=self._initial_soc(options.get("soc")))
        self.agents = list(self.possible_agents)
        self._steps = 0
        self._start_energy = self._stored_energy_mwh()
        value = self.config.terminal_energy_value
        if value == "mean_price":
            value = float(np.mean([self.plant.price(start + k) for k in range(self.config.max_episode_steps)]))
        self._energy_value = float(value or 0.0)
        self.coordination.reset()
        if self._runner is not None:
            obs = self._normalized(self._runner.reset())
        else:
            obs = self._observe(last)
        infos = {a: (StepInfo(step_in_year=start).as_dict() | self._exchange_fields(i)) for i, a in enumerate(self.agents)}
        return obs, infos

    def _initial_soc(self, soc: Any) -> np.ndarray | None:
        """The batteries' initial state of charge: the option, else random (``initial_soc``) or the scenario's."""
        batteries = self.plant.batteries
        if soc is None:
            if self.config.initial_soc == "random":
                return self._rng.uniform(batteries.soc_min, batteries.soc_max)
            return None
        if isinstance(soc, Mapping):
            unknown = sorted(set(map(str, soc)) - set(self._index))
            if unknown:
                raise ConfigError(f"reset option soc names unknown agents {unknown}")
            values = batteries.soc_init.copy()
            for agent, x in soc.items():
                values[self._index[str(agent)]] = x
        elif np.ndim(soc) == 0 or np.shape(soc) == (self.plant.n,):
            values = np.broadcast_to(np.asarray(soc, dtype=np.float64), (self.plant.n,)).copy()
        else:
            raise ConfigError(f"reset option soc must be a fraction, {self.plant.n} fractions or a mapping agent -> fraction")
        if not (np.isfinite(values).all() and ((values >= 0.0) & (values <= 1.0)).all()):
            raise ConfigError(f"reset option soc must be fractions in [0, 1], got {values.tolist()}")
        return values

    def _stored_energy_mwh(self) -> np.ndarray:
        """Each battery's deliverable energy above its minimum (MWh, after the discharge efficiency)."""
        b = self.plant.batteries
        energy: np.ndarray = (b.soc - b.soc_min) * b.capacity_mwh * b.efficiency
        return energy

    def _start_step(self, options: dict[str, Any]) -> int:
        n_steps = self.plant.n_steps_in_year
        horizon = self.config.max_episode_steps
        if horizon >= n_steps:
            raise ConfigError(f"max_episode_steps {horizon} does not fit in a year of {n_steps} steps")
        if "start_step" in options:
            start = int(options["start_step"])
            if not 0 <= start <= n_steps - 1 - horizon:
                raise ConfigError(f"start_step must be in [0, {n_steps - 1 - horizon}] for {horizon}-step episodes")
            return start
        per_day = self.plant.profiles.steps_per_day
        days = (n_steps - 1 - horizon) // per_day + 1
        if self.config.train:
            return int(self._rng.integers(days)) * per_day
        self._episode = (self._episode + 1) % days
        return self._episode * per_day

    def step(self, actions: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, bool],
                                                     dict[str, bool], dict[str, dict[str, Any]]]:
        """Apply every live agent's action for one step; returns (obs, rewards, terminations, truncations, infos)."""
        if not self.agents:
            raise UsageError("the episode is over: call reset()")
        self._validate(actions)
        if self._runner is not None:
            last, signals, clearing, obs = self._runner.step(self._actions)
            settlement = self.coordination.settle(last, signals, clearing)
        else:
            if self._signals is None:
                raise UsageError("step() before reset(): call reset() first")
            signals = self._signals
            clearing = self.coordination.clear(self._local, self._actions, signals.price.total_usd_per_mwh)
            last = self.plant.step(Setpoints(*(self._actions * self._scale).T))
            settlement = self.coordination.settle(last, signals, clearing)
            obs = self._observe(last)
        if self._runner is not None:
            obs = self._normalized(obs)
        self._steps += 1
        done = self._steps >= self.config.max_episode_steps
        terminal = np.zeros(self.plant.n)
        if done and self._energy_value:
            terminal = self._energy_value * (self._stored_energy_mwh() - self._start_energy)
        rewards = self._rewards(last, settlement, terminal)
        terminations = dict.fromkeys(self.agents, False)
        truncations = dict.fromkeys(self.agents, done)
        infos = self._infos(last, signals, settlement, terminal)
        if done:
            self.agents = []
        return obs, rewards, terminations, truncations, infos

    def _validate(self, actions: dict[str, Any]) -> None:
        missing = [a for a in self.agents if a not in actions]
        unknown = [a for a in actions if a not in self._index]
        if missing or unknown:
            raise ActionError(f"actions must have one entry per live agent {self.agents}; missing {missing}, unknown {unknown}")
        for agent in self.agents:
            a = np.asarray(actions[agent], dtype=np.float64)
            if a.shape != (4,):
                raise ActionError(f"action of {agent!r} must have shape (4,) {ACTION_NAMES}, got shape {a.shape}")
            self._actions[self._index[agent]] = a
        bad = ~np.isfinite(self._actions)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ActionError(f"action of {self.possible_agents[i]!r} has a non-finite {ACTION_NAMES[j]}: {self._actions[i, j]}")
        outside = (self._actions < ACTION_LOW - _TOLERANCE) | (self._actions > ACTION_HIGH + _TOLERANCE)
        if outside.any():
            i, j = np.argwhere(outside)[0]
            raise ActionError(f"action of {self.possible_agents[i]!r}: {ACTION_NAMES[j]} = {self._actions[i, j]} is outside "
                              f"[{ACTION_LOW[j]}, {ACTION_HIGH[j]}]")
        np.clip(self._actions, ACTION_LOW, ACTION_HIGH, out=self._actions)

    # ------------------------------------------------------------------ centralized views
    def _observe(self, last: Measurements) -> dict[str, np.ndarray]:
        """Centralized observations of the coming step, after computing the signals it runs under."""
        plant, coordination = self.plant, self.coordination
        self._signals = signals = coordination.signals(plant)
        ob.local_features(last, plant.forecast(), self._local)
        ob.context(plant.t, plant.profiles.steps_per_day, signals.price.total_usd_per_mwh, self._context)
        n = plant.n
        rows = np.empty((n, self.layout.size), dtype=np.float32)
        rows[:, : ob.N_CONTEXT] = self._context
        if self.layout.kind == "local":  # what each ProxyAgent.collect builds from its devices and messages
            own = ob.N_CONTEXT + ob.N_LOCAL
            rows[:, ob.N_CONTEXT : own] = self._local
            rows[:, own : own + ob.N_NEIGHBOUR] = ob.neighbour_means(self._local, *self._neighbours)
            rows[:, own + ob.N_NEIGHBOUR : ob.N_LOCAL_BASE] = self._operator_features(plant)
            if coordination.n_features:
                rows[:, ob.N_LOCAL_BASE :] = coordination.features(signals)
        else:
            one_hot = ob.N_CONTEXT + ob.N_LOCAL * n
            rows[:, ob.N_CONTEXT : one_hot] = self._local.reshape(-1)
            rows[:, one_hot : one_hot + n] = self._one_hot
            if coordination.n_features:
                rows[:, one_hot + n :] = coordination.features(signals).reshape(-1)
        if self.config.normalize:
            rows = ob.normalize(rows, self._scales)
        return {a: rows[i] for i, a in enumerate(self.possible_agents)}

    def _operator_features(self, plant: Plant) -> list[float]:
        """The operator's aggregates of this step as the distributed agents receive them (site means, the outlook)."""
        per_day = plant.profiles.steps_per_day
        key = (plant.year, plant.t - plant.t % per_day)
        if self._day is None or self._day[0] != key:
            self._day = (key, ob.day_prices(plant.price, plant.t, per_day))
        return ob.operator_features(ob.site_means(self._local).tolist(), ob.price_outlook(self._day[1], plant.t).tolist())

    def _normalized(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The distributed agents' observations, normalised when configured."""
        if not self.config.normalize:
            return obs
        return {a: ob.normalize(o, self._scales[self._index[a]]) for a, o in obs.items()}

    def _rewards(self, last: Measurements, settlement: Settlement, terminal: np.ndarray) -> dict[str, float]:
        reward = -(last.fuel_cost_usd + settlement.energy_cost_usd + last.penalty_usd) + terminal
        if self.config.share_reward:
            reward = np.full(self.plant.n, reward.mean())
        return {a: float(reward[self._index[a]]) for a in self.possible_agents}

    def _infos(self, last: Measurements, signals: Signals, settlement: Settlement,
               terminal: np.ndarray) -> dict[str, dict[str, Any]]:
        """Each agent's :class:`~heron_edge.infos.StepInfo` as a dict (the same keys every step)."""
        infos: dict[str, dict[str, Any]] = {}
        clearing: Clearing | None = settlement.clearing
        setpoint, dispatch = signals.setpoint_mw, signals.dispatch_mw
        errors = None if setpoint is None else tracking_error(setpoint, last.exchange_mw)
        p2p = self.coordination.p2p is not None
        taps = tap_columns(last.regulator_taps, last.tap_changes)
        for a, i in self._index.items():
            info = StepInfo(
                step_in_year=last.step, converged=bool(last.converged),
                price_usd_per_mwh=signals.price.total_usd_per_mwh,
                congestion_adder_usd_per_mwh=signals.price.congestion_adder_usd_per_mwh,
                fuel_cost_usd=float(last.fuel_cost_usd[i]), energy_cost_usd=float(settlement.energy_cost_usd[i]),
                penalty_usd=float(last.penalty_usd[i]), violation_v_pu=float(last.violation_v_pu[i]),
                overload_percent=float(last.overload_percent[i]), exchange_mw=float(last.exchange_mw[i]),
                tap_changes=taps["tap_changes"], tap_min=taps["tap_min"], tap_max=taps["tap_max"],
                soc=float(last.soc[i]),
                **{CLAMPED_FIELDS[f]: float(mask[i]) for f, mask in last.clamped.items() if f in CLAMPED_FIELDS},
                setpoint_mw=math.nan if setpoint is None else float(setpoint[i]),
                tracking_error_mw=math.nan if errors is None else float(errors[i]),
                dispatch_mw=math.nan if dispatch is None else float(dispatch[i]),
                consensus_rounds=math.nan if dispatch is None else float(signals.consensus_rounds),
                traded_mw=float(settlement.traded_mw[i]) if p2p else math.nan,
                trade_cash_usd=float(settlement.trade_cash_usd[i]) if p2p else math.nan,
                clearing_price_usd_per_mwh=math.nan if clearing is None or clearing.price_usd_per_mwh is None
                else clearing.price_usd_per_mwh,
                trades=(float(len(clearing.trades_of(a))) if clearing else 0.0) if p2p else math.nan,
                terminal_value_usd=float(terminal[i]), **self._exchange_fields(i),
            )
            infos[a] = info.as_dict()
        return infos

    def _exchange_fields(self, i: int) -> dict[str, float]:
        """Distributed mode: agent ``i``'s messages lost / late (with ``impairment``) and fallback flag of the last call."""
        return self._runner.exchange.fields(i) if self._runner is not None else {}

    def state(self) -> np.ndarray:
        """The global state vector, whatever the mode (``state_layout``, in ``state_space``): context with the
        signalled price, every microgrid's local features, every microgrid's protocol features; normalised
        per rating with ``normalize``. A centralized critic's input."""
        plant = self.plant
        signals = self._signals if self._runner is None else self._runner.signals
        if plant.last is None or signals is None:
            raise UsageError("state() before reset(): call reset() first")
        local = ob.local_features(plant.last, plant.forecast(), np.empty((plant.n, ob.N_LOCAL)))
        context = ob.context(plant.t, plant.profiles.steps_per_day, signals.price.total_usd_per_mwh, np.empty(ob.N_CONTEXT))
        parts = [context, local.reshape(-1)]
        if self.coordination.n_features:
            parts.append(self.coordination.features(signals).reshape(-1))
        state = np.concatenate(parts).astype(np.float32)
        return ob.normalize(state, self._state_scales) if self.config.normalize else state

    def render(self) -> None:
        """No rendering: use ``heron-edge simulate --out DIR`` for plots."""
        return

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()

    # ------------------------------------------------------------------ copies
    def __getstate__(self) -> dict[str, Any]:
        """Pickled as its configuration and random generator (for vectorising wrappers that start workers): a copy is
        built anew and must be ``reset()`` before stepping. A distributed environment on an in-memory broker gets a
        fresh one; one on an MQTT broker cannot be pickled (its connection cannot move to another process)."""
        config = self.config
        if config.message_broker is not None:
            from heron_edge.brokers import InMemoryBroker

            if not isinstance(config.message_broker, InMemoryBroker):
                raise TypeError(f"a distributed MultiAgentMicrogrids on {type(config.message_broker).__name__} cannot "
                                "be pickled: build one per process from its config instead")
            config = config.model_copy(update={"message_broker": None})
        return {"config": config, "rng": self._rng.bit_generator.state, "episode": self._episode}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])  # type: ignore[misc]  # a copy is a new environment of the same config
        self._rng.bit_generator.state = state["rng"]
        self._episode = state["episode"]
