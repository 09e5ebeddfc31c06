"""Probe one Modbus device at commissioning: where its SunSpec map is, which models it has, which roles it can
fill (battery, PV, wind, generator, site meter) and through which model and points, what it reads now, and
(``--write``) whether a command through the resolved path is written and held.

With ``--map NAME_OR_FILE`` the device is a register-map device (``firmware_bridge.regmap``: a shipped map such
as ``eastron-sdm630``, or a TOML file): every point of the map is read (batched per table), with the roles the map
can fill and what each role field reads; ``--write POINT=VALUE`` writes any writable point (clamped to its limits)
and reads it back. ``--serial PORT --baud B`` reaches a device on an RS-485 line (Modbus RTU) instead of TCP.

Without ``--unit`` the unit ids devices commonly answer at are tried in turn (1, 126 as SMA's SunSpec unit,
2, 3, 240 as a Fronius meter, 0, 255); without ``--base-address`` the SunSpec base addresses 40000, 0 and
50000. ``--write battery_w=-2000`` charges at 2 kW (negative = charge, the environment's sign: + discharge);
``--write pv_limit_pct=50`` limits a PV inverter to 50 % of WMax; ``generator_w=W`` commands a generator.
Each write carries the device's revert timer (``--revert-s``), so the device returns to its default by itself.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from heron_edge.commands import add_log_level, integer, seconds, setup_logging, tcp_port
from heron_edge.errors import ConfigError, DeviceError

if TYPE_CHECKING:
    from firmware_bridge import DeviceInfo, ModbusDeviceConfig, Role, SetpointResult, Telemetry
    from firmware_bridge.regmap import RegmapDevice

UNIT_CANDIDATES = (1, 126, 2, 3, 240, 0, 255)
"""Unit ids tried, in order, when ``--unit`` is not given."""
BASE_CANDIDATES = (40000, 0, 50000)
"""SunSpec base addresses tried, in order, when ``--base-address`` is not given."""
WRITE_KEYS = {"battery_w": "battery", "generator_w": "generator", "pv_limit_pct": "pv"}
"""``--write KEY=VALUE``: the key, and the role it writes as."""

_UNITS = {"p_w": "W", "q_var": "var", "v_v": "V", "hz": "Hz", "soc_pct": "%", "energy_available_wh": "Wh",
          "phase_w": "W", "dc_w": "W"}
_READINGS = {"p_w": "active power (+ injected; a meter: + imported)", "q_var": "reactive power",
             "v_v": "line-to-line voltage", "hz": "frequency", "soc_pct": "state of charge",
             "energy_available_wh": "energy available", "phase_w": "power per phase (A, B, C)",
             "dc_w": "DC input, every MPPT module"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``heron-edge probe``."""
    parser.add_argument("--host", default=None, metavar="HOST", help="the device's address (Modbus TCP)")
    parser.add_argument("--serial", default=None, metavar="PORT",
                        help="an RS-485 / serial port instead of --host (Modbus RTU), e.g. /dev/ttyUSB0")
    parser.add_argument("--baud", type=_baud, default=9600, metavar="B", help="serial baud rate (default: %(default)s)")
    parser.add_argument("--parity", choices=("N", "E", "O"), default="N", help="serial parity (default: %(default)s)")
    parser.add_argument("--stopbits", type=int, choices=(1, 2), default=1, help="serial stop bits (default: %(default)s)")
    parser.add_argument("--map", default=None, metavar="NAME_OR_FILE",
                        help="a register map instead of SunSpec: a shipped map (eastron-sdm630, carlo-gavazzi-em24, "
                             "victron-gx-ess, deepsea-dse7320) or a TOML file; --unit defaults to the map's")
    parser.add_argument("--port", type=tcp_port, default=502, metavar="PORT", help="(default: %(default)s)")
    parser.add_argument("--unit", type=_unit, default=None, metavar="N",
                        help="Modbus unit id, 0..255 (default: try " + ", ".join(str(u) for u in UNIT_CANDIDATES) + ")")
    parser.add_argument("--base-address", type=_base, default=None, metavar="N",
                        help="where the 'SunS' marker sits (default: try 40000, 0, 50000)")
    parser.add_argument("--timeout-s", type=seconds(below=60.0), default=1.0, metavar="S",
                        help="per request (default: %(default)s)")
    parser.add_argument("--revert-s", type=_revert, default=60, metavar="S",
                        help="revert time written with --write: the device drops the command after it "
                             "(default: %(default)s)")
    parser.add_argument("--write", action="append", type=_write, default=None, metavar="KEY=VALUE",
                        help="write through the resolved path and read back: battery_w=W (negative = charge), "
                             "generator_w=W, pv_limit_pct=PCT; with --map: POINT=VALUE, any writable point "
                             "(repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    add_log_level(parser, default="ERROR")


def _unit(text: str) -> int:
    value = integer(text)
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"must be 0..255, not {value}")
    return value


def _base(text: str) -> int:
    value = integer(text)
    if not 0 <= value <= 65_535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, not {value}")
    return value


def _revert(text: str) -> int:
    value = seconds(zero=True, below=4_294_967_295.0)(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"whole seconds expected, not {text}")
    return int(value)


def _baud(text: str) -> int:
    value = integer(text)
    if not 300 <= value <= 4_000_000:
        raise argparse.ArgumentTypeError(f"must be 300..4000000, not {value}")
    return value


def _write(text: str) -> tuple[str, float]:
    """argparse type of ``--write``: ``KEY=VALUE`` with a key and a finite number (which keys: see ``_check_writes``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"KEY=VALUE expected (e.g. {', '.join(f'{k}=...' for k in WRITE_KEYS)}), "
                                         f"not {text!r}")
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key}: a number expected, not {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{key}: a finite number expected, not {raw!r}")
    return key, value


def _check_writes(args: argparse.Namespace) -> None:
    """The SunSpec probe's ``--write`` keys: known ones, in range; ConfigError (exit 2) otherwise."""
    for key, value in args.write or ():
        if key not in WRITE_KEYS:
            raise ConfigError(f"--write: KEY=VALUE with KEY one of {', '.join(WRITE_KEYS)} (or a point with --map), "
                              f"not {key!r}")
        if key == "pv_limit_pct" and not 0.0 <= value <= 100.0:
            raise ConfigError(f"--write: pv_limit_pct must be 0..100, not {value:g}")


def _where(args: argparse.Namespace) -> str:
    return f"{args.serial} (rtu)" if args.serial is not None else f"{args.host}:{args.port}"


def _check_target(args: argparse.Namespace) -> None:
    if (args.host is None) == (args.serial is None):
        raise ConfigError("give the device's --host (Modbus TCP) or its --serial port (Modbus RTU), one of them")


@dataclass
class ProbeReport:
    """What a probe found (the JSON document, and what the text says)."""

    host: str
    port: int
    unit: int
    base_address: int
    identity: dict[str, str | None]
    models: list[dict[str, Any]]
    roles: dict[str, dict[str, Any]]
    role: str | None
    readings: dict[str, dict[str, Any]]
    writes: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "unit": self.unit, "base_address": self.base_address,
                "identity": self.identity, "models": self.models, "roles": self.roles, "role": self.role,
                "readings": self.readings, "writes": self.writes}

    @property
    def writes_held(self) -> bool:
        return all(w.get("readback_ok") for w in self.writes)

    def text(self) -> str:
        ident = self.identity
        where = self.host if self.port == 0 else f"{self.host}:{self.port}"
        lines = [f"device {where} unit {self.unit}: SunSpec map at {self.base_address}",
                 f"  {ident.get('manufacturer') or '?'} {ident.get('model') or '?'}, serial {ident.get('serial') or '?'}, "
                 f"version {ident.get('version') or '?'}",
                 "models: " + ", ".join(f"{m['id']} {m['name']} (L {m['length']}, @{m['address']})" for m in self.models)]
        fillable = [r for r, info in self.roles.items() if info["ok"]]
        lines.append("roles it can fill: " + (", ".join(fillable) if fillable else "none"))
        for role, info in self.roles.items():
            if role == "wind" and info == self.roles.get("pv"):
                continue  # resolved exactly as pv
            if info["ok"]:
                lines.append(f"{'pv / wind' if role == 'pv' and self.roles.get('wind') == info else role}:")
                for name, cap in info["capabilities"].items():
                    lines.append(f"  {name:<14} {cap['uses']}")
            else:
                missing = "; ".join(f"{name} (needs {need})" for name, need in info["missing"].items())
                name = "pv / wind" if role == "pv" and self.roles.get("wind") == info else role
                lines.append(f"{name}: no: missing {missing}")
        if self.role is not None:
            lines.append(f"readings (as {self.role}):")
            for name, reading in self.readings.items():
                value = reading["value"]
                shown = ("not implemented" if value is None else
                         ", ".join("-" if v is None else f"{v:g}" for v in value) if isinstance(value, list) else f"{value:g}")
                units = f" {reading['units']}" if value is not None else ""
                lines.append(f"  {name:<20} {shown}{units}  ({reading['what']})")
        for w in self.writes:
            if "error" in w:
                lines.append(f"write {w['key']}={w['value']:g}: failed: {w['error']}")
                continue
            reference = "WChaMax" if "124" in w["via"] else "WMax"
            limit = f" ({w['limit_pct']:g} % of {reference})" if w.get("limit_pct") is not None else ""
            revert = f"revert {w['revert_s']} s" if w["revert_s"] else "no revert timer: it stays until changed"
            measured = "" if w.get("measured_w") is None else f"; measured now {w['measured_w']:g} W"
            lines.append(f"write {w['key']}={w['value']:g}: wrote {w['written_w']:g} W{limit} via {w['via']}, {revert}; "
                         f"read back: {'held' if w['readback_ok'] else 'DIFFERS (the device acknowledged and ignored it)'}"
                         f"{measured}")
        return "\n".join(lines)


def _config(args: argparse.Namespace, unit: int, base: int, retries: int = 2) -> ModbusDeviceConfig:
    from firmware_bridge import ModbusDeviceConfig

    link: dict[str, Any] = ({"transport": "rtu", "serial_port": args.serial, "baudrate": args.baud,
                             "parity": args.parity, "stopbits": args.stopbits} if args.serial is not None
                            else {"host": args.host, "port": args.port})
    return ModbusDeviceConfig(**link, unit_id=unit, base_address=base, timeout_s=args.timeout_s, retries=retries,
                              backoff_s=0.05, min_limit_pct=0.0)


async def _locate(args: argparse.Namespace) -> tuple[int, int]:
    """The unit id and base address of the SunSpec map: the first candidate that answers 'SunS'."""
    from firmware_bridge import DeviceConnectionError, DeviceExceptionResponse, DeviceTimeoutError, ModbusLink
    from firmware_bridge import DeviceError as BridgeError

    units = [args.unit] if args.unit is not None else list(UNIT_CANDIDATES)
    if args.serial is not None:  # on a serial line 0 is the broadcast address and 248..255 are reserved
        units = [u for u in units if 1 <= u <= 247]
        if not units:
            raise ConfigError(f"--unit {args.unit}: a Modbus RTU unit id is 1..247")
    bases = [args.base_address] if args.base_address is not None else list(BASE_CANDIDATES)
    tried: list[str] = []
    for unit in units:
        async with ModbusLink(_config(args, unit, bases[0], retries=1)) as link:
            for base in bases:
                try:
                    head = await link.read(base, 2, unit_id=unit)
                except DeviceConnectionError as exc:
                    raise DeviceError(f"{_where(args)}: cannot connect: {exc}") from None
                except DeviceTimeoutError:
                    tried.append(f"unit {unit}: no answer")
                    break  # nobody at this unit id: the other bases would not answer either
                except DeviceExceptionResponse as exc:
                    tried.append(f"unit {unit} @{base}: exception {exc.exception_code}")
                    if exc.exception_code in (10, 11):  # a gateway with nothing behind this unit id
                        break
                    continue
                except BridgeError as exc:
                    tried.append(f"unit {unit} @{base}: {exc}")
                    continue
                if tuple(head) == (0x5375, 0x6E53):
                    return unit, base
                tried.append(f"unit {unit} @{base}: no 'SunS' marker")
    raise DeviceError(f"{_where(args)}: no SunSpec map found ({'; '.join(tried)})")


def _capabilities(info: DeviceInfo) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for role, resolution in info.roles.items():
        out[role] = {"ok": resolution.ok,
                     "capabilities": {name: {"model": cap.model_id, "points": list(cap.points), "via": cap.via,
                                             "uses": cap.describe(),
                                             **({"sources": [list(s) for s in cap.sources]} if cap.sources else {})}
                                      for name, cap in resolution.capabilities.items()},
                     "missing": dict(resolution.missing)}
        if resolution.limits is not None:
            out[role]["limits_w"] = [resolution.limits.p_min_w, resolution.limits.p_max_w]
    return out


_ROLE_READINGS = {"soc_pct": ("battery",), "energy_available_wh": ("battery",), "phase_w": ("meter",)}
"""Readings only some roles have (the others: every role)."""


def _readings(telemetry: Telemetry, role: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, units in _UNITS.items():
        value = getattr(telemetry, name)
        if role not in _ROLE_READINGS.get(name, (role,)) or (name == "dc_w" and value is None):
            continue
        out[name] = {"value": list(value) if isinstance(value, tuple) else value, "units": units, "what": _READINGS[name]}
    return out


async def probe(args: argparse.Namespace) -> ProbeReport | MapReport:
    """Locate, discover, read (and write, with ``--write``); DeviceError when the device is not a SunSpec device
    or cannot be reached. With ``--map``: :func:`probe_map`."""
    from firmware_bridge import DeviceError as BridgeError
    from firmware_bridge import ModbusDevice, ModbusLink
    from firmware_bridge.sunspec import load_model

    _check_target(args)
    if args.map is not None:
        return await probe_map(args)
    _check_writes(args)
    unit, base = await _locate(args)
    config = _config(args, unit, base)
    async with ModbusLink(config) as link:
        try:
            async with ModbusDevice(config, link=link) as device:
                info = await device.discover()
                telemetry = await device.read_telemetry() if info.role is not None else None
        except BridgeError as exc:
            raise DeviceError(str(exc)) from exc
        models = []
        for loc in info.models:
            try:
                name = load_model(loc.model_id).name
            except KeyError:
                name = "(no SunSpec definition)"
            models.append({"id": loc.model_id, "name": name, "address": loc.address, "length": loc.length})
        report = ProbeReport(
            host=args.host if args.serial is None else f"{args.serial} (rtu)", port=args.port if args.serial is None
            else 0, unit=unit, base_address=base,
            identity={"manufacturer": info.manufacturer, "model": info.model, "serial": info.serial,
                      "version": info.version},
            models=models, roles=_capabilities(info), role=info.role,
            readings=_readings(telemetry, info.role) if telemetry is not None and info.role is not None else {})
        if telemetry is not None and telemetry.stale:
            report.readings["error"] = {"value": None, "units": "", "what": telemetry.error or "stale"}
        for key, value in args.write or ():
            report.writes.append(await _write_one(config, link, key, value, args.revert_s))
    return report


async def _write_one(config: ModbusDeviceConfig, link: Any, key: str, value: float, revert_s: int) -> dict[str, Any]:
    from firmware_bridge import DeviceError as BridgeError
    from firmware_bridge import ModbusDevice

    role = WRITE_KEYS[key]
    entry: dict[str, Any] = {"key": key, "value": value, "role": role}
    try:
        async with ModbusDevice(config, link=link, role=role) as device:  # type: ignore[arg-type]
            result: SetpointResult
            if key == "pv_limit_pct":
                result = await device.write_limit_pct(value, revert_s=revert_s)
            else:
                result = await device.write_setpoint(value, revert_s=revert_s)
            await asyncio.sleep(0.1)
            after = await device.read_telemetry()
    except BridgeError as exc:
        entry["error"] = str(exc)
        entry["readback_ok"] = False
        return entry
    entry.update(written_w=result.written_w, limit_pct=result.limit_pct, clamped=result.clamped,
                 revert_s=result.revert_s, via=result.capability, readback_ok=result.readback_ok,
                 measured_w=None if after.stale else after.p_w)
    return entry


@dataclass
class MapReport:
    """What a probe of a register-map device found (the JSON document, and what the text says)."""

    where: str
    unit: int
    map: str
    device: dict[str, str]
    roles: list[str]
    missing: dict[str, list[str]]
    role: str | None
    requests: list[list[Any]]
    points: dict[str, dict[str, Any]]
    readings: dict[str, dict[str, Any]]
    writes: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"where": self.where, "unit": self.unit, "map": self.map, "device": self.device, "roles": self.roles,
                "missing": self.missing, "role": self.role, "requests": self.requests, "points": self.points,
                "readings": self.readings, "writes": self.writes}

    @property
    def writes_held(self) -> bool:
        return all(w.get("readback_ok") for w in self.writes)

    def text(self) -> str:
        d = self.device
        lines = [f"device {self.where} unit {self.unit}: register map {self.map} ({d['vendor']} {d['model']})"]
        if d.get("document"):
            lines.append(f"  after: {d['document']}")
        lines.append("roles it can fill: " + (", ".join(self.roles) if self.roles else "none"))
        for role, fields in self.missing.items():
            if fields and role != "wind":
                lines.append(f"{role}: no: missing {', '.join(fields)}")
        lines.append(f"points ({len(self.requests)} requests: "
                     + ", ".join(f"{t} {a}+{n}" for t, a, n in self.requests) + "):")
        for name, point in self.points.items():
            value = point["value"]
            shown = "not implemented" if value is None else (f"{value:g}" if isinstance(value, float) else repr(value))
            units = f" {point['units']}" if value is not None and point["units"] else ""
            feeds = f" -> {point['role']}" if point["role"] else ""
            lines.append(f"  {name:<26} {shown}{units}  ({point['table']} {point['address']} {point['type']}, "
                         f"{point['access']}{feeds})")
        if self.role is not None:
            lines.append(f"readings (as {self.role}):")
            for name, reading in self.readings.items():
                value = reading["value"]
                shown = ("not implemented" if value is None else
                         ", ".join("-" if v is None else f"{v:g}" for v in value) if isinstance(value, list)
                         else f"{value:g}")
                lines.append(f"  {name:<20} {shown}{'' if value is None else ' ' + reading['units']}  ({reading['what']})")
        for w in self.writes:
            if "error" in w:
                lines.append(f"write {w['key']}={w['value']:g}: failed: {w['error']}")
                continue
            clamped = " (clamped to its limits)" if w["clamped"] else ""
            lines.append(f"write {w['key']}={w['value']:g}: wrote {w['written']}{clamped} via {w['via']}; read back: "
                         f"{'held' if w['readback_ok'] else 'DIFFERS (the device acknowledged and ignored it)'}")
        return "\n".join(lines)


async def probe_map(args: argparse.Namespace) -> MapReport:
    """Read every point of ``--map`` at ``--unit`` (default: the map's unit id), say which roles the map fills and
    what the role reads, and write ``--write POINT=VALUE`` (read back); ConfigError for a bad map or point,
    DeviceError when the device cannot be reached."""
    from firmware_bridge import DeviceError as BridgeError
    from firmware_bridge.regmap import MapError, RegmapDevice, load_map, plan_reads

    try:
        regmap = load_map(args.map)
    except MapError as exc:
        raise ConfigError(f"--map: {exc}") from None
    for key, _ in args.write or ():
        point = next((p for p in regmap.points if p.name == key), None)
        if point is None or not point.writable:
            writable = ", ".join(p.name for p in regmap.points if p.writable) or "none"
            raise ConfigError(f"--write: {regmap.name} has no writable point {key!r} (writable: {writable})")
    unit = args.unit if args.unit is not None else regmap.device.unit_id
    if args.serial is not None and not 1 <= unit <= 247:
        raise ConfigError(f"--unit {unit}: a Modbus RTU unit id is 1..247")
    config = _config(args, unit, 0)
    where = _where(args)
    report_points: dict[str, dict[str, Any]] = {}
    try:
        async with RegmapDevice(config, regmap=regmap) as device:
            values = await device.read_points()
            telemetry = await device.read_telemetry() if device.role is not None else None
            writes = [await _write_point(device, key, value) for key, value in args.write or ()]
    except BridgeError as exc:
        raise DeviceError(f"{where} unit {unit} ({regmap.name}): {exc}") from exc
    for point in regmap.points:
        if point.readable:
            report_points[point.name] = {"value": values.get(point.name), "units": point.units, "role": point.role,
                                         "table": point.table, "address": point.address, "type": point.type,
                                         "access": point.access, "what": point.description}
    readings = _readings(telemetry, device.role) if telemetry is not None and device.role is not None else {}
    if device.role is not None:  # only what the map feeds
        fed = {f.partition(".")[2] for f in (p.role for p in regmap.points if p.role) if f.startswith(f"{device.role}.")}
        fed |= {"phase_w"} if fed & {"phase_a_w", "phase_b_w", "phase_c_w"} else set()
        readings = {name: r for name, r in readings.items() if name in fed}
    if telemetry is not None and telemetry.stale:
        readings["error"] = {"value": None, "units": "", "what": telemetry.error or "stale"}
    requests = [[t, a, n] for t, a, n in plan_reads([p for p in regmap.points if p.readable], regmap).requests]
    return MapReport(where=where, unit=unit, map=regmap.name,
                     device={"vendor": regmap.device.vendor, "model": regmap.device.model,
                             "document": regmap.device.document},
                     roles=list(regmap.fillable_roles), missing={r: regmap.missing(r) for r in _MAP_ROLES},
                     role=device.role, requests=requests, points=report_points, readings=readings, writes=writes)


_MAP_ROLES: tuple[Role, ...] = ("battery", "generator", "pv", "wind", "meter")


async def _write_point(device: RegmapDevice, key: str, value: float) -> dict[str, Any]:
    from firmware_bridge import DeviceError as BridgeError

    point = device.regmap.point(key)
    entry: dict[str, Any] = {"key": key, "value": value, "via": f"{point.where()}, function "
                             f"{'05' if point.table == 'coil' else f'{point.write_function:02d}'}"}
    try:
        done = await device.write_point(key, value)
    except BridgeError as exc:
        entry.update(error=str(exc), readback_ok=False)
        return entry
    entry.update(written=done.written, clamped=done.clamped, readback_ok=done.readback_ok)
    return entry


def run(args: argparse.Namespace) -> int:
    """0: probed (and every write held); 1: unreachable, not SunSpec, or a write not held (DeviceError or the
    report says so)."""
    import logging

    setup_logging(args.log_level)
    if args.log_level != "DEBUG":  # pymodbus says every unanswered unit id it tried; the report says what matters
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    report = asyncio.run(probe(args))
    print(json.dumps(report.as_dict(), indent=1) if args.json else report.text())
    if not report.writes_held:
        print("heron-edge probe: error: a write was not held (see above)", file=sys.stderr)
        return 1
    return 0
