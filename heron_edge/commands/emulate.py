"""Run an emulated SunSpec battery, PV inverter or site meter on a Modbus TCP port until interrupted (Ctrl-C).

``--profile`` picks the SunSpec models it exposes (``ieee1547``: 7xx; ``legacy``: 1xx as SMA, Fronius, SolarEdge
ship them, see ``firmware_bridge.sunspec_device``); ``--quirk`` makes it misbehave as real devices do.
``--map NAME_OR_FILE`` serves a register map instead (``firmware_bridge.regmap.MapEmulation``: every point at a
plausible value, writable points writable, a battery's or generator's power following its setpoint), on TCP or,
with ``--serial PORT``, as Modbus RTU on a serial port."""
from __future__ import annotations

import argparse
import asyncio
import signal
import socket

from heron_edge.commands import add_log_level, fail, integer, setup_logging, tcp_port
from heron_edge.errors import ConfigError

_PROFILES = ("ieee1547", "legacy")  # firmware_bridge.PROFILES, said here so that --help imports nothing heavy
_QUIRKS = ("ignore-writes", "busy", "slow", "own-unit-only")  # firmware_bridge.QUIRKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``heron-edge emulate``."""
    parser.add_argument("--device", choices=("battery", "inverter", "meter"), default=None,
                        help="the SunSpec device to emulate (or --map)")
    parser.add_argument("--map", default=None, metavar="NAME_OR_FILE",
                        help="serve a register map instead: a shipped map (eastron-sdm630, carlo-gavazzi-em24, "
                             "victron-gx-ess, deepsea-dse7320) or a TOML file")
    parser.add_argument("--serial", default=None, metavar="PORT",
                        help="with --map: serve Modbus RTU on this serial port instead of TCP")
    parser.add_argument("--baud", type=_baud, default=9600, metavar="B", help="with --serial (default: %(default)s)")
    parser.add_argument("--port", type=tcp_port, default=None, metavar="PORT",
                        help="TCP port (0 picks a free one); required unless --serial")
    parser.add_argument("--profile", choices=_PROFILES, default="ieee1547",
                        help="the SunSpec models it exposes: ieee1547 (battery 1+701+702+704+713, inverter 1+701+702+704, "
                             "meter 1+213) or legacy (battery 1+103+120+121+124+802, inverter 1+103+120-123+160, meter "
                             "1+203) (default: %(default)s)")
    parser.add_argument("--quirk", action="append", choices=_QUIRKS, default=None,
                        help="misbehave as real devices do (repeatable): ignore-writes (acknowledge a write, apply "
                             "nothing), busy (bursts of exception 04), slow (answers after 0.2 s), own-unit-only (no "
                             "answer at all for another unit id)")
    parser.add_argument("--base-address", type=_base_address, default=40000, metavar="N",
                        help="where the 'SunS' marker sits: 40000, 0 or 50000 (default: %(default)s)")
    parser.add_argument("--unit-id", type=_unit_id, default=None, metavar="N",
                        help="Modbus unit id to answer, 1..255 (default: 1; with --map the map's)")
    parser.add_argument("--host", default="127.0.0.1", metavar="HOST", help="address to listen on (default: %(default)s)")
    add_log_level(parser, default="INFO")


def _baud(text: str) -> int:
    value = integer(text)
    if not 300 <= value <= 4_000_000:
        raise argparse.ArgumentTypeError(f"must be 300..4000000, not {value}")
    return value


def _unit_id(text: str) -> int:
    """argparse type of ``--unit-id``: a Modbus unit id a server answers, 1..255 (0 is every unit's)."""
    value = integer(text)
    if not 1 <= value <= 255:
        raise argparse.ArgumentTypeError(f"must be 1..255, not {value}")
    return value


def _base_address(text: str) -> int:
    """argparse type of ``--base-address``: one of the SunSpec base addresses."""
    value = integer(text)
    if value not in (40000, 0, 50000):
        raise argparse.ArgumentTypeError(f"must be 40000, 0 or 50000, not {value}")
    return value


def _check_listen(host: str, port: int) -> None:
    """Say a host that does not resolve, or a port already taken, before the server starts (its own error names
    neither); a ConfigError naming the option. Port 0 (any free port) is not tried."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: cannot resolve it: {exc.strerror}") from None
    if port == 0:
        return
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


async def _serve_map(args: argparse.Namespace, stop: asyncio.Event) -> None:
    from firmware_bridge.regmap import MapEmulation, RegmapServer, load_map

    regmap = load_map(args.map)
    unit = args.unit_id if args.unit_id is not None else regmap.device.unit_id
    emulation = MapEmulation(regmap)
    server = RegmapServer({unit: emulation.tables}, host=args.host, port=args.port or 0, serial_port=args.serial,
                          baudrate=args.baud)
    async with server:
        where = f"{args.serial} (rtu, {args.baud} baud)" if args.serial else f"{args.host}:{server.port}"
        writable = [p.name for p in regmap.points if p.writable]
        print(f"emulated {regmap.name} ({regmap.device.vendor} {regmap.device.model}: {len(regmap.points)} points, "
              f"writable {', '.join(writable) or 'none'}) listening on {where} unit {unit}", flush=True)
        await stop.wait()


async def _serve(args: argparse.Namespace) -> None:
    from firmware_bridge import Emulator, Profile, make_model, parse_quirks

    quirks = list(getattr(args, "quirk", None) or [])
    profile: Profile = getattr(args, "profile", "ieee1547")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if getattr(args, "map", None) is not None:
        await _serve_map(args, stop)
        print("stopped", flush=True)
        return
    async with Emulator(make_model(args.device), host=args.host, port=args.port, unit_id=args.unit_id or 1,
                        profile=profile, quirks=parse_quirks(quirks),
                        base=getattr(args, "base_address", 40000)) as emu:
        models = "+".join(str(loc.model_id) for loc in emu.device.image.locations)
        print(f"emulated {args.device} ({profile}: models {models}{'; quirks ' + ', '.join(quirks) if quirks else ''}) "
              f"listening on {args.host}:{emu.port} unit {args.unit_id or 1}", flush=True)
        await stop.wait()
    print("stopped", flush=True)


def _check_usage(args: argparse.Namespace) -> None:
    """Exactly one of --device and --map; --port unless --serial (with --map); ConfigError (exit 2) otherwise."""
    device, regmap, serial = args.device, getattr(args, "map", None), getattr(args, "serial", None)
    if (device is None) == (regmap is None):
        raise ConfigError("give --device (a SunSpec device) or --map (a register map), one of them")
    if serial is not None and regmap is None:
        raise ConfigError("--serial serves a --map device; SunSpec devices are served on TCP (--port)")
    if serial is None and args.port is None:
        raise ConfigError("--port is required (or --serial with --map)")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 0 on a clean stop, 2 when the address cannot be listened on (one error line,
    said here rather than by ``heron_edge.cli``: tests and scripts call this ``run`` without the dispatcher)."""
    from firmware_bridge import EmulatorError
    from firmware_bridge.regmap import MapError, load_map

    try:
        _check_usage(args)
        if getattr(args, "map", None) is not None:
            load_map(args.map)  # a bad map is said before anything listens
        if getattr(args, "serial", None) is None:
            _check_listen(args.host, args.port)
    except ConfigError as exc:
        return fail("emulate", exc)
    except MapError as exc:
        return fail("emulate", ConfigError(f"--map: {exc}"))
    if getattr(args, "serial", None) is not None and args.unit_id is not None and args.unit_id > 247:
        return fail("emulate", ConfigError(f"--unit-id {args.unit_id}: a Modbus RTU unit id is 1..247"))
    setup_logging(getattr(args, "log_level", "INFO"))
    try:
        asyncio.run(_serve(args))
    except EmulatorError as exc:
        return fail("emulate", exc, code=2)
    return 0
