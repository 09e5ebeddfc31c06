"""``ModbusDevice``: one SunSpec device in a role (battery, PV, wind, generator, site meter) over a ``ModbusLink``.

    async with ModbusDevice(ModbusDeviceConfig(host="127.0.0.1", port=5020), role="battery") as device:
        telemetry = await device.read_telemetry()      # never raises for device trouble: stale=True
        result = await device.write_setpoint(-2500.0)  # W, + injected; clamped to the limits, read back

Discovery walks the model chain from 'SunS', reads the models a role can use (their definitions come
from pysunspec2's JSON, see ``firmware_bridge.sunspec``) and resolves the role's capabilities
(``firmware_bridge.capabilities``: which model and points give the battery power, the state of charge,
the limits, the curtailment, the measurements, ...). It runs on first use and again after a failure.
A device that cannot fill its role fails with a ``CapabilityError`` naming it, the models found, what is
missing and what would provide it; nothing is ever written to it.

Writes (``write_setpoint``, ``write_limit_pct``) go through the resolved path, are clamped to the limits
(and, with ``ramp_w_per_s``, to a ramp), carry the device's revert timer, and are read back: the result
says whether the device holds what was written (a device may acknowledge a write and ignore it). With
``keepalive`` an active setpoint is re-written every half revert time, so the device keeps it between
cycles longer than its timer; without it, the device reverts to its default when the timer runs out.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import NamedTuple

from firmware_bridge.capabilities import (
    Capability,
    PowerLimits,
    Role,
    RoleResolution,
    resolve_all,
)
from firmware_bridge.config import ModbusDeviceConfig
from firmware_bridge.errors import (
    CapabilityError,
    DeviceClosedError,
    DeviceError,
    DeviceExceptionResponse,
    ModelMissingError,
    NotSunSpecError,
    SetpointError,
)
from firmware_bridge.link import ModbusLink
from firmware_bridge.sunspec import (
    END_MODEL_ID,
    SUNS_MARKER,
    ModelDef,
    ModelLocation,
    ModelView,
    load_model,
    to_raw,
)

__all__ = ["DeviceInfo", "DeviceStats", "ModbusDevice", "PowerLimits", "SetpointResult", "Telemetry"]

log = logging.getLogger(__name__)

_MAX_READ = 125
_MAX_MODELS = 64
_MERGE_GAP = 32
"""Two reads of one cycle become one request when at most this many unneeded registers lie between them."""
_SQRT3 = math.sqrt(3.0)
_DISABLED, _ENABLED = 0, 1
_WSET_MOD_WATTS = 1
_STORCTL_BOTH = 3  # 124 StorCtl_Mod: CHARGE | DISCHARGE limits in force
_U16_MAX = 0xFFFE
_U32_MAX = 0xFFFF_FFFE

_USED_MODELS = frozenset({1, 101, 102, 103, 111, 112, 113, 120, 121, 122, 123, 124, 160, 201, 202, 203, 204, 211, 212,
                          213, 214, 701, 702, 704, 713, 802})
"""The models discovery reads in full (every capability's sources; identity; nameplates)."""

_MEASURED_POINTS = ("W", "Var", "VAr", "LLV", "PPVphAB", "PhVphA", "Hz")
_METER_POINTS = ("W", "WphA", "WphB", "WphC", "PPV", "PPVphAB", "PhVphAB", "Hz", "VAR")
"""The points a cycle's telemetry reads (``Telemetry``'s fields), with their scale factors."""


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One reading. timestamp: wall-clock time (s since the epoch) of the last successful read,
    0.0 if there never was one; stale: this read failed and the values are the last known ones
    (or None); error: why. p_w: active power, W (+ injected; a meter: + imported); q_var: reactive
    power, var; v_v: line-to-line voltage, V; hz: frequency; soc_pct: state of charge, %;
    energy_available_wh: energy left to discharge, Wh; phase_w: a meter's power per phase (A, B, C), W;
    dc_w: the DC input over every MPPT module (model 160), W."""

    timestamp: float
    stale: bool
    p_w: float | None = None
    q_var: float | None = None
    v_v: float | None = None
    hz: float | None = None
    soc_pct: float | None = None
    energy_available_wh: float | None = None
    phase_w: tuple[float | None, ...] | None = None
    dc_w: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SetpointResult:
    """What was asked and what was written (after clamping, the ramp and rounding to the scale factor), W;
    ``limit_pct``: the limit written (% of WMax) on a percentage path; ``revert_s``: the device's revert time
    written (0: none, the device keeps it); ``capability``: the path; ``readback_ok``: the device holds what was
    written; ``keepalive``: re-written by the keep-alive rather than by a caller."""

    requested_w: float | None
    written_w: float | None
    clamped: bool
    revert_s: int
    capability: str = ""
    limit_pct: float | None = None
    readback_ok: bool = True
    ramped: bool = False
    keepalive: bool = False


@dataclass
class DeviceStats:
    """What this device's writes did: writes (command sequences), read-backs that differed (in total and in a row),
    keep-alive re-writes and those that failed."""

    writes: int = 0
    readback_mismatches: int = 0
    consecutive_mismatches: int = 0
    keepalive_writes: int = 0
    keepalive_failed: int = 0


@dataclass(frozen=True)
class DeviceInfo:
    """What discovery found: identity (model 1), the base address and model chain, and per role what the
    device can do (``roles``); ``role`` is the one this device is used as (None: it fills none)."""

    manufacturer: str | None
    model: str | None
    serial: str | None
    version: str | None
    models: tuple[ModelLocation, ...]
    base_address: int
    role: Role | None
    roles: dict[Role, RoleResolution]
    views: dict[int, ModelView] = field(repr=False, compare=False)

    def location(self, model_id: int) -> ModelLocation | None:
        """Where model ``model_id`` sits, or None when the device lacks it."""
        return next((loc for loc in self.models if loc.model_id == model_id), None)

    @property
    def model_ids(self) -> list[int]:
        return [loc.model_id for loc in self.models]

    @property
    def resolution(self) -> RoleResolution | None:
        """The capabilities of the role this device is used as."""
        return self.roles.get(self.role) if self.role is not None else None

    @property
    def limits(self) -> PowerLimits | None:
        """The active-power range of its role (None when unknown)."""
        resolution = self.resolution
        return resolution.limits if resolution is not None else None

    @property
    def storage(self) -> bool:
        """Whether it is used as a battery."""
        return self.role == "battery"

    def capability(self, name: str) -> Capability | None:
        resolution = self.resolution
        return resolution.capabilities.get(name) if resolution is not None else None

    @property
    def fillable_roles(self) -> list[Role]:
        """Every role whose required capabilities all resolved."""
        return [role for role, r in self.roles.items() if r.ok]


@dataclass(frozen=True, slots=True)
class _ModelRead:
    """One model's share of a cycle's telemetry read: from its ID register, ``span`` registers."""

    model_id: int
    layout: ModelDef
    address: int
    span: int


@dataclass(frozen=True)
class _ReadPlan:
    """The requests of one telemetry read, the models they cover, and where each ``Telemetry`` field comes from:
    (field, model, point, factor), a field listed twice summing (``dc_w``) or, for ``phase_w``, in phase order."""

    models: tuple[_ModelRead, ...]
    requests: tuple[tuple[int, int], ...]
    fields: tuple[tuple[str, int, str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class _Command:
    """What the keep-alive re-issues: a setpoint in W (None: no cap) or a limit in %."""

    kind: str  # "setpoint" | "limit_pct"
    value: float | None
    revert_s: int


class _Written(NamedTuple):
    """What a write path wrote: W (None: a limit disabled), the revert time, the % on a percentage path, whether the
    read-back holds it, whether the limit was clamped to its range."""

    written_w: float | None
    revert_s: int
    limit_pct: float | None
    ok: bool
    clamped: bool = False


@functools.lru_cache(maxsize=256)
def _describe(capability: Capability) -> str:
    return capability.describe()


_NEVER_READ = Telemetry(timestamp=0.0, stale=True, error="not read yet")
_INFER_ORDER: tuple[Role, ...] = ("battery", "meter", "pv", "generator")


class ModbusDevice:
    """A SunSpec device at ``config.unit_id`` in ``role`` on its own link, or on a shared ``link`` (RTU buses).

    ``role`` None: the first role the device can fill (battery, meter, PV, generator in that order) is used.
    """

    def __init__(
        self,
        config: ModbusDeviceConfig,
        *,
        link: ModbusLink | None = None,
        role: Role | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.role: Role | None = role
        self._owns_link = link is None
        self._link = link if link is not None else ModbusLink(config)
        self._wall_clock = wall_clock
        self._state = "new"  # new -> open -> closed
        self._info: DeviceInfo | None = None
        self._plan: _ReadPlan | None = None
        self._written: dict[str, tuple[object, int]] = {}  # group -> (what, link connects when written)
        self._telemetry = _NEVER_READ
        self._write_lock = asyncio.Lock()
        self._last_w: tuple[float, float] | None = None  # (W written, monotonic time) for the ramp
        self._active: _Command | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self.stats = DeviceStats()
        self.last_result: SetpointResult | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Make the device usable; no I/O happens until the first request (a device may be down)."""
        if self._state == "closed":
            raise DeviceClosedError("device is closed; create a new ModbusDevice")
        self._state = "open"

    async def close(self) -> None:
        """Stop the keep-alive and close the link if this device owns it; closing twice is harmless."""
        if self._state == "closed":
            return
        self._state = "closed"
        await self._stop_keepalive()
        if self._owns_link:
            await self._link.close()

    async def __aenter__(self) -> ModbusDevice:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._state != "open":
            raise DeviceClosedError(
                "device is closed" if self._state == "closed" else "use 'async with ModbusDevice(...)' or await open() first"
            )

    @property
    def name(self) -> str:
        """The device in messages: ``battery at 10.0.0.5:502 unit 1``."""
        return f"{self.role or 'device'} at {self.config.link_name} unit {self.config.unit_id}"

    @property
    def link(self) -> ModbusLink:
        """The link this device talks through."""
        return self._link

    @property
    def info(self) -> DeviceInfo | None:
        """The discovery result, or None before a successful discovery."""
        return self._info

    @property
    def telemetry_requests(self) -> tuple[tuple[int, int], ...]:
        """The (address, count) read requests one telemetry read makes (empty before discovery)."""
        return self._plan.requests if self._plan is not None else ()

    @property
    def telemetry(self) -> Telemetry:
        """The last reading (stale when the last read failed)."""
        return self._telemetry

    # ------------------------------------------------------------------ raw access

    async def _read(self, address: int, count: int) -> list[int]:
        registers: list[int] = []
        while count > 0:
            n = min(count, _MAX_READ)
            registers += await self._link.read(address, n, unit_id=self.config.unit_id)
            address += n
            count -= n
        return registers

    async def _write(self, address: int, values: list[int]) -> None:
        await self._link.write(address, values, unit_id=self.config.unit_id)

    # ------------------------------------------------------------------ discovery

    async def discover(self) -> DeviceInfo:
        """Walk the model chain, read the models a role can use, and resolve the capabilities of every role."""
        self._check_open()
        self._info = None
        self._plan = None
        base = self.config.base_address
        try:
            head = await self._read(base, 4)
        except DeviceExceptionResponse as exc:
            if exc.exception_code != 2:  # only 'illegal data address' says there is no map here
                raise
            raise NotSunSpecError(f"{self.config.link_name}: no SunSpec map at {base}: {exc}") from exc
        if tuple(head[:2]) != SUNS_MARKER:
            raise NotSunSpecError(
                f"{self.config.link_name}: no 'SunS' marker at {base} (found {head[0]:#06x} {head[1]:#06x})"
            )
        locations: list[ModelLocation] = []
        address, (model_id, length) = base + 2, head[2:4]
        while model_id != END_MODEL_ID:
            if len(locations) >= _MAX_MODELS or address + 2 + length + 2 > 0x10000:  # room for the next header
                raise NotSunSpecError(f"{self.config.link_name}: broken SunSpec model chain after {locations}")
            locations.append(ModelLocation(model_id, address, length))
            address += 2 + length
            model_id, length = await self._read(address, 2)
        views: dict[int, ModelView] = {}
        wanted = [loc for loc in locations if loc.model_id in _USED_MODELS and loc.model_id not in views]
        for start, count in _merge([(loc.address, loc.length + 2) for loc in wanted], gap=0):
            regs = await self._read(start, count)
            for loc in wanted:
                if start <= loc.address and loc.address + loc.length + 2 <= start + count and loc.model_id not in views:
                    part = regs[loc.address - start : loc.address - start + loc.length + 2]
                    layout = load_model(loc.model_id).layout(loc.length, registers=part)
                    views[loc.model_id] = ModelView(layout, part, 0, length=loc.length)
        common = views.get(1)
        roles = resolve_all(views)
        role = self.role
        if role is None:
            role = next((r for r in _INFER_ORDER if roles[r].ok), None)
        elif not roles[role].ok:
            raise CapabilityError(roles[role].explain(self.name, [loc.model_id for loc in locations]))
        self.role = role
        self._info = DeviceInfo(
            manufacturer=common.text("Mn") if common else None,
            model=common.text("Md") if common else None,
            serial=common.text("SN") if common else None,
            version=common.text("Vr") if common else None,
            models=tuple(locations),
            base_address=base,
            role=role,
            roles=roles,
            views=views,
        )
        self._written = {}
        self._plan = self._read_plan(self._info)
        return self._info

    def _read_plan(self, info: DeviceInfo) -> _ReadPlan:
        """The registers one telemetry read needs: per model, from its ID to the last point used (scale factors
        included), merged into as few requests as the 125-register limit allows."""
        resolution = info.resolution
        if resolution is None:
            return _ReadPlan((), ())
        wanted: dict[int, set[str]] = {}
        caps = resolution.capabilities
        if "measurement" in caps:
            wanted.setdefault(caps["measurement"].model_id, set()).update(_MEASURED_POINTS)
        if "soc" in caps:
            soc = caps["soc"]
            wanted.setdefault(soc.model_id, set()).update((*soc.points, "WHAvail"))
        if "mppt" in caps:
            wanted.setdefault(160, set()).update(caps["mppt"].points)
        if "exchange" in caps:
            wanted.setdefault(caps["exchange"].model_id, set()).update(_METER_POINTS)
        reads: list[_ModelRead] = []
        for model_id, names in wanted.items():
            loc = info.location(model_id)
            layout = info.views[model_id].model
            if loc is None:
                continue
            end = 2
            for name in names:
                if name not in layout:
                    continue
                point = layout.point(name)
                end = max(end, point.offset + point.size)
                if isinstance(point.sf, str):
                    sf = layout.point(point.sf)
                    end = max(end, sf.offset + sf.size)
            reads.append(_ModelRead(model_id, layout, loc.address, min(end, loc.length + 2)))
        reads.sort(key=lambda r: r.address)
        return _ReadPlan(tuple(reads), tuple(_merge([(r.address, r.span) for r in reads], gap=_MERGE_GAP)),
                         _fields(caps, info.views))

    async def _ensure_info(self) -> DeviceInfo:
        self._check_open()
        return self._info if self._info is not None else await self.discover()

    async def read_model(self, model_id: int) -> ModelView:
        """Read a whole model now (several requests if it is longer than 125 registers)."""
        info = await self._ensure_info()
        loc = info.location(model_id)
        if loc is None:
            raise ModelMissingError(f"{self.name}: device has no model {model_id}")
        try:
            spec = load_model(model_id)
        except KeyError as exc:
            raise ModelMissingError(f"{self.name}: {exc.args[0]}") from None
        regs = await self._read(loc.address, loc.length + 2)
        return ModelView(spec.layout(loc.length, registers=regs), regs, 0, length=loc.length)

    def _require(self, info: DeviceInfo, capability: str) -> Capability:
        """The capability of this device's role, or a CapabilityError naming what would provide it."""
        resolution = info.resolution
        found = resolution.capabilities.get(capability) if resolution is not None else None
        if found is not None:
            return found
        if resolution is None:
            fills = "; ".join(r.explain(self.name, info.model_ids) for r in info.roles.values() if r.role != "wind")
            raise CapabilityError(f"{self.name}: fills no role ({fills})")
        missing = RoleResolution(resolution.role, {}, {capability: ""}, None)
        raise CapabilityError(missing.explain(self.name, info.model_ids))

    # ------------------------------------------------------------------ telemetry

    async def read_telemetry(self) -> Telemetry:
        """Read what the role measures (one request per merged span). On any device trouble: the last values,
        stale, with the error."""
        self._check_open()
        try:
            info = self._info if self._info is not None else await self.discover()
            plan = self._plan or _ReadPlan((), ())
            if info.resolution is None or not plan.models:
                self._require(info, "measurement" if self.role != "meter" else "exchange")
            chunks = [(start, await self._read(start, count)) for start, count in plan.requests]
            views: dict[int, ModelView] = {}
            for model in plan.models:
                for start, regs in chunks:
                    if start <= model.address < start + len(regs):
                        begin = model.address - start
                        views[model.model_id] = ModelView(model.layout, regs, begin, length=model.span - 2)
                        break
            reading = self._telemetry_of(plan, views)
        except DeviceError as exc:
            if not isinstance(exc, (DeviceExceptionResponse, ModelMissingError)):
                self._info = None  # rediscover next time: the device may have been replaced or restarted
            log.warning("%s", exc)
            self._telemetry = replace(self._telemetry, stale=True, error=str(exc))
            return self._telemetry
        self._telemetry = reading
        return reading

    def _telemetry_of(self, plan: _ReadPlan, views: dict[int, ModelView]) -> Telemetry:
        values: dict[str, float | None] = {}
        phases: list[float | None] = []
        dc: list[float] = []
        for name, model_id, point, factor in plan.fields:
            value = views[model_id].value(point)
            if value is not None:
                value *= factor
            if name == "phase_w":
                phases.append(value)
            elif name == "dc_w":
                if value is not None:
                    dc.append(value)
            else:
                values[name] = value
        return Telemetry(timestamp=self._wall_clock(), stale=False, phase_w=tuple(phases) if phases else None,
                         dc_w=sum(dc) if dc else None, **values)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ setpoints

    def _revert(self, revert_s: int | None) -> int:
        revert = self.config.setpoint_revert_s if revert_s is None else revert_s
        if not 0 <= revert <= _U32_MAX:
            raise SetpointError(f"{self.name}: revert_s {revert} outside 0..{_U32_MAX}")
        return revert

    async def write_setpoint(self, p_w: float | None, *, revert_s: int | None = None) -> SetpointResult:
        """Command the role's active power, W (+ injected), through the resolved path; raises DeviceError.

        battery: its power (704 WSet, or 124 as % of WChaMax); generator: its output (704 WSet, or 123 as its
        output limit); PV / wind: an output cap (123 or 704 WMaxLimPct as % of WMax), ``None`` for no cap (the
        limit disabled). Clamped to the limits, read back; the device drops it unless it is rewritten within
        ``revert_s`` (default ``config.setpoint_revert_s``; 0 = never), which the keep-alive does when
        ``config.keepalive`` is set. Nothing is written unless discovery resolved the role.
        """
        if p_w is not None and not math.isfinite(p_w):
            raise SetpointError(f"{self.name}: setpoint {p_w!r} W is not finite")
        return await self._command(_Command("setpoint", p_w, self._revert(revert_s)))

    async def write_limit_pct(self, pct: float | None, *, revert_s: int | None = None) -> SetpointResult:
        """A PV / wind (or generator) output limit in % of WMax, through the curtailment path (None: no limit)."""
        if pct is not None and not (math.isfinite(pct) and 0.0 <= pct <= 100.0):
            raise SetpointError(f"{self.name}: limit {pct!r} % outside 0..100")
        return await self._command(_Command("limit_pct", pct, self._revert(revert_s)))

    async def release_setpoint(self) -> None:
        """Disable the setpoint or limit: the device returns to its default behaviour (no keep-alive)."""
        info = await self._ensure_info()
        self._active = None
        capability = self._control(info)
        async with self._write_lock:
            if capability.via == "wset":
                await self._write(info.location(704).address + _offset(info, 704, "WSetEna"), [_DISABLED])  # type: ignore[union-attr]
            elif capability.via == "storctl":
                await self._write(info.location(124).address + _offset(info, 124, "StorCtl_Mod"), [0])  # type: ignore[union-attr]
            else:
                enable = "WMaxLim_Ena" if capability.model_id == 123 else "WMaxLimPctEna"
                loc = info.location(capability.model_id)
                await self._write(loc.address + _offset(info, capability.model_id, enable), [_DISABLED])  # type: ignore[union-attr]
        self._written.pop("mode", None)

    def _control(self, info: DeviceInfo) -> Capability:
        role = info.role
        if role == "battery":
            return self._require(info, "battery_power")
        if role == "generator":
            return self._require(info, "power")
        if role in ("pv", "wind"):
            return self._require(info, "curtailment")
        return self._require(info, "battery_power" if role is None else "power")  # a meter: says what is missing

    async def _command(self, command: _Command, *, keepalive: bool = False) -> SetpointResult:
        try:
            info = await self._ensure_info()
            capability = self._control(info)
            async with self._write_lock:
                result = await self._issue(info, capability, command, keepalive)
        except DeviceError as exc:
            if not isinstance(exc, (DeviceExceptionResponse, ModelMissingError, SetpointError)):
                self._info = None  # rediscover before the next write
            raise
        except (ValueError, ArithmeticError) as exc:  # a scale factor or a value that does not fit the point
            raise SetpointError(f"{self.name}: {exc}") from exc
        self.stats.writes += 1
        if result.readback_ok:
            self.stats.consecutive_mismatches = 0
        else:
            self.stats.readback_mismatches += 1
            self.stats.consecutive_mismatches += 1
            self._written = {}  # write the whole group again next time
            log.warning("%s: read-back differs from what was written (%s)", self.name, _describe(capability))
        self.last_result = result
        active = result.revert_s > 0 and (command.value is not None or capability.via in ("wset", "storctl"))
        self._active = command if active else None
        if self._active is not None and self.config.keepalive and not keepalive:
            self._start_keepalive()
        return result

    async def _issue(self, info: DeviceInfo, capability: Capability, command: _Command, keepalive: bool) -> SetpointResult:
        limits = info.limits
        ramped = clamped = False
        requested: float | None
        if capability.via in ("wset", "storctl"):
            if command.kind == "limit_pct":
                raise SetpointError(f"{self.name}: a % limit needs the curtailment path, not {_describe(capability)}")
            if limits is None:
                raise CapabilityError(f"{self.name}: no active-power limits ({_describe(capability)}); refusing to write")
            requested = command.value
            asked = 0.0 if requested is None else requested
            target, ramped = self._ramp(limits.clamp(asked))
            clamped = limits.clamp(asked) != asked
            if capability.via == "wset":
                written = await self._write_wset(info, target, limits, command.revert_s)
            else:
                written = await self._write_storctl(info, target, limits, command.revert_s)
        else:
            model_id = capability.model_id
            w_max = info.views[121 if model_id == 123 else 702].value("WMax") or 0.0
            if command.kind == "limit_pct":
                pct = command.value
                requested = None if pct is None else pct * w_max / 100.0
            else:
                requested = cap_w = command.value
                if cap_w is not None and limits is not None:
                    cap_w, ramped = self._ramp(limits.clamp(cap_w))
                pct = None if cap_w is None or w_max <= 0 else max(cap_w, 0.0) / w_max * 100.0
            written = await self._write_limit(info, model_id, pct, w_max, command.revert_s)
            clamped = written.clamped
        if written.written_w is not None:
            self._last_w = (written.written_w, time.monotonic())
        return SetpointResult(requested_w=requested, written_w=written.written_w, clamped=clamped,
                              revert_s=written.revert_s, capability=_describe(capability), limit_pct=written.limit_pct,
                              readback_ok=written.ok, ramped=ramped, keepalive=keepalive)

    def _ramp(self, target: float) -> tuple[float, bool]:
        """``target`` limited to ``ramp_w_per_s`` from the last power written (the first write is not limited)."""
        ramp = self.config.ramp_w_per_s
        if ramp is None or self._last_w is None:
            return target, False
        last, at = self._last_w
        step = ramp * max(0.0, time.monotonic() - at)
        limited = min(max(target, last - step), last + step)
        return limited, limited != target

    async def _verify(self, base: int, writes: list[tuple[int, list[int]]], expect: dict[int, int]) -> bool:
        """Write, then read back the written registers and the scale factors the values depend on (one request)."""
        for address, values in writes:
            await self._write(base + address, values)
        for address, values in writes:
            for i, v in enumerate(values):
                expect[address + i] = v
        low, high = min(expect), max(expect)
        regs = await self._read(base + low, high - low + 1)
        return all(regs[a - low] == v for a, v in expect.items())

    def _once(self, key: str, what: object) -> bool:
        """Whether group ``key`` still needs writing (not written with ``what`` since the link connected)."""
        return self._written.get(key) != (what, self._link.stats.connects)

    def _mark(self, key: str, what: object) -> None:
        self._written[key] = (what, self._link.stats.connects)

    async def _write_wset(self, info: DeviceInfo, target: float, limits: PowerLimits, revert: int) -> _Written:
        view = info.views[704]
        loc = info.location(704)
        sf_raw = view.raw("WSet_SF")
        if loc is None or not isinstance(sf_raw, int):
            raise CapabilityError(f"{self.name}: model 704 without WSet_SF; refusing to write")
        step = 10.0**sf_raw
        raw = round(target / step)  # then keep the rounding itself inside the limits
        raw = min(max(raw, math.ceil(limits.p_min_w / step - 1e-9)), math.floor(limits.p_max_w / step + 1e-9))
        raw32 = raw & 0xFFFF_FFFF
        writes: list[tuple[int, list[int]]] = []
        has_timer = view.raw("WSetRvrtTms") is not None
        revert = min(revert, _U32_MAX) if has_timer else 0
        if has_timer and self._once("wset_revert", revert):
            writes.append((_offset(info, 704, "WSetEnaRvrt"), [_DISABLED, revert >> 16, revert & 0xFFFF]))
        writes.append((_offset(info, 704, "WSetEna"), [_ENABLED, _WSET_MOD_WATTS, raw32 >> 16, raw32 & 0xFFFF]))
        ok = await self._verify(loc.address, writes, {_offset(info, 704, "WSet_SF"): sf_raw & 0xFFFF})
        if ok:
            self._mark("wset_revert", revert)
        return _Written(raw * step, revert, None, ok)

    async def _write_storctl(self, info: DeviceInfo, target: float, limits: PowerLimits, revert: int) -> _Written:
        view = info.views[124]
        loc = info.location(124)
        w_cha = view.value("WChaMax")
        sf_raw = view.raw("InOutWRte_SF")
        if loc is None or not w_cha or not isinstance(sf_raw, int):
            raise CapabilityError(f"{self.name}: model 124 without WChaMax or InOutWRte_SF; refusing to write")
        step_w = 10.0**sf_raw * w_cha / 100.0  # W per raw step of InWRte / OutWRte
        raw = round(target / step_w)
        raw = min(max(raw, math.ceil(limits.p_min_w / step_w - 1e-9)), math.floor(limits.p_max_w / step_w + 1e-9))
        if not -0x7FFF <= raw <= 0x7FFF:
            raise SetpointError(f"{self.name}: {target} W is {raw} steps of InOutWRte, outside int16")
        writes: list[tuple[int, list[int]]] = []
        if self._once("mode", _STORCTL_BOTH):
            writes.append((_offset(info, 124, "StorCtl_Mod"), [_STORCTL_BOTH]))
        rates = [raw & 0xFFFF, (-raw) & 0xFFFF]
        has_timer = view.raw("InOutWRte_RvrtTms") is not None
        revert = min(revert, _U16_MAX) if has_timer else 0
        if has_timer and view.raw("InOutWRte_WinTms") is not None:
            writes.append((_offset(info, 124, "OutWRte"), [*rates, 0, revert]))
        else:
            writes.append((_offset(info, 124, "OutWRte"), rates))
            if has_timer:
                writes.append((_offset(info, 124, "InOutWRte_RvrtTms"), [revert]))
        expect = {_offset(info, 124, "StorCtl_Mod"): _STORCTL_BOTH, _offset(info, 124, "InOutWRte_SF"): sf_raw & 0xFFFF}
        w_cha_raw = view.raw("WChaMax")
        if isinstance(w_cha_raw, int):
            expect[_offset(info, 124, "WChaMax")] = w_cha_raw & 0xFFFF
        ok = await self._verify(loc.address, writes, expect)
        if ok:
            self._mark("mode", _STORCTL_BOTH)
        else:
            self._written.pop("mode", None)
        return _Written(raw * step_w, revert, raw * 10.0**sf_raw, ok)

    async def _write_limit(self, info: DeviceInfo, model_id: int, pct: float | None, w_max: float,
                           revert: int) -> _Written:
        view = info.views[model_id]
        loc = info.location(model_id)
        sf_raw = view.raw("WMaxLimPct_SF")
        if loc is None or not isinstance(sf_raw, int) or w_max <= 0:
            raise CapabilityError(f"{self.name}: model {model_id} without WMaxLimPct_SF or WMax; refusing to write")
        enable = "WMaxLim_Ena" if model_id == 123 else "WMaxLimPctEna"
        expect = {_offset(info, model_id, "WMaxLimPct_SF"): sf_raw & 0xFFFF}
        if pct is None:  # no cap: the limit disabled (nothing to keep alive)
            ok = await self._verify(loc.address, [(_offset(info, model_id, enable), [_DISABLED])], expect)
            return _Written(None, 0, None, ok)
        floor_pct = self.config.min_limit_pct if self.role in ("pv", "wind", None) else 0.0  # a generator may stop
        limited = min(max(pct, floor_pct), 100.0)
        raw = to_raw(limited, sf_raw, "uint16")
        if raw * 10.0**sf_raw < floor_pct - 1e-9:  # rounding must not take it below the configured floor
            raw += 1
        written_pct = raw * 10.0**sf_raw
        writes: list[tuple[int, list[int]]] = []
        if model_id == 123:
            timers = [view.raw(n) is not None for n in ("WMaxLimPct_WinTms", "WMaxLimPct_RvrtTms", "WMaxLimPct_RmpTms")]
            revert = min(revert, _U16_MAX) if timers[1] else 0
            if all(timers):
                writes.append((_offset(info, 123, "WMaxLimPct"), [raw, 0, revert, 0, _ENABLED]))
            else:
                writes.append((_offset(info, 123, "WMaxLimPct"), [raw]))
                if timers[1]:
                    writes.append((_offset(info, 123, "WMaxLimPct_RvrtTms"), [revert]))
                writes.append((_offset(info, 123, "WMaxLim_Ena"), [_ENABLED]))
        else:
            has_timer = view.raw("WMaxLimPctRvrtTms") is not None
            revert = min(revert, _U32_MAX) if has_timer else 0
            if has_timer and self._once("limit_revert", revert):
                full = to_raw(100.0, sf_raw, "uint16")
                writes.append((_offset(info, 704, "WMaxLimPctRvrt"), [full, _DISABLED, revert >> 16, revert & 0xFFFF]))
            writes.append((_offset(info, 704, "WMaxLimPctEna"), [_ENABLED, raw]))
        ok = await self._verify(loc.address, writes, expect)
        if ok and model_id == 704:
            self._mark("limit_revert", revert)
        return _Written(written_pct * w_max / 100.0, revert, written_pct, ok, limited != pct)

    # ------------------------------------------------------------------ keep-alive

    def _start_keepalive(self) -> None:
        if self._keepalive is None or self._keepalive.done():
            self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive(), name=f"keepalive {self.name}")

    async def _stop_keepalive(self) -> None:
        task, self._keepalive = self._keepalive, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep_alive(self) -> None:
        """Re-write the active command every half revert time (while there is one and the device is open)."""
        while self._state == "open" and self._active is not None and self._active.revert_s > 0:
            await asyncio.sleep(self._active.revert_s / 2.0)
            command = self._active
            if command is None or self._state != "open":
                return
            try:
                await self._command(command, keepalive=True)
                self.stats.keepalive_writes += 1
            except DeviceError as exc:
                self.stats.keepalive_failed += 1
                log.warning("%s: keep-alive write failed: %s", self.name, exc)


def _offset(info: DeviceInfo, model_id: int, point: str) -> int:
    """A point's offset in its model (the discovery's layout)."""
    found = info.views[model_id].model.points_by_name.get(point)
    if found is None:
        raise KeyError(f"model {model_id} has no point {point!r}")
    return found.offset


def _pick(view: ModelView, *names: str) -> str | None:
    """The first of ``names`` the model has and implements (at discovery)."""
    return next((name for name in names if view.implemented(name)), None)


def _fields(caps: dict[str, Capability], views: dict[int, ModelView]) -> tuple[tuple[str, int, str, float], ...]:
    """Where each telemetry field comes from on this device: chosen once, at discovery."""
    fields: list[tuple[str, int, str, float]] = []

    def add(name: str, model_id: int, *points: str, factor: float = 1.0) -> bool:
        point = _pick(views[model_id], *points)
        if point is not None:
            fields.append((name, model_id, point, factor))
        return point is not None

    if "exchange" in caps:
        meter = caps["exchange"].model_id
        add("p_w", meter, "W")
        add("q_var", meter, "VAR")
        add("hz", meter, "Hz")
        add("v_v", meter, "PPV", "PPVphAB", "PhVphAB")
        for ph in "ABC":
            fields.append(("phase_w", meter, f"Wph{ph}", 1.0))
    if "measurement" in caps:
        meas = caps["measurement"].model_id
        add("p_w", meas, "W")
        add("q_var", meas, "Var", "VAr")
        add("hz", meas, "Hz")
        if not add("v_v", meas, "LLV", "PPVphAB"):
            add("v_v", meas, "PhVphA", factor=_SQRT3 if meas in (103, 113) else 1.0)
    if "soc" in caps:
        soc = caps["soc"]
        fields.append(("soc_pct", soc.model_id, soc.points[0], 1.0))
        if soc.model_id == 713:
            add("energy_available_wh", 713, "WHAvail")
    if "mppt" in caps:
        fields += [("dc_w", 160, point, 1.0) for point in caps["mppt"].points]
    return tuple(fields)


def _merge(spans: Sequence[tuple[int, int]], *, gap: int) -> list[tuple[int, int]]:
    """Register spans (address, count) merged into requests of at most 125 registers, joining two spans when
    at most ``gap`` registers lie between them."""
    requests: list[tuple[int, int]] = []
    for address, count in sorted(spans):
        if requests:
            start, n = requests[-1]
            end = max(start + n, address + count)
            if address - (start + n) <= gap and end - start <= _MAX_READ:
                requests[-1] = (start, end - start)
                continue
        requests.append((address, count))
    return requests
