"""``RegmapDevice``: a device described by a register map (TOML), in a role, over a (shared) ``ModbusLink``.

    async with RegmapDevice(ModbusDeviceConfig(host="10.0.0.9", unit_id=2, map="eastron-sdm630"), role="meter") as m:
        telemetry = await m.read_telemetry()   # the same Telemetry a SunSpec device gives; stale on trouble

It offers what ``firmware_bridge.ModbusDevice`` offers a gateway (``read_telemetry``, ``write_setpoint``, ``stats``,
``limits``), so a map device fills a role exactly as a SunSpec device does. Reads are planned once: the points a
cycle needs (and their scale registers), per table, merged into as few requests as the map's ``max_read`` and
``max_gap`` allow. Writes are clamped to the point's limits, written with its function (06 or 16) and read back.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from types import TracebackType

from firmware_bridge.capabilities import PowerLimits, Role
from firmware_bridge.client import DeviceStats, SetpointResult, Telemetry
from firmware_bridge.config import ModbusDeviceConfig
from firmware_bridge.errors import (
    CapabilityError,
    DeviceClosedError,
    DeviceError,
    EncodingError,
    SetpointError,
)
from firmware_bridge.link import ModbusLink
from firmware_bridge.regmap.codec import decode, encode
from firmware_bridge.regmap.schema import READ_FIELDS, WRITE_FIELDS, Point, RegisterMap, Table, load_map

__all__ = ["PointWrite", "ReadPlan", "RegmapDevice", "plan_reads"]

log = logging.getLogger(__name__)

_INFER_ORDER: tuple[Role, ...] = ("battery", "meter", "pv", "generator")
_NEVER_READ = Telemetry(timestamp=0.0, stale=True, error="not read yet")
_TABLE_ORDER: dict[Table, int] = {"holding": 0, "input": 1, "coil": 2, "discrete": 3}


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """The requests (table, address, count) that read a set of points."""

    requests: tuple[tuple[Table, int, int], ...]


@dataclass(frozen=True, slots=True)
class PointWrite:
    """What a write of one point did: asked, written (after clamping and encoding), whether the device holds it."""

    point: str
    requested: float | str
    written: float | str | None
    clamped: bool
    readback_ok: bool


def plan_reads(points: Iterable[Point], regmap: RegisterMap) -> ReadPlan:
    """The fewest requests per table that cover ``points`` (and their scale registers): spans at most
    ``max_gap`` apart are merged, up to ``max_read`` registers (2000 bits for coils / discrete inputs)."""
    wanted: dict[str, Point] = {}
    for point in points:
        wanted[point.name] = point
        if point.scale_register is not None:
            sf = regmap.point(point.scale_register)
            wanted[sf.name] = sf
    by_table: dict[Table, list[tuple[int, int]]] = {}
    for point in wanted.values():
        by_table.setdefault(point.table, []).append((point.address, point.size))
    requests: list[tuple[Table, int, int]] = []
    gap, limit = regmap.device.max_gap, regmap.device.max_read
    for table in sorted(by_table, key=_TABLE_ORDER.__getitem__):
        most = limit if table in ("holding", "input") else 2000
        merged: list[tuple[int, int]] = []
        for address, count in sorted(by_table[table]):
            if merged:
                start, n = merged[-1]
                end = max(start + n, address + count)
                if address - (start + n) <= gap and end - start <= most:
                    merged[-1] = (start, end - start)
                    continue
            merged.append((address, count))
        requests += [(table, a, n) for a, n in merged]
    return ReadPlan(tuple(requests))


class RegmapDevice:
    """A register-map device at ``config.unit_id`` in ``role`` (None: the first role its map fills), on its own link
    or a shared one. ``regmap``: the map (default: ``config.map`` loaded)."""

    def __init__(
        self,
        config: ModbusDeviceConfig,
        *,
        regmap: RegisterMap | None = None,
        link: ModbusLink | None = None,
        role: Role | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if regmap is None:
            if config.map is None:
                raise CapabilityError(f"{config.link_name} unit {config.unit_id}: no register map (config.map)")
            regmap = load_map(config.map)
        self.config = config
        self.regmap = regmap
        if role is None:
            role = next((r for r in _INFER_ORDER if not regmap.missing(r)), None)
        elif regmap.missing(role):
            raise CapabilityError(
                f"{role} at {config.link_name} unit {config.unit_id}: map {regmap.name} cannot fill the {role} role: "
                f"it has no point for {', '.join(regmap.missing(role))}")
        self.role: Role | None = role
        self._owns_link = link is None
        self._link = link if link is not None else ModbusLink(config)
        self._wall_clock = wall_clock
        self._state = "new"
        self._telemetry = _NEVER_READ
        self._fields = self._role_points()
        self._plan = plan_reads(self._fields.values(), regmap)
        self._write_lock = asyncio.Lock()
        self._active: float | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self.stats = DeviceStats()
        self.last_result: SetpointResult | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Make the device usable; no I/O happens until the first request."""
        if self._state == "closed":
            raise DeviceClosedError("device is closed; create a new RegmapDevice")
        self._state = "open"

    async def close(self) -> None:
        """Stop the keep-alive and close the link if this device owns it; closing twice is harmless."""
        if self._state == "closed":
            return
        self._state = "closed"
        task, self._keepalive = self._keepalive, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._owns_link:
            await self._link.close()

    async def __aenter__(self) -> RegmapDevice:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._state != "open":
            raise DeviceClosedError("device is closed" if self._state == "closed"
                                    else "use 'async with RegmapDevice(...)' or await open() first")

    @property
    def name(self) -> str:
        """``meter at /dev/ttyUSB0 (rtu) unit 2 (eastron-sdm630)``."""
        return f"{self.role or 'device'} at {self.config.link_name} unit {self.config.unit_id} ({self.regmap.name})"

    @property
    def link(self) -> ModbusLink:
        return self._link

    @property
    def telemetry(self) -> Telemetry:
        """The last reading (stale when the last read failed)."""
        return self._telemetry

    @property
    def telemetry_requests(self) -> tuple[tuple[Table, int, int], ...]:
        """The (table, address, count) requests one telemetry read makes."""
        return self._plan.requests

    @property
    def limits(self) -> PowerLimits | None:
        """The role's active-power range (the write limits of its command point), W."""
        return self.regmap.limits(self.role) if self.role is not None else None

    def _role_points(self) -> dict[str, Point]:
        if self.role is None:
            return {}
        out: dict[str, Point] = {}
        for field in READ_FIELDS[self.role]:
            point = self.regmap.feeding(f"{self.role}.{field}")
            if point is not None and point.readable:
                out[field] = point
        return out

    # ------------------------------------------------------------------ reads

    async def _read_plan(self, plan: ReadPlan) -> dict[tuple[Table, int], int]:
        registers: dict[tuple[Table, int], int] = {}
        for table, address, count in plan.requests:
            values = await self._link.read(address, count, unit_id=self.config.unit_id, table=table)
            registers.update(((table, address + i), v) for i, v in enumerate(values))
        return registers

    def _value(self, point: Point, registers: dict[tuple[Table, int], int]) -> float | str | None:
        words = [registers[point.table, point.address + i] for i in range(point.size)]
        power = 0
        if point.scale_register is not None:
            sf = self.regmap.point(point.scale_register)
            sf_value = decode(sf, self.regmap.device, [registers[sf.table, sf.address]])
            if not isinstance(sf_value, float) or not -10 <= sf_value <= 10:
                return None  # a scale factor not implemented (or absurd): the value cannot be known
            power = int(sf_value)
        return decode(point, self.regmap.device, words, power)

    async def read_points(self, names: Iterable[str] | None = None) -> dict[str, float | str | None]:
        """Every readable point (or those named) now, batched; raises DeviceError (the probe's read)."""
        self._check_open()
        points = [p for p in self.regmap.points if p.readable] if names is None else [self.regmap.point(n) for n in names]
        registers = await self._read_plan(plan_reads(points, self.regmap))
        return {p.name: self._value(p, registers) for p in points}

    async def read_telemetry(self) -> Telemetry:
        """Read what the role measures (the planned requests). On any device trouble: the last values, stale, with
        the error; never raises DeviceError."""
        self._check_open()
        try:
            if self.role is None:
                raise CapabilityError(f"{self.name}: fills no role ({self._explain()})")
            registers = await self._read_plan(self._plan)
        except DeviceError as exc:
            log.warning("%s", exc)
            self._telemetry = replace(self._telemetry, stale=True, error=str(exc))
            return self._telemetry
        values: dict[str, float | None] = {}
        for field, point in self._fields.items():
            value = self._value(point, registers)
            values[field] = value if isinstance(value, float) else None
        phases = tuple(values.pop(f"phase_{ph}_w", None) for ph in "abc")
        reading = Telemetry(timestamp=self._wall_clock(), stale=False,
                            phase_w=phases if any(v is not None for v in phases) else None,
                            **values)  # type: ignore[arg-type]
        self._telemetry = reading
        return reading

    def _explain(self) -> str:
        return "; ".join(f"{role}: no {', '.join(self.regmap.missing(role))}" for role in READ_FIELDS
                         if role != "wind")

    # ------------------------------------------------------------------ writes

    async def write_point(self, name: str, value: float | str) -> PointWrite:
        """Write one point: clamped to its limits, encoded, written with its function, read back."""
        self._check_open()
        point = self.regmap.point(name)
        if not point.writable:
            raise SetpointError(f"{self.name}: point {name} is read-only")
        async with self._write_lock:
            return await self._write(point, value)

    async def _write(self, point: Point, value: float | str) -> PointWrite:
        target: float | str = value
        clamped = False
        if point.type not in ("string", "bool"):
            number = float(value)
            if not math.isfinite(number):
                raise SetpointError(f"{self.name}: {point.name} = {value!r} is not finite")
            target = point.clamp(number)
            clamped = target != number
        power = 0
        if point.scale_register is not None:
            sf = self.regmap.point(point.scale_register)
            sf_value = (await self.read_points([sf.name]))[sf.name]
            if not isinstance(sf_value, float):
                raise SetpointError(f"{self.name}: {point.name}: its scale register {sf.name} is not implemented")
            power = int(sf_value)
        try:
            words = encode(point, self.regmap.device, target, power)
        except EncodingError as exc:
            raise SetpointError(f"{self.name}: {exc}") from exc
        unit = self.config.unit_id
        if point.table == "coil":
            await self._link.write_coil(point.address, bool(words[0]), unit_id=unit)
        else:
            await self._link.write(point.address, words, unit_id=unit, function=point.write_function)
        back = await self._link.read(point.address, point.size, unit_id=unit, table=point.table)
        written = decode(point, self.regmap.device, words, power)
        return PointWrite(point.name, value, written, clamped, back == words)

    async def write_setpoint(self, p_w: float | None, *, revert_s: int | None = None) -> SetpointResult:
        """Command the role's active power, W (+ injected): battery / generator ``p_set_w``; PV / wind an output cap
        ``p_limit_w`` (None: no cap, the point's max). Clamped to the point's limits, read back; raises DeviceError.
        ``revert_s`` is accepted for the SunSpec device's signature: a map has no revert timer to write; with
        ``config.keepalive`` the setpoint is re-written every half ``config.setpoint_revert_s``."""
        self._check_open()
        if p_w is not None and not math.isfinite(p_w):
            raise SetpointError(f"{self.name}: setpoint {p_w!r} W is not finite")
        point = self._command_point()
        asked = point.max if p_w is None and point.max is not None else (p_w or 0.0)
        async with self._write_lock:
            done = await self._write(point, asked)
        written = done.written if isinstance(done.written, float) else None
        result = SetpointResult(requested_w=p_w, written_w=written, clamped=done.clamped, revert_s=0,
                                capability=f"map {self.regmap.name} {point.name} ({point.where()})",
                                readback_ok=done.readback_ok)
        self.stats.writes += 1
        if done.readback_ok:
            self.stats.consecutive_mismatches = 0
        else:
            self.stats.readback_mismatches += 1
            self.stats.consecutive_mismatches += 1
            log.warning("%s: read-back differs from what was written (%s)", self.name, point.name)
        self.last_result = result
        self._active = asked
        if self.config.keepalive and self.config.setpoint_revert_s > 0 and (
                self._keepalive is None or self._keepalive.done()):
            self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive(), name=f"keepalive {self.name}")
        return result

    def _command_point(self) -> Point:
        if self.role is None:
            raise CapabilityError(f"{self.name}: fills no role ({self._explain()}); refusing to write")
        for field in WRITE_FIELDS[self.role]:
            point = self.regmap.feeding(f"{self.role}.{field}")
            if point is not None:
                return point
        raise CapabilityError(f"{self.name}: a {self.role} takes no setpoint")

    async def _keep_alive(self) -> None:
        """Re-write the last setpoint every half ``setpoint_revert_s`` while the device is open."""
        while self._state == "open" and self._active is not None:
            await asyncio.sleep(self.config.setpoint_revert_s / 2.0)
            if self._state != "open" or self._active is None:
                return
            try:
                async with self._write_lock:
                    await self._write(self._command_point(), self._active)
                self.stats.keepalive_writes += 1
            except DeviceError as exc:
                self.stats.keepalive_failed += 1
                log.warning("%s: keep-alive write failed: %s", self.name, exc)
