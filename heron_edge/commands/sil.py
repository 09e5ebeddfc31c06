"""Software-in-the-loop: Mosquitto, the plant (emulated devices), one agent process per microgrid and the operator; compare with a
centralized run. ``--secure``: a generated site (TLS, a user and certificate per process, per-agent ACLs, signed commands)."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

from heron_edge.commands.simulate import PROTOCOLS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``heron-edge sil``."""
    parser.add_argument("--scenario", default="ieee34_3x13", metavar="NAME_OR_TOML", help="(default: %(default)s)")
    parser.add_argument("--days", type=int, default=1, metavar="N", help="one-day episodes (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="picks the days, as in simulate (default: %(default)s)")
    parser.add_argument("--test-year", action="store_true", help="walk 2024 day by day instead of random days of 2023")
    parser.add_argument("--broker", default=None, metavar="URL",
                        help="use this MQTT broker instead of starting Mosquitto on a free loopback port")
    parser.add_argument("--site", default="sil", help="topic namespace (default: %(default)s)")
    parser.add_argument("--mode", choices=("lockstep", "realtime"), default="lockstep", help="(default: %(default)s)")
    parser.add_argument("--period", type=float, default=1.0, metavar="S", help="real time: seconds per step (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                        help="configs, logs, outboxes, status files and trajectory.npz (default: a temporary directory)")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="S", help="give up after this long (default: %(default)s)")
    parser.add_argument("--secure", action="store_true",
                        help="generate a site config + self-signed PKI in the workdir and run over TLS: every process "
                             "its own user, password and client certificate, per-agent ACLs, HMAC-signed commands")
    parser.add_argument("--protocol", action="append", choices=PROTOCOLS, default=None, metavar="NAME",
                        help="coordination protocol, as in simulate: setpoint, price_signal, p2p_trading or consensus; "
                             "give it twice for one vertical plus one horizontal")


def run(args: argparse.Namespace) -> int:
    """0: the run finished (and, in lock-step, matched the centralized run); 1: mismatch or failure; 2: bad input."""
    from heron_edge.commands.simulate import ScenarioError, _load_scenario, protocol_summary, simulate, summarize, summary_table
    from heron_edge.coordination import parse_protocols
    from heron_edge.errors import ConfigError
    from heron_edge.runtime.sil import compare, load_trajectory, settle, tolerances

    try:
        scenario = _load_scenario(args.scenario)
    except ValueError as exc:
        print(f"heron-edge sil: error: {exc}", file=sys.stderr)
        return 2
    if args.days < 1:
        print("heron-edge sil: error: --days must be at least 1", file=sys.stderr)
        return 2
    if args.secure and args.broker:
        print("heron-edge sil: error: --secure starts its own broker; do not give --broker", file=sys.stderr)
        return 2
    try:
        parse_protocols(args.protocol)
    except ConfigError as exc:
        print(f"heron-edge sil: error: {exc}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="heron-sil-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        central = simulate(scenario, days=args.days, policy="rule", seed=args.seed, test_year=args.test_year,
                           progress=False, protocol=args.protocol)
    except ScenarioError as exc:
        print(f"heron-edge sil: error: {exc}", file=sys.stderr)
        return 2
    steps_per_day = scenario.steps_per_day
    starts = [int(central.columns["step_in_year"][d * steps_per_day, 0]) for d in range(args.days)]
    try:
        stats = run_rig(args, scenario, starts, workdir)
        journals = {mg.name: workdir / f"journal-{mg.name}.jsonl" for mg in scenario.microgrids}
        sil = settle(load_trajectory(workdir / "trajectory.npz"), scenario, args.protocol, None,
                     workdir / "ledger.jsonl", journals)
    except RuntimeError as exc:
        print(f"heron-edge sil: error: {exc}", file=sys.stderr)
        return 1
    print(summary_table(summarize(sil)))
    print(protocol_summary(sil))
    print(json.dumps(stats))
    print(f"workdir: {workdir}")
    if args.mode != "lockstep":
        return 0
    comparison = compare(sil, central, tolerances(args.protocol))
    print(comparison.report())
    return 0 if comparison.ok else 1


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_rig(args: argparse.Namespace, scenario: object, starts: list[int], workdir: Path) -> dict[str, object]:
    """Start everything, wait for the plant to finish, stop everything we started (by PID); timing stats."""
    from contextlib import ExitStack

    from heron_edge.runtime.mosquitto import running_mosquitto
    from heron_edge.runtime.secure import COMMAND_KEY_ENV, SecureSite
    from heron_edge.runtime.sil import ManagedProcess, agent_config, child_env, cli_argv, to_toml, wait_for_file
    from heron_edge.runtime.sil_plant import PLANT_ID
    from heron_edge.security.launch import running_site_mosquitto

    processes: list[ManagedProcess] = []
    env = child_env()
    signal.signal(signal.SIGTERM, _terminate)  # so the finally below stops every child we started
    names = [mg.name for mg in scenario.microgrids]  # type: ignore[attr-defined]
    operator_id = "system_operator"
    secure: SecureSite | None = None

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
            endpoints_path = workdir / "endpoints.json"
            endpoints_path.unlink(missing_ok=True)
            for stale in ("trajectory.npz", "ledger.jsonl", *(f"journal-{mg.name}.jsonl" for mg in scenario.microgrids)):  # type: ignore[attr-defined]
                (workdir / stale).unlink(missing_ok=True)
            protocols = [arg for name in args.protocol or () for arg in ("--protocol", name)]
            t0 = time.monotonic()
            plant_args, plant_env = secrets(PLANT_ID)
            operator_args, operator_env = secrets(operator_id)
            plant = ManagedProcess("plant", cli_argv(
                "plant", "--scenario", str(args.scenario), "--broker", url, "--site", args.site, "--mode", args.mode,
                "--period", str(args.period), "--start-steps", ",".join(map(str, starts)),
                *(["--test-year"] if args.test_year else []),
                "--endpoints", str(endpoints_path), "--trajectory", str(workdir / "trajectory.npz"), *plant_args),
                log_path=workdir / "plant.log", env=plant_env)
            processes.append(plant)
            processes.append(ManagedProcess("operator", cli_argv(
                "operator", "--broker", url, "--site", args.site, "--scenario", str(args.scenario),
                "--year", "2024" if args.test_year else "2023", *protocols, "--ledger", str(workdir / "ledger.jsonl"),
                "--id", operator_id, *operator_args), log_path=workdir / "operator.log", env=operator_env))
            wait_for_file(endpoints_path, timeout=60.0, process=plant)
            endpoints = json.loads(endpoints_path.read_text())
            for i, mg in enumerate(scenario.microgrids):  # type: ignore[attr-defined]
                config = agent_config(scenario, i, site=args.site, broker_url=url, endpoints=endpoints, workdir=workdir,  # type: ignore[arg-type]
                                      protocols=args.protocol)
                if secure is not None:  # TLS + own user; password and command key from its environment only
                    config["broker"].update(secure.gateway_broker(mg.name))
                    config["command_key_env"] = COMMAND_KEY_ENV
                Path(config["outbox"]["path"]).unlink(missing_ok=True)
                path = workdir / f"agent-{mg.name}.toml"
                path.write_text(to_toml(config))
                _, agent_env = secrets(mg.name)
                processes.append(ManagedProcess(f"agent {mg.name}", cli_argv("agent", "--config", str(path), "--log-level", "WARNING"),
                                                log_path=workdir / f"agent-{mg.name}.log", env=agent_env))
            ready = time.monotonic()
            deadline = ready + args.timeout
            while plant.alive():
                dead = [p for p in processes if p is not plant and not p.alive()]
                if dead:
                    raise RuntimeError(f"{dead[0].name} exited ({dead[0].proc.returncode}):\n{dead[0].tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the plant did not finish within {args.timeout} s")
                time.sleep(0.1)
            if plant.proc.returncode != 0:
                raise RuntimeError(f"the plant failed ({plant.proc.returncode}):\n{plant.tail()}")
            finished = time.monotonic()
        finally:
            for process in reversed(processes):
                process.stop()
    plant_stats = {}
    for line in (workdir / "plant.log").read_text(errors="replace").splitlines():
        if line.startswith('{"plant"'):
            plant_stats = json.loads(line)["plant"]
    statuses = {}
    for mg in scenario.microgrids:  # type: ignore[attr-defined]
        status_path = workdir / f"status-{mg.name}.json"
        if status_path.exists():
            status = json.loads(status_path.read_text())
            counters = status["counters"]
            statuses[mg.name] = {"timing": status["timing"], "failsafe_entries": counters.get("failsafe_entries", 0),
                                 "cmd_accepted": counters.get("cmd_accepted", 0),
                                 "cmd_rejected": sum(v for k, v in counters.items() if k.startswith("cmd_rejected_"))}
    return {"secure": secure is not None, "startup_s": round(ready - t0, 3), "run_s": round(finished - ready, 3), "plant": plant_stats, "agents": statuses}
