"""Run one microgrid agent on an edge gateway: Modbus devices, MQTT peers, failsafe and outbox (``--config FILE``)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from heron_edge.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``heron-edge agent``."""
    parser.add_argument("--config", type=Path, required=True, metavar="FILE", help="gateway config (TOML, or YAML with PyYAML)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def run(args: argparse.Namespace) -> int:
    """Load the config, run the gateway until SIGTERM / SIGINT; 2 on a bad config."""
    from heron_edge.runtime.config import load_gateway_config

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_gateway_config(args.config)
    except ConfigError as exc:
        print(f"heron-edge agent: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_main(config))
    except ConfigError as exc:
        print(f"heron-edge agent: error: {exc}", file=sys.stderr)
        return 2
    return 0


async def _main(config: object) -> None:
    from heron_edge.runtime.config import GatewayConfig
    from heron_edge.runtime.gateway import Gateway

    assert isinstance(config, GatewayConfig)
    gateway = Gateway(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.stop)
    try:
        await gateway.run()
    finally:
        await gateway.close()
