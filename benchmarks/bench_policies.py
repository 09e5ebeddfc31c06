"""Mean daily cost of random, idle, rule, the optimum and the ``heron-edge train`` default recipe on the whole 2024 year.

The recipe (stable-baselines3 PPO, one policy shared by the three microgrids, ``local`` observations normalised
per rating, two-day episodes from a random initial state of charge, their ends bootstrapped with the critic's
value: ``heron_edge.training.sb3.Recipe``) trains for ``--steps`` agent steps on days of 2023 (default: the ``train`` command's budget, stated
in the JSON with the wall time; it must stay under 30 minutes on 2 cores), is exported as a policy bundle and run
from that bundle, through onnxruntime, exactly as ``heron-edge simulate --policy DIR`` runs it. Every policy then
runs the 2024 year as one continuous episode (the batteries carry their charge from day to day, from the
scenario's state of charge on 1 January); a day's cost is fuel + energy bought net of sales + penalties, USD,
summed over the microgrids, and the mean over the year's 365 whole days is reported.
The optimum (``--policy optimal``) plans that same episode, the whole year at once with perfect foresight (one LP,
HiGHS), and plays the plan through the plant like any policy; its plan's own cost, the gap to the plant's and the
linear network model's error are reported with it. The recipe's target is to beat the rule.
Message loss: the rule (price only, and with setpoint + consensus) and the recipe's bundle run the same year
distributed (local observations, over an in-memory broker on simulated time) with 0 %, 5 % and 20 % of the messages
lost (seed 0); a lost message is replaced by the last value received or the protocol's documented fallback. ``--impairment-only`` runs just these columns and merges them into ``--out``.
Writes benchmarks/results/policies.json.
Run: python benchmarks/bench_policies.py [--steps N] [--scenario NAME] [--bundle DIR (skip training)] [--no-optimal]
     [--impairment-only]
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import dataclasses
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from heron_edge import MultiAgentMicrogrids
from heron_edge.commands.train import DEFAULT_STEPS
from heron_edge.errors import ConfigError
from heron_edge.policies import make_policies
from heron_edge.policies.optimal import PlayedComparison, compare_trajectory

warnings.filterwarnings("ignore")
OUT = Path(__file__).parent / "results" / "policies.json"


def year_costs(policy: str, scenario: str, *, observation: str = "global",
               played: list[PlayedComparison] | None = None) -> np.ndarray:
    """Each 2024 day's cost (USD, all microgrids) with ``policy`` (a name or a bundle directory), the year run as one
    continuous episode from 1 January 00:00 (the batteries carry their charge from day to day: no day gets energy
    for free from a reset), the scenario's initial state of charge. For the optimal policy, ``played`` (if given)
    receives its plan compared with what the plant did."""
    probe = MultiAgentMicrogrids({"train": False, "scenario": scenario})
    probe.reset(seed=0)
    n_steps, per_day = probe.plant.n_steps_in_year, probe.plant.profiles.steps_per_day
    probe.close()
    env = MultiAgentMicrogrids({"train": False, "scenario": scenario, "observation": observation,
                                "max_episode_steps": n_steps - 1})
    policies = make_policies(policy, env, seed=0)
    obs, _ = env.reset(seed=0, options={"start_step": 0})
    costs = np.zeros(n_steps - 1)
    zones = [np.asarray(z.buses) for z in env.plant.built.zones]
    columns = {c: np.zeros((n_steps - 1, len(zones))) for c in ("exchange_mw", "vm_min_pu", "vm_max_pu", "cost_usd")}
    k = 0
    while env.agents:
        obs, _, _, _, infos = env.step({a: policies[a].act(obs[a]) for a in env.agents})
        step_costs = [i["fuel_cost_usd"] + i["energy_cost_usd"] + i["penalty_usd"] for i in infos.values()]
        costs[k] = sum(step_costs)
        if played is not None:
            m = env.plant.latest()
            columns["exchange_mw"][k], columns["cost_usd"][k] = m.exchange_mw, step_costs
            columns["vm_min_pu"][k] = [m.vm_pu[b].min() for b in zones]
            columns["vm_max_pu"][k] = [m.vm_pu[b].max() for b in zones]
        k += 1
    env.close()
    if played is not None:
        played.append(compare_trajectory(policies, {**columns, "penalty_usd": np.zeros_like(columns["cost_usd"])}))
    days = (n_steps - 1) // per_day  # whole days (the last hour of the year has no next step to forecast)
    return costs[: days * per_day].reshape(days, per_day).sum(axis=1)


LOSSES = (0.0, 0.05, 0.2)
"""Message loss of the impairment columns."""


def impaired_year(policy: str, scenario: str, loss: float, protocol: list[str] | None = None) -> dict[str, float]:
    """``policy`` run distributed (local observations, in memory, simulated time) over the 2024 year as one episode with
    every message lost with probability ``loss`` (seed 0; fallbacks: the last price and peers' values): its mean daily
    cost (USD, the same metric as ``year_costs``), the agent-steps decided on fallback values, the messages lost."""
    probe = MultiAgentMicrogrids({"train": False, "scenario": scenario})
    probe.reset(seed=0)
    n_steps, per_day = probe.plant.n_steps_in_year, probe.plant.profiles.steps_per_day
    probe.close()
    env = MultiAgentMicrogrids({"centralized": False, "train": False, "scenario": scenario, "max_episode_steps": n_steps - 1,
                                "impairment": {"loss": loss, "seed": 0}, "protocol": protocol})
    policies = make_policies(policy, env, seed=0)
    obs, _ = env.reset(seed=0, options={"start_step": 0})
    costs, fallback, k, t0 = np.zeros(n_steps - 1), 0.0, 0, time.perf_counter()
    while env.agents:
        obs, _, _, _, infos = env.step({a: policies[a].act(obs[a]) for a in env.agents})
        costs[k] = sum(i["fuel_cost_usd"] + i["energy_cost_usd"] + i["penalty_usd"] for i in infos.values())
        fallback += sum(i["fallback"] for i in infos.values())
        k += 1
    assert env._runner is not None and env._runner.impaired is not None
    lost = env._runner.impaired.stats.lost
    env.close()
    days = (n_steps - 1) // per_day
    return {"mean_daily_cost_usd": round(float(costs[: days * per_day].reshape(days, per_day).sum(axis=1).mean()), 2),
            "fallback_steps": int(fallback), "messages_lost": int(lost), "seconds": round(time.perf_counter() - t0, 1)}


def impairment_columns(scenario: str, bundle: Path | None) -> dict[str, dict[str, dict[str, float]]]:
    """Per policy (the rule, price only and with setpoint + consensus; the bundle when given), per loss (``"0%"``,
    ``"5%"``, ``"20%"``): ``impaired_year``."""
    import logging

    logging.disable(logging.WARNING)  # every fallback is logged: counted here instead
    runs: dict[str, tuple[str, list[str] | None]] = {"rule": ("rule", None),
                                                     "rule_setpoint_consensus": ("rule", ["setpoint", "consensus"])}
    if bundle is not None:
        runs["ppo_recipe"] = (str(bundle), None)
    columns: dict[str, dict[str, dict[str, float]]] = {}
    for name, (policy, protocol) in runs.items():
        columns[name] = {}
        for loss in LOSSES:
            try:
                columns[name][f"{loss:.0%}"] = row = impaired_year(policy, scenario, loss, protocol)
            except ConfigError as exc:  # e.g. a bundle of an older observation layout: said, not fatal
                columns[name] = {"skipped": str(exc)}  # type: ignore[dict-item]
                print("impaired", name, "skipped:", exc, flush=True)
                break
            print("impaired", name, f"{loss:.0%}", row, flush=True)
    logging.disable(logging.NOTSET)
    return columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training budget, agent steps")
    parser.add_argument("--scenario", default="ieee34_3x13")
    parser.add_argument("--bundle", type=Path, default=None, help="evaluate this bundle instead of training one")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-optimal", action="store_true", help="skip the optimum (it plans the year: minutes)")
    parser.add_argument("--impairment-only", action="store_true",
                        help="only the message-loss columns (rule; --bundle too when given), merged into --out")
    args = parser.parse_args()
    if args.impairment_only:
        report = json.loads(args.out.read_text()) if args.out.exists() else {}
        report["impairment"] = {"loss_seed": 0, "mode": "distributed, in memory, simulated time",
                                **impairment_columns(args.scenario, args.bundle)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        return
    results: dict[str, dict[str, float]] = {}
    daily: dict[str, np.ndarray] = {}
    optimum: dict[str, float] = {}
    for name in ("random", "idle", "rule", *(() if args.no_optimal else ("optimal",))):
        t0 = time.perf_counter()
        played: list[PlayedComparison] = []
        daily[name] = costs = year_costs(name, args.scenario, played=played if name == "optimal" else None)
        results[name] = {"mean_daily_cost_usd": round(float(costs.mean()), 2), "days": len(costs),
                         "seconds": round(time.perf_counter() - t0, 1)}
        print(name, results[name], flush=True)
    if "optimal" in daily:  # the year is one episode: the optimum may move energy (and cost) from one day to another
        optimum = {**played[0].as_dict(), "days_costing_more_than_rule": int((daily["optimal"] > daily["rule"]).sum())}
        print("optimal", played[0].describe(), flush=True)
    training: dict[str, object] = {}
    bundle = args.bundle
    if bundle is None:
        from heron_edge.training.sb3 import Recipe, train_sb3

        bundle = Path(tempfile.mkdtemp(prefix="heron-bench-")) / "policy"
        t0 = time.perf_counter()
        result = train_sb3(bundle, steps=args.steps, scenario=args.scenario, progress=False)
        training = {"budget_agent_steps": args.steps, "agent_steps": result.manifest.training.steps if result.manifest else 0,
                    "train_seconds": round(time.perf_counter() - t0, 1), "recipe": dataclasses.asdict(Recipe()),
                    "evaluations": [[s, round(c, 2)] for s, c in result.evaluations],
                    "held_out_rule_usd": round(result.rule_usd, 2), "held_out_best_usd": round(result.best_usd, 2)}
    else:  # not trained here: what its manifest says of its training (a bundle this build refuses is skipped)
        from heron_edge.policies.bundle import load_manifest

        try:
            spec = load_manifest(bundle).training
            training = {"trained_in_this_run": False, "library": f"{spec.library} {spec.library_version}",
                        "algorithm": spec.algorithm, "agent_steps": spec.steps, "notes": spec.notes}
        except ConfigError as exc:
            training = {"trained_in_this_run": False, "skipped": str(exc)}
            print("ppo_recipe skipped:", exc, flush=True)
    learned = float("nan")
    if "skipped" not in training:
        t0 = time.perf_counter()
        costs = year_costs(str(bundle), args.scenario, observation="local")
        results["ppo_recipe"] = {"mean_daily_cost_usd": round(float(costs.mean()), 2), "days": len(costs),
                                 "seconds": round(time.perf_counter() - t0, 1)}
        print("ppo_recipe", results["ppo_recipe"], flush=True)
        learned = results["ppo_recipe"]["mean_daily_cost_usd"]
    rule = results["rule"]["mean_daily_cost_usd"]
    report = {
        "scenario": args.scenario, "year": 2024, "metric": "mean daily cost, USD, three microgrids (lower is better)",
        "results": results, "optimal": optimum, "training": training,
        "impairment": {"loss_seed": 0, "mode": "distributed, in memory, simulated time",
                       **impairment_columns(args.scenario, None if "skipped" in training else bundle)},
        "ppo_vs_rule_usd_per_day": round(learned - rule, 2) if learned == learned else None,
        "beats_rule": bool(learned < rule) if learned == learned else None,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("ppo_vs_rule_usd_per_day", "beats_rule")}))


if __name__ == "__main__":
    main()
