"""Run an emulated SunSpec battery or PV inverter on a Modbus TCP port until interrupted (Ctrl-C)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``heron-edge emulate``."""
    parser.add_argument("--device", choices=("battery", "inverter"), required=True, help="what to emulate")
    parser.add_argument("--port", type=int, required=True, help="TCP port (0 picks a free one)")
    parser.add_argument("--unit-id", type=int, default=1, help="Modbus unit id to answer (default 1)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")


async def _serve(args: argparse.Namespace) -> None:
    from firmware_bridge import Emulator, make_model

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Emulator(make_model(args.device), host=args.host, port=args.port, unit_id=args.unit_id) as emu:
        print(f"emulated {args.device} listening on {args.host}:{emu.port} unit {args.unit_id}", flush=True)
        await stop.wait()
    print("stopped", flush=True)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 0 on a clean stop, 2 when the port cannot be opened."""
    from firmware_bridge import EmulatorError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 1 <= args.unit_id <= 247 or not 0 <= args.port <= 65535:
        print("error: --unit-id must be 1..247 and --port 0..65535", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(args))
    except EmulatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
