"""Probe one Modbus device at commissioning: where its SunSpec map is, which models it has, which roles it can
fill (battery, PV, wind, generator, site meter) and through which model and points, what it reads now, and
(``--write``) whether a command through the resolved path is written and held.

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
from heron_edge.errors import DeviceError

if TYPE_CHECKING:
    from firmware_bridge import DeviceInfo, ModbusDeviceConfig, SetpointResult, Telemetry

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
    parser.add_argument("--host", required=True, metavar="HOST", help="the device's address (Modbus TCP)")
    parser.add_argument("--port", type=tcp_port, default=502, metavar="PORT", help="(default: %(default)s)")
    parser.add_argument("--unit", type=_unit, default=None, metavar="N",
                        help="Modbus unit id, 0..255 (default: try " + ", ".join(map(str, UNIT_CANDIDATES)) + ")")
    parser.add_argument("--base-address", type=_base, default=None, metavar="N",
                        help="where the 'SunS' marker sits (default: try 40000, 0, 50000)")
    parser.add_argument("--timeout-s", type=seconds(below=60.0), default=1.0, metavar="S",
                        help="per request (default: %(default)s)")
    parser.add_argument("--revert-s", type=_revert, default=60, metavar="S",
                        help="revert time written with --write: the device drops the command after it "
                             "(default: %(default)s)")
    parser.add_argument("--write", action="append", type=_write, default=None, metavar="KEY=VALUE",
                        help="write through the resolved path and read back: battery_w=W (negative = charge), "
                             "generator_w=W, pv_limit_pct=PCT (repeatable)")
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


def _write(text: str) -> tuple[str, float]:
    """argparse type of ``--write``: ``KEY=VALUE`` with a known key and a finite number."""
    key, sep, raw = text.partition("=")
    if not sep or key not in WRITE_KEYS:
        raise argparse.ArgumentTypeError(f"KEY=VALUE with KEY one of {', '.join(WRITE_KEYS)}, not {text!r}")
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key}: a number expected, not {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{key}: a finite number expected, not {raw!r}")
    if key == "pv_limit_pct" and not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"pv_limit_pct must be 0..100, not {raw}")
    return key, value


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
        lines = [f"device {self.host}:{self.port} unit {self.unit}: SunSpec map at {self.base_address}",
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

    return ModbusDeviceConfig(host=args.host, port=args.port, unit_id=unit, base_address=base, timeout_s=args.timeout_s,
                              retries=retries, backoff_s=0.05, min_limit_pct=0.0)


async def _locate(args: argparse.Namespace) -> tuple[int, int]:
    """The unit id and base address of the SunSpec map: the first candidate that answers 'SunS'."""
    from firmware_bridge import DeviceConnectionError, DeviceExceptionResponse, DeviceTimeoutError, ModbusLink
    from firmware_bridge import DeviceError as BridgeError

    units = [args.unit] if args.unit is not None else list(UNIT_CANDIDATES)
    bases = [args.base_address] if args.base_address is not None else list(BASE_CANDIDATES)
    tried: list[str] = []
    for unit in units:
        async with ModbusLink(_config(args, unit, bases[0], retries=1)) as link:
            for base in bases:
                try:
                    head = await link.read(base, 2, unit_id=unit)
                except DeviceConnectionError as exc:
                    raise DeviceError(f"{args.host}:{args.port}: cannot connect: {exc}") from None
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
    raise DeviceError(f"{args.host}:{args.port}: no SunSpec map found ({'; '.join(tried)})")


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


async def probe(args: argparse.Namespace) -> ProbeReport:
    """Locate, discover, read (and write, with ``--write``); DeviceError when the device is not a SunSpec device
    or cannot be reached."""
    from firmware_bridge import DeviceError as BridgeError
    from firmware_bridge import ModbusDevice, ModbusLink
    from firmware_bridge.sunspec import load_model

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
            host=args.host, port=args.port, unit=unit, base_address=base,
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
