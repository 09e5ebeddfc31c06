"""The plant over K scenarios at once: device models over (K, N) arrays and a batched power flow.

``BatchPlant(scenario, num_scenarios=K)`` is K copies of :class:`sim.plant.Plant` stepped together, for a
vector environment. Every scenario has its own clock, batteries, generators, regulator taps and warm
start; they share the network, the profiles of one year and the scenario's parameters. The device
models are ``sim.devices``' fleets holding (K, N) state and the regulators one ``sim.regulators``
controller over (K, R) taps, played exactly as each single plant plays its own.

The power flow is a fixed point on the bus impedance matrix Z (the inverse of the admittance matrix
without the slack rows, of the network as built, computed once and kept): ``V = Z conj(S / V) + w``,
iterated over the buses with an injection only (Kron-reduced), every scenario in one matrix product per
iteration. A scenario whose regulators sit at other taps differs from the network as built in the few
admittances around the regulators: its Z is the kept one plus a rank-2R correction (Woodbury), kept per
tap setting, so scenarios at different taps still share the one product. Results equal K single plants
to the solvers' tolerance (``tests/sim/test_batch.py``). A scenario whose fixed point does not converge
is solved again by the single plant's Newton-Raphson (``stats.fallbacks``); if that fails too, the step
is non-converged exactly as a single plant reports it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandapower as pp

from sim.devices import BatteryFleet, GeneratorFleet
from sim.errors import PlantStateError, ScenarioError
from sim.plant import SETPOINT_FIELDS, SETTLE_AT_RESET_S, Plant, Setpoints, clamp_setpoints
from sim.regulators import TapController
from sim.scenario import Scenario, load_scenario

__all__ = ["BatchForecast", "BatchMeasurements", "BatchPlant", "SolverStats"]

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]
IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]

_REF, _PQ = 3, 1  # pypower bus types
_VM, _VA, _BASE_KV = 7, 8, 9  # pypower bus columns
_F_BUS, _T_BUS = 0, 1  # pypower branch columns
MAX_KEPT_TAPS = 4096
"""Tap settings whose low-rank update is kept; beyond it the oldest is dropped and rebuilt on demand."""


@dataclass
class BatchMeasurements:
    """:class:`sim.plant.Measurements` of K scenarios: per-microgrid arrays are (K, N), per-scenario ones (K,)."""

    step: IntArray
    converged: BoolArray
    price_usd_per_mwh: FloatArray
    load_mw: FloatArray
    pv_available_mw: FloatArray
    wind_available_mw: FloatArray
    applied: Setpoints  # (K, N) arrays
    clamped: dict[str, BoolArray]
    pv_mw: FloatArray
    wind_mw: FloatArray
    soc: FloatArray
    exchange_mw: FloatArray
    fuel_cost_usd: FloatArray
    violation_v_pu: FloatArray
    overload_percent: FloatArray
    penalty_usd: FloatArray
    feeder_head_mw: FloatArray  # NaN where not converged
    vm_pu: FloatArray  # (K, buses), NaN rows where not converged
    line_loading_percent: FloatArray  # (K, lines)
    regulator_taps: npt.NDArray[np.int64]  # (K, regulators) after the step
    tap_changes: npt.NDArray[np.int64]  # (K, regulators) operations during the step


@dataclass
class BatchForecast:
    """Per-microgrid load and available PV and wind of each scenario's coming step, MW, (K, N)."""

    load_mw: FloatArray
    pv_mw: FloatArray
    wind_mw: FloatArray


@dataclass
class SolverStats:
    """What the batched power flow did since the plant was built."""

    solves: int = 0
    """Scenario solves (K per batch step, plus re-solves after tap moves)."""
    fixed_point_iterations: int = 0
    """Batch iterations, summed over solves."""
    fallbacks: int = 0
    """Scenario solves handed to the single plant's Newton-Raphson (the fixed point did not converge)."""
    diverged: int = 0
    """Of those, the ones that did not converge either (reported non-converged, as a single plant does)."""
    networks_built: int = 0
    """Tap settings met, each a low-rank update of the kept Z-bus built once."""


@dataclass(frozen=True)
class _ZBus:
    """The kept matrices of the network as built (row-vector batches, so transposed): Z over the injection buses
    and the regulators' buses, Z from those to every PQ bus, the slack's contribution w, branch admittances, the
    slack rows of Ybus."""

    z_in_t: ComplexArray  # injection buses -> injection buses and the regulators' PQ buses (Z[R, J]^T)
    w_in: ComplexArray  # w over those rows
    z_out_t: ComplexArray  # injection buses -> every PQ bus (Z[:, J]^T)
    w: ComplexArray  # (PQ,)
    z_reg_in_t: ComplexArray  # regulators' PQ buses -> injection buses (Z[J, B]^T)
    z_reg_out_t: ComplexArray  # regulators' PQ buses -> every PQ bus (Z[:, B]^T)
    g: ComplexArray  # Z[B, B]
    y_ff: ComplexArray  # per branch: I_from = y_ff V_from + y_ft V_to; I_to = y_tf V_from + y_tt V_to
    y_ft: ComplexArray
    y_tf: ComplexArray
    y_tt: ComplexArray
    y_ref_t: ComplexArray


@dataclass(frozen=True)
class _TapUpdate:
    """One tap setting as a low-rank change of the network as built (Woodbury): over the regulators' buses B, the
    admittance change D (PQ part), the slack-side term e, M = (I + D Z[B,B])^-1 D; per regulator branch its
    admittances; the slack rows' change (for the slack's power)."""

    m: ComplexArray  # (b, b)
    e: ComplexArray  # (b,)
    y_reg: ComplexArray  # (4, regulators): y_ff, y_ft, y_tf, y_tt of each regulator's branch
    dy_ref: ComplexArray  # (ref, buses touched) change of the slack rows of Ybus at the touched buses


@dataclass
class _Network:
    """The network's fixed indexing: bus types, branch ends, injection maps, rating bases."""

    pq: IntArray
    ref: IntArray
    v_ref: ComplexArray
    from_bus: IntArray
    to_bus: IntArray
    injection_p: FloatArray  # (loads p | loads q | sgens | storages) x injection buses: per-unit P
    injection_q: FloatArray  # the same for Q (pandapower signs: loads and storages consume)
    inj: IntArray  # the PQ buses (positions in ``pq``) with an injection: the fixed point runs over these only
    ka_per_pu_from: FloatArray
    ka_per_pu_to: FloatArray
    base_kv_to: FloatArray
    n_line: int
    line_max_ka: FloatArray
    trafo_rated_hv_ka: FloatArray
    trafo_rated_lv_ka: FloatArray
    base_mva: float


@dataclass
class _Flows:
    """The power flow results of some scenarios, one row each."""

    converged: BoolArray
    vm_pu: FloatArray
    line_p_from: FloatArray
    line_p_to: FloatArray
    line_loading: FloatArray
    trafo_p_hv: FloatArray
    trafo_p_lv: FloatArray
    trafo_q_lv: FloatArray
    trafo_v_lv_kv: FloatArray
    trafo_loading: FloatArray
    slack_p: FloatArray

    @classmethod
    def empty(cls, k: int, n_bus: int, n_line: int, n_trafo: int) -> _Flows:
        def z(n: int) -> FloatArray:
            return np.zeros((k, n))

        return cls(np.ones(k, dtype=bool), z(n_bus), z(n_line), z(n_line), z(n_line), z(n_trafo), z(n_trafo),
                   z(n_trafo), z(n_trafo), z(n_trafo), np.zeros(k))

    def put(self, rows: IntArray, other: _Flows) -> None:
        """Overwrite rows ``rows`` with ``other``'s."""
        for name in vars(self):
            getattr(self, name)[rows] = getattr(other, name)


class BatchPlant:
    """K scenarios of one plant stepped as arrays (a vector environment's plant)."""

    def __init__(self, scenario: Scenario | str | Path = "ieee34_3x13", num_scenarios: int = 1, *,
                 max_iter: int = 40, tol_pu: float = 1e-8, template: Plant | None = None) -> None:
        if num_scenarios < 1:
            raise ValueError(f"num_scenarios must be >= 1, got {num_scenarios}")
        if template is not None and template.scenario != load_scenario(scenario):
            raise ScenarioError("the template plant must be of the batch's scenario")
        self.template = template if template is not None else Plant(scenario)
        """A single plant of the scenario (its parameters, profiles and maps, and the fallback solver); ``template``
        lends one already built (it is then used for nothing else)."""
        tpl = self.template
        self.scenario = tpl.scenario
        self.names = tpl.names
        self.n = tpl.n
        self.k = num_scenarios
        self.dt_h = tpl.dt_h
        self.max_iter = max_iter
        self.tol_pu = tol_pu
        self.batteries = BatteryFleet.from_configs([m.battery for m in self.scenario.microgrids])
        self.batteries.soc = np.tile(self.batteries.soc_init, (self.k, 1))
        self.generators = GeneratorFleet.from_configs([m.generator for m in self.scenario.microgrids])
        self.generators.p_mw = np.zeros((self.k, self.n))
        self.stats = SolverStats()
        self._net = self._index_network(tpl.net)
        self._branch_y: dict[int | None, tuple[ComplexArray, ComplexArray, ComplexArray, ComplexArray]] = {}
        self._ybus0 = self._admittance_as_built()
        self._reg_trafos = np.array([r.trafo for r in tpl.built.regulators], dtype=np.intp)
        net = self._net
        ends = [int(bus) for trafo in self._reg_trafos
                for bus in (net.from_bus[net.n_line + trafo], net.to_bus[net.n_line + trafo])]
        self._reg_buses = np.array(sorted(set(ends)), dtype=np.intp)
        self._reg_is_pq = np.isin(self._reg_buses, net.pq)
        pq_position = {int(bus): i for i, bus in enumerate(net.pq)}
        self._reg_pq = np.array([pq_position[int(bus)] for bus in self._reg_buses[self._reg_is_pq]], dtype=np.intp)
        self._updates: dict[tuple[int, ...], _TapUpdate] = {}
        self._zbus0 = self._base()
        trafo = tpl.net.trafo
        self._tap_step = trafo.tap_step_percent.to_numpy(np.float64)[self._reg_trafos] / 100.0
        self._tap_neutral = trafo.tap_neutral.fillna(0.0).to_numpy(np.float64)[self._reg_trafos]
        self._downstream = self._downstream_masks()
        self._taps0 = tpl.regulator_taps()
        self.regulators: TapController | None = None
        """The regulators' relays over (K, R) taps, when the single plant controls them."""
        if tpl.regulators is not None:
            self.regulators = TapController(tpl.regulators.settings, np.tile(self._taps0, (self.k, 1)))
        self._fixed_taps = np.tile(self._taps0, (self.k, 1))
        self._v = np.tile(self._flat(), (self.k, 1))
        self.t = np.zeros(self.k, dtype=np.intp)
        self.last: BatchMeasurements | None = None

    # ------------------------------------------------------------------ network
    def _index_network(self, net: pp.pandapowerNet) -> _Network:
        """Bus types, branch ends and injection maps from pandapower's own model of ``net`` (one runpp)."""
        from pandapower.pd2ppc import _pd2ppc

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:  # sets the options _pd2ppc reads (numba off: no JIT compile); its results are not used
                pp.runpp(net, numba=False)
            except pp.LoadflowNotConverged:  # the network at its rated loads need not solve: the options are set
                pass
            ppc, _ = _pd2ppc(net)
        lookup = net._pd2ppc_lookups["bus"]
        if len(ppc["bus"]) != len(net.bus) or not (lookup[: len(net.bus)] == np.arange(len(net.bus))).all():
            raise ScenarioError("the batched power flow needs one internal bus per network bus (no fused buses)")
        types = ppc["bus"][:, 1].real.astype(int)
        if not np.isin(types, (_REF, _PQ)).all():
            raise ScenarioError("the batched power flow handles a slack and PQ buses only (no voltage-controlled or "
                                "isolated buses)")
        pq = np.flatnonzero(types == _PQ).astype(np.intp)
        ref = np.flatnonzero(types == _REF).astype(np.intp)
        v_ref = ppc["bus"][ref, _VM].real * np.exp(1j * np.deg2rad(ppc["bus"][ref, _VA].real))
        base_mva = float(ppc["baseMVA"])
        position = np.full(len(net.bus), -1)
        position[pq] = np.arange(len(pq))
        blocks = [(net.load.bus, -1.0 + 0j), (net.load.bus, -1j), (net.sgen.bus, 1.0 + 0j), (net.storage.bus, -1.0 + 0j)]
        injection = np.zeros((sum(len(b) for b, _ in blocks), len(pq)), dtype=np.complex128)
        row = 0
        for buses, sign in blocks:
            for bus in buses.to_numpy(int):
                if position[bus] >= 0:  # an injection at the slack changes only the slack's power
                    injection[row, position[bus]] = sign / base_mva
                row += 1
        inj = np.flatnonzero(np.abs(injection).sum(axis=0) > 0).astype(np.intp)
        branch = ppc["branch"]
        if len(branch) != len(net.line) + len(net.trafo):
            raise ScenarioError("the batched power flow expects one branch per line and transformer")
        from_bus = branch[:, _F_BUS].real.astype(np.intp)
        to_bus = branch[:, _T_BUS].real.astype(np.intp)
        base_kv = ppc["bus"][:, _BASE_KV].real
        rated_ka = (net.trafo.sn_mva * net.trafo.parallel / np.sqrt(3)).to_numpy(np.float64)
        return _Network(
            pq=pq, ref=ref, v_ref=v_ref.astype(np.complex128), from_bus=from_bus, to_bus=to_bus,
            injection_p=np.ascontiguousarray(injection.real[:, inj]), injection_q=np.ascontiguousarray(injection.imag[:, inj]),
            inj=inj, ka_per_pu_from=base_mva / (np.sqrt(3) * base_kv[from_bus]),
            ka_per_pu_to=base_mva / (np.sqrt(3) * base_kv[to_bus]), base_kv_to=base_kv[to_bus],
            n_line=len(net.line), line_max_ka=(net.line.max_i_ka * net.line.df * net.line.parallel).to_numpy(np.float64),
            trafo_rated_hv_ka=rated_ka / net.trafo.vn_hv_kv.to_numpy(np.float64),
            trafo_rated_lv_ka=rated_ka / net.trafo.vn_lv_kv.to_numpy(np.float64), base_mva=base_mva)

    def _downstream_masks(self) -> BoolArray:
        """Per regulator, the PQ buses on its load side (reached from its LV bus without crossing it): their voltages
        move with its ratio, which makes a better warm start after a tap move (R, PQ)."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        net = self._net
        n_bus = self._n_bus()
        masks = np.zeros((len(self._reg_trafos), len(net.pq)), dtype=bool)
        for r, trafo in enumerate(self._reg_trafos):
            keep = np.ones(len(net.from_bus), dtype=bool)
            keep[net.n_line + trafo] = False
            graph = coo_matrix((np.ones(int(keep.sum())), (net.from_bus[keep], net.to_bus[keep])), shape=(n_bus, n_bus))
            _, labels = connected_components(graph, directed=False)
            masks[r] = labels[net.pq] == labels[net.to_bus[net.n_line + trafo]]
        return masks

    def _admittance_as_built(self) -> ComplexArray:
        """The dense admittance matrix of the network as built (pandapower's model)."""
        from pandapower.pd2ppc import _pd2ppc
        from pandapower.pypower.makeYbus import makeYbus

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ppc, _ = _pd2ppc(self.template.net)
        ybus, _, _ = makeYbus(ppc["baseMVA"], ppc["bus"], ppc["branch"])
        y: ComplexArray = ybus.toarray().astype(np.complex128)
        return y

    def _branch_admittances(self, tap: int | None) -> tuple[ComplexArray, ComplexArray, ComplexArray, ComplexArray]:
        """Every branch's (y_ff, y_ft, y_tf, y_tt) from pandapower's model with every regulator at ``tap`` (None:
        as built); kept per tap (a regulator's branch depends on its own tap only)."""
        kept = self._branch_y.get(tap)
        if kept is not None:
            return kept
        from pandapower.pd2ppc import _pd2ppc
        from pandapower.pypower.makeYbus import makeYbus

        pp_net, net = self.template.net, self._net
        saved = pp_net.trafo.tap_pos.copy()
        try:
            if tap is not None:
                pp_net.trafo.loc[pp_net.trafo.index[self._reg_trafos], "tap_pos"] = tap
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ppc, _ = _pd2ppc(pp_net)
        finally:
            pp_net.trafo["tap_pos"] = saved
        _, yf, yt = makeYbus(ppc["baseMVA"], ppc["bus"], ppc["branch"])
        yf, yt = yf.tocsr(), yt.tocsr()
        rows = np.arange(len(net.from_bus))
        table = (np.asarray(yf[rows, net.from_bus]).ravel().astype(np.complex128),
                 np.asarray(yf[rows, net.to_bus]).ravel().astype(np.complex128),
                 np.asarray(yt[rows, net.from_bus]).ravel().astype(np.complex128),
                 np.asarray(yt[rows, net.to_bus]).ravel().astype(np.complex128))
        self._branch_y[tap] = table
        return table

    def _base(self) -> _ZBus:
        """The Z-bus of the network as built (one inverse), over the injection and regulator buses."""
        net = self._net
        y = self._ybus0
        z = np.linalg.inv(y[np.ix_(net.pq, net.pq)])
        w = -z @ (y[np.ix_(net.pq, net.ref)] @ net.v_ref)
        rows = np.concatenate((net.inj, self._reg_pq))
        y_ff, y_ft, y_tf, y_tt = self._branch_admittances(None)
        return _ZBus(z_in_t=np.ascontiguousarray(z[np.ix_(rows, net.inj)].T), w_in=w[rows],
                     z_out_t=np.ascontiguousarray(z[:, net.inj].T), w=w,
                     z_reg_in_t=np.ascontiguousarray(z[np.ix_(net.inj, self._reg_pq)].T),
                     z_reg_out_t=np.ascontiguousarray(z[:, self._reg_pq].T),
                     g=z[np.ix_(self._reg_pq, self._reg_pq)].astype(np.complex128), y_ff=y_ff, y_ft=y_ft, y_tf=y_tf, y_tt=y_tt,
                     y_ref_t=np.ascontiguousarray(y[net.ref, :].T))

    def _tap_update(self, taps: tuple[int, ...]) -> _TapUpdate:
        """The low-rank change of the network at these regulator taps (kept per tap setting): each regulator's branch
        restamped with pandapower's own branch model at its tap."""
        kept = self._updates.get(taps)
        if kept is not None:
            return kept
        net, base = self._net, self._zbus0
        touched = self._reg_buses  # network bus numbers of the regulators' ends
        col = {int(bus): i for i, bus in enumerate(touched)}
        dy = np.zeros((len(touched), len(touched)), dtype=np.complex128)
        y_reg = np.empty((4, len(self._reg_trafos)), dtype=np.complex128)
        for r, (trafo, tap) in enumerate(zip(self._reg_trafos, taps, strict=True)):
            b = net.n_line + int(trafo)
            f, t = col[int(net.from_bus[b])], col[int(net.to_bus[b])]
            new = self._branch_admittances(int(tap))
            old = (base.y_ff, base.y_ft, base.y_tf, base.y_tt)
            for q, ((i, j), value, was) in enumerate(zip(((f, f), (f, t), (t, f), (t, t)), new, old, strict=True)):
                dy[i, j] += value[b] - was[b]
                y_reg[q, r] = value[b]
        pq_of = self._reg_is_pq
        d = dy[np.ix_(pq_of, pq_of)]
        ref_pos = np.array([int(np.flatnonzero(net.ref == bus)[0]) for bus in touched[~pq_of]], dtype=np.intp)
        e = -dy[np.ix_(pq_of, ~pq_of)] @ net.v_ref[ref_pos] if len(ref_pos) else np.zeros(int(pq_of.sum()), np.complex128)
        m = np.asarray(np.linalg.solve(np.eye(len(d)) + d @ base.g, d), dtype=np.complex128)
        dy_ref = np.zeros((len(net.ref), len(touched)), dtype=np.complex128)
        for touched_row, pos in zip(np.flatnonzero(~pq_of), ref_pos, strict=True):
            dy_ref[pos] = dy[touched_row]
        update = _TapUpdate(m=m, e=e, y_reg=y_reg, dy_ref=dy_ref)
        if len(self._updates) >= MAX_KEPT_TAPS:
            self._updates.pop(next(iter(self._updates)))
        self._updates[taps] = update
        self.stats.networks_built += 1
        return update

    def _flat(self) -> ComplexArray:
        """The flat start over the PQ buses: every bus at the slack's voltage (the single plant's start too)."""
        return np.full(len(self._net.pq), self._net.v_ref[0], dtype=np.complex128)

    @property
    def taps(self) -> npt.NDArray[np.int64]:
        """Each scenario's regulator taps (K, R): the relays' when automatic, else the scenario's fixed ones."""
        return self.regulators.taps if self.regulators is not None else self._fixed_taps

    # ------------------------------------------------------------------ clock
    @property
    def year(self) -> int:
        return self.template.year

    def load_year(self, year: int) -> None:
        """Load ``year``'s profiles for every scenario (no-op if loaded)."""
        self.template.load_year(year)

    @property
    def n_steps_in_year(self) -> int:
        return self.template.n_steps_in_year

    def _matrix(self) -> FloatArray:
        matrix: FloatArray = self.template._year_matrix()
        return matrix

    def prices(self, steps: npt.ArrayLike | None = None) -> FloatArray:
        """Hourly price (USD/MWh) at each scenario's step (default: the step about to be simulated)."""
        at = self.t if steps is None else np.asarray(steps, dtype=np.intp)
        prices: FloatArray = self._matrix()[self.template._price_row, at]
        return prices

    def forecast(self) -> BatchForecast:
        """Per-microgrid load and available PV / wind (MW, (K, N)) of each scenario's coming step."""
        return self._loads(self.t)[2]

    def _loads(self, t: IntArray) -> tuple[FloatArray, FloatArray, BatchForecast]:
        """Loads' p and q (rows, loads) and the per-microgrid forecast at steps ``t``: the single plant's arithmetic."""
        tpl = self.template
        cols = self._matrix()[:, t].T  # (rows, profile rows)
        factor = cols[:, tpl._load_row]
        load_p = tpl._base_p * factor
        load_q = tpl._base_q * factor
        forecast = BatchForecast(load_mw=load_p @ tpl._load_to_mg.T, pv_mw=tpl.pv_rating * cols[:, tpl._solar_row],
                                 wind_mw=tpl.wind_rating * cols[:, tpl._wind_row])
        return load_p, load_q, forecast

    def reset(self, *, year: int, start_steps: npt.ArrayLike, soc: FloatArray | None = None,
              mask: npt.ArrayLike | None = None) -> BatchMeasurements:
        """Start the scenarios in ``mask`` (K bools; default all) at their ``start_steps`` (K,) of ``year`` with idle
        devices, regulators at their initial taps and state of charge ``soc`` (K, N; None: the scenario's); the
        others keep their state. Returns every scenario's measurements: at idle setpoints (after the regulators
        settled) for those reset, the last step's for the others."""
        self.load_year(year)
        rows = np.ones(self.k, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        starts = np.broadcast_to(np.asarray(start_steps, dtype=np.intp), (self.k,))
        n_steps = self.n_steps_in_year
        if ((starts[rows] < 0) | (starts[rows] >= n_steps)).any():
            raise ValueError(f"start steps outside the year's {n_steps} steps")
        b = self.batteries
        b.soc[rows] = b.soc_init if soc is None else np.clip(np.asarray(soc, dtype=np.float64)[rows], b.soc_min, b.soc_max)
        self.generators.p_mw[rows] = 0.0
        self._v[rows] = self._flat()
        if self.regulators is not None:
            self.regulators.taps[rows] = self._taps0
            self.regulators.waited_s[rows] = 0.0
            self.regulators.changes[rows] = 0
        self.t[rows] = starts[rows]
        if self.last is None or rows.all():
            self.last = self._simulate(_idle(self.k, self.n), advance=False)
        else:  # only the scenarios reset are solved (the others keep their warm start)
            index = np.flatnonzero(rows).astype(np.intp)
            self.last = _merge(self.last, self._simulate(_idle(len(index), self.n), advance=False, rows=index), index)
        return self.last

    def latest(self) -> BatchMeasurements:
        """The measurements after the last step or reset; PlantStateError before the first ``reset()``."""
        if self.last is None:
            raise PlantStateError("the batch plant has not been reset: call reset() first")
        return self.last

    # ------------------------------------------------------------------ step
    def clamp(self, request: Setpoints, rows: IntArray | None = None) -> tuple[Setpoints, dict[str, BoolArray]]:
        """Limit each scenario's request (K, N arrays; or those of ``rows``) to what its devices can do this step;
        also say which fields were limited."""
        b_low, b_high = self.batteries.limits(self.dt_h)
        g_low, g_high = self.generators.limits(self.dt_h)
        if rows is not None:
            b_low, b_high, g_low, g_high = b_low[rows], b_high[rows], g_low[rows], g_high[rows]
        return clamp_setpoints(request, (b_low, b_high), (g_low, g_high))

    def step(self, request: Setpoints) -> BatchMeasurements:
        """Apply each scenario's request (K, N arrays; clamped), solve, let the regulators act, advance devices and
        clocks."""
        if self.last is None:
            raise PlantStateError("the batch plant has not been reset: call reset() first")
        if (self.t >= self.n_steps_in_year).any():
            raise IndexError(f"the {self.year} profiles end at step {self.n_steps_in_year}")
        self.last = self._simulate(request, advance=True)
        return self.last

    def _simulate(self, request: Setpoints, *, advance: bool, rows: IntArray | None = None) -> BatchMeasurements:
        """One step of every scenario (or of ``rows`` only, without advancing: a partial reset)."""
        tpl, dt = self.template, self.dt_h
        index = np.arange(self.k, dtype=np.intp) if rows is None else rows
        t = self.t.copy() if rows is None else self.t[rows]
        load_p, load_q, available = self._loads(t)
        applied, clamped = self.clamp(request, rows)
        pv = available.pv_mw * (1.0 - applied.pv_curtailment)
        wind = available.wind_mw * (1.0 - applied.wind_curtailment)
        sgen = np.concatenate((applied.generator_mw, pv, wind), axis=1)
        # the single plant's solver takes float32 injections: the same values here
        x = np.concatenate((load_p, load_q, sgen, -applied.battery_mw), axis=1).astype(np.float32).astype(np.float64)
        flows = self._solve(x, index)
        changes = np.zeros((len(index), len(self._reg_trafos)), dtype=np.int64)
        if self.regulators is not None and flows.converged.any():
            self._regulate(self.regulators, x, index, flows, dt * 3600.0 if advance else SETTLE_AT_RESET_S)
            if advance:
                changes = self.regulators.changes[index].copy()
        converged = flows.converged
        exchange = np.empty((len(index), self.n))
        for i, (kind, idx) in enumerate(tpl._poc):
            exchange[:, i] = flows.trafo_p_hv[:, idx] if kind == "trafo" else \
                flows.line_p_from[:, idx] if kind == "line_from" else flows.line_p_to[:, idx]
        p = self.scenario.penalties  # rates per hour
        vm = flows.vm_pu
        outside = np.maximum(vm - p.v_max_pu, 0.0) + np.maximum(p.v_min_pu - vm, 0.0)
        violation_v = outside @ tpl._bus_to_mg.T
        overload = (np.maximum(flows.line_loading - p.loading_max_percent, 0.0) @ tpl._line_to_mg.T
                    + np.maximum(flows.trafo_loading - p.loading_max_percent, 0.0) @ tpl._trafo_to_mg.T)
        failed = ~converged
        vm_out, line_out, head = vm, flows.line_loading, flows.slack_p
        if failed.any():  # no network state: a lossless balance, no violations, NaN voltages (the single plant's rule)
            exchange[failed] = (available.load_mw - pv - wind - applied.generator_mw - applied.battery_mw)[failed]
            violation_v[failed] = 0.0
            overload[failed] = 0.0
            vm_out[failed] = np.nan
            line_out[failed] = np.nan
            head[failed] = np.nan
        penalty = p.usd_per_pu_voltage * violation_v + p.usd_per_percent_overload * overload
        if failed.any():
            penalty[failed] += p.usd_divergence
        penalty = penalty * dt
        price = self._matrix()[tpl._price_row, t]
        fuel = self.generators.fuel_cost_usd(applied.generator_mw, dt)
        if advance:
            self.batteries.advance(applied.battery_mw, dt)
            self.generators.p_mw[:] = applied.generator_mw
            self.t = t + 1
        soc = self.batteries.soc.copy() if rows is None else self.batteries.soc[rows]
        return BatchMeasurements(
            step=t, converged=converged.copy(), price_usd_per_mwh=price, load_mw=available.load_mw,
            pv_available_mw=available.pv_mw, wind_available_mw=available.wind_mw, applied=applied, clamped=clamped,
            pv_mw=pv, wind_mw=wind, soc=soc, exchange_mw=exchange, fuel_cost_usd=fuel, violation_v_pu=violation_v,
            overload_percent=overload, penalty_usd=penalty, feeder_head_mw=head, vm_pu=vm_out,
            line_loading_percent=line_out, regulator_taps=self.taps[index].copy(), tap_changes=changes)

    def _regulate(self, ctl: TapController, x: FloatArray, index: IntArray, flows: _Flows, dt_s: float) -> None:
        """Let the regulators of scenarios ``index`` act for ``dt_s`` seconds on their solved networks, re-solving the
        scenarios whose taps moved (``flows`` updated in place); a scenario that did not converge before is left
        as the single plant leaves it (no relay action, its band timers kept)."""
        whole = len(index) == self.k
        taps, waited = ctl.taps, ctl.waited_s
        before = flows.converged.copy()
        if not whole:  # the controller plays only these scenarios: give it their rows
            ctl.taps, ctl.waited_s = taps[index].copy(), waited[index].copy()
        kept_waited = ctl.waited_s.copy()
        idx = self._reg_trafos

        def relay_v(f: _Flows) -> FloatArray:
            v: FloatArray = ctl.relay_v(f.trafo_v_lv_kv[:, idx], -f.trafo_p_lv[:, idx], -f.trafo_q_lv[:, idx])
            return np.where(f.converged[:, None], v, np.nan)

        solved = ctl.taps.copy()

        def solve(new_taps: npt.NDArray[np.int64]) -> FloatArray:
            moved = np.flatnonzero((new_taps != solved).any(axis=1) & flows.converged).astype(np.intp)
            if len(moved):
                scenarios = index[moved]
                ratio = (1.0 + (new_taps[moved] - self._tap_neutral) * self._tap_step) / \
                    (1.0 + (solved[moved] - self._tap_neutral) * self._tap_step)  # (moved, R)
                for r in range(ratio.shape[1]):  # warm start: each load side moves with its regulator's ratio
                    self._v[np.ix_(scenarios, self._downstream[r])] *= ratio[:, r:r + 1]
                solved[moved] = new_taps[moved]
                if not whole:
                    taps[index[moved]] = new_taps[moved]
                flows.put(moved, self._solve(x[moved], index[moved], new_taps[moved]))
            return relay_v(flows)

        ctl.settle(relay_v(flows), solve, dt_s)
        ctl.waited_s[~before] = kept_waited[~before]
        if not whole:
            taps[index], waited[index] = ctl.taps, ctl.waited_s
            changes = ctl.changes
            ctl.taps, ctl.waited_s = taps, waited
            ctl.changes = np.zeros_like(taps)
            ctl.changes[index] = changes

    # ------------------------------------------------------------------ power flow
    def _solve(self, x: FloatArray, index: IntArray, taps: npt.NDArray[np.int64] | None = None) -> _Flows:
        """The power flow of the scenarios ``index`` (at ``taps``, default their current ones) from their injections
        ``x`` (rows: loads p | loads q | sgens | storages); warm-started from and updating their last solution."""
        net = self._net
        s = (x @ net.injection_p) + 1j * (x @ net.injection_q)  # (rows, injection buses) per unit
        if taps is None:
            taps = self.taps if len(index) == self.k else self.taps[index]
        update: tuple[ComplexArray, ComplexArray, ComplexArray, ComplexArray] | None = None
        if taps.shape[1] and not (taps == self._taps0).all():
            keys, inverse = np.unique(taps, axis=0, return_inverse=True)
            updates = [self._tap_update(tuple(int(v) for v in key)) for key in keys]
            inverse = inverse.ravel()
            update = (np.stack([u.m for u in updates])[inverse], np.stack([u.e for u in updates])[inverse],
                      np.stack([u.y_reg for u in updates])[inverse], np.stack([u.dy_ref for u in updates])[inverse])
        v, ok = self._fixed_point(s, self._v[index][:, net.inj], update)
        self._v[index] = v
        v_all = np.empty((len(index), self._n_bus()), dtype=np.complex128)
        v_all[:, net.ref] = net.v_ref
        v_all[:, net.pq] = v
        flows = _Flows.empty(len(index), self._n_bus(), net.n_line, len(net.from_bus) - net.n_line)
        self._branch_results(v_all, flows, update)
        flows.converged[:] = ok
        self.stats.solves += len(index)
        for member in np.flatnonzero(~flows.converged):
            self._fallback(int(index[member]), int(member), x[member], taps[member], flows)
        return flows

    def _n_bus(self) -> int:
        return len(self._net.pq) + len(self._net.ref)

    def _fixed_point(self, s: ComplexArray, v0: ComplexArray,
                     update: tuple[ComplexArray, ComplexArray, ComplexArray, ComplexArray] | None
                     ) -> tuple[ComplexArray, BoolArray]:
        """Iterate ``V = Z conj(S / V) + w`` over the injection buses from ``v0`` until each row moves less than
        ``tol_pu`` (a converged row leaves the batch), with each row's tap setting as a low-rank correction of Z
        (``update``: M, e per row); every PQ bus's voltage, and which rows converged."""
        base = self._zbus0
        n_inj = len(self._net.inj)
        s_conj = np.conj(s)
        v = v0
        out = np.empty_like(v0)
        ok = np.zeros(len(v0), dtype=bool)
        active = np.arange(len(v0), dtype=np.intp)
        m_all = e_all = ge_all = None
        if update is not None:
            m_all, e_all = update[0], update[1]
            ge_all = e_all @ base.g.T
        s_act, m_act, e_act, ge_act = s_conj, m_all, e_all, ge_all  # the rows still iterating
        tol = self.tol_pu / np.sqrt(2.0)  # per part: the modulus of the change is then below tol_pu
        for _ in range(self.max_iter):
            self.stats.fixed_point_iterations += 1
            current = s_act / np.conj(v)
            if m_act is None or e_act is None or ge_act is None:
                new = current @ base.z_in_t[:, :n_inj] + base.w_in[:n_inj]
            else:
                u = current @ base.z_in_t + base.w_in
                coef = e_act - (m_act * (u[:, n_inj:] + ge_act)[:, None, :]).sum(axis=2)
                new = u[:, :n_inj] + coef @ base.z_reg_in_t
            # the largest change of a real or imaginary part (a view: no modulus to compute)
            done = np.abs((new - v).view(np.float64)).max(axis=1) < tol
            if done.any():
                out[active[done]] = new[done]
                ok[active[done]] = True
                keep = ~done
                active, v, s_act = active[keep], new[keep], s_act[keep]
                if m_act is not None and e_act is not None and ge_act is not None:
                    m_act, e_act, ge_act = m_act[keep], e_act[keep], ge_act[keep]
                if not len(active):
                    break
            else:
                v = new
        out[active] = v  # not converged: left to the fallback
        with np.errstate(all="ignore"):
            current = s_conj / np.conj(out)
            full = current @ base.z_out_t + base.w
            if m_all is not None and e_all is not None and ge_all is not None:
                u_reg = current @ base.z_in_t[:, n_inj:] + base.w_in[n_inj:]
                coef = e_all - (m_all * (u_reg + ge_all)[:, None, :]).sum(axis=2)
                full = full + coef @ base.z_reg_out_t
        ok &= np.isfinite(full).all(axis=1)
        return full, ok

    def _branch_results(self, v_all: ComplexArray, flows: _Flows,
                        update: tuple[ComplexArray, ComplexArray, ComplexArray, ComplexArray] | None) -> None:
        """Bus voltages, branch flows and loadings, the slack's power into ``flows`` (every row)."""
        net, base = self._net, self._zbus0
        vf, vt = v_all[:, net.from_bus], v_all[:, net.to_bus]
        i_from = base.y_ff * vf + base.y_ft * vt
        i_to = base.y_tf * vf + base.y_tt * vt
        nl = net.n_line
        slack_i = v_all @ base.y_ref_t
        if update is not None:  # the regulators' branches at each row's taps, and the slack rows' change
            y_reg, dy_ref = update[2], update[3]
            b = nl + self._reg_trafos
            i_from[:, b] = y_reg[:, 0] * vf[:, b] + y_reg[:, 1] * vt[:, b]
            i_to[:, b] = y_reg[:, 2] * vf[:, b] + y_reg[:, 3] * vt[:, b]
            slack_i = slack_i + np.einsum("krj,kj->kr", dy_ref, v_all[:, self._reg_buses])
        s_from = vf * np.conj(i_from) * net.base_mva
        s_to = vt * np.conj(i_to) * net.base_mva
        ka_from = np.abs(i_from) * net.ka_per_pu_from
        ka_to = np.abs(i_to) * net.ka_per_pu_to
        flows.vm_pu[:] = np.abs(v_all)
        flows.line_p_from[:] = s_from.real[:, :nl]
        flows.line_p_to[:] = s_to.real[:, :nl]
        flows.line_loading[:] = np.maximum(ka_from[:, :nl], ka_to[:, :nl]) * (100.0 / net.line_max_ka)
        flows.trafo_p_hv[:] = s_from.real[:, nl:]
        flows.trafo_p_lv[:] = s_to.real[:, nl:]
        flows.trafo_q_lv[:] = s_to.imag[:, nl:]
        flows.trafo_v_lv_kv[:] = np.abs(vt[:, nl:]) * net.base_kv_to[nl:]
        flows.trafo_loading[:] = np.maximum(ka_from[:, nl:] / net.trafo_rated_hv_ka,
                                            ka_to[:, nl:] / net.trafo_rated_lv_ka) * 100.0
        flows.slack_p[:] = (v_all[:, net.ref] * np.conj(slack_i)).real.sum(axis=1) * net.base_mva

    def _fallback(self, scenario: int, row: int, x: FloatArray, taps: npt.NDArray[np.int64], flows: _Flows) -> None:
        """Solve ``scenario`` (row ``row`` of ``flows``) with the single plant's Newton-Raphson, from a flat start."""
        self.stats.fallbacks += 1
        pf = self.template.powerflow
        n_load = len(self.template._base_p)
        n_sgen = 3 * self.n
        if len(self._reg_trafos):
            pf.set_taps(self._reg_trafos, taps)
        pf.reset()
        ok = pf.solve(x[:n_load], x[n_load:2 * n_load], x[2 * n_load:2 * n_load + n_sgen], x[2 * n_load + n_sgen:])
        flows.converged[row] = ok
        if not ok:
            self.stats.diverged += 1
            self._v[scenario] = self._flat()
            return
        flows.vm_pu[row] = pf.vm_pu
        flows.line_p_from[row] = pf.line_p_from_mw
        flows.line_p_to[row] = pf.line_p_to_mw
        flows.line_loading[row] = pf.line_loading_percent
        flows.trafo_p_hv[row] = pf.trafo_p_hv_mw
        flows.trafo_p_lv[row] = pf.trafo_p_lv_mw
        flows.trafo_q_lv[row] = pf.trafo_q_lv_mvar
        flows.trafo_v_lv_kv[row] = pf.trafo_v_lv_kv
        flows.trafo_loading[row] = pf.trafo_loading_percent
        flows.slack_p[row] = pf.slack_p_mw
        self._v[scenario] = pf._v[self._net.pq]


def _idle(k: int, n: int) -> Setpoints:
    return Setpoints(np.zeros((k, n)), np.zeros((k, n)), np.zeros((k, n)), np.zeros((k, n)))


def _merge(old: BatchMeasurements, new: BatchMeasurements, rows: IntArray) -> BatchMeasurements:
    """``old`` with rows ``rows`` replaced by ``new``'s rows (every field)."""
    def pick(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = a.copy()
        out[rows] = b
        return out

    merged = {name: pick(value, getattr(new, name)) for name, value in vars(old).items()
              if isinstance(value, np.ndarray)}
    return BatchMeasurements(
        **merged, applied=Setpoints(*(pick(getattr(old.applied, f), getattr(new.applied, f)) for f in SETPOINT_FIELDS)),
        clamped={f: pick(old.clamped[f], new.clamped[f]) for f in SETPOINT_FIELDS})

