"""Vector environment benchmark: env-steps per second of VectorMicrogrids at K environments against one
MultiAgentMicrogrids, in the same run, on one core.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_vector.py [--ks 1,16,64,256,1024] [--steps 48] [--repeats 3]
        [--big-ks 1,16,64] [--out benchmarks/results/vector.json]

Both run the default centralized config (global observations, 24-step episodes, random days of 2023) with
random actions drawn before the clock starts; resets are inside the timed loop (the vector environment's
autoreset, the single one's ``reset()`` after each episode). An env-step is one environment advancing one
step (K per vector step). For each K the vector loop and the single loop run ``--repeats`` times, interleaved,
and the best of each gives the ratio (the machine is shared: a burst of load elsewhere hits both alike).
The same comparison then runs on a 48-microgrid scenario (``sim.generate``: IEEE 34, 48 microgrids) at
``--big-ks``. The batched plant's solver statistics (fixed-point iterations, fallbacks) are reported too.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: one core, no BLAS threads

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_env import machine  # a sibling script

EPISODE = 24


class SingleLoop:
    """One MultiAgentMicrogrids over ``steps`` pre-drawn random steps (resets included)."""

    def __init__(self, config: dict[str, Any], steps: int, seed: int) -> None:
        from heron_edge.env import MultiAgentMicrogrids

        self.env = MultiAgentMicrogrids(config)
        self.seed = seed
        agents = self.env.possible_agents
        plan = np.random.default_rng(seed).uniform([-1, 0, 0, 0], [1, 1, 1, 1], (steps, len(agents), 4)).astype(np.float32)
        self.actions = [{a: row[j] for j, a in enumerate(agents)} for row in plan]
        self.run()  # warm-up

    def run(self) -> float:
        """Env-steps per second of one pass."""
        env = self.env
        env.reset(seed=self.seed)
        start = time.perf_counter()
        for action in self.actions:
            if not env.agents:
                env.reset()
            env.step(action)
        return len(self.actions) / (time.perf_counter() - start)


class VectorLoop:
    """VectorMicrogrids with ``k`` environments over ``steps`` pre-drawn random vector steps (autoresets included)."""

    def __init__(self, config: dict[str, Any], k: int, steps: int, seed: int) -> None:
        from heron_edge.vector import VectorMicrogrids

        self.vector = VectorMicrogrids(config, num_envs=k)
        self.k, self.seed = k, seed
        self.plan = np.random.default_rng(seed).uniform([-1, 0, 0, 0], [1, 1, 1, 1],
                                                        (steps, k, self.vector.n_agents, 4)).astype(np.float32)
        self.run()  # warm-up: the tap settings met are kept, as in a long run
        stats = self.vector.plant.stats
        self.start = (stats.fixed_point_iterations, stats.solves, stats.fallbacks)
        self.runs = 0

    def run(self) -> float:
        """Env-steps per second of one pass."""
        self.vector.reset(seed=self.seed)
        start = time.perf_counter()
        for actions in self.plan:
            self.vector.step(actions)
        self.runs = getattr(self, "runs", 0) + 1
        return self.k * len(self.plan) / (time.perf_counter() - start)

    def solver(self) -> dict[str, Any]:
        stats = self.vector.plant.stats
        iterations, solves, fallbacks = (stats.fixed_point_iterations - self.start[0], stats.solves - self.start[1],
                                         stats.fallbacks - self.start[2])
        return {"scenario_solves": solves, "fixed_point_iterations": iterations, "fallbacks": fallbacks,
                "tap_settings_built": stats.networks_built,
                "iterations_per_vector_step": round(iterations / max(self.runs * len(self.plan), 1), 1)}


def compare(label: str, config: dict[str, Any], ks: list[int], steps: int, repeats: int, seed: int) -> dict[str, Any]:
    """Per K: the vector loop and the single loop interleaved ``repeats`` times, the best of each, their ratio."""
    single = SingleLoop(config, steps, seed)
    rows, single_all = [], []
    for k in ks:
        vector = VectorLoop(config, k, steps, seed)
        vector_runs, single_runs = [], []
        for _ in range(repeats):  # interleaved: a burst of load elsewhere hits both alike
            single_runs.append(single.run())
            vector_runs.append(vector.run())
        best, reference = max(vector_runs), max(single_runs)
        single_all += single_runs
        rows.append({"k": k, "env_steps_per_s": round(best, 1), "single_env_steps_per_s": round(reference, 1),
                     "ratio_to_single": round(best / reference, 2), "all_runs": [round(r, 1) for r in vector_runs],
                     "single_all_runs": [round(r, 1) for r in single_runs], "solver": vector.solver()})
        vector.vector.close()
        print(f"{label}: K={k:5d} {best:10.1f} env-steps/s  ({best / reference:.2f}x one env at {reference:.1f})",
              flush=True)
    single.env.close()
    return {"single_env_steps_per_s_best": round(max(single_all), 1), "vector": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="1,16,64,256,1024", help="numbers of environments (default: %(default)s)")
    parser.add_argument("--big-ks", default="1,16,64", help="numbers of environments at 48 microgrids (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=48, help="vector steps per timed loop (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed loops per K; the best is kept (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vector.json")
    args = parser.parse_args(argv)
    from sim.generate import generate_scenario

    small = {"max_episode_steps": EPISODE, "scenario": "ieee34_3x13"}
    big_scenario = generate_scenario("ieee34", 48, seed=0)
    big = {"max_episode_steps": EPISODE, "scenario": big_scenario}
    result: dict[str, Any] = {
        "benchmark": "vector",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "episode_steps": EPISODE, "vector_steps_per_loop": args.steps, "repeats": args.repeats,
        "config": "centralized, global observations, random actions, train year",
        "ieee34_3x13": compare("ieee34_3x13", small, [int(k) for k in args.ks.split(",")], args.steps, args.repeats,
                               args.seed),
        "ieee34_48": {"microgrids": len(big_scenario.microgrids),
                      **compare("ieee34 x 48", big, [int(k) for k in args.big_ks.split(",")], max(args.steps // 2, 24),
                                max(args.repeats - 1, 1), args.seed)},
        "target": ">= 5x one env at K=256 (ieee34_3x13)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
