"""A generated 12-microgrid site in SIL: 12 agent processes, the plant and the operator over Mosquitto and Modbus,
one day, compared with the centralized run of the same scenario file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from heron_edge.runtime.sil import load_trajectory
from tests.runtime.test_sil import _sil

pytestmark = [pytest.mark.mqtt, pytest.mark.modbus, pytest.mark.slow]


def test_sil_runs_a_generated_twelve_microgrid_site(tmp_path: Path) -> None:
    scenario = tmp_path / "site12.toml"
    made = subprocess.run([sys.executable, "-m", "heron_edge.cli", "scenario", "--feeder", "ieee34", "--microgrids", "12",
                           "--seed", "1", "--out", str(scenario)], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    workdir = tmp_path / "sil"
    workdir.mkdir()
    _sil(workdir, "--scenario", str(scenario))  # asserts the 24-step MATCH and that every process is gone
    sil = load_trajectory(workdir / "trajectory.npz")
    assert sil.n_steps == 24 and len(sil.names) == 12
    assert all((workdir / f"agent-{name}.log").exists() for name in sil.names)
