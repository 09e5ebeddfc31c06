"""``ModbusDevice``: one SunSpec inverter or battery, read and commanded over a ``ModbusLink``.

    async with ModbusDevice(ModbusDeviceConfig(host="127.0.0.1", port=5020)) as device:
        telemetry = await device.read_telemetry()      # never raises for device trouble: stale=True
        result = await device.write_setpoint(-2500.0)  # W, + injected; clamped to the nameplate

Discovery walks the model chain from 'SunS' and reads the nameplate (702) and the setpoint scale
factor (704) once; it runs on first use and again after a failure.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType

from firmware_bridge.config import ModbusDeviceConfig
from firmware_bridge.errors import (
    DeviceClosedError,
    DeviceError,
    DeviceExceptionResponse,
    ModelMissingError,
    NotSunSpecError,
)
from firmware_bridge.link import ModbusLink
from firmware_bridge.sunspec import END_MODEL_ID, SUNS_MARKER, ModelLocation, ModelView
from firmware_bridge.sunspec_models import DER_CTL_AC, DER_MEASURE_AC, DISABLED, ENABLED, MODELS, WSET_MOD_WATTS

__all__ = ["DeviceInfo", "ModbusDevice", "PowerLimits", "SetpointResult", "Telemetry"]

log = logging.getLogger(__name__)

_MAX_READ = 125
_MAX_MODELS = 64
# model 701 up to and including its scale factors (everything but the alarm text): one request
_MEASURE_SPAN = DER_MEASURE_AC.point("Tmp_SF").offset + 1
_WSET_ENA = DER_CTL_AC.point("WSetEna").offset  # WSetEna, WSetMod, WSet (2 registers): one write
_WSET_ENA_RVRT = DER_CTL_AC.point("WSetEnaRvrt").offset  # WSetEnaRvrt, WSetRvrtTms (2 registers)


@dataclass(frozen=True, slots=True)
class PowerLimits:
    """Active-power range a device accepts, W (+ injected): p_min_w <= 0 <= p_max_w."""

    p_min_w: float
    p_max_w: float

    def clamp(self, p_w: float) -> float:
        """``p_w`` limited to the range."""
        return min(max(p_w, self.p_min_w), self.p_max_w)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What discovery found: identity (model 1), the model chain, limits (702), storage (713)."""

    manufacturer: str | None
    model: str | None
    serial: str | None
    version: str | None
    models: tuple[ModelLocation, ...]
    limits: PowerLimits | None
    storage: bool

    def location(self, model_id: int) -> ModelLocation | None:
        """Where model ``model_id`` sits, or None when the device lacks it."""
        return next((loc for loc in self.models if loc.model_id == model_id), None)


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One reading. timestamp: wall-clock time (s since the epoch) of the last successful read,
    0.0 if there never was one; stale: this read failed and the values are the last known ones
    (or None); error: why. p_w: active power, W (+ injected); q_var: reactive power, var;
    v_v: line-to-line voltage, V; hz: frequency; soc_pct: state of charge, %;
    energy_available_wh: energy left to discharge, Wh."""

    timestamp: float
    stale: bool
    p_w: float | None = None
    q_var: float | None = None
    v_v: float | None = None
    hz: float | None = None
    soc_pct: float | None = None
    energy_available_wh: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SetpointResult:
    """What was asked, what was written (after clamping and rounding to the scale factor), W."""

    requested_w: float
    written_w: float
    clamped: bool
    revert_s: int


_NEVER_READ = Telemetry(timestamp=0.0, stale=True, error="not read yet")


class ModbusDevice:
    """A SunSpec device at ``config.unit_id`` on its own link, or on a shared ``link`` (RTU buses)."""

    def __init__(
        self,
        config: ModbusDeviceConfig,
        *,
        link: ModbusLink | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._owns_link = link is None
        self._link = link if link is not None else ModbusLink(config)
        self._wall_clock = wall_clock
        self._state = "new"  # new -> open -> closed
        self._info: DeviceInfo | None = None
        self._wset_sf: int | None = None
        self._revert_written: tuple[int, int] | None = None  # (revert_s, link connects when written)
        self._telemetry = _NEVER_READ

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Make the device usable; no I/O happens until the first request (a device may be down)."""
        if self._state == "closed":
            raise DeviceClosedError("device is closed; create a new ModbusDevice")
        self._state = "open"

    async def close(self) -> None:
        """Close the link if this device owns it; closing twice is harmless."""
        if self._state == "closed":
            return
        self._state = "closed"
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
    def link(self) -> ModbusLink:
        """The link this device talks through."""
        return self._link

    @property
    def info(self) -> DeviceInfo | None:
        """The discovery result, or None before a successful discovery."""
        return self._info

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
        """Walk the model chain and read identity, nameplate limits and the setpoint scale factor."""
        self._check_open()
        self._info = None
        base = self.config.base_address
        try:
            head = await self._read(base, 4)
        except DeviceExceptionResponse as exc:
            if exc.exception_code != 2:  # only 'illegal data address' says there is no map here
                raise
            raise NotSunSpecError(f"no SunSpec map at {base}: {exc}") from exc
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
        found = {loc.model_id for loc in locations}

        common = await self._read_view(locations, 1) if 1 in found else None
        limits = None
        storage = 713 in found
        if 702 in found:
            limits = _limits(await self._read_view(locations, 702), storage)
        if 704 in found:
            wset_sf = (await self._read_view(locations, 704)).raw("WSet_SF")
            self._wset_sf = wset_sf if isinstance(wset_sf, int) else None
        self._info = DeviceInfo(
            manufacturer=common.text("Mn") if common else None,
            model=common.text("Md") if common else None,
            serial=common.text("SN") if common else None,
            version=common.text("Vr") if common else None,
            models=tuple(locations),
            limits=limits,
            storage=storage,
        )
        self._revert_written = None
        return self._info

    async def _read_view(self, locations: list[ModelLocation], model_id: int) -> ModelView:
        loc = next(loc for loc in locations if loc.model_id == model_id)
        regs = await self._read(loc.address, loc.length + 2)
        return ModelView(MODELS[model_id], regs, 0, length=loc.length)

    async def _ensure_info(self) -> DeviceInfo:
        self._check_open()
        return self._info if self._info is not None else await self.discover()

    async def read_model(self, model_id: int) -> ModelView:
        """Read a whole model (several requests if it is longer than 125 registers)."""
        info = await self._ensure_info()
        if model_id not in MODELS:
            raise ValueError(f"firmware_bridge has no definition of model {model_id}")
        if info.location(model_id) is None:
            raise ModelMissingError(f"{self.config.link_name}: device has no model {model_id}")
        return await self._read_view(list(info.models), model_id)

    # ------------------------------------------------------------------ telemetry

    async def read_telemetry(self) -> Telemetry:
        """Read 701 (and 713 for storage). On any device trouble: the last values, stale, with the error."""
        self._check_open()
        try:
            info = await self._ensure_info()
            meas_loc = info.location(701)
            if meas_loc is None:
                raise ModelMissingError(f"{self.config.link_name}: device has no model 701 (AC measurements)")
            span = min(meas_loc.length + 2, _MEASURE_SPAN)
            meas = ModelView(DER_MEASURE_AC, await self._read(meas_loc.address, span), 0, length=span - 2)
            soc = available = None
            storage_loc = info.location(713)
            if storage_loc is not None:
                storage = ModelView(
                    MODELS[713], await self._read(storage_loc.address, storage_loc.length + 2), 0, length=storage_loc.length
                )
                soc, available = storage.value("SoC"), storage.value("WHAvail")
        except DeviceError as exc:
            if not isinstance(exc, (DeviceExceptionResponse, ModelMissingError)):
                self._info = None  # rediscover next time: the device may have been replaced or restarted
            log.warning("%s", exc)
            self._telemetry = replace(self._telemetry, stale=True, error=str(exc))
            return self._telemetry
        self._telemetry = Telemetry(
            timestamp=self._wall_clock(),
            stale=False,
            p_w=meas.value("W"),
            q_var=meas.value("Var"),
            v_v=meas.value("LLV"),
            hz=meas.value("Hz"),
            soc_pct=soc,
            energy_available_wh=available,
        )
        return self._telemetry

    # ------------------------------------------------------------------ setpoints

    async def write_setpoint(self, p_w: float, *, revert_s: int | None = None) -> SetpointResult:
        """Command active power ``p_w`` W (+ injected), clamped to the nameplate; raises DeviceError.

        The device drops the setpoint unless it is rewritten within ``revert_s`` seconds
        (default ``config.setpoint_revert_s``; 0 = never). Nothing is written unless discovery
        succeeded and the device publishes its limits (702) and its setpoint control (704).
        """
        if not math.isfinite(p_w):
            raise ValueError(f"setpoint {p_w!r} W is not finite")
        revert = self.config.setpoint_revert_s if revert_s is None else revert_s
        if not 0 <= revert <= 0xFFFF_FFFE:
            raise ValueError(f"revert_s {revert} outside 0..4294967294")
        info = await self._ensure_info()
        ctl = info.location(704)
        if ctl is None or self._wset_sf is None:
            raise ModelMissingError(f"{self.config.link_name}: no active-power setpoint (model 704 with WSet_SF)")
        if info.limits is None:
            raise ModelMissingError(f"{self.config.link_name}: no nameplate limits (model 702 WMaxRtg); refusing to write")
        target = info.limits.clamp(p_w)
        step = 10.0**self._wset_sf
        raw = round(target / step)  # then keep the rounding itself inside the limits
        raw = min(max(raw, math.ceil(info.limits.p_min_w / step - 1e-9)), math.floor(info.limits.p_max_w / step + 1e-9))
        raw32 = raw & 0xFFFF_FFFF
        try:
            if self._revert_written != (revert, self._link.stats.connects):
                await self._write(ctl.address + _WSET_ENA_RVRT, [DISABLED, revert >> 16, revert & 0xFFFF])
                self._revert_written = (revert, self._link.stats.connects)
            await self._write(ctl.address + _WSET_ENA, [ENABLED, WSET_MOD_WATTS, raw32 >> 16, raw32 & 0xFFFF])
        except DeviceError as exc:
            if not isinstance(exc, DeviceExceptionResponse):
                self._info = None  # rediscover before the next write
            raise
        return SetpointResult(requested_w=p_w, written_w=raw * step, clamped=target != p_w, revert_s=revert)

    async def release_setpoint(self) -> None:
        """Disable the setpoint: the device returns to its default behaviour."""
        info = await self._ensure_info()
        ctl = info.location(704)
        if ctl is None:
            raise ModelMissingError(f"{self.config.link_name}: no active-power setpoint (model 704)")
        await self._write(ctl.address + _WSET_ENA, [DISABLED])


def _limits(capacity: ModelView, storage: bool) -> PowerLimits | None:
    """Setpoint range from model 702: ratings and settings, the tighter of each."""
    rating = capacity.value("WMaxRtg")
    if rating is None:
        return None
    highs = [v for v in (rating, capacity.value("WMax")) if v is not None]
    lows: list[float] = []
    if storage:
        highs += [v for v in (capacity.value("WDisChaRteMaxRtg"), capacity.value("WDisChaRteMax")) if v is not None]
        lows = [v for v in (capacity.value("WChaRteMaxRtg"), capacity.value("WChaRteMax")) if v is not None]
    return PowerLimits(p_min_w=-min(lows) if lows else 0.0, p_max_w=min(highs))
