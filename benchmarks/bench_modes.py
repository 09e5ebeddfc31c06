"""Steps per second of the environment in its three modes on ieee34_3x13, measured in one run.

centralized | distributed over InMemoryBroker | distributed over a real Mosquitto (started here on
loopback), with messages and bytes per step. Rounds interleave the modes so machine noise hits
all of them alike; the median and the best round are reported (noise only ever slows a round down,
so the best is what the code can do, as timeit reports its minimum), and ratios are medians of
per-round ratios. Writes benchmarks/results/modes.json.
Run: python benchmarks/bench_modes.py [--rounds 15] [--episodes 10]
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

from heron_edge import MultiAgentMicrogrids
from heron_edge.brokers import InMemoryBroker, MqttBroker
from heron_edge.runtime.mosquitto import running_mosquitto

warnings.filterwarnings("ignore")
OUT = Path(__file__).parent / "results" / "modes.json"


def steps_per_second(env: MultiAgentMicrogrids, actions: list[dict], episodes: int) -> tuple[float, int]:
    """(steps per second, number of env.reset + env.step calls made, which each exchange one step of messages)."""
    env.reset(seed=0)
    steps = 0
    start = time.perf_counter()
    for _ in range(episodes):
        env.reset()
        k = 0
        while env.agents:
            env.step(actions[k])
            k += 1
            steps += 1
    return steps / (time.perf_counter() - start), steps + episodes + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=10, help="24-step episodes per mode per round")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with running_mosquitto() as mosquitto:
        counters = {"memory": InMemoryBroker(), "mosquitto": MqttBroker(mosquitto.url)}  # both count what they publish
        envs = {
            "centralized": MultiAgentMicrogrids({"centralized": True}),
            "distributed_memory": MultiAgentMicrogrids({"centralized": False, "message_broker": counters["memory"]}),
            "distributed_mosquitto": MultiAgentMicrogrids({"centralized": False, "message_broker": counters["mosquitto"]}),
        }
        space = envs["centralized"].action_space("mg1")
        actions = [{a: rng.uniform(space.low, space.high).astype(np.float32) for a in envs["centralized"].possible_agents}
                   for _ in range(24)]
        rates: dict[str, list[float]] = {name: [] for name in envs}
        calls = 0  # the same for every mode
        for _ in range(args.rounds):
            for name, env in envs.items():
                rate, calls_made = steps_per_second(env, actions, args.episodes)
                rates[name].append(rate)
            calls += calls_made
        per_step = {key: {"messages": b.published / calls, "bytes": b.published_bytes / calls} for key, b in counters.items()}
        for env in envs.values():
            env.close()
    median = {name: statistics.median(values) for name, values in rates.items()}
    result = {
        "benchmark": "environment steps per second by mode, ieee34_3x13, 3 microgrids, random actions",
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "rounds": args.rounds, "episodes_per_round": args.episodes,
        "steps_per_second_median": median, "steps_per_second_best": {name: max(values) for name, values in rates.items()},
        "steps_per_second_all_rounds": rates,
        # paired: each round's modes ran back to back, so the per-round ratio cancels most machine noise
        "ratio_memory_to_centralized": statistics.median(
            m / c for m, c in zip(rates["distributed_memory"], rates["centralized"], strict=True)),
        "ratio_mosquitto_to_centralized": statistics.median(
            m / c for m, c in zip(rates["distributed_mosquitto"], rates["centralized"], strict=True)),
        "per_step_distributed_memory": per_step["memory"], "per_step_distributed_mosquitto": per_step["mosquitto"],
        "targets": {"distributed_mosquitto_steps_per_second": 500, "ratio_memory_to_centralized": 0.5},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("steps_per_second_median", "steps_per_second_best", "ratio_memory_to_centralized",
                                             "per_step_distributed_memory", "per_step_distributed_mosquitto")}, indent=2))


if __name__ == "__main__":
    main()
