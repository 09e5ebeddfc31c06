"""Run one microgrid agent on an edge gateway: Modbus devices, MQTT peers, failsafe and outbox (``--config FILE``)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from heron_edge.commands import add_log_level, setup_logging, version
from heron_edge.errors import ConfigError

if TYPE_CHECKING:
    from heron_edge.runtime.config import GatewayConfig

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``heron-edge agent``."""
    parser.add_argument("--config", type=Path, required=True, metavar="FILE", help="gateway config (TOML, or YAML with PyYAML)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the config (values, the files it names, the broker URL and TLS files) and "
                             "exit: 0 ok, 2 bad")
    add_log_level(parser, default="INFO")


def run(args: argparse.Namespace) -> int:
    """Load and check the config (``--check-config``: only that), run the gateway until SIGTERM / SIGINT; 0 then.
    A bad config raises a ConfigError naming the field: ``heron_edge.cli`` says it in one line, exit 2. An
    unreachable broker or device is no error here: the gateway fails safe and retries."""
    from heron_edge.runtime.config import load_gateway_config

    config = load_gateway_config(args.config, check_paths=True)
    try:
        check_runtime_settings(config, secrets=not args.check_config)
    except ConfigError as exc:
        raise ConfigError(f"gateway config {args.config}: {exc}") from exc
    if args.check_config:
        devices = sum(getattr(config.devices, role) is not None for role in ("battery", "meter", "generator", "pv", "wind"))
        print(f"{args.config}: ok (agent {config.agent_id}, site {config.site}, {devices} devices)")
        return 0
    asyncio.run(_main(config, args))
    return 0


def check_runtime_settings(config: GatewayConfig, *, secrets: bool = True) -> None:
    """What the file's validation cannot see and the gateway needs at start: the TLS files exist and are
    certificates and keys (each named when not), the broker URL against the insecure-connection rule, a policy
    bundle against this gateway (``make_policy``) and, with ``secrets``, the secrets read from the environment
    (broker password, command key). ``--check-config`` runs it without ``secrets``: it is run from a shell, where
    the service's environment file is not loaded."""
    from heron_edge.runtime.config import OnnxPolicySettings
    from heron_edge.runtime.gateway import make_broker, make_policy

    if isinstance(config.policy, OnnxPolicySettings):
        make_policy(config)
    from heron_edge.runtime.secure import check_tls_files

    tls = config.broker.tls
    if tls is not None:
        check_tls_files({"broker.tls.ca_file": tls.ca_file, "broker.tls.cert_file": tls.cert_file,
                         "broker.tls.key_file": tls.key_file})
    if not secrets:  # the same broker, its password left out (the username still counts as authentication)
        config = config.model_copy(update={"broker": config.broker.model_copy(update={"password_env": None})})
    make_broker(config)  # only built, never connected: the URL, the TLS context and the password are checked
    if secrets:
        config.command_key()


async def _main(config: GatewayConfig, args: argparse.Namespace) -> None:
    """Build the gateway (a ConfigError still ends here in one line: logging starts after), then run it until
    SIGTERM / SIGINT and close it."""
    from heron_edge.runtime.gateway import Gateway

    gateway = Gateway(config)
    setup_logging(args.log_level)
    log.info("heron-edge %s agent %s: config %s", version(), config.agent_id, args.config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.stop)
    try:
        await gateway.run()
    finally:
        await gateway.close()
