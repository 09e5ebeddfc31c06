"""Run the system operator as its own process: it follows the bus clock and publishes the price of each step."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``heron-edge operator``."""
    parser.add_argument("--broker", required=True, metavar="URL", help="mqtt://host:port")
    parser.add_argument("--site", default="sil", help="topic namespace (default: %(default)s)")
    parser.add_argument("--id", default="system_operator", help="operator agent id (default: %(default)s)")
    parser.add_argument("--scenario", default="ieee34_3x13", metavar="NAME_OR_TOML",
                        help="the price profile comes from this scenario (default: %(default)s)")
    parser.add_argument("--year", type=int, default=2023, help="profile year (default: %(default)s)")
    parser.add_argument("--clock-sender", default="plant", help="the only accepted clock announcer (default: %(default)s)")
    parser.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM / SIGINT."""
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(args))
    return 0


async def _main(args: argparse.Namespace) -> None:
    from heron_edge.agents import SystemOperator
    from heron_edge.brokers import MqttBroker
    from heron_edge.coordination import Coordination
    from heron_edge.messages import agent_topic
    from heron_edge.runtime.operator import OperatorRuntime, PriceService
    from sim.profiles import load_profiles
    from sim.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    prices = load_profiles(args.year, [scenario.price_profile], scenario.step_hours).series[scenario.price_profile]
    broker = MqttBroker(args.broker, client_id=f"heron-{args.site}-{args.id}",
                        status_topic=agent_topic(args.site, args.id, "status"), reconnect_max_delay_s=1.0)
    coordination = Coordination(scenario, None, {})  # price only; protocols plug in here
    operator = SystemOperator(args.id, broker, coordination, site=args.site)
    service = PriceService(operator, lambda step: float(prices[step]))
    runtime = OperatorRuntime(broker, site=args.site, operator_id=args.id, services=[service],
                              clock_sender=args.clock_sender)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.stop)
    try:
        await runtime.run()
    finally:
        await operator.close()
        await broker.close()
