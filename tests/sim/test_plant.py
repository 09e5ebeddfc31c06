"""Plant physics: clamping to device limits, state of charge, ramps, costs, network size, profiles."""
from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from sim.errors import ScenarioError
from sim.plant import Plant, Setpoints
from sim.profiles import columns, load_profiles
from sim.scenario import Scenario, load_scenario


@pytest.fixture(scope="module")
def plant() -> Plant:
    return Plant("ieee34_3x13")


def test_default_network_is_ieee34_with_three_ieee13(plant: Plant) -> None:
    assert 70 <= len(plant.net.bus) <= 76
    assert plant.names == ["mg1", "mg2", "mg3"]
    assert (plant.net.bus.zone == "feeder").sum() == 34
    assert sorted(plant.net.storage.name) == ["mg1.battery", "mg2.battery", "mg3.battery"]


def test_battery_respects_soc_window_and_efficiency(plant: Plant) -> None:
    plant.reset(year=2023, start_step=0)
    soc0 = plant.batteries.soc.copy()
    m = plant.step(Setpoints(np.full(3, -0.5), np.zeros(3), np.zeros(3), np.zeros(3)))
    np.testing.assert_allclose(m.soc - soc0, 0.5 * 0.95 / 2.0)  # 0.5 MW for 1 h into 2 MWh at 95 %
    for _ in range(10):  # keep charging: stops at 90 %
        m = plant.step(Setpoints(np.full(3, -0.5), np.zeros(3), np.zeros(3), np.zeros(3)))
    np.testing.assert_allclose(m.soc, 0.9)
    assert m.clamped["battery_mw"].all() and (m.applied.battery_mw > -0.5).all()
    for _ in range(12):  # discharge hard: stops at 10 %
        m = plant.step(Setpoints(np.full(3, 5.0), np.zeros(3), np.zeros(3), np.zeros(3)))
    np.testing.assert_allclose(m.soc, 0.1)
    assert (m.applied.battery_mw <= 0.5).all()


def test_generator_ramp_and_box_limits_and_fuel_cost(plant: Plant) -> None:
    plant.reset(year=2023, start_step=100)
    m = plant.step(Setpoints(np.zeros(3), np.full(3, 0.66), np.zeros(3), np.zeros(3)))
    np.testing.assert_allclose(m.applied.generator_mw, 0.33)  # ramp 0.33 MW/h from 0
    assert m.clamped["generator_mw"].all()
    m = plant.step(Setpoints(np.zeros(3), np.full(3, 9.0), np.zeros(3), np.zeros(3)))
    np.testing.assert_allclose(m.applied.generator_mw, 0.66)
    np.testing.assert_allclose(m.fuel_cost_usd, 80 * 0.66**2 + 110 * 0.66)


def test_curtailment_and_exchange(plant: Plant) -> None:
    plant.reset(year=2023, start_step=24 * 180 + 12)  # a summer noon: sun is up
    m = plant.step(Setpoints(np.zeros(3), np.zeros(3), np.full(3, 0.25), np.ones(3)))
    assert (m.pv_available_mw > 0).all()
    np.testing.assert_allclose(m.pv_mw, 0.75 * m.pv_available_mw)
    np.testing.assert_allclose(m.wind_mw, 0.0)
    # the exchange is the physical flow: load and losses minus local production
    assert (m.exchange_mw > m.load_mw - m.pv_mw - 1e-9).all()


def test_profiles_are_shipped_and_split_by_year() -> None:
    assert "price_usd_per_mwh" in columns()
    p23 = load_profiles(2023, ["load_pge"])
    p24 = load_profiles(2024, ["load_pge"])
    assert p23.n_steps == 8760 and p24.n_steps == 8784  # 2024 is a leap year
    quarter = load_profiles(2023, ["load_pge"], step_hours=0.25)
    assert quarter.n_steps == 4 * 8760 and quarter.steps_per_day == 96
    np.testing.assert_allclose(quarter.series["load_pge"][::4], p23.series["load_pge"])
    with pytest.raises(ValueError, match="unknown profile columns"):
        load_profiles(2023, ["load_mars"])


def test_scenarios_are_data() -> None:
    cigre = Plant("cigre_mv_der")
    assert len(cigre.net.bus) == 15 and cigre.names == ["mg1", "mg2", "mg3"]
    data = load_scenario("ieee34_3x13").model_dump()
    data["microgrids"][0]["battery"]["soc_min"] = 0.95  # above soc_init and soc_max
    with pytest.raises(ValidationError, match="soc_min <= soc_init <= soc_max"):
        Scenario.model_validate(data)
    data = load_scenario("ieee34_3x13").model_dump()
    data["network"]["attach_buses"]["mg4"] = "830"
    with pytest.raises(ValidationError, match="places microgrids"):
        Scenario.model_validate(data)
    data = load_scenario("ieee34_3x13").model_dump()
    data["network"]["attach_buses"]["mg1"] = "999"
    with pytest.raises(ScenarioError, match=r"not 24\.9 kV buses"):
        Plant(Scenario.model_validate(data))


def test_scenario_from_toml_file(tmp_path) -> None:
    text = (load_scenario.__globals__["resources"].files("sim.scenarios") / "ieee34_3x13.toml").read_text()
    path = tmp_path / "mine.toml"
    path.write_text(text.replace("step_minutes = 60", "step_minutes = 30").replace('"812"', '"830"'))
    plant = Plant(str(path))
    assert plant.dt_h == 0.5
    m = plant.reset(year=2023, start_step=0)
    assert m.converged
    with pytest.raises(FileNotFoundError, match="no scenario named"):
        load_scenario("nope")
