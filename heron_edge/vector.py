"""VectorMicrogrids: K centralized environments stepped as arrays over ``sim.batch.BatchPlant``.

``VectorMicrogrids(config, num_envs=K)`` takes the same config as :class:`~heron_edge.env.MultiAgentMicrogrids`
(centralized only: the distributed form exchanges messages per environment) and behaves as K of them:
``reset(seed=s)`` gives environment k the seed ``s + k`` (or ``seed[k]`` for a list), and environment k then
equals a ``MultiAgentMicrogrids`` reset with that seed, step for step. ``step(actions)`` takes actions of
shape (K, n_agents, 4) in agent order and returns observations (K, n_agents, obs_dim), rewards,
terminations, truncations (K, n_agents) and :class:`VectorInfos` (every ``StepInfo`` field as a (K,
n_agents) array). Episodes all have ``max_episode_steps`` steps; an environment whose episode ends is
reset in the same call (no seed: its generator goes on, as a ``reset()`` would), its last observation
is in ``infos.final_observation`` and the returned one is the new episode's first.

Protocols run in their centralized form; the price signal, the billing and the plant are vectorised,
the setpoint allocation, the consensus dispatch and the peer-to-peer market run per environment.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from heron_edge import observations as ob
from heron_edge.config import EnvConfig, parse_config
from heron_edge.coordination import Coordination, Settlement, Signals, bill_usd
from heron_edge.env import ACTION_HIGH, ACTION_LOW, ACTION_NAMES, MultiAgentMicrogrids
from heron_edge.errors import ActionError, ConfigError, UsageError
from heron_edge.infos import CLAMPED_FIELDS, StepInfo
from heron_edge.protocols import Clearing, PriceSignal, tracking_error
from sim.batch import BatchMeasurements, BatchPlant
from sim.plant import Setpoints

__all__ = ["VectorInfos", "VectorMicrogrids"]

_TOLERANCE = 1e-6  # as the single environment: float32 policies may land a hair outside [low, high]
INFO_NAMES: tuple[str, ...] = tuple(f.name for f in fields(StepInfo))
"""The keys of :class:`VectorInfos` values: every ``StepInfo`` field, in its order."""


@dataclass
class VectorInfos:
    """Every environment's step infos as arrays: ``values[name]`` is (K, n_agents) for each ``StepInfo`` field
    (``infos["soc"]`` works too); ``done`` (K,) says which environments ended their episode in this call, and
    ``final_observation`` (K, n_agents, obs_dim) holds their last observation (rows of the others are NaN)."""

    values: dict[str, np.ndarray]
    done: npt.NDArray[np.bool_]
    final_observation: np.ndarray | None = None

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    def of(self, env: int, agent: int) -> dict[str, float]:
        """One agent's infos as the single environment gives them (a dict of floats)."""
        return {name: float(values[env, agent]) for name, values in self.values.items()}


class VectorMicrogrids:
    """K centralized ``MultiAgentMicrogrids`` of one config stepped as arrays."""

    def __init__(self, config: EnvConfig | dict[str, Any] | None = None, num_envs: int = 1) -> None:
        self.config = parse_config(config)
        if num_envs < 1:
            raise ConfigError(f"num_envs must be >= 1, got {num_envs}")
        if not self.config.centralized:
            raise ConfigError("VectorMicrogrids runs the centralized form only (centralized: True); the distributed "
                              "form exchanges messages per environment: vectorise MultiAgentMicrogrids copies instead")
        self.num_envs = num_envs
        self.single = MultiAgentMicrogrids(self.config)
        """One environment of the config: the spaces, layouts, ratings and coordination every environment shares."""
        single = self.single
        self.possible_agents = list(single.possible_agents)
        self.n_agents = len(self.possible_agents)
        self.layout = single.layout
        self.state_layout = single.state_layout
        self.observation_spaces = single.observation_spaces
        self.action_spaces = single.action_spaces
        self.plant = BatchPlant(single.plant.scenario, num_envs, template=single.plant)
        sc = self.plant.scenario
        self._check_layout()
        local = self.config.observation_kind == "local"
        options: dict[str, Mapping[str, Any]] = {str(k): v for k, v in self.config.protocol_options.items()}
        self.coordinations = [Coordination(sc, self.config.protocol, options, consensus_form="lockstep" if local else "closed")
                              for _ in range(num_envs)]
        """One coordination per environment (each keeps its last trades); only the price runs vectorised."""
        self._coordination = self.coordinations[0]
        self._per_env = self._coordination.protocols not in ((), ("price_signal",))
        self._scale = single._scale
        self._scales = single._scales
        n = self.n_agents
        self._one_hot = np.eye(n, dtype=np.float32)
        index, valid = single._neighbours
        offsets = (np.arange(num_envs) * n)[:, None, None]
        self._nbr_index = (index[None] + offsets).reshape(num_envs * n, -1)
        self._nbr_valid = np.broadcast_to(valid, (num_envs, *valid.shape)).reshape(num_envs * n, -1)
        self._rngs = [np.random.default_rng() for _ in range(num_envs)]
        self._episodes = np.full(num_envs, -1)
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._start_energy = np.zeros((num_envs, n))
        self._energy_value = np.zeros(num_envs)
        self._local = np.zeros((num_envs, n, ob.N_LOCAL))
        self._price = np.zeros(num_envs)  # signalled total price of the coming step
        self._adder = np.zeros(num_envs)
        self._signals: list[Signals] | None = None
        self._features = np.zeros((num_envs, n, self._coordination.n_features))
        self._site_columns = [ob.LOCAL_NAMES.index(name.split(".", 1)[1]) for name in ob.SITE_NAMES]
        self._ready = False

    def _check_layout(self) -> None:
        """The observation this class builds must be the layout the single environment declares."""
        features = self.single.coordination.feature_names
        if self.layout.kind == "local":
            expected = ob.CONTEXT_NAMES + ob.LOCAL_NAMES + ob.NEIGHBOUR_NAMES + ob.OPERATOR_NAMES + tuple(features)
        else:
            expected = ob.global_layout(self.possible_agents, features).names
        if self.layout.names != expected:
            raise ConfigError(f"VectorMicrogrids does not build the {self.layout.kind} layout v{self.layout.version} "
                              "of this environment")

    # ------------------------------------------------------------------ spaces
    def observation_space(self, agent: str) -> Any:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> Any:
        return self.action_spaces[agent]

    @property
    def obs_dim(self) -> int:
        return self.layout.size

    # ------------------------------------------------------------------ episodes
    def reset(self, seed: int | Sequence[int] | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, VectorInfos]:
        """Start every environment's episode: environment k with seed ``seed + k`` (an int) or ``seed[k]`` (a list);
        None keeps each generator going. ``options``: ``{"start_step": k}`` pins every environment's first step."""
        k = self.num_envs
        if seed is not None:
            seeds = [int(seed) + i for i in range(k)] if isinstance(seed, int | np.integer) else [int(s) for s in seed]
            if len(seeds) != k:
                raise ConfigError(f"reset(seed=...) needs one seed per environment ({k}), got {len(seeds)}")
            self._rngs = [np.random.default_rng(s) for s in seeds]
            self._episodes[:] = -1
        unknown = sorted(set(options or {}) - {"start_step"})
        if unknown:
            raise ConfigError(f"VectorMicrogrids.reset supports the option start_step only, got {unknown}")
        obs = self._reset_rows(np.ones(k, dtype=bool), (options or {}).get("start_step"))
        starts = self.plant.t.astype(np.float64)
        values = {name: np.full((k, self.n_agents), getattr(StepInfo(step_in_year=0), name), dtype=np.float64)
                  for name in INFO_NAMES}
        values["step_in_year"] = np.repeat(starts[:, None], self.n_agents, axis=1)
        return obs, VectorInfos(values=values, done=np.zeros(k, dtype=bool))

    def _reset_rows(self, rows: npt.NDArray[np.bool_], start_step: Any = None) -> np.ndarray:
        """Reset the environments ``rows`` (the single environment's reset, in its order of draws); every
        environment's observation."""
        plant, config = self.plant, self.config
        year = 2023 if config.train else 2024
        plant.load_year(year)
        horizon = config.max_episode_steps
        n_steps = plant.n_steps_in_year
        if horizon >= n_steps:
            raise ConfigError(f"max_episode_steps {horizon} does not fit in a year of {n_steps} steps")
        per_day = plant.template.profiles.steps_per_day
        days = (n_steps - 1 - horizon) // per_day + 1
        starts = plant.t.copy()
        soc = plant.batteries.soc.copy()
        b = plant.batteries
        for i in np.flatnonzero(rows):
            rng = self._rngs[i]
            if start_step is not None:
                start = int(start_step)
                if not 0 <= start <= n_steps - 1 - horizon:
                    raise ConfigError(f"start_step must be in [0, {n_steps - 1 - horizon}] for {horizon}-step episodes")
            elif config.train:
                start = int(rng.integers(days)) * per_day
            else:
                self._episodes[i] = (self._episodes[i] + 1) % days
                start = int(self._episodes[i]) * per_day
            starts[i] = start
            soc[i] = rng.uniform(b.soc_min, b.soc_max) if config.initial_soc == "random" else b.soc_init
        plant.reset(year=year, start_steps=starts, soc=soc, mask=rows)
        self._steps[rows] = 0
        self._start_energy[rows] = self._stored_energy_mwh()[rows]
        value = config.terminal_energy_value
        if value == "mean_price":
            at = starts[rows, None] + np.arange(horizon)
            self._energy_value[rows] = np.mean(plant.prices(at.ravel()).reshape(at.shape), axis=1)
        else:
            self._energy_value[rows] = float(value or 0.0)
        for i in np.flatnonzero(rows):
            self.coordinations[i].reset()
        self._ready = True
        return self._observe(plant.latest(), rows)

    def _stored_energy_mwh(self) -> np.ndarray:
        b = self.plant.batteries
        energy: np.ndarray = (b.soc - b.soc_min) * b.capacity_mwh * b.efficiency
        return energy

    # ------------------------------------------------------------------ step
    def step(self, actions: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, VectorInfos]:
        """One step of every environment; (observations, rewards, terminations, truncations, infos)."""
        if not self._ready or self._signals is None:
            raise UsageError("step() before reset(): call reset() first")
        a = self._validate(actions)
        k, n, plant = self.num_envs, self.n_agents, self.plant
        signals = self._signals
        clearings: list[Clearing | None] = [None] * k
        if self._coordination.p2p is not None:
            clearings = [c.clear(self._local[i], a[i], float(self._price[i])) for i, c in enumerate(self.coordinations)]
        last = plant.step(Setpoints(*(a * self._scale).transpose(2, 0, 1)))
        settlement = self._settle(last, signals, clearings)
        self._steps += 1
        done = self._steps >= self.config.max_episode_steps
        terminal = np.zeros((k, n))
        if done.any() and self.config.terminal_energy_value is not None:
            terminal[done] = (self._energy_value[:, None] * (self._stored_energy_mwh() - self._start_energy))[done]
        reward = -(last.fuel_cost_usd + settlement.energy_cost_usd + last.penalty_usd) + terminal
        if self.config.share_reward:
            reward = np.repeat(reward.mean(axis=1, keepdims=True), n, axis=1)
        infos = self._infos(last, signals, settlement, clearings, terminal, done)
        obs = self._observe(last)
        if done.any():
            infos.final_observation = np.full_like(obs, np.nan)
            infos.final_observation[done] = obs[done]
            obs = self._reset_rows(done)
        truncations = np.repeat(done[:, None], n, axis=1)
        return obs, reward, np.zeros((k, n), dtype=bool), truncations, infos

    def _validate(self, actions: npt.ArrayLike) -> np.ndarray:
        a = np.array(actions, dtype=np.float64)
        shape = (self.num_envs, self.n_agents, 4)
        if a.shape != shape:
            raise ActionError(f"actions must have shape {shape} (envs, agents {self.possible_agents}, {ACTION_NAMES}), "
                              f"got {a.shape}")
        bad = ~np.isfinite(a)
        if bad.any():
            e, i, j = np.argwhere(bad)[0]
            raise ActionError(f"env {e}: action of {self.possible_agents[i]!r} has a non-finite {ACTION_NAMES[j]}: {a[e, i, j]}")
        outside = (a < ACTION_LOW - _TOLERANCE) | (a > ACTION_HIGH + _TOLERANCE)
        if outside.any():
            e, i, j = np.argwhere(outside)[0]
            raise ActionError(f"env {e}: action of {self.possible_agents[i]!r}: {ACTION_NAMES[j]} = {a[e, i, j]} is "
                              f"outside [{ACTION_LOW[j]}, {ACTION_HIGH[j]}]")
        np.clip(a, ACTION_LOW, ACTION_HIGH, out=a)
        return a

    def _settle(self, last: BatchMeasurements, signals: list[Signals], clearings: list[Clearing | None]) -> Settlement:
        """Every environment's bill: vectorised without trades, per environment with them."""
        k, n = self.num_envs, self.n_agents
        if self._coordination.p2p is None:
            billed = bill_usd(last.exchange_mw, self._price[:, None],  # type: ignore[arg-type]  # numpy broadcasts a column
                              self.plant.scenario.export_price_ratio, self.plant.dt_h)
            return Settlement(clearing=None, traded_mw=np.zeros((k, n)), trade_cash_usd=np.zeros((k, n)), energy_cost_usd=billed)
        parts = [c.settle_exchange(last.exchange_mw[i], signals[i], clearings[i]) for i, c in enumerate(self.coordinations)]
        return Settlement(clearing=None, traded_mw=np.stack([p.traded_mw for p in parts]),
                          trade_cash_usd=np.stack([p.trade_cash_usd for p in parts]),
                          energy_cost_usd=np.stack([p.energy_cost_usd for p in parts]))

    # ------------------------------------------------------------------ views
    def _compute_signals(self, last: BatchMeasurements, rows: npt.NDArray[np.bool_] | None) -> None:
        """The coordination's signals of every environment's coming step (the centralized forms)."""
        plant, c = self.plant, self._coordination
        hourly = plant.prices()
        head = last.feeder_head_mw
        rating = plant.scenario.feeder_head_rating_mva
        loading = np.where(np.isfinite(head), np.maximum(np.nan_to_num(head), 0.0) / rating, 0.0)
        adder = c.price.congestion_adder(loading) * np.ones(self.num_envs)
        self._adder = adder
        self._price = hourly + adder
        if not self._per_env:  # the price alone: the arrays above are every signal there is
            self._signals = []
            return
        previous = self._signals
        forecast = plant.forecast()
        signals = []
        for i in range(self.num_envs):
            if previous is not None and rows is not None and not rows[i]:
                signals.append(previous[i])
                continue
            price = PriceSignal(price_usd_per_mwh=float(hourly[i]), congestion_adder_usd_per_mwh=float(adder[i]))
            signal = Signals(price=price)
            if self._per_env:
                coord = self.coordinations[i]
                needs = coord.needs_mw(forecast.load_mw[i], forecast.pv_mw[i], forecast.wind_mw[i])
                if coord.setpoint:
                    signal.setpoint_mw = coord.setpoint.allocate(needs)
                if coord.consensus:
                    shares = coord.demand_shares_mw(needs)
                    if coord.consensus_form == "lockstep":
                        nodes = coord.consensus.dispatch_lockstep(coord.generators, shares.tolist())
                        signal.dispatch_mw = np.array([node.p_mw for node in nodes])
                        signal.consensus_rounds = max(node.rounds for node in nodes)
                    else:
                        signal.dispatch_mw = coord.consensus.dispatch(coord.generators, float(shares.sum())).p_mw
                if coord.n_features:
                    self._features[i] = coord.features(signal)
            signals.append(signal)
        self._signals = signals

    def _observe(self, last: BatchMeasurements, rows: npt.NDArray[np.bool_] | None = None) -> np.ndarray:
        """Every environment's observations of its coming step (after computing its signals)."""
        self._compute_signals(last, rows)
        plant = self.plant
        forecast = plant.forecast()
        local = self._local
        local[:, :, 0] = forecast.load_mw
        local[:, :, 1] = forecast.pv_mw
        local[:, :, 2] = forecast.wind_mw
        local[:, :, 3] = last.soc
        local[:, :, 4] = last.applied.generator_mw
        local[:, :, 5] = last.applied.battery_mw
        local[:, :, 6] = last.exchange_mw
        local[:, :, 7] = last.violation_v_pu
        k, n = self.num_envs, self.n_agents
        per_day = plant.template.profiles.steps_per_day
        angle = 2.0 * math.pi * (plant.t % per_day) / per_day
        rows_out = np.empty((k, n, self.layout.size), dtype=np.float32)
        rows_out[:, :, 0] = np.sin(angle)[:, None]
        rows_out[:, :, 1] = np.cos(angle)[:, None]
        rows_out[:, :, 2] = (self._price / ob.PRICE_SCALE)[:, None]
        c0 = ob.N_CONTEXT
        n_features = self._coordination.n_features
        if self.layout.kind == "local":
            own = c0 + ob.N_LOCAL
            rows_out[:, :, c0:own] = local
            nbr = ob.neighbour_means(local.reshape(k * n, ob.N_LOCAL), self._nbr_index, self._nbr_valid)
            rows_out[:, :, own : own + ob.N_NEIGHBOUR] = nbr.reshape(k, n, ob.N_NEIGHBOUR)
            rows_out[:, :, own + ob.N_NEIGHBOUR : ob.N_LOCAL_BASE] = self._operator_features(local)[:, None, :]
            if n_features:
                rows_out[:, :, ob.N_LOCAL_BASE :] = self._features
        else:
            one_hot = c0 + ob.N_LOCAL * n
            rows_out[:, :, c0:one_hot] = local.reshape(k, 1, n * ob.N_LOCAL)
            rows_out[:, :, one_hot : one_hot + n] = self._one_hot
            if n_features:
                rows_out[:, :, one_hot + n :] = self._features.reshape(k, 1, n * n_features)
        if self.config.normalize:
            rows_out = (rows_out.astype(np.float64) / self._scales).astype(np.float32)
        return rows_out

    def _operator_features(self, local: np.ndarray) -> np.ndarray:
        """The operator's aggregates (K, 11) of every environment: site means and the day's price outlook
        (``heron_edge.observations.operator_features``, over arrays)."""
        plant = self.plant
        per_day = plant.template.profiles.steps_per_day
        site = ob.SITE_NAMES
        out = np.empty((self.num_envs, len(ob.OPERATOR_NAMES)))
        out[:, : len(site)] = local[:, :, self._site_columns].mean(axis=1)  # ob.site_means, every environment at once
        here = plant.t % per_day
        day = (plant.t - here)[:, None] + np.arange(per_day)
        prices = plant.prices(day.ravel()).reshape(day.shape)
        price = prices[np.arange(self.num_envs), here]
        later = np.arange(per_day)[None, :] >= here[:, None]
        outlook = np.stack([prices.min(axis=1), prices.mean(axis=1), prices.max(axis=1),
                            np.count_nonzero(prices < price[:, None], axis=1) / per_day,
                            np.where(later, prices, np.inf).min(axis=1), np.where(later, prices, -np.inf).max(axis=1)],
                           axis=1)
        quantile = ob.OUTLOOK_NAMES.index("price_quantile")
        out[:, len(site):] = outlook / ob.PRICE_SCALE
        out[:, len(site) + quantile] = outlook[:, quantile]
        return out

    def _infos(self, last: BatchMeasurements, signals: list[Signals], settlement: Settlement,
               clearings: list[Clearing | None], terminal: np.ndarray, done: npt.NDArray[np.bool_]) -> VectorInfos:
        """Every agent's ``StepInfo`` fields as (K, n_agents) arrays."""
        k, n = self.num_envs, self.n_agents

        def full(value: Any) -> np.ndarray:
            return np.broadcast_to(np.asarray(value, dtype=np.float64).reshape(-1, 1) if np.ndim(value) else
                                   np.float64(value), (k, n)).astype(np.float64)

        nan = full(math.nan)
        values: dict[str, np.ndarray] = {name: nan.copy() for name in INFO_NAMES}
        values.update(
            step_in_year=full(last.step), converged=full(last.converged), price_usd_per_mwh=full(self._price),
            congestion_adder_usd_per_mwh=full(self._adder), fuel_cost_usd=last.fuel_cost_usd.copy(),
            energy_cost_usd=settlement.energy_cost_usd.copy(), penalty_usd=last.penalty_usd.copy(),
            violation_v_pu=last.violation_v_pu.copy(), overload_percent=last.overload_percent.copy(),
            exchange_mw=last.exchange_mw.copy(), soc=last.soc.copy(), terminal_value_usd=terminal,
            **{CLAMPED_FIELDS[f]: mask.astype(np.float64) for f, mask in last.clamped.items() if f in CLAMPED_FIELDS})
        if last.regulator_taps.shape[1]:
            values["tap_changes"] = full(last.tap_changes.sum(axis=1).astype(np.float64))
            values["tap_min"] = full(last.regulator_taps.min(axis=1).astype(np.float64))
            values["tap_max"] = full(last.regulator_taps.max(axis=1).astype(np.float64))
        else:
            values["tap_changes"] = full(0.0)
        c = self._coordination
        if c.setpoint:
            setpoint = np.stack([s.setpoint_mw for s in signals if s.setpoint_mw is not None])
            values["setpoint_mw"] = setpoint
            values["tracking_error_mw"] = np.stack([tracking_error(setpoint[i], last.exchange_mw[i]) for i in range(k)])
        if c.consensus:
            values["dispatch_mw"] = np.stack([s.dispatch_mw for s in signals if s.dispatch_mw is not None])
            values["consensus_rounds"] = full(np.array([float(s.consensus_rounds) for s in signals]))
        if c.p2p:
            values["traded_mw"] = settlement.traded_mw.copy()
            values["trade_cash_usd"] = settlement.trade_cash_usd.copy()
            values["clearing_price_usd_per_mwh"] = full(np.array(
                [math.nan if cl is None or cl.price_usd_per_mwh is None else cl.price_usd_per_mwh for cl in clearings]))
            values["trades"] = np.array([[float(len(cl.trades_of(a))) if cl else 0.0 for a in self.possible_agents]
                                         for cl in clearings])
        return VectorInfos(values=values, done=done.copy())

    def close(self) -> None:
        self.single.close()
