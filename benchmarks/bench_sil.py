"""SIL in lock-step: steps per second and the per-cycle time split of the agents (Modbus, MQTT, decision).

Runs the real rig (`heron-edge sil` machinery: Mosquitto on loopback, the plant serving emulated
SunSpec devices and site meters, the operator and one agent process per microgrid) for a few days
of ieee34_3x13 with the rule policy, and reports:
- steps/s from the plant's mean step time (announce -> every done -> plant stepped) and from the
  wall time of the whole run (which includes the agents' first connects);
- per agent: mean cycle time split into Modbus requests, the decision (policy), and messaging
  (MQTT publishes plus the wait for the step's price and the peers' telemetry).
Writes benchmarks/results/sil.json (with --protocol / --secure: sil-<protocols>[-secure].json).
Run: python benchmarks/bench_sil.py [--days 3] [--protocol NAME ...] [--secure]
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from heron_edge.commands.sil import run_rig
from heron_edge.runtime.sil import compare, load_trajectory, settle, tolerances

OUT = Path(__file__).parent / "results" / "sil.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocol", action="append", default=None, metavar="NAME", help="as in heron-edge sil")
    parser.add_argument("--secure", action="store_true", help="as in heron-edge sil: TLS, users, ACLs, signed commands")
    cli = parser.parse_args()
    from heron_edge.commands.simulate import simulate
    from sim.scenario import load_scenario

    scenario = load_scenario("ieee34_3x13")
    central = simulate(scenario, days=cli.days, policy="rule", seed=cli.seed, progress=False, protocol=cli.protocol)
    per_day = scenario.steps_per_day
    starts = [int(central.columns["step_in_year"][d * per_day, 0]) for d in range(cli.days)]
    workdir = Path(tempfile.mkdtemp(prefix="heron-bench-sil-"))
    args = argparse.Namespace(scenario="ieee34_3x13", broker=None, site="bench", mode="lockstep", period_s=1.0,
                              test_year=False, timeout_s=600.0, protocol=cli.protocol, secure=cli.secure)
    started = time.perf_counter()
    stats = run_rig(args, scenario, starts, workdir)
    wall = time.perf_counter() - started
    journals = {mg.name: workdir / f"journal-{mg.name}.jsonl" for mg in scenario.microgrids}
    sil = settle(load_trajectory(workdir / "trajectory.npz"), scenario, cli.protocol, None, workdir / "ledger.jsonl",
                 journals)
    comparison = compare(sil, central, tolerances(cli.protocol))
    steps = int(stats["plant"]["steps"])  # type: ignore[index]
    step_ms = float(stats["plant"]["step_ms_mean"])  # type: ignore[index]
    result = {
        "scenario": "ieee34_3x13", "agents": len(scenario.microgrids), "days": cli.days, "steps": steps,
        "protocols": cli.protocol or [], "secure": cli.secure,
        "steps_per_s_lockstep": round(1e3 / step_ms, 2), "plant_step_ms_mean": round(step_ms, 3),
        "steps_per_s_wall": round(steps / float(stats["run_s"]), 2), "run_s": stats["run_s"],  # type: ignore[arg-type]
        "startup_s": stats["startup_s"], "total_wall_s": round(wall, 2),
        "agent_cycle_split_ms": {name: {k: round(v, 3) for k, v in a["timing"].items()}  # type: ignore[union-attr]
                                 for name, a in stats["agents"].items()},  # type: ignore[union-attr]
        "matches_centralized": comparison.ok,
        "max_abs_diff": {k: float(f"{v:.3e}") for k, v in comparison.max_abs.items()},
        "machine": {"cpus": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(), "platform": platform.platform()},
    }
    variant = "-".join([*(cli.protocol or []), *(["secure"] if cli.secure else [])])
    out = OUT.with_name(f"sil-{variant}.json") if variant else OUT  # the plain run keeps sil.json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
