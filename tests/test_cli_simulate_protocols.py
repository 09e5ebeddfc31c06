"""``heron-edge simulate --protocol NAME``: every protocol runs, in both modes, with a protocol summary."""
from __future__ import annotations

import csv
import re

import numpy as np
import pytest

from heron_edge.cli import main
from heron_edge.protocols.auction import MIN_TRADE_MW


def totals(capsys) -> tuple[str, str]:
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    return out, total


@pytest.mark.parametrize(("protocol", "expect"), [
    ("setpoint", "setpoint tracking: mean |error|"),
    ("price_signal", "congestion adder in"),
    ("p2p_trading", "trades:"),
    ("consensus", "consensus: dispatch mean"),
])
def test_each_protocol_runs_and_both_modes_agree(protocol: str, expect: str, tmp_path, capsys) -> None:
    assert main(["simulate", "--days", "1", "--protocol", protocol, "--out", str(tmp_path / "c")]) == 0
    out_c, total_c = totals(capsys)
    assert expect in out_c and f"protocols: {protocol}" in out_c
    assert main(["simulate", "--days", "1", "--protocol", protocol, "--distributed", "--out", str(tmp_path / "d")]) == 0
    out_d, total_d = totals(capsys)
    assert "mode: distributed" in out_d and "messages:" in out_d
    assert total_c == total_d  # the same summary: same costs, energy, penalties in both modes
    if protocol == "p2p_trading":  # one clearing function: the same trades in both modes
        assert _trades_line(out_c) == _trades_line(out_d)
    with open(tmp_path / "d" / "trajectory.csv") as f:
        rows = list(csv.DictReader(f))
    column = {"setpoint": "setpoint_mw", "price_signal": "congestion_adder_usd_per_mwh", "p2p_trading": "traded_mw",
              "consensus": "dispatch_mw"}[protocol]
    assert all(np.isfinite(float(r[column])) for r in rows)


def test_setpoint_is_tracked_by_the_rule_policy(tmp_path, capsys) -> None:
    assert main(["simulate", "--days", "1", "--protocol", "setpoint", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    with open(tmp_path / "trajectory.csv") as f:
        errors = [abs(float(r["tracking_error_mw"])) for r in csv.DictReader(f)]
    assert np.mean(errors) < 0.05  # MW: the battery covers the gap (losses and limits leave a little)


def test_two_protocols_and_a_bad_combination(tmp_path, capsys) -> None:
    assert main(["simulate", "--days", "1", "--protocol", "setpoint", "--protocol", "p2p_trading", "--out", str(tmp_path)]) == 0
    assert "protocols: setpoint, p2p_trading" in capsys.readouterr().out
    assert main(["simulate", "--days", "1", "--protocol", "setpoint", "--protocol", "price_signal", "--out", str(tmp_path)]) == 2
    assert "at most one vertical" in capsys.readouterr().err


def _trades_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("trades:"))


def test_trade_summary_counts_only_real_trades(tmp_path, capsys) -> None:
    """Float noise in the orders (1e-10 MW) is no trade: the steps counted are those with a traded quantity."""
    assert main(["simulate", "--days", "1", "--protocol", "p2p_trading", "--out", str(tmp_path)]) == 0
    line = _trades_line(capsys.readouterr().out)
    match = re.match(r"trades: (\d+) steps with trades, ([\d.]+) MWh traded", line)
    assert match, line
    with open(tmp_path / "trajectory.csv") as f:
        rows = list(csv.DictReader(f))
    traded = np.array([float(r["traded_mw"]) for r in rows]).reshape(-1, 3)
    assert ((traded == 0.0) | (np.abs(traded) >= MIN_TRADE_MW)).all()  # no dust in the trajectory either
    steps_with_trades = int((traded > 0).any(axis=1).sum())
    assert int(match[1]) == steps_with_trades
    assert float(match[2]) == pytest.approx(np.maximum(traded, 0.0).sum(), abs=5e-4)  # 1 h steps: MW = MWh
    assert steps_with_trades == 0 or float(match[2]) > 0  # never "4 steps with trades, 0.000 MWh traded"
