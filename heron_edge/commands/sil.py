"""Software-in-the-loop: Mosquitto, the plant (emulated devices), one agent process per microgrid and the operator; compare with a
centralized run. ``--secure``: a generated site (TLS, a user and certificate per process, per-agent ACLs, signed commands).

The report's first line is ``MATCH`` or ``MISMATCH``; when they do not match, or any participant degraded (failsafe, late,
rejected messages), it names the agents and the steps (``RunHealth.report``). The run ends when the plant has run its last
step: the agents are stopped then, while their devices are still up, and nothing they do while stopping is counted.
"""
from __future__ import annotations

import argparse
import calendar
import json
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heron_edge.commands import (
    add_protocol,
    add_scenario,
    non_negative_int,
    output_dir,
    positive_int,
    seconds,
)
from heron_edge.errors import ConfigError, RunError

if TYPE_CHECKING:
    from heron_edge.runtime.sil import FileMarks, ManagedProcess, RunHealth, SilFiles
    from heron_edge.runtime.sil_plant import PlantResult
    from sim.scenario import Scenario


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``heron-edge sil``."""
    add_scenario(parser)
    parser.add_argument("--days", type=positive_int, default=1, metavar="N", help="one-day episodes (default: %(default)s)")
    parser.add_argument("--seed", type=non_negative_int, default=0, metavar="N",
                        help="picks the days, as in simulate (default: %(default)s)")
    parser.add_argument("--test-year", action="store_true", help="walk 2024 day by day instead of random days of 2023")
    parser.add_argument("--broker", default=None, metavar="URL",
                        help="use this MQTT broker instead of starting Mosquitto on a free loopback port")
    parser.add_argument("--site", default="sil", metavar="NAME", help="topic namespace (default: %(default)s)")
    parser.add_argument("--mode", choices=("lockstep", "realtime"), default="lockstep", help="(default: %(default)s)")
    parser.add_argument("--period-s", type=seconds(), default=1.0, metavar="S",
                        help="realtime mode: seconds per step (default: %(default)s)")
    parser.add_argument("--agent-every", type=agent_every, action="append", default=None, metavar="AGENT=N",
                        help="realtime mode, repeatable: this agent cycles on every N-th step only (its period N x "
                             "--period-s; its devices hold their setpoints in between) (default: every step)")
    parser.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                        help="configs, logs, outboxes, status files and trajectory.npz (default: a temporary directory)")
    parser.add_argument("--timeout-s", type=seconds(), default=600.0, metavar="S",
                                  help="give up after this long (default: %(default)s)")
    parser.add_argument(
        "--stop-delay-s", type=seconds(zero=True, below=3600.0), default=0.0, metavar="S",
        help="leave every process running S s after the last step before stopping them (the agents go failsafe once "
             "the operator is silent); nothing after the last step is counted (default: %(default)s)")
    parser.add_argument("--secure", action="store_true",
                        help="generate a site config + self-signed PKI in the workdir and run over TLS: every process "
                             "its own user, password and client certificate, per-agent ACLs, HMAC-signed commands")
    add_protocol(parser)
    parser.add_argument("--device-profile", choices=("ieee1547", "legacy", "mixed"), default="ieee1547",
                        help="the SunSpec models the plant's devices expose: ieee1547 (7xx), legacy (1xx: 124 / 123 "
                             "percentages, compared within their resolution) or mixed (alternating per microgrid) "
                             "(default: %(default)s)")
    parser.add_argument("--policy", type=sil_policy, default="rule", metavar="POLICY",
                        help="rule, or the directory of a policy bundle (heron-edge train --out DIR) for every agent; "
                             "compared with simulate's centralized run of the same policy (default: %(default)s)")


def sil_policy(text: str) -> str:
    """argparse type of ``sil --policy``: ``rule`` or an existing directory (a bundle, checked before the run)."""
    if text == "rule" or Path(text).is_dir():
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is neither rule nor a policy bundle directory")


def agent_every(text: str) -> tuple[str, int]:
    """argparse type of ``--agent-every``: ``AGENT=N``, N a positive integer."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not AGENT=N (e.g. mg2=3)")
    return name, positive_int(value)


def run(args: argparse.Namespace) -> int:
    """0: the run finished (and, in lock-step, matched the centralized run); 1: mismatch or failure. Bad input
    (scenario, options, ``--workdir``) raises a ConfigError and an unreachable ``--broker`` a BrokerError before
    anything starts: ``heron_edge.cli`` says them in one line (exit 2, 1)."""
    import numpy as np

    from heron_edge.commands.simulate import (
        _load_scenario,
        protocol_summary,
        simulate,
        summarize,
        summary_table,
    )
    from heron_edge.coordination import parse_protocols
    from heron_edge.runtime.sil import compare, load_trajectory, profile_tolerances, settle, tolerances

    scenario = _load_scenario(args.scenario)
    if args.secure and args.broker:
        raise ConfigError("--secure starts its own broker; do not give --broker")
    parse_protocols(args.protocol)
    _every_steps(args, [mg.name for mg in scenario.microgrids])  # a bad --agent-every: ConfigError before anything
    workdir = output_dir("--workdir", args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="heron-sil-"))
    if args.broker:
        _probe_broker(args.broker)
    policy = getattr(args, "policy", "rule")
    central = simulate(scenario, days=args.days, policy=policy, seed=args.seed, test_year=args.test_year,
                       progress=False, protocol=args.protocol)  # a bundle that does not fit: ConfigError here
    steps_per_day = scenario.steps_per_day
    starts = [int(central.columns["step_in_year"][d * steps_per_day, 0]) for d in range(args.days)]
    names = [mg.name for mg in scenario.microgrids]
    try:
        rig = execute_rig(args, scenario, starts, workdir)
    except RuntimeError as exc:  # RunError: a process failed; MosquittoError: no broker to start
        _say_failure(exc)
        partial = _partial_health(workdir, names)
        if partial is not None:
            print(partial.report(), file=sys.stderr)
        return 1
    try:
        sil = settle(load_trajectory(rig.files.trajectory), scenario, args.protocol, None, rig.files.ledger,
                     rig.files.journals(names), marks=rig.marks)
    except RuntimeError as exc:  # RunError: a ledger or journal missing or short
        _say_failure(exc)
        print(rig.health.report(), file=sys.stderr)
        return 1
    print(summary_table(summarize(sil)))
    print(protocol_summary(sil))
    print(json.dumps(rig.stats()))
    print(f"workdir: {workdir}")
    if args.mode != "lockstep":
        print(rig.health.report())
        return 0
    tol = profile_tolerances(  # legacy devices: within the resolution of their 124 / 123 percentages
        tolerances(args.protocol, learned=policy != "rule"), scenario, getattr(args, "device_profile", "ieee1547"),
        max_price_usd_per_mwh=float(np.nanmax(np.abs(central.columns["price_usd_per_mwh"]))),
        max_exchange_mw=float(np.nanmax(np.abs(central.columns["exchange_mw"]))), protocols=args.protocol or ())
    comparison = compare(sil, central, tol)
    print(comparison.report())
    if not comparison.ok or rig.health.degraded:
        print(rig.health.report())
    return 0 if comparison.ok else 1


def _every_steps(args: argparse.Namespace, names: list[str]) -> dict[str, int]:
    """Each agent's cycle in plant steps (``--agent-every``; real time only)."""
    from heron_edge.runtime.sil import agent_every_steps

    every = dict(getattr(args, "agent_every", None) or [])
    if every and args.mode != "realtime":
        raise ConfigError("--agent-every needs --mode realtime (a lock-step plant waits for every agent each step)")
    return agent_every_steps(every, names=names)


def _probe_broker(url: str) -> None:
    """Connect to ``--broker`` once before the (minutes long) centralized run and the processes: a wrong URL is a
    ConfigError, an unreachable broker a BrokerError, said at once instead of as a child's failure."""
    import asyncio
    import os

    from heron_edge.brokers import MqttBroker

    async def probe() -> None:
        broker = MqttBroker(url, client_id=f"heron-sil-probe-{os.getpid()}")
        try:
            await broker.connect()
        finally:
            await broker.close(will=False)

    asyncio.run(probe())


def _say_failure(exc: Exception) -> None:
    """A failed run: its one error line, then what explains it (a process's last log lines), indented."""
    first, _, details = str(exc).partition("\n")
    print(f"heron-edge sil: error: {first.rstrip(':')}", file=sys.stderr)
    for line in details.rstrip().splitlines():
        print(f"  {line}", file=sys.stderr)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@dataclass(frozen=True)
class RigRun:
    """One finished SIL run: where its files are, how far they count (``marks``), the plant's result, timings and
    every participant's health (shutdown excluded)."""

    files: SilFiles
    secure: bool
    startup_s: float
    run_s: float
    plant: PlantResult
    marks: FileMarks
    health: RunHealth
    timing: dict[str, dict[str, float]]

    def stats(self) -> dict[str, object]:
        """The JSON stats line: timings, the plant's counters, per agent its cycle split and counters."""
        agents: dict[str, object] = {}
        for agent in self.health.agents:
            c = agent.counters
            agents[agent.name] = {"timing": self.timing.get(agent.name, {}), "failsafe_entries": c.failsafe_entries,
                                  "failsafe_steps": len(agent.failsafe_steps), "late": c.late,
                                  "cmd_accepted": c.cmd_accepted, "cmd_rejected": c.cmd_rejected, "rejected": c.rejected}
        return {"secure": self.secure, "startup_s": round(self.startup_s, 3), "run_s": round(self.run_s, 3),
                "plant": self.plant.stats, "agents": agents}


def run_rig(args: argparse.Namespace, scenario: Scenario, starts: list[int], workdir: Path) -> dict[str, object]:
    """Run the rig (see :func:`execute_rig`); its JSON stats (timings, the plant's counters, the agents' cycle split)."""
    return execute_rig(args, scenario, starts, workdir).stats()


def _wait_for_rows(paths: list[Path], step: int | None, timeout: float) -> None:
    """Until the last complete line of each JSON-lines file is for ``step`` (the agents append their journal
    off their event loop: the last row may trail their done by a moment); at most ``timeout`` s."""
    if step is None:
        return
    deadline = time.monotonic() + timeout
    pending = list(paths)
    while pending and time.monotonic() < deadline:
        pending = [path for path in pending if _last_step(path) != step]
        if pending:
            time.sleep(0.02)


def _last_step(path: Path) -> int | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    lines = data[: data.rfind(b"\n") + 1].splitlines()
    try:
        return int(json.loads(lines[-1])["step"]) if lines else None
    except (ValueError, KeyError, TypeError):
        return None


def _partial_health(workdir: Path, names: list[str]) -> RunHealth | None:
    """What the files of a run that did not finish say (the steps the plant recorded), or None."""
    from heron_edge.runtime.sil import SilFiles, load_trajectory, run_health

    files = SilFiles(workdir)
    try:
        steps = load_trajectory(files.trajectory).columns["step_in_year"][:, 0].astype(int).tolist()
        return run_health(files, names, steps)
    except (OSError, KeyError, ValueError, RuntimeError):
        return None


def execute_rig(args: argparse.Namespace, scenario: Scenario, starts: list[int], workdir: Path) -> RigRun:
    """Start everything, wait until the plant has run its last step, then stop (by PID) the agents all at once, the
    operator, the plant (its devices stayed up until now) and Mosquitto; what the files say up to that end."""
    from contextlib import ExitStack

    from heron_edge.runtime.mosquitto import running_mosquitto
    from heron_edge.runtime.secure import COMMAND_KEY_ENV, SecureSite
    from heron_edge.runtime.sil import (
        UPSTREAM_TIMEOUT_S,
        FileMarks,
        ManagedProcess,
        SilFiles,
        agent_config,
        child_env,
        cli_argv,
        load_trajectory,
        run_health,
        stop_in_order,
        to_toml,
        wait_for_file,
    )
    from heron_edge.runtime.sil_plant import PLANT_ID, PlantResult
    from heron_edge.security.launch import running_site_mosquitto

    files = SilFiles(workdir)
    env = child_env()
    signal.signal(signal.SIGTERM, _terminate)  # so the finally below stops every child we started
    names = [mg.name for mg in scenario.microgrids]
    operator_id = "system_operator"
    secure: SecureSite | None = None
    agents: list[ManagedProcess] = []
    operator: list[ManagedProcess] = []
    plants: list[ManagedProcess] = []

    def secrets(user: str) -> tuple[list[str], dict[str, str]]:
        """Broker options and environment of ``user``'s process (its own secrets only)."""
        return ([], env) if secure is None else (secure.cli_args(user), secure.environment(user, env))

    with ExitStack() as stack:
        if getattr(args, "secure", False):
            secure = SecureSite.generate(workdir / "site", site=args.site, agents=names, operator=operator_id,
                                         plant=PLANT_ID)
            url = stack.enter_context(running_site_mosquitto(secure.conf, port=secure.port)).url
        else:
            url = args.broker or stack.enter_context(running_mosquitto()).url
        try:
            for stale in (files.endpoints, files.trajectory, files.plant_result, files.ledger,
                          *(files.journal(n) for n in names), *(files.status(n) for n in names)):
                stale.unlink(missing_ok=True)
            protocols = [arg for name in args.protocol or () for arg in ("--protocol", name)]
            year = 2024 if args.test_year else 2023
            last_step = (366 if calendar.isleap(year) else 365) * scenario.steps_per_day - 1
            t0 = time.monotonic()
            plant_args, plant_env = secrets(PLANT_ID)
            operator_args, operator_env = secrets(operator_id)
            plant = ManagedProcess("plant", cli_argv(
                "plant", "--scenario", str(args.scenario), "--broker", url, "--site", args.site, "--mode", args.mode,
                "--period-s", str(args.period_s), "--start-steps", ",".join(map(str, starts)),
                *(["--test-year"] if args.test_year else []),
                "--endpoints", str(files.endpoints), "--trajectory", str(files.trajectory),
                "--result", str(files.plant_result), "--hold",
                "--device-profile", getattr(args, "device_profile", "ieee1547"), *plant_args),
                log_path=files.log("plant"), env=plant_env)
            plants.append(plant)
            operator.append(ManagedProcess("operator", cli_argv(
                "operator", "--broker", url, "--site", args.site, "--scenario", str(args.scenario),
                "--year", str(year), *protocols, "--ledger", str(files.ledger), "--upstream-timeout-s",
                str(UPSTREAM_TIMEOUT_S), "--operator-id", operator_id, *operator_args), log_path=files.log("operator"),
                env=operator_env))
            wait_for_file(files.endpoints, timeout=60.0, process=plant)
            endpoints = json.loads(files.endpoints.read_text())
            every = _every_steps(args, names)
            for i, mg in enumerate(scenario.microgrids):
                policy = getattr(args, "policy", "rule")
                config = agent_config(scenario, i, site=args.site, broker_url=url, endpoints=endpoints, workdir=workdir,
                                      protocols=args.protocol, max_step=last_step,
                                      policy=None if policy == "rule" else policy, every_steps=every[mg.name])
                if secure is not None:  # TLS + own user; password and command key from its environment only
                    config["broker"].update(secure.gateway_broker(mg.name))
                    config["command_key_env"] = COMMAND_KEY_ENV
                Path(config["outbox"]["path"]).unlink(missing_ok=True)
                path = workdir / f"agent-{mg.name}.toml"
                path.write_text(to_toml(config))
                _, agent_env = secrets(mg.name)
                agents.append(ManagedProcess(f"agent {mg.name}", cli_argv("agent", "--config", str(path), "--log-level", "WARNING"),
                                             log_path=files.log(f"agent-{mg.name}"), env=agent_env))
            ready = time.monotonic()
            deadline = ready + args.timeout_s
            while not files.plant_result.exists():
                if not plant.alive():
                    if files.plant_result.exists():
                        break
                    raise RunError(f"the plant exited ({plant.proc.returncode}) before its last step:\n{plant.tail()}")
                dead = [p for p in (*operator, *agents) if not p.alive()]
                if dead:
                    raise RunError(f"{dead[0].name} exited ({dead[0].proc.returncode}):\n{dead[0].tail()}")
                if time.monotonic() > deadline:
                    raise RunError(f"the plant did not finish within {args.timeout_s} s")
                time.sleep(0.05)
            finished = time.monotonic()
            result = PlantResult.read(files.plant_result)
            _wait_for_rows([files.ledger, *(files.journal(n) for n in names)], result.last_step, timeout=5.0)
            marks = FileMarks.take(files.appended(names))  # the end of the run: later lines are shutdown
            time.sleep(max(0.0, getattr(args, "stop_delay_s", 0.0)))
        finally:
            stop_in_order([agents, operator, plants])  # agents first, while their devices are still up
    steps = load_trajectory(files.trajectory).columns["step_in_year"][:, 0].astype(int).tolist()
    health = run_health(files, names, steps, finished_at=result.finished_at, marks=marks,
                        forced_steps=int(result.stats.get("forced_steps", 0)))
    timing: dict[str, dict[str, float]] = {}
    for name in names:
        status_path = files.status(name)
        if status_path.exists():
            status: dict[str, Any] = json.loads(status_path.read_text())
            timing[name] = status.get("timing", {})
    return RigRun(files=files, secure=secure is not None, startup_s=ready - t0, run_s=finished - ready, plant=result,
                  marks=marks, health=health, timing=timing)
