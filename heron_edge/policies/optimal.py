"""The optimal baseline: a perfect-foresight dispatch of each episode, planned by HiGHS and played through the plant.

How far is a policy from the best achievable cost? ``OptimalPlanner`` sees the whole episode in advance
(prices, loads, PV and wind of every step), solves the least-cost dispatch of all microgrids at once
(:mod:`heron_edge.policies.dispatch_lp`) and hands each agent its planned setpoints step by step; the
environment plays them through the real plant, so the reported cost is the plant's (the plan's own
estimate is kept for the gap). It plans when it first acts after ``env.reset()`` (or on ``reset()``).

Network model, and why: sensitivities of the exchange at every point of connection, every microgrid bus
voltage and every microgrid branch loading (lines and transformers, what the plant penalises) to each
microgrid's net injection at its device bus, by finite differences on the plant's own fast AC solver
(a second plant of the same scenario whose devices never limit), per step, around an operating point:
first the idle devices, then the first plan's dispatch (a second, re-linearised solve). Unlike LinDistFlow
this keeps the regulators, transformers, shunts and losses exactly as the plant models them (losses enter
the exchange through the sensitivities), and it works on any scenario the plant runs. The error of the
linear model is measured on the plant after the fact (:func:`compare`).
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from heron_edge.errors import ConfigError, RunError
from heron_edge.policies.dispatch_lp import DispatchProblem, LinearNetwork, Schedule, solve_dispatch
from sim.plant import Measurements, Plant, Setpoints
from sim.scenario import BatteryConfig, Scenario

if TYPE_CHECKING:
    from heron_edge.env import MultiAgentMicrogrids

__all__ = ["NetworkProbe", "OptimalPlanner", "OptimalPolicy", "Plan", "PlayedComparison", "compare", "compare_trajectory",
           "optimal_policies"]

DELTA_MW = 0.02
"""Injection step of the finite differences (MW)."""
Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(exchange at each point of connection (n, MW), monitored bus voltages (p.u.), monitored branch loadings (percent))."""


def unlimited(scenario: Scenario) -> Scenario:
    """The same scenario with devices that never limit (a huge battery, no ramp, no minimum output), so a probe
    plant can be driven to any net injection through its battery alone."""
    big = 10.0 * sum(m.battery.p_max_mw + m.generator.p_max_mw + m.pv_mw + m.wind_mw for m in scenario.microgrids) + 10.0
    battery = BatteryConfig(capacity_mwh=1e6, p_max_mw=big, soc_min=0.0, soc_max=1.0, soc_init=0.5, efficiency=1.0)
    microgrids = [m.model_copy(update={"battery": battery,
                                       "generator": m.generator.model_copy(update={"p_min_mw": 0.0, "ramp_mw_per_h": 1e6})})
                  for m in scenario.microgrids]
    return scenario.model_copy(update={"microgrids": microgrids})


class NetworkProbe:
    """Evaluates the plant's network at given net injections per microgrid: exchange, monitored voltages, loadings.

    Monitored: what the plant penalises, every bus of each microgrid's zone, its lines and transformers and its point
    of connection (line or transformer)."""

    def __init__(self, scenario: Scenario) -> None:
        self.plant = Plant(unlimited(scenario))
        zones = self.plant.built.zones
        self.n = self.plant.n
        self.buses = np.concatenate([np.asarray(z.buses, dtype=np.intp) for z in zones])
        self.bus_owner = np.concatenate([np.full(len(z.buses), i) for i, z in enumerate(zones)])
        lines = [sorted(set(z.lines) | ({z.poc_line} if z.poc_line is not None else set())) for z in zones]
        trafos = [sorted(set(z.trafos) | ({z.poc_trafo} if z.poc_trafo is not None else set())) for z in zones]
        self.lines = np.array([x for ls in lines for x in ls], dtype=np.intp)
        self.trafos = np.array([x for ts in trafos for x in ts], dtype=np.intp)
        self.branch_owner = np.array([i for i, ls in enumerate(lines) for _ in ls] + [i for i, ts in enumerate(trafos) for _ in ts],
                                     dtype=np.intp)
        self.evaluations = 0
        self.failures = 0  # evaluations that did not converge, replaced as linearise says

    def evaluate(self, year: int, step: int, injection_mw: np.ndarray) -> tuple[Outputs | None, Outputs | None]:
        """The outputs at ``step`` of ``year`` with idle devices (PV and wind only) and with these net injections
        (MW at each device bus), None where the power flow does not converge: the probe is reset to the step
        (regulators settled on the idle flow, as at an episode's start), then stepped once."""
        plant = self.plant
        idle = plant.reset(year=year, start_step=step)
        at_idle = self._outputs(idle) if idle.converged else None
        available = plant.forecast(step)
        zeros = np.zeros(self.n)
        m = plant.step(Setpoints(injection_mw - available.pv_mw - available.wind_mw, zeros, zeros.copy(), zeros.copy()))
        self.evaluations += 1
        return at_idle, self._outputs(m) if m.converged else None

    def _outputs(self, m: Measurements) -> Outputs:
        """The monitored outputs of the probe's latest solve (``m``, its measurements)."""
        loading = np.concatenate([m.line_loading_percent[self.lines], self.plant.powerflow.trafo_loading_percent[self.trafos]])
        return m.exchange_mw.copy(), m.vm_pu[self.buses].copy(), loading

    def idle_injection(self, year: int, start: int, steps: int) -> np.ndarray:
        """Net injections (steps x n, MW) with idle devices: the available PV and wind."""
        self.plant.load_year(year)
        forecasts = [self.plant.forecast(start + k) for k in range(steps)]
        return np.stack([f.pv_mw + f.wind_mw for f in forecasts])

    def _base(self, year: int, step: int, x0: np.ndarray, idle: np.ndarray) -> tuple[np.ndarray, Outputs]:
        """The operating point of a step and its outputs: ``x0``, or the idle injection where ``x0`` does not
        converge (counted in ``failures``); RunError if neither does (the plant cannot run that step either)."""
        at_idle, at_x0 = self.evaluate(year, step, x0)
        if at_x0 is not None:
            return x0, at_x0
        self.failures += 1
        if at_idle is None:
            raise RunError(f"the network does not converge at step {step} of {year}, even with idle devices")
        return idle, at_idle

    def linearise(self, year: int, start: int, x0: np.ndarray, *, delta_mw: float = DELTA_MW,
                  reuse: LinearNetwork | None = None) -> LinearNetwork:
        """Per step of ``start .. start + len(x0)``: the outputs at ``x0`` (T x n, MW) and their finite-difference
        sensitivities to each microgrid's injection (a step of ``delta_mw``, backwards where forwards does not
        converge, the previous step's where neither does: counted in ``failures``); with ``reuse``, its
        sensitivities and only new outputs at ``x0`` (one evaluation a step instead of n + 1)."""
        T, n = x0.shape
        M, B = len(self.buses), len(self.branch_owner)
        x0 = x0.copy()
        idle = self.idle_injection(year, start, T)
        exchange0, vm0, loading0 = np.empty((T, n)), np.empty((T, M)), np.empty((T, B))
        if reuse is None:
            exchange_sens, vm_sens, loading_sens = np.zeros((T, n, n)), np.zeros((T, M, n)), np.zeros((T, B, n))
        else:
            exchange_sens, vm_sens, loading_sens = reuse.exchange_sens, reuse.vm_sens, reuse.loading_sens
        for t in range(T):
            at_idle: Outputs | None = None
            perturbed: list[tuple[float, Outputs] | None] = []
            for j in range(n if reuse is None else 0):
                found = None
                for delta in (delta_mw, -delta_mw):
                    x = x0[t].copy()
                    x[j] += delta
                    at_idle, out = self.evaluate(year, start + t, x)
                    if out is not None:
                        found = (delta, out)
                        break
                perturbed.append(found)
            if at_idle is not None and np.array_equal(x0[t], idle[t]):  # the resets' idle state is the base point
                exchange0[t], vm0[t], loading0[t] = at_idle
            else:
                x0[t], (exchange0[t], vm0[t], loading0[t]) = self._base(year, start + t, x0[t], idle[t])
            for j, found in enumerate(perturbed):
                if found is None:
                    self.failures += 1
                    if t > 0:
                        exchange_sens[t, :, j], vm_sens[t, :, j] = exchange_sens[t - 1, :, j], vm_sens[t - 1, :, j]
                        loading_sens[t, :, j] = loading_sens[t - 1, :, j]
                    continue
                delta, (e, v, ld) = found
                exchange_sens[t, :, j] = (e - exchange0[t]) / delta
                vm_sens[t, :, j] = (v - vm0[t]) / delta
                loading_sens[t, :, j] = (ld - loading0[t]) / delta
        return LinearNetwork(x0=x0, exchange0=exchange0, exchange_sens=exchange_sens, vm0=vm0, vm_sens=vm_sens,
                             bus_owner=self.bus_owner, loading0=loading0, loading_sens=loading_sens,
                             branch_owner=self.branch_owner)


@dataclass(frozen=True)
class Plan:
    """One episode's plan: ``steps`` steps of ``year`` from ``start``, the schedule, and the ratings and available
    PV / wind that turn it into normalised actions; probe evaluations that did not converge (``NetworkProbe.linearise``);
    timings in seconds."""

    year: int
    start: int
    schedule: Schedule
    pv_available_mw: np.ndarray
    wind_available_mw: np.ndarray
    battery_p_max_mw: np.ndarray
    generator_p_max_mw: np.ndarray
    bus_owner: np.ndarray
    probe_failures: int
    linearise_seconds: float
    solve_seconds: float
    passes: int

    @property
    def steps(self) -> int:
        return int(self.schedule.battery_mw.shape[0])

    @property
    def cost_usd(self) -> float:
        """What the plan expects to cost (USD, all microgrids): piecewise-linear fuel, energy, penalties."""
        return float(self.schedule.cost_usd.sum())

    def action(self, k: int, index: int) -> np.ndarray:
        """The normalised action (float32, shape (4,)) of microgrid ``index`` at step ``k`` of the plan."""
        s = self.schedule

        def curtailment(used: float, available: float) -> float:
            return min(max(1.0 - used / available, 0.0), 1.0) if available > 1e-12 else 0.0

        return np.array([min(max(s.battery_mw[k, index] / self.battery_p_max_mw[index], -1.0), 1.0),
                         min(max(s.generator_mw[k, index] / self.generator_p_max_mw[index], 0.0), 1.0),
                         curtailment(s.pv_mw[k, index], self.pv_available_mw[k, index]),
                         curtailment(s.wind_mw[k, index], self.wind_available_mw[k, index])], dtype=np.float32)


class OptimalPlanner:
    """Plans each episode of ``env`` (centralized, no coordination protocols) and serves the plan's actions.

    ``passes``: linearisations (1: around idle devices; 2: then around the first plan); ``segments``: pieces of
    each generator's fuel curve. ``plans`` keeps every plan; ``served`` the (plan, step) of every step acted on."""

    def __init__(self, env: MultiAgentMicrogrids, *, passes: int = 2, segments: int = 8, time_limit_s: float = 600.0) -> None:
        if not env.config.centralized:
            raise ConfigError("the optimal policy plans on the simulator: run it centralized (not --distributed)")
        if env.coordination.protocols:
            raise ConfigError("the optimal policy plans against the hourly price: run it without coordination protocols")
        if passes < 1 or segments < 1:
            raise ConfigError(f"passes and segments must be at least 1, got {passes}, {segments}")
        self.env = env
        self.passes = passes
        self.segments = segments
        self.time_limit_s = time_limit_s
        self.probe = NetworkProbe(env.plant.scenario)
        self.plans: list[Plan] = []
        self.served: list[tuple[Plan, int]] = []
        self._plan: Plan | None = None
        self._origin: Measurements | None = None  # the reset measurements the plan started from

    def forget(self) -> None:
        """Drop the current plan: the next action plans from the plant's state then."""
        self._plan = None

    def action(self, index: int) -> np.ndarray:
        """Microgrid ``index``'s action for the step the plant is about to simulate (plans first if needed)."""
        plant = self.env.plant
        last = plant.latest()
        plan = self._plan
        fresh = last.step == plant.t  # reset and not stepped yet: a new episode
        k = plant.t - plan.start if plan is not None else -1
        if plan is None or plan.year != plant.year or (fresh and last is not self._origin) or not 0 <= k < plan.steps:
            plan = self.plan()
            k = 0
        if index == 0:
            self.served.append((plan, k))
        return plan.action(k, index)

    def plan(self) -> Plan:
        """Plan the episode from the plant's current state and clock (``max_episode_steps`` steps, to the year's end
        at most) and make it current."""
        env, plant = self.env, self.env.plant
        sc, start, year = plant.scenario, plant.t, plant.year
        horizon = min(env.config.max_episode_steps, plant.n_steps_in_year - start)
        forecasts = [plant.forecast(start + k) for k in range(horizon)]
        pv = np.stack([f.pv_mw for f in forecasts])
        wind = np.stack([f.wind_mw for f in forecasts])
        price = np.array([plant.price(start + k) for k in range(horizon)])
        batteries, generators = plant.batteries, plant.generators  # their state now is the plan's start
        penalties = sc.penalties
        x0 = pv + wind  # idle devices
        failures = self.probe.failures
        linearise_s = solve_s = 0.0
        schedule: Schedule | None = None
        network: LinearNetwork | None = None
        for _ in range(self.passes):
            t0 = time.perf_counter()
            network = self.probe.linearise(year, start, x0, reuse=network)
            linearise_s += time.perf_counter() - t0
            problem = DispatchProblem(
                dt_h=plant.dt_h, price=price, export_price_ratio=sc.export_price_ratio, pv_mw=pv, wind_mw=wind,
                batteries=batteries, generators=generators, network=network, v_min_pu=penalties.v_min_pu,
                v_max_pu=penalties.v_max_pu, loading_max_percent=penalties.loading_max_percent,
                usd_per_pu_voltage=penalties.usd_per_pu_voltage * plant.dt_h,  # the plant's rates are per hour
                usd_per_percent_overload=penalties.usd_per_percent_overload * plant.dt_h,
                segments=self.segments)
            t0 = time.perf_counter()
            schedule = solve_dispatch(problem, time_limit_s=self.time_limit_s)
            solve_s += time.perf_counter() - t0
            x0 = schedule.injection_mw
        if schedule is None:  # passes >= 1 is checked at construction
            raise RunError("no plan was made")
        plan = Plan(year=year, start=start, schedule=schedule, pv_available_mw=pv, wind_available_mw=wind,
                    battery_p_max_mw=batteries.p_max_mw.copy(), generator_p_max_mw=generators.p_max_mw.copy(),
                    bus_owner=self.probe.bus_owner, probe_failures=self.probe.failures - failures,
                    linearise_seconds=linearise_s, solve_seconds=solve_s, passes=self.passes)
        self.plans.append(plan)
        self._plan, self._origin = plan, plant.latest()
        return plan


@dataclass
class OptimalPolicy:
    """One agent's view of a shared :class:`OptimalPlanner` (the ``Policy`` protocol); the observation is not read."""

    planner: OptimalPlanner
    index: int

    def reset(self) -> None:
        """Plan the episode the environment was just reset to (agent 0 plans for all; the others share it); before the
        environment's first reset, only forget (the first action plans)."""
        if self.index == 0:
            self.planner.forget()
            if self.planner.env.plant.last is not None:
                self.planner.plan()

    def act(self, observation: np.ndarray) -> np.ndarray:
        """This agent's planned action for the coming step (float32, shape (4,))."""
        return self.planner.action(self.index)


def optimal_policies(env: MultiAgentMicrogrids, **options: int | float) -> dict[str, OptimalPolicy]:
    """One :class:`OptimalPolicy` per agent of ``env``, sharing one planner (ConfigError if ``env`` cannot be planned)."""
    planner = OptimalPlanner(env, **options)  # type: ignore[arg-type]
    return {a: OptimalPolicy(planner, i) for i, a in enumerate(env.possible_agents)}


@dataclass(frozen=True)
class PlayedComparison:
    """The plan against the plant that played it: costs (USD, fuel + energy + penalties, all microgrids) and the
    linear model's error on the exchange (MW) and on each microgrid's lowest and highest bus voltage (p.u.)."""

    steps: int
    plan_cost_usd: float
    plant_cost_usd: float
    exchange_error_max_mw: float
    exchange_error_mean_mw: float
    voltage_error_max_pu: float
    voltage_error_mean_pu: float
    plans: int = 0
    probe_failures: int = 0
    linearise_seconds: float = 0.0
    solve_seconds: float = 0.0
    largest_lp: tuple[int, int] = (0, 0)  # (variables, constraints)

    @property
    def gap_usd(self) -> float:
        """Plant minus plan (positive: the plant cost more than the plan expected)."""
        return self.plant_cost_usd - self.plan_cost_usd

    @property
    def gap_percent(self) -> float:
        return 100.0 * self.gap_usd / abs(self.plan_cost_usd) if self.plan_cost_usd else 0.0

    def describe(self) -> str:
        """One line for a summary."""
        return (f"optimal: plan {self.plan_cost_usd:.2f} USD, played through the plant {self.plant_cost_usd:.2f} USD "
                f"(gap {self.gap_usd:+.2f} USD, {self.gap_percent:+.3f} %); linear network model error: exchange max "
                f"{self.exchange_error_max_mw:.2e} MW, zone voltage max {self.voltage_error_max_pu:.2e} p.u.")

    def as_dict(self) -> dict[str, float]:
        return {"steps": float(self.steps), "plan_cost_usd": round(self.plan_cost_usd, 4),
                "plant_cost_usd": round(self.plant_cost_usd, 4), "gap_usd": round(self.gap_usd, 4),
                "gap_percent": round(self.gap_percent, 4),
                "exchange_error_max_mw": self.exchange_error_max_mw, "exchange_error_mean_mw": self.exchange_error_mean_mw,
                "voltage_error_max_pu": self.voltage_error_max_pu, "voltage_error_mean_pu": self.voltage_error_mean_pu,
                "plans": float(self.plans), "probe_failures": float(self.probe_failures),
                "linearise_seconds": round(self.linearise_seconds, 1), "solve_seconds": round(self.solve_seconds, 1),
                "largest_lp_variables": float(self.largest_lp[0]), "largest_lp_constraints": float(self.largest_lp[1])}


def compare(served: list[tuple[Plan, int]], *, exchange_mw: np.ndarray, vm_min_pu: np.ndarray, vm_max_pu: np.ndarray,
            cost_usd: np.ndarray) -> PlayedComparison:
    """Compare what was served (one (plan, step) per played step) with what the plant measured on those steps:
    exchange, each microgrid's lowest and highest bus voltage, cost (fuel + energy + penalties), each (steps x n)."""
    if len(served) != len(exchange_mw):
        raise ValueError(f"{len(served)} planned steps against {len(exchange_mw)} played ones")
    predicted_exchange = np.stack([p.schedule.exchange_mw[k] for p, k in served])
    predicted_cost = np.stack([p.schedule.cost_usd[k] for p, k in served])
    n = predicted_exchange.shape[1]
    v_low = np.empty((len(served), n))
    v_high = np.empty((len(served), n))
    for row, (plan, k) in enumerate(served):
        vm, owner = plan.schedule.vm_pu[k], plan.bus_owner
        for i in range(n):
            v_low[row, i] = vm[owner == i].min()
            v_high[row, i] = vm[owner == i].max()
    e_err = np.abs(predicted_exchange - exchange_mw)
    v_err = np.concatenate([np.abs(v_low - vm_min_pu).reshape(-1), np.abs(v_high - vm_max_pu).reshape(-1)])
    v_err = v_err[np.isfinite(v_err)]
    plans = list({id(p): p for p, _ in served}.values())
    return PlayedComparison(steps=len(served), plan_cost_usd=float(predicted_cost.sum()), plant_cost_usd=float(np.sum(cost_usd)),
                            exchange_error_max_mw=float(e_err.max()), exchange_error_mean_mw=float(e_err.mean()),
                            voltage_error_max_pu=float(v_err.max()) if len(v_err) else float("nan"),
                            voltage_error_mean_pu=float(v_err.mean()) if len(v_err) else float("nan"), plans=len(plans),
                            probe_failures=sum(p.probe_failures for p in plans),
                            linearise_seconds=sum(p.linearise_seconds for p in plans),
                            solve_seconds=sum(p.solve_seconds for p in plans),
                            largest_lp=max((p.schedule.variables, p.schedule.constraints) for p in plans))


def compare_trajectory(policies: Mapping[str, object], columns: Mapping[str, np.ndarray]) -> PlayedComparison:
    """:func:`compare` for a run recorded as trajectory columns (``heron_edge.trajectory.COLUMNS``) by the optimal
    ``policies`` that played it."""
    planners = {p.planner for p in policies.values() if isinstance(p, OptimalPolicy)}
    if len(planners) != 1:
        raise ValueError("the policies are not the optimal policy's (one shared planner)")
    return compare(planners.pop().served, exchange_mw=columns["exchange_mw"], vm_min_pu=columns["vm_min_pu"],
                   vm_max_pu=columns["vm_max_pu"], cost_usd=columns["cost_usd"] + columns["penalty_usd"])
