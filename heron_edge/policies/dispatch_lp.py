"""The perfect-foresight dispatch of one episode as an LP (a MILP with no-load costs), solved by HiGHS via scipy.

Per step t and microgrid i (MW): battery charge and discharge, the generator's output as ``segments``
pieces of its fuel cost curve, PV and wind used (curtailable), grid import and export, and the state of
charge at each step boundary. The network enters as a linear model (:class:`LinearNetwork`) of the
exchange at each point of connection, the monitored bus voltages and branch loadings in the microgrids'
net injections x at their device buses, ``y = y0 + S (x - x0)``; voltage and loading limits are soft,
priced at the plant's own penalty rates, so the objective is the plant's cost as the linear model sees it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from heron_edge.errors import RunError
from sim.devices import BatteryFleet, GeneratorFleet

SOC_MARGIN = 1e-6
"""Kept off the state-of-charge limits so float32 actions never make the plant clamp the battery."""
RAMP_MARGIN_MW = 1e-6
"""Kept inside the ramp limit for the same reason."""
THROUGHPUT_USD_PER_MWH = 1e-3
"""A token cost on charge + discharge: charging and discharging in the same step is never chosen for nothing
(the plant sees only their difference)."""
RUNNING_MW = 1e-9
"""Above this output the plant charges a generator's no-load cost (``GeneratorFleet.fuel_cost_usd``)."""


@dataclass(frozen=True)
class LinearNetwork:
    """Outputs of the network linearised around injections ``x0`` (T x n, MW at each device bus), per step.

    exchange (T x n, MW, + import) and its sensitivity (T x n x n, d exchange_i / d x_j); monitored bus
    voltages (T x M, p.u.) with sensitivities (T x M x n) and the microgrid each bus belongs to (M);
    monitored branch loadings (T x B, percent) likewise.
    """

    x0: np.ndarray
    exchange0: np.ndarray
    exchange_sens: np.ndarray
    vm0: np.ndarray
    vm_sens: np.ndarray
    bus_owner: np.ndarray
    loading0: np.ndarray
    loading_sens: np.ndarray
    branch_owner: np.ndarray

    def predict_exchange(self, x: np.ndarray) -> np.ndarray:
        """Exchange (T x n, MW) the linear model gives at injections ``x`` (T x n)."""
        out: np.ndarray = self.exchange0 + np.einsum("tij,tj->ti", self.exchange_sens, x - self.x0)
        return out

    def predict_vm(self, x: np.ndarray) -> np.ndarray:
        """Monitored bus voltages (T x M, p.u.) the linear model gives at injections ``x``."""
        out: np.ndarray = self.vm0 + np.einsum("tbj,tj->tb", self.vm_sens, x - self.x0)
        return out

    def predict_loading(self, x: np.ndarray) -> np.ndarray:
        """Monitored branch loadings (T x B, percent) the linear model gives at injections ``x``."""
        out: np.ndarray = self.loading0 + np.einsum("tbj,tj->tb", self.loading_sens, x - self.x0)
        return out


@dataclass(frozen=True)
class DispatchProblem:
    """One episode's data: T steps of ``dt_h`` hours, prices (T, USD/MWh), available PV and wind (T x n, MW),
    the devices (their current state is the start), the network model and the penalty rates per step
    (USD per p.u. outside [v_min, v_max] per bus, USD per percent above ``loading_max`` per branch)."""

    dt_h: float
    price: np.ndarray
    export_price_ratio: float
    pv_mw: np.ndarray
    wind_mw: np.ndarray
    batteries: BatteryFleet
    generators: GeneratorFleet
    network: LinearNetwork
    v_min_pu: float
    v_max_pu: float
    loading_max_percent: float
    usd_per_pu_voltage: float
    usd_per_percent_overload: float
    segments: int = 8


@dataclass(frozen=True)
class Schedule:
    """The optimal dispatch (T x n, MW; soc (T+1) x n), what the linear model predicts of it (exchange, voltages,
    cost per step and microgrid: piecewise-linear fuel + energy + penalties, USD), the objective and solve facts."""

    battery_mw: np.ndarray
    generator_mw: np.ndarray
    pv_mw: np.ndarray
    wind_mw: np.ndarray
    soc: np.ndarray
    injection_mw: np.ndarray
    exchange_mw: np.ndarray
    vm_pu: np.ndarray
    cost_usd: np.ndarray
    objective_usd: float
    solve_seconds: float
    variables: int
    constraints: int
    integer: bool


class _Builder:
    """Variables (bounds, costs, integrality) and sparse rows of one problem, added in vectorised blocks."""

    def __init__(self) -> None:
        self.n_vars = 0
        self._lb: list[np.ndarray] = []
        self._ub: list[np.ndarray] = []
        self._cost: list[np.ndarray] = []
        self._int: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self._cols: list[np.ndarray] = []
        self._vals: list[np.ndarray] = []
        self._row_lb: list[np.ndarray] = []
        self._row_ub: list[np.ndarray] = []
        self.n_rows = 0

    def var(self, shape: tuple[int, ...], lb: float | np.ndarray, ub: float | np.ndarray, cost: float | np.ndarray = 0.0,
            integer: bool = False) -> np.ndarray:
        """A block of variables; returns their indices in ``shape``."""
        size = int(np.prod(shape))
        idx = np.arange(self.n_vars, self.n_vars + size).reshape(shape)
        self.n_vars += size
        self._lb.append(np.broadcast_to(np.asarray(lb, dtype=np.float64), shape).reshape(-1))
        self._ub.append(np.broadcast_to(np.asarray(ub, dtype=np.float64), shape).reshape(-1))
        self._cost.append(np.broadcast_to(np.asarray(cost, dtype=np.float64), shape).reshape(-1))
        self._int.append(np.full(size, 1 if integer else 0, dtype=np.int8))
        return idx

    def rows(self, terms: list[tuple[np.ndarray, np.ndarray | float]], lb: np.ndarray | float,
             ub: np.ndarray | float) -> None:
        """Rows ``lb <= sum_k coef_k * var_k <= ub``; every ``var_k`` (and array coef) has the rows' shape."""
        shape = terms[0][0].shape
        count = int(np.prod(shape))
        row_ids = np.arange(self.n_rows, self.n_rows + count)
        for cols, coef in terms:
            self._rows.append(row_ids)
            self._cols.append(cols.reshape(-1))
            self._vals.append(np.broadcast_to(np.asarray(coef, dtype=np.float64), shape).reshape(-1))
        self._row_lb.append(np.broadcast_to(np.asarray(lb, dtype=np.float64), shape).reshape(-1))
        self._row_ub.append(np.broadcast_to(np.asarray(ub, dtype=np.float64), shape).reshape(-1))
        self.n_rows += count

    def solve(self, *, time_limit_s: float) -> tuple[np.ndarray, float]:
        """Solve with HiGHS; the solution vector and the objective, or a RunError saying why there is none."""
        matrix = sparse.csr_array((np.concatenate(self._vals), (np.concatenate(self._rows), np.concatenate(self._cols))),
                                  shape=(self.n_rows, self.n_vars))
        integrality = np.concatenate(self._int)
        result = milp(np.concatenate(self._cost), integrality=integrality,
                      bounds=Bounds(np.concatenate(self._lb), np.concatenate(self._ub)),
                      constraints=LinearConstraint(matrix, np.concatenate(self._row_lb), np.concatenate(self._row_ub)),
                      options={"time_limit": time_limit_s, "disp": False, "mip_rel_gap": 1e-6})
        if result.x is None or result.status not in (0, 1):  # 1: time limit with a feasible solution
            raise RunError(f"the optimal dispatch could not be solved: {result.message}")
        return np.asarray(result.x), float(result.fun)


def _screen(y0: np.ndarray, sens: np.ndarray, x_lo: np.ndarray, x_hi: np.ndarray, x0: np.ndarray,
            low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Masks (T x R) of the rows whose linear model can leave [low, high] for some injections in the box
    [x_lo, x_hi] (T x n): only those need a constraint."""
    a = sens * (x_lo - x0)[:, None, :]
    b = sens * (x_hi - x0)[:, None, :]
    up = y0 + np.maximum(a, b).sum(axis=2)
    down = y0 + np.minimum(a, b).sum(axis=2)
    return up > high, down < low


def solve_dispatch(problem: DispatchProblem, *, time_limit_s: float = 600.0) -> Schedule:
    """The least-cost dispatch of ``problem`` (see the module docstring); RunError if HiGHS finds none."""
    p, net = problem, problem.network
    bat, gen = p.batteries, p.generators
    T, n = p.pv_mw.shape
    dt, K = p.dt_h, p.segments
    price = np.asarray(p.price, dtype=np.float64)
    b = _Builder()
    # the LP may charge and discharge at once, wasting energy, which the plant (it sees their difference) cannot:
    # at a negative price that would pay (a full battery absorbing more import), so there it may only charge
    charge = b.var((T, n), 0.0, bat.p_max_mw, THROUGHPUT_USD_PER_MWH * dt)
    discharge = b.var((T, n), 0.0, np.where(price[:, None] < 0.0, 0.0, bat.p_max_mw[None, :]), THROUGHPUT_USD_PER_MWH * dt)
    soc0 = bat.soc.copy()
    soc_lo = np.minimum(bat.soc_min + SOC_MARGIN, soc0)
    soc_hi = np.maximum(bat.soc_max - SOC_MARGIN, soc0)
    soc = b.var((T + 1, n), np.vstack([soc0, np.broadcast_to(soc_lo, (T, n))]), np.vstack([soc0, np.broadcast_to(soc_hi, (T, n))]))
    # state of charge: soc[t+1] = soc[t] + (eff * charge - discharge / eff) * dt / capacity (BatteryFleet.advance)
    b.rows([(soc[1:], 1.0), (soc[:-1], -1.0), (charge, -bat.efficiency * dt / bat.capacity_mwh),
            (discharge, dt / (bat.efficiency * bat.capacity_mwh))], 0.0, 0.0)
    # generator: p_min plus K equal segments of [p_min, p_max]; a segment's cost is the secant slope of
    # a p^2 + b p over it (convex, so cheaper segments fill first), exact at the breakpoints
    width = (gen.p_max_mw - gen.p_min_mw) / K
    edges = gen.p_min_mw[None, :] + width[None, :] * np.arange(K + 1)[:, None]  # (K+1) x n
    slopes = gen.cost_a * (edges[1:] + edges[:-1]) + gen.cost_b  # K x n, USD/MWh
    segment = b.var((T, n, K), 0.0, np.broadcast_to(width[None, :, None], (T, n, K)),
                    np.broadcast_to((slopes.T * dt)[None], (T, n, K)))
    output = b.var((T, n), gen.p_min_mw, gen.p_max_mw)
    b.rows([(output, 1.0)] + [(segment[:, :, k], -1.0) for k in range(K)], gen.p_min_mw, gen.p_min_mw)
    # no-load cost: charged whenever the unit runs; with p_min > 0 the plant never lets it stop
    always_on = gen.p_min_mw > RUNNING_MW
    switched = (gen.cost_c > 0.0) & ~always_on
    if switched.any():
        on = b.var((T, n), (~switched).astype(np.float64), 1.0, np.where(switched, gen.cost_c * dt, 0.0)[None, :]
                   + np.zeros((T, n)), integer=True)  # fixed on for the others (their no-load cost is a constant)
        b.rows([(output, 1.0), (on, -gen.p_max_mw)], -np.inf, 0.0)
    # ramp (GeneratorFleet.limits): within ramp * dt of the previous output, never below p_min
    step = np.maximum(gen.ramp_mw_per_h * dt - RAMP_MARGIN_MW, 0.0)
    first_hi = np.maximum(np.maximum(gen.p_min_mw, gen.p_mw - step), np.minimum(gen.p_max_mw, gen.p_mw + step))
    first_lo = np.maximum(gen.p_min_mw, gen.p_mw - step)
    b.rows([(output[:1], 1.0)], first_lo[None], first_hi[None])
    if T > 1:
        b.rows([(output[1:], 1.0), (output[:-1], -1.0)], -step, step)
    pv = b.var((T, n), 0.0, p.pv_mw)
    wind = b.var((T, n), 0.0, p.wind_mw)
    injection = b.var((T, n), -np.inf, np.inf)
    b.rows([(injection, 1.0), (output, -1.0), (pv, -1.0), (wind, -1.0), (discharge, -1.0), (charge, 1.0)], 0.0, 0.0)
    # energy: imports at the price, exports credited at a fraction of it; with a negative price exporting
    # only costs (curtailing is free), and import and export at once would pay, so export is barred there
    imports = b.var((T, n), 0.0, np.inf, (price * dt)[:, None])
    exports = b.var((T, n), 0.0, np.where(price < 0.0, 0.0, np.inf)[:, None], (-p.export_price_ratio * price * dt)[:, None])
    sens_terms = [(injection[:, [j] * n], -net.exchange_sens[:, :, j]) for j in range(n)]
    b.rows([(imports, 1.0), (exports, -1.0), *sens_terms],
           net.exchange0 - np.einsum("tij,tj->ti", net.exchange_sens, net.x0),
           net.exchange0 - np.einsum("tij,tj->ti", net.exchange_sens, net.x0))
    # soft network limits, only where the linear model can reach them
    x_lo = gen.p_min_mw - bat.p_max_mw + np.zeros((T, n))
    x_hi = gen.p_max_mw + bat.p_max_mw + p.pv_mw + p.wind_mw
    penalties: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]] = []  # (slacks, their steps, owners, USD per unit)
    for y0, sens, owner, low, high, rate in (
            (net.vm0, net.vm_sens, net.bus_owner, p.v_min_pu, p.v_max_pu, p.usd_per_pu_voltage),
            (net.loading0, net.loading_sens, net.branch_owner, -np.inf, p.loading_max_percent, p.usd_per_percent_overload)):
        if y0.shape[1] == 0:
            continue
        over, under = _screen(y0, sens, x_lo, x_hi, net.x0, low, high)
        for mask, sign in ((over, 1.0), (under, -1.0)):
            t_k, r_k = np.nonzero(mask)
            if not len(t_k):
                continue
            slack = b.var((len(t_k),), 0.0, np.inf, rate)
            const = y0[t_k, r_k] - np.einsum("kj,kj->k", sens[t_k, r_k], net.x0[t_k])
            terms = [(injection[t_k, j], sens[t_k, r_k, j]) for j in range(n)]
            if sign > 0:  # y - slack <= high
                b.rows([*terms, (slack, -1.0)], -np.inf, high - const)
            else:  # y + slack >= low
                b.rows([*terms, (slack, 1.0)], low - const, np.inf)
            penalties.append((slack, t_k, owner[r_k], rate))
    started = time.perf_counter()
    solution, objective = b.solve(time_limit_s=time_limit_s)
    seconds = time.perf_counter() - started
    x = solution
    gen_mw, inj = x[output], x[injection]
    fuel = (x[segment] * (slopes.T * dt)[None]).sum(axis=2) + (gen.cost_a * gen.p_min_mw ** 2 + gen.cost_b * gen.p_min_mw) * dt
    running = always_on | (gen_mw > RUNNING_MW)
    fuel = fuel + np.where(running & ((gen.cost_c > 0.0)[None, :]), gen.cost_c * dt, 0.0)
    exchange = x[imports] - x[exports]
    cost = fuel + price[:, None] * dt * (x[imports] - p.export_price_ratio * x[exports])
    for slack, t_k, owners, rate in penalties:
        np.add.at(cost, (t_k, owners), rate * x[slack])
    constant = float(((gen.cost_a * gen.p_min_mw ** 2 + gen.cost_b * gen.p_min_mw) * dt).sum() * T
                     + (gen.cost_c * dt * always_on).sum() * T)
    return Schedule(battery_mw=x[discharge] - x[charge], generator_mw=gen_mw, pv_mw=x[pv], wind_mw=x[wind], soc=x[soc],
                    injection_mw=inj, exchange_mw=exchange, vm_pu=net.predict_vm(inj), cost_usd=cost,
                    objective_usd=objective + constant, solve_seconds=seconds, variables=b.n_vars, constraints=b.n_rows,
                    integer=bool(switched.any()))
