"""ModbusDeviceIO: the DeviceIO port over firmware_bridge (SunSpec devices, the site meter) and a forecast source.

Every device is opened in its role (battery, generator, pv, wind, meter): firmware_bridge resolves at discovery
which of the device's SunSpec models give each capability (see ``firmware_bridge.capabilities``), so a
legacy device (1xx models) and an IEEE 1547 one (7xx) serve the same features. Where each local feature
(``heron_edge.observations.LOCAL_NAMES``) comes from:

- load_mw, pv_mw, wind_mw (in the coming step): the forecast source (``heron_edge.runtime.forecast``), given
  what was measured in the last step (load = meter import + PV + wind + battery + generator output);
- exchange_mw, violation_pu: the site meter's power and voltage (``heron_edge.runtime.meter``);
- soc: the battery's state of charge (713 ``SoC``, 124 ``ChaState`` or 802 ``SoC``, the first implemented);
- battery_mw, generator_mw: the measured W of the battery and of the generator (701, 101-103 or 111-113,
  with the scale factor the device publishes); 0 without a generator.

Writes: battery and generator as active-power setpoints (W, clamped by firmware_bridge to the device's limits;
704 ``WSet``, or the legacy path: 124 ``InWRte`` / ``OutWRte`` for a battery, 123 ``WMaxLimPct`` for a
generator); a curtailment fraction c becomes an output cap on the PV / wind inverter (123 or 704
``WMaxLimPct``, % of WMax): no cap (the limit disabled) for c = 0, otherwise ``available * (1 - c)`` with the
available power forecast this cycle (0 if unknown; written as at least the device's
``min_limit_pct``). Every write is read back; a device whose read-back differs ``write_mismatches_to_failsafe``
times in a row makes ``read`` fail (a failsafe reason): it acknowledges commands it does not hold.
Every device is read (and written) concurrently; devices on one endpoint (a TCP host:port, an RS-485 port: a
gateway config's ``[links.NAME]``, or the same host and port given twice) share one link, whose queue serializes
their requests. A device with ``map = ...`` is a register-map device (``firmware_bridge.regmap``), filling its
role exactly as a SunSpec device does.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np

from firmware_bridge import Telemetry
from firmware_bridge.errors import DeviceError as BridgeDeviceError
from firmware_bridge.links import LinkPool
from firmware_bridge.regmap import FieldDevice, make_device
from heron_edge import observations as ob
from heron_edge.errors import DeviceError
from heron_edge.runtime.config import DeviceSettings
from heron_edge.runtime.forecast import ForecastSource, PersistenceForecast, SiteMeasurement, StepForecast
from heron_edge.runtime.meter import MeterReading, meter_reading

__all__ = ["ModbusDeviceIO", "ModbusTiming"]

_W_PER_MW = 1e6


@dataclass
class ModbusTiming:
    """Time spent in Modbus requests (s), how many reads/writes failed, and per device the writes whose read-back
    differed from what was written (``write_mismatches``), since the start."""

    read_s: float = 0.0
    write_s: float = 0.0
    reads: int = 0
    writes: int = 0
    read_failures: dict[str, int] = field(default_factory=dict)
    write_failures: dict[str, int] = field(default_factory=dict)
    write_mismatches: dict[str, int] = field(default_factory=dict)


class ModbusDeviceIO:
    """One microgrid's devices over Modbus; ``read`` raises DeviceError naming every stale device.

    ``forecast``: where the coming step's load, PV and wind come from (persistence when None); :meth:`begin_step`
    says which step the next :meth:`read` is for."""

    def __init__(self, devices: DeviceSettings, forecast: ForecastSource | None = None) -> None:
        self.settings = devices
        self.links = LinkPool()
        self.devices: dict[str, FieldDevice] = {
            role: make_device(cfg, role=role, link=self.links.link(cfg))
            for role in ("battery", "generator", "pv", "wind", "meter")
            if (cfg := getattr(devices, role)) is not None
        }
        self.forecast_source: ForecastSource = forecast if forecast is not None else PersistenceForecast()
        self.step = 0
        self.meter: MeterReading | None = None  # last fresh reading
        self.forecast: StepForecast | None = None  # the last read's forecast (fresh when meter_fresh)
        self.meter_fresh = False
        self.stale: dict[str, str] = {}  # role -> error of the last read
        self.timing = ModbusTiming()
        self._row = np.zeros(ob.N_LOCAL)

    async def open(self) -> None:
        for device in self.devices.values():
            await device.open()

    async def close(self) -> None:
        """Close every link (twice is harmless)."""
        for device in self.devices.values():
            await device.close()
        await self.links.close()

    async def __aenter__(self) -> ModbusDeviceIO:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # ------------------------------------------------------------------ read
    def begin_step(self, step: int) -> None:
        """The next :meth:`read` observes ``step`` (the step about to be dispatched: its forecast)."""
        self.step = step

    def _read_meter(self, telemetry: Telemetry) -> MeterReading | str:
        s = self.settings
        try:
            return meter_reading(telemetry, v_nom_v=s.meter_v_nom_v, v_min_pu=s.v_min_pu, v_max_pu=s.v_max_pu)
        except DeviceError as exc:
            return str(exc)

    async def read(self) -> np.ndarray:
        """The 8 local features; DeviceError when any device's values are stale (``stale`` says which)."""
        start = time.perf_counter()
        roles = list(self.devices)
        readings = await asyncio.gather(*(self.devices[r].read_telemetry() for r in roles))
        self.timing.read_s += time.perf_counter() - start
        self.timing.reads += 1
        telemetry: dict[str, Telemetry] = {}
        for role, reading in zip(roles, readings, strict=True):
            if not isinstance(reading, Telemetry):
                raise DeviceError(f"{role}: unexpected reading {reading!r}")
            telemetry[role] = reading
        stale: dict[str, str] = {}
        for role, t in telemetry.items():
            if t.stale or t.p_w is None or (role == "battery" and t.soc_pct is None):
                stale[role] = t.error or "no value"
        meter = self._read_meter(telemetry["meter"]) if "meter" not in stale else stale["meter"]
        if isinstance(meter, MeterReading):
            self.meter = meter
        else:
            stale["meter"] = meter
        self.meter_fresh = False
        limit = self.settings.write_mismatches_to_failsafe
        for role, device in self.devices.items():
            if device.stats.consecutive_mismatches >= limit and role not in stale:
                stale[role] = (f"its last {device.stats.consecutive_mismatches} writes were acknowledged but not held "
                               "(read-back differs)")
        self.stale = stale
        for role in stale:
            self.timing.read_failures[role] = self.timing.read_failures.get(role, 0) + 1
        if stale or not isinstance(meter, MeterReading):  # a fresh reading when nothing is stale
            raise DeviceError("stale: " + "; ".join(f"{role}: {why}" for role, why in stale.items()))
        forecast = await self.forecast_source.forecast(self.step, self.measured(meter, telemetry))
        self.forecast, self.meter_fresh = forecast, True
        return self._features(meter, forecast, telemetry)

    @staticmethod
    def measured(meter: MeterReading, telemetry: dict[str, Telemetry]) -> SiteMeasurement:
        """The last step's load (import + every source's output, MW), PV and wind output (MW)."""
        def mw(role: str) -> float:
            t = telemetry.get(role)
            return (t.p_w or 0.0) / _W_PER_MW if t is not None else 0.0

        pv, wind = mw("pv"), mw("wind")
        return SiteMeasurement(meter.exchange_mw + pv + wind + mw("battery") + mw("generator"), pv, wind)

    def _features(self, meter: MeterReading, forecast: StepForecast, telemetry: dict[str, Telemetry]) -> np.ndarray:
        row = self._row
        battery = telemetry["battery"]
        generator = telemetry.get("generator")
        row[0] = forecast.load_mw
        row[1] = forecast.pv_mw
        row[2] = forecast.wind_mw
        row[3] = (battery.soc_pct or 0.0) / 100.0
        row[4] = (generator.p_w or 0.0) / _W_PER_MW if generator is not None else 0.0
        row[5] = (battery.p_w or 0.0) / _W_PER_MW
        row[6] = meter.exchange_mw
        row[7] = meter.violation_pu
        return row.copy()

    # ------------------------------------------------------------------ write
    @property
    def keepalive_writes(self) -> int:
        """Setpoints re-written by the devices' keep-alive since the start."""
        return sum(device.stats.keepalive_writes for device in self.devices.values())

    def _cap_w(self, curtailment: float, available_mw: float | None) -> float | None:
        if curtailment <= 0.0:
            return None
        if available_mw is None or not self.meter_fresh:
            return 0.0
        return max(0.0, available_mw * (1.0 - min(curtailment, 1.0))) * _W_PER_MW

    async def write(self, battery_mw: float, generator_mw: float, pv_curtailment: float, wind_curtailment: float) -> None:
        """Command every device (concurrently); DeviceError names the devices that refused or did not answer."""
        forecast = self.forecast
        targets = {"battery": battery_mw * _W_PER_MW, "generator": generator_mw * _W_PER_MW,
                   "pv": self._cap_w(pv_curtailment, forecast.pv_mw if forecast else None),
                   "wind": self._cap_w(wind_curtailment, forecast.wind_mw if forecast else None)}
        roles = [r for r in targets if r in self.devices]
        start = time.perf_counter()
        results = await asyncio.gather(*(self.devices[r].write_setpoint(targets[r]) for r in roles), return_exceptions=True)
        self.timing.write_s += time.perf_counter() - start
        self.timing.writes += 1
        failed = {}
        for role, result in zip(roles, results, strict=True):
            if isinstance(result, BridgeDeviceError):
                failed[role] = str(result)
                self.timing.write_failures[role] = self.timing.write_failures.get(role, 0) + 1
            elif isinstance(result, BaseException):
                raise result
            elif not result.readback_ok:
                self.timing.write_mismatches[role] = self.timing.write_mismatches.get(role, 0) + 1
        if failed:
            raise DeviceError("write failed: " + "; ".join(f"{role}: {why}" for role, why in failed.items()))
