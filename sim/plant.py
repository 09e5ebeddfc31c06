"""The plant: apply device setpoints (clamped to limits), advance one step, return measurements.

One ``Plant`` is the whole physical system of a scenario: the network, every microgrid's battery,
generator, PV, wind and loads, the profiles and the clock. It knows nothing of agents or messages;
the environment (centralized) and the SIL rig (behind emulated devices) drive the same object.

The feeder's voltage regulators (if its network has any) are part of the plant: in each step their
relays act on the step's power flow (``sim.regulators``), and the measurements are the state after
they acted. Penalties are rates per hour (``PenaltyConfig``) times the step length.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandapower as pp

from sim.devices import BatteryFleet, GeneratorFleet
from sim.errors import PlantStateError, ScenarioError
from sim.ieee123 import ieee123_13
from sim.networks import BuiltNetwork, cigre_mv_der, ieee34_3x13
from sim.powerflow import FastPowerFlow
from sim.profiles import Profiles, load_profiles
from sim.regulators import TapController
from sim.scenario import Ieee34Network, Ieee123Network, Scenario, load_scenario

SETPOINT_FIELDS = ("battery_mw", "generator_mw", "pv_curtailment", "wind_curtailment")
SETTLE_AT_RESET_S = 3600.0
"""At reset the regulators get this long to settle on the first step's power flow (an episode starts settled)."""


@dataclass(frozen=True)
class Forecast:
    """Per-microgrid load and available PV and wind of one step, MW (read-only arrays, one entry per microgrid)."""

    load_mw: np.ndarray
    pv_mw: np.ndarray
    wind_mw: np.ndarray


@dataclass
class Setpoints:
    """What the microgrids ask of their devices, one entry per microgrid.

    battery_mw: + discharge / - charge (MW); generator_mw: output (MW);
    pv_curtailment, wind_curtailment: fraction of the available power withheld, in [0, 1].
    """

    battery_mw: np.ndarray
    generator_mw: np.ndarray
    pv_curtailment: np.ndarray
    wind_curtailment: np.ndarray

    @classmethod
    def zeros(cls, n: int) -> Setpoints:
        return cls(np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n))


@dataclass
class Measurements:
    """The plant's state after a step. Per-microgrid arrays have one entry per microgrid (MW, USD, p.u.)."""

    step: int  # index into the profile year of the step just simulated
    converged: bool
    price_usd_per_mwh: float
    load_mw: np.ndarray  # load_mw, pv_available_mw, wind_available_mw: read-only, shared with forecast()
    pv_available_mw: np.ndarray
    wind_available_mw: np.ndarray
    applied: Setpoints  # what the devices actually did, after clamping
    clamped: dict[str, np.ndarray]  # setpoint field -> bool per microgrid: was the request limited
    pv_mw: np.ndarray
    wind_mw: np.ndarray
    soc: np.ndarray  # after the step, fraction of capacity
    exchange_mw: np.ndarray  # import into each microgrid at its point of connection (+ import, - export)
    fuel_cost_usd: np.ndarray
    violation_v_pu: np.ndarray  # summed p.u. outside the voltage band over the microgrid's buses
    overload_percent: np.ndarray  # summed percent above the loading limit over the microgrid's lines and transformers
    penalty_usd: np.ndarray  # (rates per hour, PenaltyConfig) x the step length
    feeder_head_mw: float  # import from the upstream grid at the substation (NaN if not converged)
    vm_pu: np.ndarray  # every bus, net.bus order (NaN if not converged)
    line_loading_percent: np.ndarray  # every line (NaN if not converged)
    regulator_taps: np.ndarray  # tap position of each of the network's regulators after the step (int; empty if none)
    tap_changes: np.ndarray  # tap operations of each regulator during the step (int)


def build_network(scenario: Scenario) -> BuiltNetwork:
    """The scenario's pandapower network with each microgrid's devices added at its device bus."""
    names = [m.name for m in scenario.microgrids]
    net_cfg = scenario.network
    if isinstance(net_cfg, Ieee123Network):
        built = ieee123_13(attach_buses=[net_cfg.attach_buses[n] for n in names], microgrid_names=names,
                           load_scale=net_cfg.load_scale, feeder_load_scale=net_cfg.feeder_load_scale,
                           source_vm_pu=net_cfg.source_vm_pu, poc_mva=net_cfg.poc_mva)
    elif isinstance(net_cfg, Ieee34Network):
        built = ieee34_3x13(attach_buses=[net_cfg.attach_buses[n] for n in names], microgrid_names=names,
                            load_scale=net_cfg.load_scale, feeder_load_scale=net_cfg.feeder_load_scale,
                            source_vm_pu=net_cfg.source_vm_pu, regulator_taps=net_cfg.regulator_taps,
                            poc_mva=net_cfg.poc_mva)
    else:
        built = cigre_mv_der(zones={n: list(net_cfg.zones[n].buses) for n in names},
                             device_buses={n: net_cfg.zones[n].device_bus for n in names},
                             poc_lines={n: net_cfg.zones[n].poc_line for n in names}, load_scale=net_cfg.load_scale)
    net = built.net
    by_name = {z.name: z for z in built.zones}
    built.zones = [by_name[n] for n in names]
    # sgen order: all generators, then all PV, then all wind; storage: one battery per microgrid
    # (one pandapower call per table: per-element calls cost seconds with hundreds of microgrids)
    mgs, device_buses = scenario.microgrids, [zone.device_bus for zone in built.zones]
    pp.create_sgens(net, device_buses * 3, p_mw=0.0,
                    max_p_mw=[m.generator.p_max_mw for m in mgs] + [m.pv_mw for m in mgs] + [m.wind_mw for m in mgs],
                    name=[f"{m.name}.{kind}" for kind in ("generator", "pv", "wind") for m in mgs])
    pp.create_storages(net, device_buses, p_mw=0.0, max_e_mwh=[m.battery.capacity_mwh for m in mgs],
                       name=[f"{m.name}.battery" for m in mgs])
    return built



def clamp_setpoints(request: Setpoints, battery: tuple[np.ndarray, np.ndarray],
                    generator: tuple[np.ndarray, np.ndarray]) -> tuple[Setpoints, dict[str, np.ndarray]]:
    """``request`` limited to the devices' (low, high) bounds, curtailments to [0, 1]; and per field, which entries
    were limited. Any array shape: one plant's (N,) or a batch's (K, N)."""
    # np.minimum/np.maximum: np.clip costs ~3 us on arrays this small
    applied = Setpoints(np.minimum(np.maximum(request.battery_mw, battery[0]), battery[1]),
                        np.minimum(np.maximum(request.generator_mw, generator[0]), generator[1]),
                        np.minimum(np.maximum(request.pv_curtailment, 0.0), 1.0),
                        np.minimum(np.maximum(request.wind_curtailment, 0.0), 1.0))
    clamped = {f: np.abs(getattr(applied, f) - getattr(request, f)) > 1e-9 for f in SETPOINT_FIELDS}
    return applied, clamped


class Plant:
    """Apply setpoints, advance one step, measure: the simulated physical system of a scenario."""

    def __init__(self, scenario: Scenario | str | Path = "ieee34_3x13") -> None:
        self.scenario = load_scenario(scenario)
        sc = self.scenario
        self.names = [m.name for m in sc.microgrids]
        self.n = len(self.names)
        self.dt_h = sc.step_hours
        self.built = build_network(sc)
        self.net = self.built.net
        self.powerflow = FastPowerFlow(self.net)
        regulators = self.built.regulators
        self._reg_trafos = np.array([r.trafo for r in regulators], dtype=np.int64)
        self._reg_taps0 = self.net.trafo.tap_pos.to_numpy()[self._reg_trafos].astype(np.int64)
        auto = not isinstance(sc.network, Ieee34Network) or sc.network.regulator_control == "auto"
        self.regulators: TapController | None = (
            TapController([r.settings for r in regulators], self._reg_taps0) if regulators and auto else None)
        self.batteries = BatteryFleet.from_configs([m.battery for m in sc.microgrids])
        self.generators = GeneratorFleet.from_configs([m.generator for m in sc.microgrids])
        self.pv_rating = np.array([m.pv_mw for m in sc.microgrids])
        self.wind_rating = np.array([m.wind_mw for m in sc.microgrids])
        self._setup_profiles_and_zones()
        self.year = 0
        self.t = 0
        self.last: Measurements | None = None

    def _setup_profiles_and_zones(self) -> None:
        sc, net, zones = self.scenario, self.net, self.built.zones
        mg_of_load = {load: i for i, z in enumerate(zones) for load in z.loads}
        names = [sc.feeder_load_profile, sc.price_profile]
        for m in sc.microgrids:
            names += [m.load_profile, m.solar_profile, m.wind_profile]
        self._profile_names = list(dict.fromkeys(names))
        row = {name: i for i, name in enumerate(self._profile_names)}
        self._load_row = np.array([row[sc.microgrids[mg_of_load[i]].load_profile] if i in mg_of_load else row[sc.feeder_load_profile]
                                   for i in range(len(net.load))])
        self._base_p = net.load.p_mw.to_numpy(np.float64).copy()
        self._base_q = net.load.q_mvar.to_numpy(np.float64).copy()
        self._price_row = row[sc.price_profile]
        self._solar_row = np.array([row[m.solar_profile] for m in sc.microgrids])
        self._wind_row = np.array([row[m.wind_profile] for m in sc.microgrids])
        # load -> microgrid aggregation matrix (feeder loads belong to none)
        self._load_to_mg = np.zeros((self.n, len(net.load)))
        for load, i in mg_of_load.items():
            self._load_to_mg[i, load] = 1.0
        self._bus_to_mg = np.zeros((self.n, len(net.bus)))
        self._line_to_mg = np.zeros((self.n, len(net.line)))
        self._trafo_to_mg = np.zeros((self.n, len(net.trafo)))
        self._poc: list[tuple[str, int]] = []  # (kind: "trafo", "line_from" or "line_to"; element index)
        for i, z in enumerate(zones):
            self._bus_to_mg[i, z.buses] = 1.0
            self._line_to_mg[i, z.lines] = 1.0
            self._trafo_to_mg[i, z.trafos] = 1.0
            if z.poc_trafo is not None:
                self._trafo_to_mg[i, z.poc_trafo] = 1.0
                self._poc.append(("trafo", z.poc_trafo))
            elif z.poc_line is not None:
                self._line_to_mg[i, z.poc_line] = 1.0
                inside_from = int(net.line.from_bus.at[z.poc_line]) in z.buses
                self._poc.append(("line_to" if inside_from else "line_from", z.poc_line))
            else:
                raise ScenarioError(f"microgrid {z.name!r} has no point of connection (neither a transformer nor a line)")
        self._matrix: np.ndarray | None = None  # profile rows x steps of the current year
        self._profiles: Profiles | None = None
        self._forecast_key: tuple[int, int] | None = None
        self._forecast: Forecast | None = None

    # ------------------------------------------------------------------ clock
    @property
    def profiles(self) -> Profiles:
        """The loaded year's profiles; PlantStateError before ``load_year()`` or ``reset()``."""
        if self._profiles is None:
            raise PlantStateError("no profiles loaded: call reset() (or load_year()) first")
        return self._profiles

    def _year_matrix(self) -> np.ndarray:
        """Profile rows x steps of the loaded year; PlantStateError before ``load_year()`` or ``reset()``."""
        if self._matrix is None:
            raise PlantStateError("no profiles loaded: call reset() (or load_year()) first")
        return self._matrix

    def latest(self) -> Measurements:
        """The measurements after the last step (or ``reset()``); PlantStateError before the first ``reset()``.

        ``last`` is the same value, or None; this is for callers that cannot go on without it.
        """
        if self.last is None:
            raise PlantStateError("the plant has not been reset: call reset() first")
        return self.last

    def load_year(self, year: int) -> None:
        """Load ``year``'s profiles (no-op if they are loaded already); the clock and the devices are left as they are."""
        if self._matrix is None or self.year != year:
            profiles = load_profiles(year, self._profile_names, self.dt_h, self.scenario.data)
            self._matrix = np.stack([profiles.series[n] for n in self._profile_names])
            self._profiles = profiles
            self.year = year

    def reset(self, *, year: int = 2023, start_step: int = 0, soc: np.ndarray | None = None) -> Measurements:
        """Start at ``start_step`` of ``year`` with idle devices; returns the measurements at idle setpoints."""
        self.load_year(year)
        n_steps = self._year_matrix().shape[1]
        if not 0 <= start_step < n_steps:
            raise ValueError(f"start_step {start_step} outside the year's {n_steps} steps")
        self.batteries.reset(soc)
        self.generators.reset()
        if self.regulators is not None:
            self.regulators.reset(self._reg_taps0)
            self.powerflow.set_taps(self._reg_trafos, self._reg_taps0)
        self.powerflow.reset()  # after the taps: every episode starts from the same flat profile
        self.t = start_step
        self.last = self._simulate(Setpoints.zeros(self.n), advance=False)
        return self.last

    @property
    def n_steps_in_year(self) -> int:
        """Steps in the loaded year; PlantStateError before ``load_year()`` or ``reset()``."""
        return int(self._year_matrix().shape[1])

    def price(self, step: int | None = None) -> float:
        """Hourly price (USD/MWh) at ``step`` of the year (default: the step about to be simulated)."""
        return float(self._year_matrix()[self._price_row, self.t if step is None else step])

    def forecast(self, step: int | None = None) -> Forecast:
        """Per-microgrid load and available PV / wind (MW) at ``step`` (default: the step about to be simulated).

        Read-only arrays, computed once per step and year (every agent of a step asks for the same).
        PlantStateError before ``load_year()`` or ``reset()``.
        """
        matrix = self._year_matrix()
        step = self.t if step is None else step
        if self._forecast_key != (self.year, step):
            col = matrix[:, step]
            self._forecast = Forecast(load_mw=self._load_to_mg @ (self._base_p * col[self._load_row]),
                                      pv_mw=self.pv_rating * col[self._solar_row],
                                      wind_mw=self.wind_rating * col[self._wind_row])
            for values in (self._forecast.load_mw, self._forecast.pv_mw, self._forecast.wind_mw):
                values.setflags(write=False)
            self._forecast_key = (self.year, step)
        if self._forecast is None:
            raise PlantStateError("no forecast: call reset() (or load_year()) first")
        return self._forecast

    # ------------------------------------------------------------------ step
    def clamp(self, request: Setpoints) -> tuple[Setpoints, dict[str, np.ndarray]]:
        """Limit a request to what each device can do this step; also say which fields were limited."""
        return clamp_setpoints(request, self.batteries.limits(self.dt_h), self.generators.limits(self.dt_h))

    def step(self, request: Setpoints) -> Measurements:
        """Apply ``request`` (clamped) for one step, solve the network, advance the devices and the clock."""
        n_steps = self._year_matrix().shape[1]
        if self.t >= n_steps:
            raise IndexError(f"the {self.year} profiles end at step {n_steps}")
        self.last = self._simulate(request, advance=True)
        return self.last

    def _simulate(self, request: Setpoints, *, advance: bool) -> Measurements:
        n, dt, t = self.n, self.dt_h, self.t
        col = self._year_matrix()[:, t]
        factor = col[self._load_row]
        load_p = self._base_p * factor
        load_q = self._base_q * factor
        available = self.forecast(t)  # the same arithmetic as here, cached per step (read-only arrays)
        mg_load, pv_avail, wind_avail = available.load_mw, available.pv_mw, available.wind_mw
        applied, clamped = self.clamp(request)
        pv = pv_avail * (1.0 - applied.pv_curtailment)
        wind = wind_avail * (1.0 - applied.wind_curtailment)
        pf = self.powerflow
        sgen, storage = np.concatenate((applied.generator_mw, pv, wind)), -applied.battery_mw
        converged = pf.solve(load_p, load_q, sgen, storage)
        changes = np.zeros(len(self._reg_trafos), dtype=np.int64)
        if converged and self.regulators is not None:
            converged = self._regulate(self.regulators, load_p, load_q, sgen, storage,
                                       dt * 3600.0 if advance else SETTLE_AT_RESET_S)
            changes = self.regulators.changes.copy() if advance else changes
        if converged:
            exchange = np.array([self._poc_flow(kind, idx) for kind, idx in self._poc])
            violation_v, overload = self._violations()
            vm_pu, line_loading = pf.vm_pu.copy(), pf.line_loading_percent.copy()
        else:  # no network state this step: the solver's arrays still hold an earlier step's results
            exchange = mg_load - pv - wind - applied.generator_mw - applied.battery_mw  # lossless balance
            violation_v = np.zeros(n)
            overload = np.zeros(n)
            vm_pu = np.full(len(pf.vm_pu), np.nan)
            line_loading = np.full(len(pf.line_loading_percent), np.nan)
        p_cfg = self.scenario.penalties  # rates per hour
        penalty = p_cfg.usd_per_pu_voltage * violation_v + p_cfg.usd_per_percent_overload * overload
        if not converged:
            penalty = penalty + p_cfg.usd_divergence
        penalty = penalty * dt
        price = float(col[self._price_row])
        fuel = self.generators.fuel_cost_usd(applied.generator_mw, dt)
        if advance:
            self.batteries.advance(applied.battery_mw, dt)
            self.generators.p_mw[:] = applied.generator_mw
            self.t = t + 1
        return Measurements(
            step=t, converged=converged, price_usd_per_mwh=price, load_mw=mg_load, pv_available_mw=pv_avail,
            wind_available_mw=wind_avail, applied=applied, clamped=clamped, pv_mw=pv, wind_mw=wind,
            soc=self.batteries.soc.copy(), exchange_mw=exchange, fuel_cost_usd=fuel,
            violation_v_pu=violation_v, overload_percent=overload, penalty_usd=penalty,
            feeder_head_mw=pf.slack_p_mw if converged else float(np.nan), vm_pu=vm_pu, line_loading_percent=line_loading,
            regulator_taps=self.regulator_taps(), tap_changes=changes)

    def regulator_taps(self) -> np.ndarray:
        """Tap position of each of the network's regulators (``built.regulators`` order; fixed ones too)."""
        taps: np.ndarray = (self._reg_taps0 if self.regulators is None else self.regulators.taps).copy()
        return taps

    def _regulate(self, ctl: TapController, load_p: np.ndarray, load_q: np.ndarray, sgen: np.ndarray,
                  storage: np.ndarray, dt_s: float) -> bool:
        """Let the regulators act on the solved network for ``dt_s`` seconds; False if a solve after a tap move diverged."""
        pf, idx = self.powerflow, self._reg_trafos
        converged = True

        def relay_v() -> np.ndarray:
            return ctl.relay_v(pf.trafo_v_lv_kv[idx], -pf.trafo_p_lv_mw[idx], -pf.trafo_q_lv_mvar[idx])

        def solve(taps: np.ndarray) -> np.ndarray:
            nonlocal converged
            pf.set_taps(idx, taps)
            converged = pf.solve(load_p, load_q, sgen, storage)
            return relay_v() if converged else np.full(len(idx), np.nan)

        ctl.settle(relay_v(), solve, dt_s)
        return converged

    def _poc_flow(self, kind: str, idx: int) -> float:
        pf = self.powerflow
        if kind == "trafo":
            return float(pf.trafo_p_hv_mw[idx])
        if kind == "line_from":
            return float(pf.line_p_from_mw[idx])
        return float(pf.line_p_to_mw[idx])

    def _violations(self) -> tuple[np.ndarray, np.ndarray]:
        """Per microgrid: p.u. outside the voltage band summed over its buses; percent overload over its branches."""
        p = self.scenario.penalties
        vm = self.powerflow.vm_pu
        outside = np.maximum(vm - p.v_max_pu, 0.0) + np.maximum(p.v_min_pu - vm, 0.0)
        over_line = np.maximum(self.powerflow.line_loading_percent - p.loading_max_percent, 0.0)
        over_trafo = np.maximum(self.powerflow.trafo_loading_percent - p.loading_max_percent, 0.0)
        return self._bus_to_mg @ outside, self._line_to_mg @ over_line + self._trafo_to_mg @ over_trafo
