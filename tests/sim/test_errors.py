"""sim's own errors instead of asserts (``python -O`` strips those): a plant used before ``reset()``
and an inconsistent scenario say what is wrong, as PlantStateError and ScenarioError."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sim
import sim.plant
from sim.errors import PlantStateError, ScenarioError, SimError
from sim.networks import BuiltNetwork
from sim.plant import Plant, Setpoints
from sim.profiles import load_profiles
from sim.scenario import Scenario


def test_no_assert_statements_in_sim() -> None:
    root = Path(sim.__file__).parent
    found = [f"{path.name}:{node.lineno}" for path in sorted(root.glob("*.py"))
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Assert)]
    assert found == []


def test_a_plant_before_reset_says_reset_first() -> None:
    plant = Plant("cigre_mv_der")
    for what, call in (("forecast", plant.forecast), ("price", plant.price),
                       ("n_steps_in_year", lambda: plant.n_steps_in_year), ("profiles", lambda: plant.profiles),
                       ("latest", plant.latest), ("step", lambda: plant.step(Setpoints.zeros(plant.n)))):
        with pytest.raises(PlantStateError, match=r"reset\(\)"):
            call()
            pytest.fail(f"{what} answered before reset()")
    first = plant.reset(year=2023, start_step=0)
    assert plant.latest() is first and plant.n_steps_in_year == 8760 and plant.profiles.year == 2023
    assert issubclass(PlantStateError, SimError) and issubclass(PlantStateError, RuntimeError)


def test_unknown_profile_columns_are_a_scenario_error() -> None:
    with pytest.raises(ScenarioError, match="unknown profile columns"):
        load_profiles(2023, ["no_such_column"])
    with pytest.raises(ValueError, match="year must be"):
        load_profiles(2022, ["load_caiso"])
    assert issubclass(ScenarioError, SimError) and issubclass(ScenarioError, ValueError)


def test_a_zone_without_a_point_of_connection_is_a_scenario_error(monkeypatch: pytest.MonkeyPatch) -> None:
    build = sim.plant.build_network

    def without_poc(scenario: Scenario) -> BuiltNetwork:
        built = build(scenario)
        built.zones[0].poc_line = None
        built.zones[0].poc_trafo = None
        return built

    monkeypatch.setattr(sim.plant, "build_network", without_poc)
    with pytest.raises(ScenarioError, match="no point of connection"):
        Plant("cigre_mv_der")
