"""Scenario generator and the IEEE 123 feeder: generated scenarios load, round-trip through TOML, and their
power flow converges at any N, under the hardest setpoints agents can send."""
from __future__ import annotations

import tomllib

import numpy as np
import pytest

from heron_edge.cli import main
from sim.errors import ScenarioError
from sim.generate import CAPACITY, generate_scenario, scenario_toml
from sim.ieee123 import IEEE123_ATTACH_BUSES, IEEE123_LINES, IEEE123_SPOT_LOADS, ieee123_13
from sim.plant import Plant, Setpoints
from sim.scenario import Ieee123Network, Scenario, load_scenario


def _hard_steps(plant: Plant) -> list[bool]:
    """Converged? after each of: every battery charging flat out with no generation or DER at the summer peak
    (the heaviest load), and every device exporting flat out at night (the largest reverse flow)."""
    n = plant.n
    out = []
    plant.reset(year=2023, start_step=4985)  # late July, evening peak
    out.append(plant.step(Setpoints(np.full(n, -1e3), np.zeros(n), np.ones(n), np.ones(n))).converged)
    plant.reset(year=2023, start_step=8620)  # late December, night
    out.append(plant.step(Setpoints(np.full(n, 1e3), np.full(n, 1e3), np.zeros(n), np.zeros(n))).converged)
    return out


@pytest.mark.parametrize("feeder", ["ieee34", "ieee123"])
@pytest.mark.parametrize("n", [1, 12, 200])
def test_generated_scenarios_converge_under_the_hardest_setpoints(feeder: str, n: int) -> None:
    scenario = generate_scenario(feeder, n, seed=3)  # type: ignore[arg-type]
    assert len(scenario.microgrids) == n
    scale = min(1.0, CAPACITY[feeder] / n)  # type: ignore[index]
    assert scenario.microgrids[0].battery.p_max_mw == pytest.approx(0.5 * scale)
    assert all(_hard_steps(Plant(scenario)))


def test_full_size_microgrids_beyond_the_capacity_do_not_converge_which_is_why_ratings_scale() -> None:
    small = generate_scenario("ieee34", 12, seed=3)
    data = small.model_dump()
    data["network"]["load_scale"] = 0.3  # back to full size: the feeder cannot carry twelve
    data["network"]["poc_mva"] = 2.5
    for mg in data["microgrids"]:
        mg["battery"]["p_max_mw"] = 0.5
    assert not all(_hard_steps(Plant(Scenario.model_validate(data))))


def test_the_toml_round_trips_and_the_cli_writes_a_file_simulate_can_load(tmp_path, capsys) -> None:
    scenario = generate_scenario("ieee123", 7, seed=5)
    assert Scenario.model_validate(tomllib.loads(scenario_toml(scenario, header="a\nb"))) == scenario
    assert generate_scenario("ieee123", 7, seed=5) == scenario != generate_scenario("ieee123", 7, seed=6)
    out = tmp_path / "site.toml"
    assert main(["scenario", "--feeder", "ieee123", "--microgrids", "7", "--seed", "5", "--out", str(out)]) == 0
    assert load_scenario(out) == scenario
    assert "7 microgrids on ieee123" in capsys.readouterr().out
    assert main(["scenario", "--feeder", "ieee34", "--microgrids", "3", "--out", str(tmp_path / "no" / "x.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_requests_are_refused() -> None:
    with pytest.raises(ScenarioError, match="1..5000"):
        generate_scenario("ieee34", 0)
    with pytest.raises(ScenarioError, match="unknown feeder"):
        generate_scenario("ieee13", 3)  # type: ignore[arg-type]
    with pytest.raises(ScenarioError, match="three-phase buses"):
        ieee123_13(attach_buses=["114"], microgrid_names=["mg1"], load_scale=0.3)  # a one-phase lateral


def test_ieee123_feeder_is_the_published_one() -> None:
    assert len(IEEE123_LINES) == 118 and len(IEEE123_SPOT_LOADS) == 85
    assert sum(p for p, _ in IEEE123_SPOT_LOADS.values()) == 3490  # kW, the published total
    assert sum(q for _, q in IEEE123_SPOT_LOADS.values()) == 1920  # kvar
    built = ieee123_13(attach_buses=["13", "60"], microgrid_names=["mg1", "mg2"], load_scale=0.3)
    net = built.net
    assert len(built.regulators) == 4 and set(net.trafo.tap_pos.iloc[:4]) == {7, -1, 0, 5}
    assert net.bus.vn_kv.eq(4.16).sum() == len(net.bus) - 1 - 2  # 610 and each microgrid's 634 are 0.48 kV
    assert "150" not in IEEE123_ATTACH_BUSES and "13" in IEEE123_ATTACH_BUSES
    scenario = generate_scenario("ieee123", 2, seed=0)
    assert isinstance(scenario.network, Ieee123Network)
    plant = Plant(scenario)
    m = plant.reset(year=2023, start_step=12)
    assert m.converged and np.isfinite(m.vm_pu).all() and m.vm_pu.min() > 0.95 and m.vm_pu.max() < 1.06
    assert m.feeder_head_mw > 0.3 * 3.49  # the feeder's own load is served from the substation


def test_fast_solver_matches_runpp_on_a_generated_ieee123_site() -> None:
    import pandapower as pp

    plant = Plant(generate_scenario("ieee123", 6, seed=4))
    rng = np.random.default_rng(2)
    plant.reset(year=2023, start_step=4980)
    n = plant.n
    for _ in range(3):
        m = plant.step(Setpoints(rng.uniform(-0.2, 0.2, n), rng.uniform(0, 0.3, n), rng.uniform(0, 1, n),
                                 rng.uniform(0, 1, n)))
        assert m.converged
    net = plant.net
    factor = plant._matrix[plant._load_row, m.step]
    net.load["p_mw"] = plant._base_p * factor
    net.load["q_mvar"] = plant._base_q * factor
    net.sgen["p_mw"] = np.concatenate((m.applied.generator_mw, m.pv_mw, m.wind_mw))
    net.storage["p_mw"] = -m.applied.battery_mw
    net.trafo.loc[[r.trafo for r in plant.built.regulators], "tap_pos"] = m.regulator_taps
    pp.runpp(net, max_iteration=30, tolerance_mva=1e-10)
    assert np.abs(net.res_bus.vm_pu.to_numpy() - m.vm_pu).max() < 1e-6
    assert abs(net.res_ext_grid.p_mw.sum() - m.feeder_head_mw) < 1e-5
