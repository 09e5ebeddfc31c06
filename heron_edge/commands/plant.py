"""Serve the simulator as hardware: every microgrid's devices as emulated Modbus devices, advanced on an MQTT clock."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``heron-edge plant``."""
    parser.add_argument("--scenario", default="ieee34_3x13", metavar="NAME_OR_TOML", help="(default: %(default)s)")
    parser.add_argument("--broker", required=True, metavar="URL", help="mqtt://host:port")
    parser.add_argument("--site", default="sil", help="topic namespace (default: %(default)s)")
    parser.add_argument("--operator-id", default="system_operator", help="waited for in lock-step (default: %(default)s)")
    parser.add_argument("--days", type=int, default=1, help="episodes of one day (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="picks the days as the environment does (default: %(default)s)")
    parser.add_argument("--test-year", action="store_true", help="walk 2024 day by day instead of random days of 2023")
    parser.add_argument("--start-steps", default=None, metavar="K,K,...",
                        help="first step of the year of each episode (overrides --days/--seed)")
    parser.add_argument("--mode", choices=("lockstep", "realtime"), default="lockstep", help="(default: %(default)s)")
    parser.add_argument("--period", type=float, default=1.0, metavar="S", help="real time: seconds per step (default: %(default)s)")
    parser.add_argument("--endpoints", type=Path, default=None, metavar="FILE",
                        help="write the devices' host/port per microgrid and role here (JSON) once listening")
    parser.add_argument("--trajectory", type=Path, default=None, metavar="FILE.npz", help="write the trajectory here at the end")
    parser.add_argument("--result", type=Path, default=None, metavar="FILE.json",
                        help="once the last step ran: write the trajectory, then this (counters, finish time); "
                             "its appearance means the run is complete")
    parser.add_argument("--hold", action="store_true",
                        help="after the last step keep serving the devices until SIGTERM / SIGINT, so a supervisor "
                             "can stop the agents before their devices vanish (else the plant exits at the end)")
    parser.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    from heron_edge.runtime.secure import add_broker_arguments

    add_broker_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Serve and run the episodes; 0 when done, 2 on bad input."""
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from sim.scenario import load_scenario

    from heron_edge.runtime.sil import episode_starts

    try:
        scenario = load_scenario(args.scenario)
    except (FileNotFoundError, ValueError) as exc:
        print(f"heron-edge plant: error: {exc}", file=sys.stderr)
        return 2
    steps_per_day = scenario.steps_per_day
    if args.start_steps:
        starts = [int(k) for k in args.start_steps.split(",")]
    else:
        starts = episode_starts(scenario, days=args.days, seed=args.seed, test_year=args.test_year)
    year = 2024 if args.test_year else 2023
    from heron_edge.errors import ConfigError

    try:
        asyncio.run(_main(args, scenario, starts, steps_per_day, year))
    except ConfigError as exc:
        print(f"heron-edge plant: error: {exc}", file=sys.stderr)
        return 2
    return 0


async def _main(args: argparse.Namespace, scenario: object, starts: list[int], steps_per_day: int, year: int) -> None:
    from sim.plant import Plant

    from heron_edge.runtime.secure import broker_from_args
    from heron_edge.runtime.sil_plant import PLANT_ID, PlantRuntime

    plant = Plant(scenario)  # type: ignore[arg-type]
    broker = broker_from_args(args, client_id=f"heron-{args.site}-{PLANT_ID}", reconnect_max_delay_s=1.0)
    runtime = PlantRuntime(plant, broker, site=args.site, participants=[*plant.names, args.operator_id],
                           start_steps=starts, steps_per_episode=steps_per_day, year=year, mode=args.mode,
                           period_s=args.period)
    await runtime.start()
    if args.endpoints is not None:
        runtime.write_endpoints(args.endpoints)
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(runtime.run())
    stop = asyncio.Event()

    def on_signal() -> None:
        stop.set()
        task.cancel()  # no-op once the run is over (then the hold below ends)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    saved = False
    try:
        with contextlib.suppress(asyncio.CancelledError):  # SIGTERM / SIGINT before the last step
            await task
        if runtime.complete:  # the trajectory first: the result file's appearance says both are there
            if args.trajectory is not None:
                runtime.save_trajectory(args.trajectory)
                saved = True
            if args.result is not None:
                runtime.result().write(args.result)
            if args.hold:  # the devices stay up until the supervisor has stopped the agents and says so
                await broker.close()
                await stop.wait()
    finally:
        await runtime.stop()
        await broker.close()
        if args.trajectory is not None and runtime.records and not saved:
            runtime.save_trajectory(args.trajectory)
        print(json.dumps({"plant": runtime.result().stats}))
