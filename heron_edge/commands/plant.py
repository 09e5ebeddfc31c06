"""Serve the simulator as hardware: every microgrid's devices as emulated Modbus devices, advanced on an MQTT clock."""
from __future__ import annotations

import argparse
import asyncio
import calendar
import contextlib
import json
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from heron_edge.commands import (
    add_log_level,
    add_scenario,
    non_negative_int,
    output_file,
    positive_int,
    seconds,
    setup_logging,
)
from heron_edge.errors import ConfigError, ScenarioError

if TYPE_CHECKING:
    from sim.plant import Plant
    from sim.scenario import Scenario


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``heron-edge plant``."""
    add_scenario(parser)
    parser.add_argument("--broker", required=True, metavar="URL", help="mqtt://host:port or mqtts://host:port")
    parser.add_argument("--site", default="sil", metavar="NAME", help="topic namespace (default: %(default)s)")
    parser.add_argument("--operator-id", default="system_operator", metavar="NAME",
                        help="the operator, waited for in lock-step (default: %(default)s)")
    parser.add_argument("--days", type=positive_int, default=1, metavar="N", help="one-day episodes (default: %(default)s)")
    parser.add_argument("--seed", type=non_negative_int, default=0, metavar="N",
                        help="picks the days, as in simulate (default: %(default)s)")
    parser.add_argument("--test-year", action="store_true", help="walk 2024 day by day instead of random days of 2023")
    parser.add_argument("--start-steps", type=_steps, default=None, metavar="N,N,...",
                        help="the first step of the year of each episode (instead of --days and --seed)")
    parser.add_argument("--mode", choices=("lockstep", "realtime"), default="lockstep", help="(default: %(default)s)")
    parser.add_argument("--period-s", type=seconds(), default=1.0, metavar="S",
                        help="realtime mode: seconds per step (default: %(default)s)")
    parser.add_argument("--endpoints", type=Path, default=None, metavar="FILE",
                        help="write the devices' host/port per microgrid and role here (JSON) once listening")
    parser.add_argument("--trajectory", type=Path, default=None, metavar="FILE",
                        help="write the trajectory here (.npz) at the end")
    parser.add_argument("--result", type=Path, default=None, metavar="FILE",
                        help="once the last step ran: write the trajectory, then this (JSON: counters, finish time); "
                             "its appearance means the run is complete")
    parser.add_argument("--device-profile", choices=("ieee1547", "legacy", "mixed"), default="ieee1547",
                        help="the SunSpec models every emulated device exposes: ieee1547 (7xx), legacy (1xx as SMA, "
                             "Fronius, SolarEdge ship them) or mixed (alternating per microgrid, legacy first) "
                             "(default: %(default)s)")
    parser.add_argument("--hold", action="store_true",
                        help="after the last step keep serving the devices until SIGTERM / SIGINT, so a supervisor "
                             "can stop the agents before their devices vanish (else the plant exits at the end)")
    from heron_edge.runtime.secure import add_broker_arguments

    add_broker_arguments(parser)
    add_log_level(parser, default="WARNING")


def _steps(text: str) -> list[int]:
    """argparse type of ``--start-steps``: comma-separated steps of the year, each 0 or more."""
    try:
        steps = [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated steps of the year expected, not {text!r}") from None
    if any(k < 0 for k in steps):
        raise argparse.ArgumentTypeError(f"steps of the year are 0 or more, not {text!r}")
    return steps


def run(args: argparse.Namespace) -> int:
    """Serve and run the episodes; 0 when done. A bad scenario or option raises a ConfigError (exit 2), an
    unreachable broker a BrokerError (exit 1): ``heron_edge.cli`` says them in one line."""
    from heron_edge.commands.simulate import _load_scenario
    from heron_edge.runtime.sil import episode_starts

    scenario = _load_scenario(args.scenario)
    for flag in ("endpoints", "trajectory", "result"):
        if getattr(args, flag) is not None:
            output_file(f"--{flag}", getattr(args, flag))
    year = 2024 if args.test_year else 2023
    steps_in_year = (366 if calendar.isleap(year) else 365) * scenario.steps_per_day
    if args.start_steps:
        starts = list(args.start_steps)
        late = [k for k in starts if k >= steps_in_year]
        if late:
            raise ConfigError(f"--start-steps {late}: past the last step {steps_in_year - 1} of {year}")
    else:
        starts = episode_starts(scenario, days=args.days, seed=args.seed, test_year=args.test_year)
    plant = _build_plant(scenario)
    setup_logging(args.log_level)  # after the checks: a bad option is one line on stderr, nothing before it
    asyncio.run(_main(args, plant, starts, scenario.steps_per_day, year))
    return 0


def _build_plant(scenario: Scenario) -> Plant:
    """The simulated plant; a ScenarioError when its network or profiles cannot be built (as simulate says it)."""
    from sim.plant import Plant

    try:
        return Plant(scenario)
    except (KeyError, ValueError) as exc:
        raise ScenarioError(f"scenario {scenario.name} cannot be run: {exc}") from exc


async def _main(args: argparse.Namespace, plant: Plant, starts: list[int], steps_per_day: int, year: int) -> None:
    from heron_edge.runtime.secure import broker_from_args
    from heron_edge.runtime.sil_plant import PLANT_ID, PlantRuntime

    broker = broker_from_args(args, client_id=f"heron-{args.site}-{PLANT_ID}", reconnect_max_delay_s=1.0)
    runtime = PlantRuntime(plant, broker, site=args.site, participants=[*plant.names, args.operator_id],
                           start_steps=starts, steps_per_episode=steps_per_day, year=year, mode=args.mode,
                           period_s=args.period_s, device_profile=getattr(args, "device_profile", "ieee1547"))
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
