"""Fast repeated AC power flow: the network matrices are built once, only injections change per step.

pandapower builds and checks the model; lightsim2grid (a C++ Newton-Raphson with KLU) solves it
from the previous solution, at tens of microseconds a solve instead of runpp's ~20 ms. Results
are read into preallocated arrays. ``tests/sim/test_powerflow.py`` checks it against runpp.
Transformer taps can change between solves (:meth:`FastPowerFlow.set_taps`): the ratio and the
tap-dependent impedance are updated in place and the admittance matrix is rebuilt on the next solve.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandapower as pp


class FastPowerFlow:
    """AC power flow over a fixed pandapower network whose loads, static generators and storages change.

    Element order is pandapower's (``net.load.index`` etc. must be 0..n-1); bus voltages come back
    in ``net.bus`` order.
    """

    def __init__(self, net: pp.pandapowerNet, *, max_iter: int = 20, tol_pu: float = 1e-10) -> None:
        from lightsim2grid.network import init_from_pandapower

        for table in ("bus", "load", "sgen", "storage", "line", "trafo"):
            index = net[table].index
            if len(index) and not (index == np.arange(len(index))).all():
                raise ValueError(f"net.{table} must be indexed 0..n-1 for the fast solver")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lightsim2grid's notes on NaN tap columns and the slack choice
            self._grid = init_from_pandapower(net)
        self._max_iter = max_iter
        self._tol = tol_pu
        n_bus = len(net.bus)
        slack_vm = float(net.ext_grid.vm_pu.iloc[0])
        self._v_flat = np.full(n_bus, slack_vm, dtype=np.complex128)
        self._v = self._v_flat.copy()
        self._all_load = np.ones(len(net.load), dtype=bool)
        self._all_sgen = np.ones(len(net.sgen), dtype=bool)
        self._all_storage = np.ones(len(net.storage), dtype=bool)
        self._line_max_ka = (net.line.max_i_ka * net.line.df * net.line.parallel).to_numpy(np.float64)
        self._init_taps(net)
        rated_ka = (net.trafo.sn_mva * net.trafo.parallel / np.sqrt(3)).to_numpy(np.float64)
        self._trafo_rated_hv_ka = rated_ka / net.trafo.vn_hv_kv.to_numpy(np.float64)
        self._trafo_rated_lv_ka = rated_ka / net.trafo.vn_lv_kv.to_numpy(np.float64)
        self.vm_pu = np.ones(n_bus)
        self.line_loading_percent = np.zeros(len(net.line))
        self.line_p_from_mw = np.zeros(len(net.line))
        self.line_p_to_mw = np.zeros(len(net.line))
        self.trafo_loading_percent = np.zeros(len(net.trafo))
        self.trafo_p_hv_mw = np.zeros(len(net.trafo))
        # at the LV terminal, flowing into the transformer (negative when it feeds a load), and the LV bus voltage
        self.trafo_p_lv_mw = np.zeros(len(net.trafo))
        self.trafo_q_lv_mvar = np.zeros(len(net.trafo))
        self.trafo_v_lv_kv = np.zeros(len(net.trafo))
        self.slack_p_mw = 0.0

    def _init_taps(self, net: pp.pandapowerNet) -> None:
        """Per transformer: the tap step and whether its tap can be moved here (a ratio tap on the LV side)."""
        trafos = self._grid.get_trafos()
        self._trafo_ratio = np.array([t.ratio for t in trafos], dtype=np.float64)
        self._trafo_r = np.array([t.r_pu for t in trafos], dtype=np.float64)
        self._trafo_x = np.array([t.x_pu for t in trafos], dtype=np.float64)
        self._trafo_b = np.array([t.h1_pu + t.h2_pu for t in trafos], dtype=np.complex128)
        tr = net.trafo
        kind = tr.tap_changer_type if "tap_changer_type" in tr else np.full(len(tr), None)
        self._tap_step = tr.tap_step_percent.fillna(0.0).to_numpy(np.float64) if len(tr) else np.zeros(0)
        self._tap_neutral = tr.tap_neutral.fillna(0.0).to_numpy(np.float64) if len(tr) else np.zeros(0)
        self._tap_movable = ((tr.tap_side == "lv").to_numpy(bool) & (np.asarray(kind) == "Ratio")
                             & (self._tap_step > 0) & np.isclose(self._trafo_b, 0.0)) if len(tr) else np.zeros(0, bool)
        # pandapower refers the impedance to the tapped LV winding: it scales with the ratio squared
        self._trafo_r0 = self._trafo_r / self._trafo_ratio**2
        self._trafo_x0 = self._trafo_x / self._trafo_ratio**2
        if self._tap_movable.any():  # from now on the impedances are always r0 * ratio^2: a function of the taps alone,
            self._trafo_r = self._trafo_r0 * self._trafo_ratio**2  # so a run does not depend on the taps' history
            self._trafo_x = self._trafo_x0 * self._trafo_ratio**2
            self._grid.update_trafos_parameters(self._trafo_r, self._trafo_x, self._trafo_b)
        self._downstream = self._lv_side_buses(net, np.flatnonzero(self._tap_movable))

    @staticmethod
    def _lv_side_buses(net: pp.pandapowerNet, trafos: np.ndarray) -> dict[int, np.ndarray]:
        """Per transformer: the buses reached from its LV bus without crossing it (a mask; every bus on a loop)."""
        if not len(trafos):
            return {}
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        line, trafo_table = net.line[net.line.in_service.astype(bool)], net.trafo
        ends = (np.concatenate((line.from_bus.to_numpy(np.int64), trafo_table.hv_bus.to_numpy(np.int64))),
                np.concatenate((line.to_bus.to_numpy(np.int64), trafo_table.lv_bus.to_numpy(np.int64))))
        n_line, n_bus = len(line), len(net.bus)
        out = {}
        for trafo in (int(t) for t in trafos):
            keep = np.ones(len(ends[0]), dtype=bool)
            keep[n_line + trafo] = False  # the transformer itself
            graph = coo_matrix((np.ones(int(keep.sum())), (ends[0][keep], ends[1][keep])), shape=(n_bus, n_bus))
            _, labels = connected_components(graph, directed=False)
            out[trafo] = labels == labels[int(trafo_table.lv_bus.iat[trafo])]
        return out

    def set_taps(self, trafo: np.ndarray, tap_pos: np.ndarray) -> None:
        """Move the taps of transformers ``trafo`` (net.trafo indices) to ``tap_pos``, as pandapower's ``tap_pos``.

        Only ratio taps on the LV side of transformers without magnetising branch (the regulators) can move
        here; ValueError for any other. Takes effect at the next :meth:`solve`.
        """
        idx = np.asarray(trafo, dtype=np.int64)
        if not self._tap_movable[idx].all():
            raise ValueError(f"transformers {idx[~self._tap_movable[idx]].tolist()} have no LV ratio tap the fast solver can move")
        ratio = 1.0 + (np.asarray(tap_pos, dtype=np.float64) - self._tap_neutral[idx]) * self._tap_step[idx] / 100.0
        if (ratio == self._trafo_ratio[idx]).all():
            return
        old = self._trafo_ratio[idx].copy()
        self._trafo_ratio[idx] = ratio
        self._trafo_r[idx] = self._trafo_r0[idx] * ratio**2
        self._trafo_x[idx] = self._trafo_x0[idx] * ratio**2
        self._grid.update_trafos_parameters(self._trafo_r, self._trafo_x, self._trafo_b)
        for i, before, after in zip(idx, old, ratio, strict=True):
            if after != before:
                self._grid.change_ratio_trafo(int(i), float(after))
                self._v[self._downstream[int(i)]] *= after / before  # warm start: the LV side moves with the ratio

    def reset(self) -> None:
        """Forget the warm start (start the next solve from a flat voltage profile)."""
        self._v[:] = self._v_flat

    def solve(self, load_p_mw: np.ndarray, load_q_mvar: np.ndarray, sgen_p_mw: np.ndarray,
              storage_p_mw: np.ndarray) -> bool:
        """Solve with these injections (pandapower signs: loads and storage consume); True if converged.

        On divergence the result arrays keep the last converged values and the next solve starts flat.
        """
        g = self._grid
        g.update_loads_p(self._all_load, load_p_mw.astype(np.float32))
        g.update_loads_q(self._all_load, load_q_mvar.astype(np.float32))
        if len(sgen_p_mw):
            g.update_sgens_p(self._all_sgen, sgen_p_mw.astype(np.float32))
        if len(storage_p_mw):
            g.update_storages_p(self._all_storage, storage_p_mw.astype(np.float32))
        v = g.ac_pf(self._v, self._max_iter, self._tol)
        if v.shape[0] == 0:
            self._v[:] = self._v_flat
            return False
        self._v = v
        np.abs(v, out=self.vm_pu)
        p1, _, _, a1 = g.get_line_res1()
        p2, _, _, a2 = g.get_line_res2()
        self.line_p_from_mw[:] = p1
        self.line_p_to_mw[:] = p2
        np.multiply(np.maximum(a1, a2), 100.0 / self._line_max_ka, out=self.line_loading_percent)
        tp1, _, _, ta1 = g.get_trafo_res1()
        tp2, tq2, tv2, ta2 = g.get_trafo_res2()
        self.trafo_p_hv_mw[:] = tp1
        self.trafo_p_lv_mw[:] = tp2
        self.trafo_q_lv_mvar[:] = tq2
        self.trafo_v_lv_kv[:] = tv2
        np.multiply(np.maximum(ta1 / self._trafo_rated_hv_ka, ta2 / self._trafo_rated_lv_ka), 100.0,
                    out=self.trafo_loading_percent)
        self.slack_p_mw = float(np.sum(g.get_gen_res()[0]))
        return True
