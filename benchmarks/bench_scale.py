"""How the environment and the consensus protocol scale with the number of microgrids N, measured in one run.

1. Step time vs N (3, 12, 48, 96, 300, 1000) on scenarios from ``heron-edge scenario --feeder ieee34``
   (sim.generate), random actions: centralized | distributed over InMemoryBroker | distributed over one
   Mosquitto (started here on loopback, one shared connection). Each mode's steps are timed one by one after
   a warm-up step; the median is reported. A mode whose first steps cost more than ``--budget-s`` in total at
   some N is not run at larger N (said in ``skipped``).
2. Consensus vs N: rounds to the tolerance (1e-6) on the default expander graph and on the ring, computed in
   lock step (the exact rounds the distributed nodes make, no messages) up to N = 1000; and the wall time of
   one distributed average over InMemoryBroker and over one Mosquitto connection (time per round).
3. Fitted growth of each step-time series: least squares ``a + b N + c N^2`` (us) and the log-log slope
   between the two largest N measured (1 = linear).

Writes benchmarks/results/scale.json.
Run: python benchmarks/bench_scale.py [--sizes 3,12,48,96,300,1000] [--steps 12] [--budget-s 60]
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import asyncio
import json
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from heron_edge import MultiAgentMicrogrids
from heron_edge.brokers import InMemoryBroker, MqttBroker
from heron_edge.protocols import ConsensusProtocol, Link
from heron_edge.runtime.mosquitto import running_mosquitto
from sim.generate import generate_scenario

warnings.filterwarnings("ignore")
OUT = Path(__file__).parent / "results" / "scale.json"
MODES = ("centralized", "distributed_memory", "distributed_mosquitto")


def step_times(env: MultiAgentMicrogrids, steps: int, seed: int) -> tuple[list[float], float]:
    """(seconds of each env.step after one warm-up step, seconds of reset) with random actions."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    env.reset(seed=seed)
    reset_s = time.perf_counter() - t0
    space = env.action_space(env.possible_agents[0])
    times = []
    for k in range(steps + 1):
        if not env.agents:
            env.reset()
        actions = {a: rng.uniform(space.low, space.high).astype(np.float32) for a in env.agents}
        t = time.perf_counter()
        env.step(actions)
        if k:
            times.append(time.perf_counter() - t)
    return times, reset_s


def fit(ns: list[int], us: list[float]) -> dict[str, float]:
    """Least-squares a + b N + c N^2 (us; c only with >= 4 points) and the log-log slope of the last two points."""
    if len(ns) < 2:
        return {}
    x = np.asarray(ns, dtype=float)
    y = np.asarray(us, dtype=float)
    out: dict[str, float] = {}
    if len(ns) >= 4:
        a, b, c = np.linalg.lstsq(np.stack([np.ones_like(x), x, x * x], axis=1), y, rcond=None)[0]
        out.update({"a_us": round(float(a), 1), "b_us_per_N": round(float(b), 3), "c_us_per_N2": round(float(c), 5)})
    a1, b1 = np.linalg.lstsq(np.stack([np.ones_like(x), x], axis=1), y, rcond=None)[0]
    out.update({"linear_a_us": round(float(a1), 1), "linear_b_us_per_N": round(float(b1), 3),
                "loglog_slope_last_two": round(float(np.log(y[-1] / y[-2]) / np.log(x[-1] / x[-2])), 3)})
    return out


async def distributed_average(proto: ConsensusProtocol, broker: Any, values: np.ndarray) -> tuple[float, int]:
    """(seconds, rounds) of one distributed average with every node's Link on ``broker``."""
    site = f"bench{time.monotonic_ns() % 10**9}"
    links = {a: Link(broker, site=site, agent_id=a, timeout_s=30.0) for a in proto.config.nodes}
    for link in links.values():
        await proto.prepare(link)
    t = time.perf_counter()
    results = await asyncio.gather(*(proto.node(links[a], values[k]) for k, a in enumerate(proto.config.nodes)))
    elapsed = time.perf_counter() - t
    if not all(r.converged for r in results):
        raise RuntimeError(f"distributed consensus did not converge at N={len(values)}")
    return elapsed, results[0].rounds


async def consensus_over(url: str | None, n: int) -> tuple[float, int]:
    proto = ConsensusProtocol({"nodes": tuple(f"mg{k + 1}" for k in range(n))})
    values = np.random.default_rng(n).uniform(0.0, 1.0, n)
    if url is None:
        async with InMemoryBroker() as memory:
            return await distributed_average(proto, memory, values)
    async with MqttBroker(url, request_timeout_s=30.0) as mqtt:
        return await distributed_average(proto, mqtt, values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="3,12,48,96,300,1000")
    parser.add_argument("--steps", type=int, default=12,
                        help="timed steps per mode and N (after one warm-up); small N get up to 60")
    parser.add_argument("--budget-s", type=float, default=60.0,
                        help="a mode whose steps at some N took longer than this in total is not run at larger N")
    parser.add_argument("--consensus-budget-s", type=float, default=60.0)
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    steps: dict[str, dict[int, dict[str, float]]] = {m: {} for m in MODES}
    skipped: dict[str, str] = {}
    consensus: dict[int, dict[str, Any]] = {}
    with running_mosquitto() as mosquitto:
        for n in sizes:
            scenario = generate_scenario("ieee34", n, seed=0)
            for mode in MODES:
                if mode in skipped:
                    continue
                cfg: dict[str, Any] = {"centralized": mode == "centralized", "scenario": scenario}
                broker: Any = None
                if mode == "distributed_memory":
                    broker = cfg["message_broker"] = InMemoryBroker()
                elif mode == "distributed_mosquitto":
                    broker = cfg["message_broker"] = MqttBroker(mosquitto.url, request_timeout_s=60.0)
                    cfg["step_timeout_s"] = 120.0
                t0 = time.perf_counter()
                env = MultiAgentMicrogrids(cfg)
                build_s = time.perf_counter() - t0
                times, reset_s = step_times(env, max(args.steps, min(60, 600 // n)), seed=n)
                published = getattr(broker, "published", None)
                env.close()
                row = {"median_ms": round(statistics.median(times) * 1e3, 3), "min_ms": round(min(times) * 1e3, 3),
                       "steps": len(times), "build_s": round(build_s, 2), "reset_s": round(reset_s, 3)}
                if published is not None:
                    row["messages_per_step"] = round(published / (len(times) + 2), 1)
                steps[mode][n] = row
                print(f"N={n:5d} {mode:22s} {row}", flush=True)
                if sum(times) > args.budget_s and n != sizes[-1]:
                    skipped[mode] = f"not run beyond N={n}: {len(times)} steps took {sum(times):.0f} s"
            # consensus: lock-step rounds (exact) on the expander and, while affordable, the ring
            row_c: dict[str, Any] = {}
            expander = ConsensusProtocol({"nodes": tuple(f"mg{k + 1}" for k in range(n))})
            values = np.random.default_rng(n).uniform(0.0, 1.0, n)
            t = time.perf_counter()
            res = expander.average_lockstep(values)
            row_c["expander"] = {"rounds": res[0].rounds, "needed_rounds_bound": expander.needed_rounds,
                                 "degree_max": max(len(v) for v in expander.graph.neighbours.values()),
                                 "diameter": expander.graph.diameter,
                                 "spectral_gap": round(1.0 - expander.graph.lambda2, 4),
                                 "max_error": float(np.max(np.abs(np.array([r.value[0] for r in res]) - values.mean()))),
                                 "lockstep_s": round(time.perf_counter() - t, 3)}
            if n <= 300:
                ring = ConsensusProtocol({"nodes": tuple(f"mg{k + 1}" for k in range(n)), "topology": "ring"})
                row_c["ring"] = {"rounds": ring.average_lockstep(values)[0].rounds,
                                 "spectral_gap": round(1.0 - ring.graph.lambda2, 6)}
            for name, url in (("memory", None), ("mosquitto", mosquitto.url)):
                key = f"consensus_{name}"
                if key in skipped:
                    continue
                elapsed, rounds = asyncio.run(consensus_over(url, n))
                row_c[name] = {"seconds": round(elapsed, 3), "rounds": rounds,
                               "ms_per_round": round(elapsed / rounds * 1e3, 3)}
                if elapsed > args.consensus_budget_s and n != sizes[-1]:
                    skipped[key] = f"not run beyond N={n}: one average took {elapsed:.0f} s"
            consensus[n] = row_c
            print(f"N={n:5d} consensus {row_c}", flush=True)
    growth = {mode: fit(sorted(rows), [rows[k]["median_ms"] * 1e3 for k in sorted(rows)]) for mode, rows in steps.items()}
    ratio = {n: round(steps["distributed_memory"][n]["median_ms"] / steps["centralized"][n]["median_ms"], 2)
             for n in steps["distributed_memory"] if n in steps["centralized"]}
    result = {
        "benchmark": "step time and consensus rounds vs number of microgrids (generated ieee34 scenarios)",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "steps_per_point": args.steps, "step_ms": steps, "growth": growth,
        "ratio_memory_to_centralized": ratio, "consensus": consensus, "skipped": skipped,
        "targets": {"ratio_memory_to_centralized_at_96": 3.0, "mosquitto_ms_at_300": 100.0,
                    "consensus_rounds_at_1000": 50},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("growth", "ratio_memory_to_centralized", "skipped")}, indent=2))


if __name__ == "__main__":
    main()
