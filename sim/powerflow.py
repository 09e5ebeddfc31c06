"""Fast repeated AC power flow: the network matrices are built once, only injections change per step.

pandapower builds and checks the model; lightsim2grid (a C++ Newton-Raphson with KLU) solves it
from the previous solution, at tens of microseconds a solve instead of runpp's ~20 ms. Results
are read into preallocated arrays. ``tests/sim/test_powerflow.py`` checks it against runpp.
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
        rated_ka = (net.trafo.sn_mva * net.trafo.parallel / np.sqrt(3)).to_numpy(np.float64)
        self._trafo_rated_hv_ka = rated_ka / net.trafo.vn_hv_kv.to_numpy(np.float64)
        self._trafo_rated_lv_ka = rated_ka / net.trafo.vn_lv_kv.to_numpy(np.float64)
        self.vm_pu = np.ones(n_bus)
        self.line_loading_percent = np.zeros(len(net.line))
        self.line_p_from_mw = np.zeros(len(net.line))
        self.line_p_to_mw = np.zeros(len(net.line))
        self.trafo_loading_percent = np.zeros(len(net.trafo))
        self.trafo_p_hv_mw = np.zeros(len(net.trafo))
        self.slack_p_mw = 0.0

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
        _, _, _, ta2 = g.get_trafo_res2()
        self.trafo_p_hv_mw[:] = tp1
        np.multiply(np.maximum(ta1 / self._trafo_rated_hv_ka, ta2 / self._trafo_rated_lv_ka), 100.0,
                    out=self.trafo_loading_percent)
        self.slack_p_mw = float(np.sum(g.get_gen_res()[0]))
        return True
