"""The fast solver against pandapower's runpp on random operating points of both shipped scenarios."""
from __future__ import annotations

import warnings

import numpy as np
import pandapower as pp
import pytest

from sim.plant import Plant, Setpoints


@pytest.mark.parametrize("scenario", ["ieee34_3x13", "cigre_mv_der"])
def test_fast_solver_matches_runpp(scenario: str) -> None:
    plant = Plant(scenario)
    rng = np.random.default_rng(7)
    plant.reset(year=2023, start_step=int(rng.integers(0, 8000)))
    n = plant.n
    checked = 0
    for _ in range(8):
        request = Setpoints(rng.uniform(-0.5, 0.5, n), rng.uniform(0, 0.66, n), rng.uniform(0, 1, n), rng.uniform(0, 1, n))
        m = plant.step(request)
        if not m.converged:
            continue
        net = plant.net
        factor = plant._matrix[plant._load_row, m.step]
        net.load["p_mw"] = plant._base_p * factor
        net.load["q_mvar"] = plant._base_q * factor
        net.sgen["p_mw"] = np.concatenate((m.applied.generator_mw, m.pv_mw, m.wind_mw))
        net.storage["p_mw"] = -m.applied.battery_mw
        net.trafo.loc[[r.trafo for r in plant.built.regulators], "tap_pos"] = m.regulator_taps  # where they moved
        pp.runpp(net, max_iteration=30, tolerance_mva=1e-10)
        assert np.abs(net.res_bus.vm_pu.to_numpy() - m.vm_pu).max() < 1e-6
        assert np.abs(net.res_line.loading_percent.to_numpy() - m.line_loading_percent).max() < 1e-3
        assert abs(net.res_ext_grid.p_mw.sum() - m.feeder_head_mw) < 1e-5
        checked += 1
    assert checked >= 6


def test_divergence_is_reported_and_penalised() -> None:
    plant = Plant("ieee34_3x13")
    plant.reset(year=2023, start_step=4000)
    plant.powerflow._max_iter = 1  # one Newton step cannot reach 1e-10 from a flat start
    plant.powerflow.reset()
    m = plant.step(Setpoints.zeros(plant.n))
    assert not m.converged
    assert (m.penalty_usd >= plant.scenario.penalties.usd_divergence).all()
    assert np.isnan(m.feeder_head_mw)
    balance = m.load_mw - m.pv_mw - m.wind_mw - m.applied.generator_mw - m.applied.battery_mw
    np.testing.assert_allclose(m.exchange_mw, balance)


def test_divergence_leaves_no_stale_network_state() -> None:
    plant = Plant("ieee34_3x13")
    plant.reset(year=2023, start_step=4000)
    before = plant.step(Setpoints.zeros(plant.n))
    assert before.converged and np.isfinite(before.vm_pu).all() and np.isfinite(before.line_loading_percent).all()
    plant.powerflow._max_iter = 1  # one Newton step cannot reach 1e-10 from a flat start
    plant.powerflow.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = plant.step(Setpoints.zeros(plant.n))
    assert not m.converged
    assert m.vm_pu.shape == before.vm_pu.shape and np.isnan(m.vm_pu).all()
    assert m.line_loading_percent.shape == before.line_loading_percent.shape and np.isnan(m.line_loading_percent).all()
    np.testing.assert_array_equal(m.violation_v_pu, 0.0)
    np.testing.assert_array_equal(m.overload_percent, 0.0)
    np.testing.assert_array_equal(m.penalty_usd, plant.scenario.penalties.usd_divergence)
    plant.powerflow._max_iter = 20
    after = plant.step(Setpoints.zeros(plant.n))  # converges again from the flat start
    assert after.converged and np.isfinite(after.vm_pu).all()


def test_simulate_records_nan_voltages_for_diverged_steps(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import functools

    import sim.plant
    from heron_edge.commands.simulate import plot, simulate, summarize, write_csv
    from sim.powerflow import FastPowerFlow
    from sim.scenario import load_scenario

    monkeypatch.setattr(sim.plant, "FastPowerFlow", functools.partial(FastPowerFlow, max_iter=1))  # never converges
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trajectory = simulate(load_scenario("ieee34_3x13"), days=1, policy="rule", seed=0, progress=False)
        summary = summarize(trajectory)
        write_csv(trajectory, tmp_path / "trajectory.csv")
        plot(trajectory, tmp_path / "trajectory.png")
    c = trajectory.columns
    assert (c["converged"] == 0).all()
    assert np.isnan(c["vm_min_pu"]).all() and np.isnan(c["vm_max_pu"]).all()
    assert (c["penalty_usd"] == load_scenario("ieee34_3x13").penalties.usd_divergence).all()
    assert summary["total"]["nonconverged_steps"] == trajectory.n_steps
    assert summary["total"]["v_violation_steps"] == 0
