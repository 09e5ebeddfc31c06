"""Run the system operator as its own process: it follows a clock (the bus clock, or in the field the wall-clock
timer the gateways use) and, each step, publishes the price and runs the operator side of the coordination
protocols (setpoints, market clearing)."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim.scenario import Scenario

PROTOCOLS = ("setpoint", "price_signal", "p2p_trading", "consensus")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``heron-edge operator``."""
    parser.add_argument("--broker", required=True, metavar="URL", help="mqtt://host:port")
    parser.add_argument("--site", default="sil", help="topic namespace (default: %(default)s)")
    parser.add_argument("--id", default="system_operator", help="operator agent id (default: %(default)s)")
    parser.add_argument("--scenario", default="ieee34_3x13", metavar="NAME_OR_TOML",
                        help="the price profile comes from this scenario (default: %(default)s)")
    parser.add_argument("--year", type=int, default=2023, help="profile year (default: %(default)s)")
    parser.add_argument("--clock", choices=("bus", "timer"), default="bus",
                        help="bus: run each step announced on the bus clock and answer done (lock-step SIL, a site "
                             "orchestrator); timer: run step floor(unix time / period) as each period starts, like "
                             "gateways with clock = \"timer\"; the price is the profile's at the same time of year "
                             "(UTC) (default: %(default)s)")
    parser.add_argument("--period-s", type=float, default=3600.0, metavar="S",
                        help="timer clock: the step length, as the gateways' cycle.period_s (default: %(default)s)")
    parser.add_argument("--clock-sender", default="plant", help="bus clock: the only accepted announcer (default: %(default)s)")
    parser.add_argument("--protocol", action="append", choices=PROTOCOLS, default=None, metavar="NAME",
                        help="coordination protocol, as in simulate (repeatable: one vertical + one horizontal)")
    parser.add_argument("--protocol-options", default=None, metavar="JSON",
                        help='per protocol options, e.g. \'{"setpoint": {"import_limit_mw": 1.5}}\'')
    parser.add_argument("--meter-id", default="plant",
                        help="sender of the feeder-head meter reading (price_signal's congestion rule) (default: %(default)s)")
    parser.add_argument("--step-timeout", type=float, default=2.0, metavar="S",
                        help="longest wait for the meter and the market's orders per step (default: %(default)s)")
    parser.add_argument("--upstream-timeout", type=float, default=3.0, metavar="S",
                        help="the gateways' failsafe.upstream_timeout_s: the operator waits at most half of it for the "
                             "microgrids' telemetry, so one silent microgrid never delays the price enough to push "
                             "the others into failsafe (default: %(default)s)")
    parser.add_argument("--ledger", type=Path, default=None, metavar="FILE.jsonl",
                        help="append what was signalled and cleared, one JSON line per step")
    parser.add_argument("--command-keys-env", default="HERON_COMMAND_KEYS", metavar="VAR",
                        help="environment variable with the agents' command keys, JSON {agent: hex}: when set, "
                             "every command is signed with its recipient's key (default: %(default)s)")
    from heron_edge.runtime.secure import add_broker_arguments

    add_broker_arguments(parser)
    parser.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM / SIGINT; 2 on a bad scenario or protocol configuration, 1 when the broker
    cannot be reached at start (a one-line error, no traceback)."""
    from heron_edge.commands.simulate import ScenarioError, _load_scenario
    from heron_edge.errors import BrokerError, ConfigError

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        options = json.loads(args.protocol_options) if args.protocol_options else {}
        if not isinstance(options, dict):
            raise ConfigError("--protocol-options must be a JSON object")
        for flag, value in (("--period-s", args.period_s), ("--step-timeout", args.step_timeout),
                            ("--upstream-timeout", args.upstream_timeout)):
            if not 0 < value < 86_400:
                raise ConfigError(f"{flag} must be positive and less than a day, not {value!r}")
        scenario = _load_scenario(args.scenario)
        asyncio.run(_main(args, scenario, options))
    except (ConfigError, ScenarioError, json.JSONDecodeError) as exc:
        print(f"heron-edge operator: error: {exc}", file=sys.stderr)
        return 2
    except BrokerError as exc:
        print(f"heron-edge operator: error: {exc}", file=sys.stderr)
        return 1
    return 0


async def _main(args: argparse.Namespace, scenario: Scenario, options: dict[str, dict[str, object]]) -> None:
    from sim.profiles import load_profiles

    from heron_edge.agents import SystemOperator
    from heron_edge.agents.operator import TELEMETRY_WAIT_SHARE
    from heron_edge.brokers import Broker
    from heron_edge.coordination import Coordination
    from heron_edge.messages import agent_topic
    from heron_edge.runtime.operator import CoordinationService, FeederMeter, OperatorRuntime
    from heron_edge.runtime.secure import SigningBroker, broker_from_args, signer_from_env
    from heron_edge.runtime.wallclock import hour_of_year_index

    prices = load_profiles(args.year, [scenario.price_profile], scenario.step_hours).series[scenario.price_profile]
    broker = broker_from_args(args, client_id=f"heron-{args.site}-{args.id}",
                              status_topic=agent_topic(args.site, args.id, "status"), reconnect_max_delay_s=1.0)
    signer = signer_from_env(args.command_keys_env)
    commands: Broker = broker if signer is None else SigningBroker(broker, signer)  # the protocols' commands, signed
    coordination = Coordination(scenario, args.protocol, options)
    telemetry_wait_s = TELEMETRY_WAIT_SHARE * args.upstream_timeout
    operator = SystemOperator(args.id, commands, coordination, site=args.site, step_timeout_s=args.step_timeout,
                              telemetry_wait_s=telemetry_wait_s)
    meter = FeederMeter(broker, site=args.site, meter_id=args.meter_id, timeout_s=min(args.step_timeout, telemetry_wait_s),
                        limit_mw=coordination.power_limit_mw)
    if args.clock == "timer":  # a wall-clock step: the price at the same time of the profile's year
        def price_of(step: int) -> float:
            return float(prices[hour_of_year_index(step * args.period_s, scenario.step_hours, len(prices))])
    else:  # the bus clock counts the profile's own steps
        def price_of(step: int) -> float:
            return float(prices[step])
    service = CoordinationService(operator, price_of, meter=meter, ledger=args.ledger)

    runtime = OperatorRuntime(broker, site=args.site, operator_id=args.id, services=[service],
                              clock_sender=args.clock_sender, clock=args.clock, period_s=args.period_s,
                              step_limit=None if args.clock == "timer" else len(prices))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.stop)
    try:
        await runtime.run()  # ends with the operator's own retained offline / stopped status
    finally:
        await operator.close()
        await broker.close(will=False)
