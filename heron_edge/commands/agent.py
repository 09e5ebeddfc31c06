"""Run one microgrid agent on an edge gateway: Modbus devices, MQTT peers, failsafe and outbox (``--config FILE``)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from heron_edge.errors import ConfigError

if TYPE_CHECKING:
    from heron_edge.runtime.config import GatewayConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``heron-edge agent``."""
    parser.add_argument("--config", type=Path, required=True, metavar="FILE", help="gateway config (TOML, or YAML with PyYAML)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the config (values and the files it names) and exit: 0 ok, 2 bad")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def _error(exc: ConfigError) -> int:
    """Say a config problem in one line (no traceback); the exit code for it, 2."""
    print(f"heron-edge agent: error: {' '.join(str(exc).split())}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Load and check the config (``--check-config``: only that), run the gateway until SIGTERM / SIGINT; 2 on a
    bad config."""
    from heron_edge.runtime.config import load_gateway_config

    try:
        config = load_gateway_config(args.config, check_paths=True)
    except ConfigError as exc:
        return _error(exc)
    if args.check_config:
        devices = len(config.devices.model_dump(exclude_none=True))
        print(f"{args.config}: ok (agent {config.agent_id}, site {config.site}, {devices} devices)")
        return 0
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_main(config))
    except ConfigError as exc:
        return _error(exc)
    return 0


async def _main(config: GatewayConfig) -> None:
    from heron_edge.runtime.gateway import Gateway

    gateway = Gateway(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.stop)
    try:
        await gateway.run()
    finally:
        await gateway.close()
