"""Environment benchmark: steps per second of the centralized MultiAgentMicrogrids against a runpp-per-step loop.

    python benchmarks/bench_env.py [--episodes 25] [--repeats 7] [--reference-steps 96] [--profile] [--out benchmarks/results/env.json]

Measured in one run on the ``ieee34_3x13`` scenario, one-day (24-step) episodes, random actions:
* env, pre-sampled: the actions are drawn before the clock starts (seeded), so only ``reset`` and
  ``step`` are timed (resets included, one per 24 steps);
* env, with sampling: the same loop drawing ``action_space(agent).sample()`` inside the timed loop;
* reference: for the same steps, the same injections the plant gave its fast solver (loads, static
  generators, storages, recorded in an untimed replay of the same seed and actions) are written into
  the scenario's pandapower network and ``pandapower.runpp`` is called (numba on, pandapower's
  default options), then the bus voltages are read. Only the power flow is timed here, not costs
  or observations, so the ratio is conservative.
Each loop runs ``--repeats`` times and the best time is kept (the machine may be shared).
Agreement: max |vm_pu(fast) - vm_pu(runpp)| over every bus of those steps.
``--profile`` adds a cProfile of the pre-sampled env loop (top functions by own time) to the JSON.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: no BLAS threads fighting over cores

import argparse
import cProfile
import datetime
import json
import platform
import pstats
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

SCENARIO = "ieee34_3x13"
STEPS_PER_EPISODE = 24


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        **{pkg: version(pkg) for pkg in ("numpy", "pandapower", "lightsim2grid", "numba", "pettingzoo")},
    }


def make_env() -> Any:
    from heron_edge.env import MultiAgentMicrogrids

    return MultiAgentMicrogrids({"centralized": True, "max_episode_steps": STEPS_PER_EPISODE, "scenario": SCENARIO})


def presample(env: Any, episodes: int, seed: int) -> list[list[dict[str, np.ndarray]]]:
    """Random actions for every step of every episode, from the action spaces seeded with ``seed``."""
    for i, agent in enumerate(env.possible_agents):
        env.action_space(agent).seed(seed + i)
    return [[{a: env.action_space(a).sample() for a in env.possible_agents} for _ in range(STEPS_PER_EPISODE)]
            for _ in range(episodes)]


def run_presampled(env: Any, actions: list[list[dict[str, np.ndarray]]], seed: int) -> int:
    """The timed loop: reset, then step through the pre-sampled actions; returns the number of steps."""
    steps = 0
    env.reset(seed=seed)
    for episode, plan in enumerate(actions):
        if episode:
            env.reset()
        for action in plan:
            env.step(action)
        steps += len(plan)
    return steps


def run_sampling(env: Any, episodes: int, seed: int) -> int:
    """The timed loop drawing each action inside it."""
    for i, agent in enumerate(env.possible_agents):
        env.action_space(agent).seed(seed + i)
    env.reset(seed=seed)
    steps = 0
    for episode in range(episodes):
        if episode:
            env.reset()
        while env.agents:
            env.step({a: env.action_space(a).sample() for a in env.agents})
            steps += 1
    return steps


def record_injections(env: Any, actions: list[list[dict[str, np.ndarray]]], seed: int,
                      n_steps: int) -> list[tuple[np.ndarray, ...]]:
    """Replay (untimed) the first ``n_steps`` env steps, keeping each step's injections, regulator taps and resulting
    voltages (of the step's last solve: after the regulators moved, the state the step reports)."""
    pf = env.plant.powerflow
    solve = pf.solve
    calls: list[tuple[np.ndarray, ...]] = []
    in_step = [False]  # resets also solve (at idle setpoints): keep only the solves made inside step()
    last: list[tuple[np.ndarray, ...]] = []

    def recording(load_p: np.ndarray, load_q: np.ndarray, sgen_p: np.ndarray, storage_p: np.ndarray) -> bool:
        converged = solve(load_p, load_q, sgen_p, storage_p)
        if in_step[0]:
            last[:] = [(load_p.copy(), load_q.copy(), sgen_p.copy(), storage_p.copy(), pf.vm_pu.copy(), np.array(converged),
                        env.plant.regulator_taps())]
        return converged

    pf.solve = recording
    try:
        env.reset(seed=seed)
        for episode, plan in enumerate(actions):
            if episode:
                env.reset()
            for action in plan:
                in_step[0] = True
                env.step(action)
                in_step[0] = False
                calls += last
                if len(calls) >= n_steps:
                    return calls[:n_steps]
    finally:
        del pf.solve  # back to the class method
    return calls


REFERENCE_OPTIONS: dict[str, Any] = {"numba": True}  # pandapower's defaults otherwise (tolerance_mva 1e-8, init "auto")


def run_reference(net: Any, injections: list[tuple[np.ndarray, ...]], repeats: int,
                  regulators: list[int]) -> tuple[float, np.ndarray, bool]:
    """Timed: write each step's injections (and the ``regulators``' taps) into ``net`` and call runpp, ``repeats``
    times over the steps.

    Returns (best seconds for all the steps, vm_pu per step, whether runpp used numba).
    """
    import pandapower as pp

    vm = np.empty((len(injections), len(net.bus)))
    best = float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(net, **REFERENCE_OPTIONS)  # warm-up: numba compiles here
        for _ in range(repeats):
            start = time.perf_counter()
            for k, (load_p, load_q, sgen_p, storage_p, _, _, taps) in enumerate(injections):
                net.trafo.loc[regulators, "tap_pos"] = taps
                net.load["p_mw"] = load_p
                net.load["q_mvar"] = load_q
                net.sgen["p_mw"] = sgen_p
                net.storage["p_mw"] = storage_p
                pp.runpp(net, **REFERENCE_OPTIONS)
                vm[k] = net.res_bus.vm_pu.to_numpy()
            best = min(best, time.perf_counter() - start)
    return best, vm, bool(net._options["numba"])


def profile_env(env: Any, actions: list[list[dict[str, np.ndarray]]], seed: int, top: int = 25) -> list[dict[str, Any]]:
    """cProfile of the pre-sampled loop: the ``top`` functions by own time, with per-step microseconds."""
    profiler = cProfile.Profile()
    profiler.enable()
    steps = run_presampled(env, actions, seed)
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = []
    for (filename, line, name), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(filename).name}:{line}({name})", "calls_per_step": round(ncalls / steps, 2),
                     "own_us_per_step": round(tottime / steps * 1e6, 2), "cumulative_us_per_step": round(cumtime / steps * 1e6, 2)})
    rows.sort(key=lambda r: r["own_us_per_step"], reverse=True)
    return rows[:top]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=25, help="24-step episodes per env loop (default: %(default)s)")
    parser.add_argument("--reference-steps", type=int, default=96, help="steps of the runpp loop (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=7, help="each loop is timed this many times; the best is kept")
    parser.add_argument("--profile", action="store_true", help="add a cProfile of the env loop to the JSON")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "env.json")
    args = parser.parse_args(argv)

    env = make_env()
    actions = presample(env, args.episodes, args.seed)
    run_presampled(env, actions[:2], args.seed)  # warm-up
    presampled_s, sampling_s = [], []
    for _ in range(args.repeats):  # interleaved, so a burst of load elsewhere hits both alike
        start = time.perf_counter()
        steps = run_presampled(env, actions, args.seed)
        presampled_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        steps_sampling = run_sampling(env, args.episodes, args.seed)
        sampling_s.append(time.perf_counter() - start)
    env_sps = steps / min(presampled_s)
    env_sampling_sps = steps_sampling / min(sampling_s)

    n_ref = min(args.reference_steps, steps)
    injections = record_injections(env, actions, args.seed, n_ref)
    ref_s, ref_vm, numba_used = run_reference(env.plant.net, injections, max(1, args.repeats // 2),
                                              [r.trafo for r in env.plant.built.regulators])
    ref_sps = n_ref / ref_s
    fast_vm = np.stack([c[4] for c in injections])
    converged = np.array([bool(c[5]) for c in injections])
    vm_diff = float(np.abs(fast_vm[converged] - ref_vm[converged]).max())

    result: dict[str, Any] = {
        "benchmark": "env",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "scenario": SCENARIO,
        "buses": len(env.plant.net.bus),
        "episode_steps": STEPS_PER_EPISODE,
        "env": {
            "steps": steps, "repeats": args.repeats,
            "presampled_all_runs_steps_per_s": [round(steps / t, 1) for t in presampled_s],
            "with_sampling_all_runs_steps_per_s": [round(steps_sampling / t, 1) for t in sampling_s],
            "presampled_steps_per_s": round(env_sps, 1), "presampled_us_per_step": round(1e6 / env_sps, 1),
            "with_sampling_steps_per_s": round(env_sampling_sps, 1), "with_sampling_us_per_step": round(1e6 / env_sampling_sps, 1),
        },
        "reference_runpp": {
            "steps": n_ref, "repeats": max(1, args.repeats // 2), "steps_per_s": round(ref_sps, 2), "ms_per_step": round(1e3 / ref_sps, 3),
            "numba": numba_used, "options": f"runpp(net, {', '.join(f'{k}={v!r}' for k, v in REFERENCE_OPTIONS.items())}), "
                                            "otherwise pandapower defaults (tolerance_mva 1e-8)",
        },
        "ratio_presampled": round(env_sps / ref_sps, 1),
        "ratio_with_sampling": round(env_sampling_sps / ref_sps, 1),
        "target_ratio": 100,
        "agreement": {"steps_compared": int(converged.sum()), "non_converged_fast": int((~converged).sum()),
                      "max_abs_vm_diff_pu": vm_diff},
    }
    if args.profile:
        result["profile_presampled"] = profile_env(env, actions, args.seed)
    env.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: result[k] for k in ("env", "reference_runpp", "ratio_presampled", "ratio_with_sampling", "agreement")}
    print(json.dumps(summary, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
