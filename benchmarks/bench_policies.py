"""Mean daily cost of random, idle, rule and the ``heron-edge train`` default recipe on the whole 2024 year.

The recipe (stable-baselines3 PPO, one policy shared by the three microgrids, ``local`` observations normalised
per rating, random initial state of charge, stored energy valued at the day's mean price at the end of each
training day) trains for ``--steps`` agent steps on days of 2023 (default: the ``train`` command's budget, stated
in the JSON with the wall time; it must stay under 30 minutes on 2 cores), is exported as a policy bundle and run
from that bundle, through onnxruntime, exactly as ``heron-edge simulate --policy DIR`` runs it. Every policy then
runs the 2024 year as one continuous episode (the batteries carry their charge from day to day, from the
scenario's state of charge on 1 January); a day's cost is fuel + energy bought net of sales + penalties, USD,
summed over the microgrids, and the mean over the year's 365 whole days is reported.
The recipe's target is to beat the rule. Writes benchmarks/results/policies.json.
Run: python benchmarks/bench_policies.py [--steps N] [--scenario NAME] [--bundle DIR (skip training)]
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
from heron_edge.policies import make_policies

warnings.filterwarnings("ignore")
OUT = Path(__file__).parent / "results" / "policies.json"


def year_costs(policy: str, scenario: str, *, observation: str = "global") -> np.ndarray:
    """Each 2024 day's cost (USD, all microgrids) with ``policy`` (a name or a bundle directory), the year run as one
    continuous episode from 1 January 00:00 (the batteries carry their charge from day to day: no day gets energy
    for free from a reset), the scenario's initial state of charge."""
    probe = MultiAgentMicrogrids({"train": False, "scenario": scenario})
    probe.reset(seed=0)
    n_steps, per_day = probe.plant.n_steps_in_year, probe.plant.profiles.steps_per_day
    probe.close()
    env = MultiAgentMicrogrids({"train": False, "scenario": scenario, "observation": observation,
                                "max_episode_steps": n_steps - 1})
    policies = make_policies(policy, env, seed=0)
    obs, _ = env.reset(seed=0, options={"start_step": 0})
    costs = np.zeros(n_steps - 1)
    k = 0
    while env.agents:
        obs, _, _, _, infos = env.step({a: policies[a].act(obs[a]) for a in env.agents})
        costs[k] = sum(i["fuel_cost_usd"] + i["energy_cost_usd"] + i["penalty_usd"] for i in infos.values())
        k += 1
    env.close()
    days = (n_steps - 1) // per_day  # whole days (the last hour of the year has no next step to forecast)
    return costs[: days * per_day].reshape(days, per_day).sum(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training budget, agent steps")
    parser.add_argument("--scenario", default="ieee34_3x13")
    parser.add_argument("--bundle", type=Path, default=None, help="evaluate this bundle instead of training one")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    for name in ("random", "idle", "rule"):
        t0 = time.perf_counter()
        costs = year_costs(name, args.scenario)
        results[name] = {"mean_daily_cost_usd": round(float(costs.mean()), 2), "days": len(costs),
                         "seconds": round(time.perf_counter() - t0, 1)}
        print(name, results[name], flush=True)
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
    t0 = time.perf_counter()
    costs = year_costs(str(bundle), args.scenario, observation="local")
    results["ppo_recipe"] = {"mean_daily_cost_usd": round(float(costs.mean()), 2), "days": len(costs),
                             "seconds": round(time.perf_counter() - t0, 1)}
    print("ppo_recipe", results["ppo_recipe"], flush=True)
    rule = results["rule"]["mean_daily_cost_usd"]
    learned = results["ppo_recipe"]["mean_daily_cost_usd"]
    report = {
        "scenario": args.scenario, "year": 2024, "metric": "mean daily cost, USD, three microgrids (lower is better)",
        "results": results, "training": training,
        "ppo_vs_rule_usd_per_day": round(learned - rule, 2), "beats_rule": bool(learned < rule),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("ppo_vs_rule_usd_per_day", "beats_rule")}))


if __name__ == "__main__":
    main()
