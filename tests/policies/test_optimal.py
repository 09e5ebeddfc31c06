"""The optimal policy (perfect-foresight dispatch, HiGHS): never dearer than the rule, inside every device limit when
the plant plays it, close to its own plan; ``simulate --policy optimal`` and ``summary.json``; one-line errors."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from heron_edge import MultiAgentMicrogrids
from heron_edge.cli import main
from heron_edge.infos import CLAMPED_FIELDS
from heron_edge.policies import Policy, make_policies
from heron_edge.policies.optimal import OptimalPolicy, PlayedComparison, compare
from sim.scenario import load_scenario

SEASONS = {"january": 10, "april, negative prices": 100, "july": 190, "october": 280}
"""Days of 2024 (index from 1 January): the four seasons; 10 April's midday prices are down to -32 USD/MWh."""


def _play(env: MultiAgentMicrogrids, policies: dict[str, Policy], day: int,
          soc: list[float] | None = None) -> dict[str, np.ndarray]:
    """Play one day of 2024 on ``env`` with ``policies``; per-step records (steps x microgrids)."""
    obs, _ = env.reset(seed=0, options={"start_step": 24 * day, **({"soc": soc} if soc is not None else {})})
    zones = [np.asarray(z.buses) for z in env.plant.built.zones]
    rows: dict[str, list[list[float]]] = {k: [] for k in ("cost_usd", "penalty_usd", "exchange_mw", "vm_min_pu",
                                                           "vm_max_pu", "soc", "battery_mw", "generator_mw", "clamped")}
    agents = env.possible_agents
    while env.agents:
        obs, _, _, _, infos = env.step({a: policies[a].act(obs[a]) for a in env.agents})
        m = env.plant.latest()
        rows["cost_usd"].append([infos[a]["fuel_cost_usd"] + infos[a]["energy_cost_usd"] for a in agents])
        rows["penalty_usd"].append([infos[a]["penalty_usd"] for a in agents])
        rows["clamped"].append([max(infos[a][f] for f in CLAMPED_FIELDS.values()) for a in agents])
        rows["exchange_mw"].append(list(m.exchange_mw))
        rows["vm_min_pu"].append([m.vm_pu[b].min() for b in zones])
        rows["vm_max_pu"].append([m.vm_pu[b].max() for b in zones])
        rows["soc"].append(list(m.soc))
        rows["battery_mw"].append(list(m.applied.battery_mw))
        rows["generator_mw"].append(list(m.applied.generator_mw))
    return {k: np.array(v) for k, v in rows.items()}


def _total(rows: dict[str, np.ndarray]) -> float:
    return float(rows["cost_usd"].sum() + rows["penalty_usd"].sum())


def _played(policies: dict[str, Policy], rows: dict[str, np.ndarray]) -> PlayedComparison:
    """The last day's plan against what the plant did."""
    planner = next(p.planner for p in policies.values() if isinstance(p, OptimalPolicy))
    return compare(planner.served[-len(rows["cost_usd"]):], exchange_mw=rows["exchange_mw"], vm_min_pu=rows["vm_min_pu"],
                   vm_max_pu=rows["vm_max_pu"], cost_usd=rows["cost_usd"] + rows["penalty_usd"])


@pytest.fixture(scope="module")
def test_year() -> Iterator[tuple[MultiAgentMicrogrids, MultiAgentMicrogrids, dict[str, Policy]]]:
    """A rule env and an optimal env with its policies (planned anew for each day it is reset to)."""
    rule_env = MultiAgentMicrogrids({"train": False, "max_episode_steps": 24})
    optimal_env = MultiAgentMicrogrids({"train": False, "max_episode_steps": 24})
    yield rule_env, optimal_env, make_policies("optimal", optimal_env)
    rule_env.close()
    optimal_env.close()


@pytest.mark.parametrize("day", SEASONS.values(), ids=SEASONS.keys())
def test_optimum_never_costs_more_than_the_rule(
        test_year: tuple[MultiAgentMicrogrids, MultiAgentMicrogrids, dict[str, Policy]], day: int) -> None:
    rule_env, optimal_env, policies = test_year
    rule = _play(rule_env, make_policies("rule", rule_env), day)
    optimal = _play(optimal_env, policies, day)
    assert _total(optimal) <= _total(rule)
    played = _played(policies, optimal)
    assert played.plant_cost_usd == pytest.approx(_total(optimal))
    assert abs(played.gap_usd) < 0.005 * abs(played.plant_cost_usd)  # the plan is what the plant does, within 0.5 %
    assert played.exchange_error_max_mw < 0.01 and played.voltage_error_max_pu < 0.005


def test_reset_plans_the_episode_the_env_was_reset_to(
        test_year: tuple[MultiAgentMicrogrids, MultiAgentMicrogrids, dict[str, Policy]]) -> None:
    _, env, policies = test_year
    planner = next(p.planner for p in policies.values() if isinstance(p, OptimalPolicy))
    obs, _ = env.reset(seed=0, options={"start_step": 24 * 50, "soc": 0.3})
    before = len(planner.plans)
    for policy in policies.values():
        policy.reset()
    assert len(planner.plans) == before + 1
    plan = planner.plans[-1]
    assert (plan.year, plan.start, plan.steps) == (2024, 24 * 50, 24)
    assert plan.schedule.soc[0] == pytest.approx([0.3, 0.3, 0.3])
    for k in range(3):  # acting follows that plan: no new one
        actions = {a: policies[a].act(obs[a]) for a in env.agents}
        assert np.array_equal(actions["mg2"], plan.action(k, 1))
        obs, *_ = env.step(actions)
    assert len(planner.plans) == before + 1 and [k for _, k in planner.served[-3:]] == [0, 1, 2]


def test_the_plan_respects_battery_and_generator_limits_in_the_plant() -> None:
    """mg1's generator has a no-load cost (an on/off decision: the plan is a MILP) and a tight ramp, mg2's a minimum
    output (never off), mg3 is as shipped; on a day of negative prices mg1 starts nearly empty, mg2 nearly full."""
    sc = load_scenario("ieee34_3x13")
    changes = [{"cost_c_usd_per_h": 15.0, "cost_b_usd_per_mwh": 40.0, "ramp_mw_per_h": 0.2},
               {"p_min_mw": 0.1, "cost_b_usd_per_mwh": 30.0}, {}]
    scenario = sc.model_copy(update={"microgrids": [m.model_copy(update={"generator": m.generator.model_copy(update=c)})
                                                    for m, c in zip(sc.microgrids, changes, strict=True)]})
    env = MultiAgentMicrogrids({"train": False, "scenario": scenario, "max_episode_steps": 24})
    policies = make_policies("optimal", env)
    rows = _play(env, policies, SEASONS["april, negative prices"], soc=[0.12, 0.88, 0.5])
    planner = next(p.planner for p in policies.values() if isinstance(p, OptimalPolicy))
    assert planner.plans[-1].schedule.integer
    assert not rows["clamped"].any()  # nothing the plan asked for had to be limited
    for i, mg in enumerate(scenario.microgrids):
        b, g = mg.battery, mg.generator
        assert (rows["soc"][:, i] >= b.soc_min - 1e-9).all() and (rows["soc"][:, i] <= b.soc_max + 1e-9).all()
        assert (np.abs(rows["battery_mw"][:, i]) <= b.p_max_mw + 1e-9).all()
        output = rows["generator_mw"][:, i]
        assert (output >= g.p_min_mw - 1e-9).all() and (output <= g.p_max_mw + 1e-9).all()
        assert (np.abs(np.diff(np.concatenate([[0.0], output]))) <= g.ramp_mw_per_h + 1e-9).all()
    assert (rows["generator_mw"][:, 0] > 0).any()  # the cheap unit runs when it pays, despite its no-load cost
    assert (rows["generator_mw"][:, 0] == 0).any()  # and stops when it does not
    assert rows["soc"][:, 0].max() > 0.5  # the empty battery charged on the negative prices
    played = _played(policies, rows)
    assert abs(played.gap_usd) < 0.005 * abs(played.plant_cost_usd)
    env.close()


def test_simulate_optimal_writes_summary_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--policy", "optimal", "--test-year", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["policy"], summary["days"], summary["steps"], summary["year"]) == ("optimal", 1, 24, 2024)
    assert set(summary["summary"]) == {"mg1", "mg2", "mg3", "total"}
    total = summary["summary"]["total"]
    assert summary["total_cost_usd"] == pytest.approx(total["cost_usd"] + total["penalty_usd"])
    with open(tmp_path / "trajectory.csv") as f:
        header = f.readline().strip().split(",")
        rows = np.array([[float(x) for x in line.strip().split(",")[header.index("cost_usd"):][:1]] for line in f])
    assert total["cost_usd"] == pytest.approx(rows.sum())
    optimal = summary["optimal"]
    assert optimal["plant_cost_usd"] == pytest.approx(summary["total_cost_usd"])
    assert optimal["gap_usd"] == pytest.approx(optimal["plant_cost_usd"] - optimal["plan_cost_usd"], abs=1e-3)
    assert "optimal: plan" in out and "summary:" in out


def test_summary_json_for_every_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--policy", "idle", "--days", "2", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["policy"], summary["days"], summary["steps"], summary["mode"]) == ("idle", 2, 48, "centralized")
    assert "optimal" not in summary
    assert summary["summary"]["total"]["fuel_usd"] == 0.0
    assert summary["total_cost_usd"] > 0.0


@pytest.mark.parametrize(("args", "message"), [
    (["--policy", "optimal", "--distributed"], "run it centralized"),
    (["--policy", "optimal", "--protocol", "setpoint"], "without coordination protocols"),
    (["--policy", "optimum"], "'optimum' is neither rule, random, idle, optimal nor a policy bundle directory"),
])
def test_simulate_optimal_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                               message: str) -> None:
    try:
        code: int | str | None = main(["simulate", *args, "--out", str(tmp_path)])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
