"""``heron-edge sil --device-profile``: the plant's devices speak legacy SunSpec (1xx: 103, 120-124, 160, 802, meter
203) or, microgrid by microgrid, legacy and IEEE 1547 (``mixed``); real processes, and the day still matches the
centralized run within what the 1xx percentages resolve (``heron_edge.runtime.sil.profile_tolerances``)."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from heron_edge.runtime.sil import COMPARED, load_trajectory, profile_tolerances, tolerances
from sim.scenario import load_scenario
from tests.runtime.test_sil import _compared
from tests.runtime.test_sil import _sil as run_sil

pytestmark = [pytest.mark.mqtt, pytest.mark.modbus, pytest.mark.slow]


def _sil(tmp_path: Path, *args: str) -> str:
    out = run_sil(tmp_path, *args)  # exit 0, MATCH, every process gone
    assert "degraded steps" not in out  # no failsafe, no late step, nothing rejected
    return out


def _agent_devices(tmp_path: Path) -> dict[str, list[str]]:
    """Per agent, the devices its gateway used (from the agent config the rig wrote)."""
    return {name: sorted(role for role, table in tomllib.loads((tmp_path / f"agent-{name}.toml").read_text())["devices"]
                         .items() if isinstance(table, dict))  # the device tables, not the meter's voltage settings
            for name in ("mg1", "mg2", "mg3")}


def test_sil_day_on_legacy_devices_matches_centralized(tmp_path: Path) -> None:
    out = _sil(tmp_path, "--device-profile", "legacy")
    sil = load_trajectory(tmp_path / "trajectory.npz")
    assert np.abs(sil.columns["battery_mw"]).max() > 0.1  # the batteries were driven through 124 InWRte / OutWRte
    assert _compared(out, "battery_mw") > 0.0  # ... at 0.01 % of WChaMax: not bit for bit
    assert _compared(out, "battery_mw") <= 0.5e-4 * 0.5 * 1.01 + COMPARED["battery_mw"]  # a rounding, no clamp here
    assert _compared(out, "pv_mw") == 0.0 and _compared(out, "load_mw") == 0.0
    assert set(_agent_devices(tmp_path)["mg1"]) == {"battery", "generator", "meter", "pv", "wind"}
    plant_log = (tmp_path / "plant.log").read_text()
    assert "Traceback" not in plant_log


def test_sil_day_on_mixed_devices_with_setpoints_matches_centralized(tmp_path: Path) -> None:
    out = _sil(tmp_path, "--device-profile", "mixed", "--protocol", "setpoint")
    assert _compared(out, "setpoint_mw") == 0.0  # the operator's setpoints from the telemetry, exactly, on both profiles
    journal = [json.loads(line) for line in (tmp_path / "journal-mg2.jsonl").read_text().splitlines()]
    assert len(journal) == 24 and not any(row["failsafe"] for row in journal)


def test_legacy_tolerances_follow_the_ratings() -> None:
    scenario = load_scenario("ieee34_3x13")
    base = tolerances(None)
    assert profile_tolerances(base, scenario, "ieee1547", max_price_usd_per_mwh=100.0) == base
    legacy = profile_tolerances(base, scenario, "legacy", max_price_usd_per_mwh=100.0)
    q = 0.5e-4 * 0.5  # half of 0.01 % of a 0.5 MW battery
    assert legacy["generator_mw"] == pytest.approx(base["generator_mw"] + 0.5e-4 * 0.66)
    assert legacy["battery_mw"] == pytest.approx(base["battery_mw"] + q * (1 + 24 / 0.95**2))
    assert legacy["soc"] == pytest.approx(base["soc"] + 24 * q / (2.0 * 0.95))
    assert legacy["price_usd_per_mwh"] == 0.0 and legacy["load_mw"] == base["load_mw"]
    assert all(legacy[c] < 1e-3 for c in ("battery_mw", "generator_mw", "exchange_mw"))  # a wiring error is ~0.1 MW
