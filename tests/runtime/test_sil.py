"""``heron-edge sil --days 1`` end to end: Mosquitto, the plant, the operator and three agents as real processes;
plain (price only), with the setpoint protocol and with p2p trading (the operator clears the market between
the agents' decisions and the plant's step); shutdown is never counted; the report names degraded agents and
steps (typed records read from the run's files)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from heron_edge.commands.simulate import Trajectory
from heron_edge.runtime.sil import (
    COMPARED,
    AgentCounters,
    FileMarks,
    LateTelemetry,
    Rejection,
    SilFiles,
    compare,
    load_trajectory,
    run_health,
)
from heron_edge.runtime.sil_plant import PlantResult
from tests.conftest import require_mosquitto

pytestmark = [pytest.mark.mqtt, pytest.mark.modbus, pytest.mark.slow]


def _sil(tmp_path: Path, *args: str) -> str:
    require_mosquitto()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "heron_edge.cli", "sil", "--days", "1", "--workdir", str(tmp_path),
                             "--timeout-s", "90", *args], capture_output=True, text=True, timeout=150, env=env)
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
    for name in ("mg1", "mg2", "mg3"):  # every decision on the plant's exact forecast (the mqtt source)
        journal = [json.loads(line) for line in (tmp_path / f"journal-{name}.jsonl").read_text().splitlines()]
        assert len(journal) == 24 and {row["forecast"] for row in journal} == {"mqtt"}, name


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
    # the CIGRE microgrids differ enough to trade on this day (the IEEE 34 ones move together and never do)
    out = _sil(tmp_path, "--protocol", "p2p_trading", "--scenario", "cigre_mv_der", "--seed", "1")
    for column in ("traded_mw", "trade_cash_usd", "clearing_price_usd_per_mwh", "cost_usd"):
        assert _compared(out, column) <= (1e-3 if column == "cost_usd" else 0.0), column
    ledger = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    cleared = [row["clearing"] for row in ledger]
    assert len(cleared) == 24 and all(c is not None and c["excluded"] == [] for c in cleared)  # every order in time
    assert sum(bool(c["trades"]) for c in cleared) >= 2  # trades really happened and were settled


def _stats(out: str) -> dict:
    return json.loads(next(line for line in out.splitlines() if line.startswith('{"secure"')))


def test_sil_shutdown_is_never_counted(tmp_path: Path) -> None:
    """Everything stays up 5 s after the last step: the agents' watchdog sees the operator silent (2 s) and goes
    failsafe. That is shutdown: not counted, not reported; and the devices were still there (no device reason)."""
    out = _sil(tmp_path, "--stop-delay-s", "5")
    finished_at = PlantResult.read(tmp_path / "plant-result.json").finished_at
    assert finished_at is not None
    late_entries = []
    for name, agent in _stats(out)["agents"].items():
        assert agent["failsafe_entries"] == 0 and agent["failsafe_steps"] == 0, name
        status = json.loads((tmp_path / f"status-{name}.json").read_text())
        late_entries += [(t, detail) for t, state, detail in status["transitions"] if state == "failsafe"]
    assert late_entries and all(t > finished_at for t, _ in late_entries)  # it did happen, after the end only
    assert not any("device" in detail for _, detail in late_entries), late_entries  # agents stopped before the plant
    assert "degraded steps" not in out


# ------------------------------------------------------------------ the report, from a run's files
def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _journal_row(step: int, failsafe: bool = False) -> dict:
    return {"step": step, "failsafe": failsafe, "action": None if failsafe else [0.0, 0.0, 0.0, 0.0],
            "setpoint_mw": None, "dispatch_mw": None, "consensus_rounds": 0, "traded_mw": None,
            "clearing_price_usd_per_mwh": None}


def _ledger_row(step: int, excluded: list[str]) -> dict:
    return {"step": step, "price_usd_per_mwh": 50.0, "congestion_adder_usd_per_mwh": 0.0, "head_loading_pu": 0.0,
            "setpoint_mw": None, "clearing": {"price_usd_per_mwh": None, "fee_usd_per_mwh": 1.0, "trades": [],
                                              "excluded": excluded}}


def test_run_health_names_agents_and_steps_and_leaves_out_shutdown(tmp_path: Path) -> None:
    files = SilFiles(tmp_path)
    steps = [100, 101, 102, 103]
    finished_at = 1_000.0
    _jsonl(files.journal("mg1"), [_journal_row(s) for s in steps])
    _jsonl(files.journal("mg2"), [_journal_row(100), _journal_row(101, True), _journal_row(102, True), _journal_row(103)])
    _jsonl(files.ledger, [_ledger_row(s, ["mg2"] if s == 102 else []) for s in steps])
    files.log("agent-mg2").write_text("2026-01-01 WARNING heron_edge.agents.proxy: mg2: step 101 incomplete after 0.50s "
                                      "(price step 100, peers [101, 101]); using last values\n")
    files.log("operator").write_text("WARNING heron_edge.agents.operator: system_operator: telemetry of step 102 missing "
                                     "from ['mg2'] after 1.00 s; using their last needs\n")
    files.log("agent-mg1").write_text("")
    for name, counters, transitions in (
            ("mg1", {"cycles": 4, "failsafe_entries": 1}, [[finished_at + 2, "failsafe", "upstream: no price"]]),
            ("mg2", {"late": 1, "stale": 3, "cmd_accepted": 3, "failsafe_entries": 2},
             [[finished_at - 3, "failsafe", "upstream: no price from system_operator for 2.1 s"],
              [finished_at - 1, "online", ""], [finished_at + 1, "failsafe", "device: battery stale"]])):
        rejected = {"message": {"schema": 2}, "command": {"bad_mac": 1}, "clock": {}} if name == "mg2" else {}
        files.status(name).write_text(json.dumps({"counters": counters, "rejected": rejected,
                                                  "transitions": transitions, "timing": {}}))
    marks = FileMarks.take(files.appended(["mg1", "mg2"]))
    # shutdown: what comes after the marks and after finished_at is not the run's
    with open(files.journal("mg1"), "a") as f:
        f.write(json.dumps(_journal_row(103, True)) + "\n")
    with open(files.log("agent-mg1"), "a") as f:
        f.write("WARNING heron_edge.agents.proxy: mg1: step 103 incomplete after 0.50s; using last values\n")

    health = run_health(files, ["mg1", "mg2"], steps, finished_at=finished_at, marks=marks, forced_steps=1)

    mg1, mg2 = health.agent("mg1"), health.agent("mg2")
    assert not mg1.degraded and mg1.counters.failsafe_entries == 0  # its only entry came after the end
    assert mg2.failsafe_steps == (101, 102) and mg2.late_steps == (101,) and mg2.excluded_steps == (102,)
    assert mg2.missing_steps == ()
    assert mg2.failsafe_reasons == ("upstream: no price from system_operator for 2.1 s",)
    assert mg2.counters == AgentCounters(late=1, stale=3, failsafe_entries=1, cmd_accepted=3, rejections=(
        Rejection("command", "bad_mac", 1), Rejection("message", "schema", 2)))
    assert mg2.counters.cmd_rejected == 1 and mg2.counters.rejected == 3
    assert health.operator.late_telemetry == (LateTelemetry(102, ("mg2",)),)
    report = health.report()
    assert report.splitlines()[0].startswith("degraded steps")
    assert "mg1" not in report
    line = next(line for line in report.splitlines() if "mg2:" in line)
    assert "failsafe at steps 101-102" in line and "late at steps 101" in line and "missed the market at steps 102" in line
    assert "upstream: no price" in line and "message schema 2" in line and "command bad_mac 1" in line
    assert "operator: telemetry late 1x: step 102 (mg2)" in report
    assert "plant: 1 step(s) forced" in report


def test_run_health_of_a_clean_run_says_none(tmp_path: Path) -> None:
    files = SilFiles(tmp_path)
    _jsonl(files.journal("mg1"), [_journal_row(s) for s in (5, 6)])
    health = run_health(files, ["mg1"], [5, 6, 7])  # step 7 never ran: the plant forced it
    assert health.agent("mg1").missing_steps == (7,)
    _jsonl(files.journal("mg1"), [_journal_row(s) for s in (5, 6, 7)])
    assert run_health(files, ["mg1"], [5, 6, 7]).report() == "degraded steps: none"


def test_comparison_names_the_cells_beyond_tolerance() -> None:
    columns = {c: np.zeros((3, 2)) for c in COMPARED}
    columns["step_in_year"] = np.array([[40, 40], [41, 41], [42, 42]], dtype=np.float64)
    central = Trajectory(["mg1", "mg2"], columns, 1.0)
    sil = Trajectory(["mg1", "mg2"], {c: v.copy() for c, v in columns.items()}, 1.0)
    assert compare(sil, central).ok and compare(sil, central).deviations == ()
    sil.columns["battery_mw"][1, 1] = 0.25
    comparison = compare(sil, central)
    assert not comparison.ok
    lines = comparison.report().splitlines()
    assert lines[0] == "SIL vs centralized (3 vs 3 steps): MISMATCH"
    assert "<-- exceeds: mg2 at step 41 (2.50e-01)" in next(line for line in lines if "battery_mw" in line)
