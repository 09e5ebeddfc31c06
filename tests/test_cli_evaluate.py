"""heron-edge evaluate: a short impaired run against the unimpaired one, and one-line errors for a bad --impair."""
from __future__ import annotations

import pytest

from heron_edge.cli import main


def test_evaluate_tables_the_impaired_run_against_the_unimpaired_one(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["evaluate", "--policy", "rule", "--impair", "loss=0.2,latency_s=0.2,seed=3", "--days", "1",
                 "--protocol", "setpoint", "--test-year"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.err == ""  # the fallbacks are counted, not logged
    lines = out.out.splitlines()
    assert lines[1] == "impairment: loss=0.2, latency_s=0.2, seed=3"
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    assert list(rows) == ["cost_usd", "penalty_usd", "v_violation_steps", "overload_steps", "fallback_steps",
                          "messages_lost", "messages_late"]
    unimpaired, impaired, _ = rows["messages_lost"]
    assert unimpaired == "0" and int(impaired) > 0
    assert rows["fallback_steps"][0] == "0" and int(rows["fallback_steps"][1]) > 0
    cost_a, cost_b, change = map(float, rows["cost_usd"])
    assert change == pytest.approx(cost_b - cost_a, abs=0.011)


@pytest.mark.parametrize(("spec", "says"), [
    ("loss=1.5", "less than or equal to 1"),
    ("latency=0.2", "unknown key"),
    ("loss", "not KEY=VALUE"),
    ("telemetry.jitter_s=-1", "greater than or equal to 0"),
    ("bogus.loss=0.1", "unknown topic kinds"),
])
def test_a_malformed_impair_is_one_usage_line(capsys: pytest.CaptureFixture[str], spec: str, says: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--impair", spec])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and err.startswith("heron-edge evaluate: error: argument --impair") and says in err


def test_evaluate_needs_an_impairment_and_a_known_policy(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["evaluate"], ["evaluate", "--impair", "loss=0.1", "--policy", "no_such_policy"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err


def test_evaluate_refuses_the_optimal_policy_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--policy", "optimal", "--impair", "loss=0.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "optimal" in err and "centralized" in err
