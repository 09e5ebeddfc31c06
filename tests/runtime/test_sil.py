"""``heron-edge sil --days 1`` end to end: Mosquitto, the plant, the operator and three agents as real processes;
plain (price only), with the setpoint protocol and with p2p trading (the operator clears the market between
the agents' decisions and the plant's step)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from heron_edge.runtime.sil import COMPARED, load_trajectory
from tests.conftest import require_mosquitto

pytestmark = [pytest.mark.mqtt, pytest.mark.modbus, pytest.mark.slow]


def _sil(tmp_path: Path, *args: str) -> str:
    require_mosquitto()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "heron_edge.cli", "sil", "--days", "1", "--workdir", str(tmp_path),
                             "--timeout", "90", *args], capture_output=True, text=True, timeout=150, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SIL vs centralized (24 vs 24 steps): MATCH" in result.stdout
    assert "total" in result.stdout and "cost USD" in result.stdout  # the simulate summary table
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps  # every process we started is gone
    return result.stdout


def _compared(out: str, column: str) -> float:
    line = next(line for line in out.splitlines() if line.strip().startswith(column + " "))
    return float(line.split("max |diff|")[1].split()[0])


def test_sil_day_matches_centralized(tmp_path: Path) -> None:
    out = _sil(tmp_path)
    sil = load_trajectory(tmp_path / "trajectory.npz")
    assert sil.n_steps == 24 and sil.names == ["mg1", "mg2", "mg3"]
    assert np.abs(sil.columns["battery_mw"]).max() > 0.1  # the rule policy actually dispatched the batteries
    money = {"energy_cost_usd", "cost_usd"}
    assert set(COMPARED) - money <= set(sil.columns)
    assert not money & set(sil.columns)  # the plant records physics; the settlement adds the money
    assert _compared(out, "cost_usd") <= 1e-3  # and the settled costs match the centralized run
    for name in ("plant", "operator", "agent-mg1", "agent-mg2", "agent-mg3"):
        assert (tmp_path / f"{name}.log").exists()
    assert "protocols: none" in out


def test_sil_day_with_setpoints(tmp_path: Path) -> None:
    out = _sil(tmp_path, "--protocol", "setpoint")
    assert _compared(out, "setpoint_mw") == 0.0  # the operator's setpoints from the agents' telemetry, exactly
    assert "setpoint tracking" in out
    ledger = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert len(ledger) == 24 and all(row["setpoint_mw"] is not None for row in ledger)
    journal = [json.loads(line) for line in (tmp_path / "journal-mg1.jsonl").read_text().splitlines()]
    assert [row["setpoint_mw"] for row in journal] == [row["setpoint_mw"][0] for row in ledger]
    assert not any(row["failsafe"] for row in journal)


def test_sil_day_with_p2p_trading(tmp_path: Path) -> None:
    out = _sil(tmp_path, "--protocol", "p2p_trading")
    for column in ("traded_mw", "trade_cash_usd", "clearing_price_usd_per_mwh", "cost_usd"):
        assert _compared(out, column) <= (1e-3 if column == "cost_usd" else 0.0), column
    ledger = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    cleared = [row["clearing"] for row in ledger]
    assert len(cleared) == 24 and all(c is not None and c["excluded"] == [] for c in cleared)  # every order in time
    assert sum(bool(c["trades"]) for c in cleared) >= 2  # trades really happened and were settled
