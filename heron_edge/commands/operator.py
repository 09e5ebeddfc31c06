"""Run the system operator as its own process: it follows a clock (the bus clock, or in the field the wall-clock
timer the gateways use) and, each step, publishes the price and runs the operator side of the coordination
protocols (setpoints, market clearing)."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heron_edge.commands import (
    PROTOCOLS,
    add_log_level,
    add_protocol,
    add_scenario,
    output_file,
    seconds,
    setup_logging,
    version,
)
from heron_edge.errors import ConfigError

if TYPE_CHECKING:
    from sim.scenario import Scenario

__all__ = ["PROTOCOLS", "add_arguments", "run"]

log = logging.getLogger(__name__)

DAY_S = 86_400.0
"""The operator's durations stay below a day: a step, a wait or a timeout beyond it is a typo."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``heron-edge operator``."""
    parser.add_argument("--broker", required=True, metavar="URL", help="mqtt://host:port or mqtts://host:port")
    parser.add_argument("--site", default="sil", metavar="NAME", help="topic namespace (default: %(default)s)")
    parser.add_argument("--operator-id", default="system_operator", metavar="NAME",
                                      help="this operator's agent id (default: %(default)s)")
    add_scenario(parser, ": the price profile comes from it")
    parser.add_argument("--year", type=int, choices=(2023, 2024), default=2023,
                        help="profile year: 2023 (training) or 2024 (test) (default: %(default)s)")
    parser.add_argument("--clock", choices=("bus", "timer"), default="bus",
                        help="bus: run each step announced on the bus clock and answer done (lock-step SIL, a site "
                             "orchestrator); timer: run step floor(unix time / period) as each period starts, like "
                             "gateways with clock = \"timer\"; the price is the profile's at the same time of year "
                             "(UTC) (default: %(default)s)")
    parser.add_argument("--period-s", type=seconds(below=DAY_S), default=3600.0, metavar="S",
                        help="timer clock: the step length, as the gateways' cycle.period_s (default: %(default)s)")
    parser.add_argument("--clock-sender", default="plant", metavar="NAME",
                        help="bus clock: the only accepted announcer (default: %(default)s)")
    add_protocol(parser)
    parser.add_argument("--protocol-options", default=None, metavar="JSON",
                        help='per protocol options, e.g. \'{"setpoint": {"import_limit_mw": 1.5}}\'')
    parser.add_argument("--meter-id", default="plant", metavar="NAME",
                        help="sender of the feeder-head meter reading (price_signal's congestion rule) (default: %(default)s)")
    parser.add_argument("--step-timeout-s", type=seconds(below=DAY_S), default=2.0, metavar="S",
                        help="longest wait for the meter and the market's orders per step (default: %(default)s)")
    parser.add_argument(
        "--upstream-timeout-s", type=seconds(below=DAY_S), default=3.0, metavar="S",
        help="the gateways' failsafe.upstream_timeout_s: the operator waits at most half of it for the microgrids' "
             "telemetry, so one silent microgrid never delays the price enough to push the others into failsafe "
             "(default: %(default)s)")
    parser.add_argument("--ledger", type=Path, default=None, metavar="FILE",
                        help="append what was signalled and cleared, one JSON line per step")
    parser.add_argument("--command-keys-env", default="HERON_COMMAND_KEYS", metavar="VAR",
                        help="environment variable with the agents' command keys, JSON {agent: hex}: when set, "
                             "every command is signed with its recipient's key (default: %(default)s)")
    from heron_edge.runtime.secure import add_broker_arguments

    add_broker_arguments(parser)
    add_log_level(parser, default="INFO")


def protocol_options(text: str | None) -> dict[str, dict[str, Any]]:
    """``--protocol-options``: a JSON object of JSON objects (protocol -> its options); ConfigError naming the
    flag otherwise (which protocols and which option names are valid is the coordination's to say)."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--protocol-options is not valid JSON: {exc}") from None
    if not isinstance(options, dict):
        raise ConfigError("--protocol-options must be a JSON object, e.g. '{\"setpoint\": {\"import_limit_mw\": 1.5}}'")
    for name, value in options.items():
        if not isinstance(value, dict):
            raise ConfigError(f"--protocol-options: the options of {name!r} must be a JSON object, not {value!r}")
    return options


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM / SIGINT; 0 then. A bad scenario, protocol or option raises a ConfigError (exit 2), a
    broker that cannot be reached at start a BrokerError (exit 1): ``heron_edge.cli`` says them in one line."""
    from heron_edge.commands.simulate import _load_scenario

    options = protocol_options(args.protocol_options)
    if args.ledger is not None:
        output_file("--ledger", args.ledger)
    scenario = _load_scenario(args.scenario)
    asyncio.run(_main(args, scenario, options))
    return 0


async def _main(args: argparse.Namespace, scenario: Scenario, options: dict[str, dict[str, object]]) -> None:
    from heron_edge.agents import SystemOperator
    from heron_edge.agents.operator import TELEMETRY_WAIT_SHARE
    from heron_edge.brokers import Broker
    from heron_edge.coordination import Coordination
    from heron_edge.messages import agent_topic
    from heron_edge.runtime.operator import CoordinationService, FeederMeter, OperatorRuntime
    from heron_edge.runtime.secure import SigningBroker, broker_from_args, signer_from_env
    from heron_edge.runtime.wallclock import hour_of_year_index, zone
    from sim.profiles import load_profiles

    prices = load_profiles(args.year, [scenario.price_profile], scenario.step_hours,
                           scenario.data).series[scenario.price_profile]
    data_zone = zone(scenario.time_zone)  # the data's rows are hours of its own zone's wall clock
    broker = broker_from_args(args, client_id=f"heron-{args.site}-{args.operator_id}",
                              status_topic=agent_topic(args.site, args.operator_id, "status"), reconnect_max_delay_s=1.0)
    signer = signer_from_env(args.command_keys_env)
    commands: Broker = broker if signer is None else SigningBroker(broker, signer)  # the protocols' commands, signed
    try:
        coordination = Coordination(scenario, args.protocol, options)
    except ConfigError as exc:
        raise ConfigError(f"{'--protocol-options' if options else '--protocol'}: {exc}") from exc
    telemetry_wait_s = TELEMETRY_WAIT_SHARE * args.upstream_timeout_s
    if args.clock == "timer":  # the step's aggregates wait for telemetry: done before the next period starts
        telemetry_wait_s = min(telemetry_wait_s, TELEMETRY_WAIT_SHARE * args.period_s)
    operator = SystemOperator(args.operator_id, commands, coordination, site=args.site,
                              step_timeout_s=args.step_timeout_s, telemetry_wait_s=telemetry_wait_s)
    meter = FeederMeter(broker, site=args.site, meter_id=args.meter_id, timeout_s=min(args.step_timeout_s, telemetry_wait_s),
                        limit_mw=coordination.power_limit_mw)
    if args.clock == "timer":  # a wall-clock step: the price at the same local time of the profile's year
        def price_of(step: int) -> float:
            return float(prices[hour_of_year_index(step * args.period_s, scenario.step_hours, len(prices), data_zone)])
    else:  # the bus clock counts the profile's own steps
        def price_of(step: int) -> float:
            return float(prices[step])
    service = CoordinationService(operator, price_of, meter=meter, ledger=args.ledger)

    setup_logging(args.log_level)  # after every check: a bad option is one line on stderr, nothing before it
    clock = f"timer clock every {args.period_s:g} s" if args.clock == "timer" else f"bus clock from {args.clock_sender}"
    log.info("heron-edge %s operator %s: site %s, %s, protocols: %s, broker %s", version(), args.operator_id,
             args.site, clock, ", ".join(coordination.protocols) or "none (price only)", broker.url)
    runtime = OperatorRuntime(broker, site=args.site, operator_id=args.operator_id, services=[service],
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
