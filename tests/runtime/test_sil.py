"""``heron-edge sil --days 1`` end to end: Mosquitto, the plant, the operator and three agents as real processes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from heron_edge.runtime.sil import COMPARED, load_trajectory
from tests.conftest import require_mosquitto

pytestmark = [pytest.mark.mqtt, pytest.mark.modbus, pytest.mark.slow]


def test_sil_day_matches_centralized(tmp_path: Path) -> None:
    require_mosquitto()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "heron_edge.cli", "sil", "--days", "1", "--workdir", str(tmp_path),
                             "--timeout", "90"], capture_output=True, text=True, timeout=150, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "SIL vs centralized (24 vs 24 steps): MATCH" in out
    assert "total" in out and "cost USD" in out  # the simulate summary table
    sil = load_trajectory(tmp_path / "trajectory.npz")
    assert sil.n_steps == 24 and sil.names == ["mg1", "mg2", "mg3"]
    assert np.abs(sil.columns["battery_mw"]).max() > 0.1  # the rule policy actually dispatched the batteries
    assert set(COMPARED) <= set(sil.columns)
    # every process we started is gone
    for name in ("plant", "operator", "agent-mg1", "agent-mg2", "agent-mg3"):
        assert (tmp_path / f"{name}.log").exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps
