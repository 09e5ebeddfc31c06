"""The site meter: a small Modbus register map for what a microgrid's local observation needs
beyond its SunSpec devices (the load of the coming step, PV / wind available, the exchange at the
point of connection, the voltage-band violation).

Register map (holding registers, function 3, any unit id the server is configured with; multi-register
values are big-endian, high word first; floats are IEEE-754 binary64, four registers each):

====  ======  =========  ===========================================================================
reg   type    units      meaning
====  ======  =========  ===========================================================================
0     uint16  -          marker 0x4845 ("HE")
1     uint16  -          map version (2)
2-3   uint32  -          step of the values (the plant's step of the year; field meters: a counter)
4-7   float64 MW         load of the step about to be dispatched (+ consumed)
8-11  float64 MW         PV power available in that step
12-15 float64 MW         wind power available in that step
16-19 float64 MW         import at the point of connection in the last step (+ import, - export)
20-23 float64 p.u.       voltage-band violation summed over the microgrid's buses, last step
====  ======  =========  ===========================================================================

Why float64 in MW: the SIL rig must give the agents the same inputs as the in-process environment.
Its observations are float32, but the coordination protocols work on the float64 values (the
operator's setpoints from the reported needs, the orders' quantities, the consensus demand), so
the environment's tests compare setpoints and trades exactly; a float64 register quadruple in MW
is bit-exact for both. (Map version 1 used float32 pairs: exact observations, setpoints off by
float32 rounding, ~1e-8 MW.) SunSpec's int16 W points (model 701) are 100 W coarse at these ratings.
"""
from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from firmware_bridge import ModbusLink
from firmware_bridge.errors import DeviceError as BridgeDeviceError
from firmware_bridge.server import ModbusServer
from firmware_bridge.sunspec_device import ExceptionCode, SunSpecDevice
from heron_edge.errors import DeviceError

__all__ = ["METER_MARKER", "METER_REGISTERS", "METER_VERSION", "MeterReading", "MeterServer", "decode_meter",
           "encode_meter", "read_meter"]


METER_MARKER = 0x4845
METER_VERSION = 2
METER_REGISTERS = 24
"""Registers in the map (0 .. 23)."""


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One reading of the site meter (MW, p.u.; see the module's register map)."""

    step: int
    load_mw: float
    pv_available_mw: float
    wind_available_mw: float
    exchange_mw: float
    violation_pu: float


def _f64_words(value: float) -> list[int]:
    return list(struct.unpack(">4H", struct.pack(">d", value)))


def encode_meter(reading: MeterReading) -> list[int]:
    """The 24 registers of ``reading``."""
    step = reading.step & 0xFFFF_FFFF
    regs = [METER_MARKER, METER_VERSION, step >> 16, step & 0xFFFF]
    for value in (reading.load_mw, reading.pv_available_mw, reading.wind_available_mw, reading.exchange_mw,
                  reading.violation_pu):
        regs += _f64_words(value)
    return regs


def decode_meter(regs: Sequence[int]) -> MeterReading:
    """The reading in ``regs`` (24 registers); raises DeviceError when the marker, version or a value is wrong."""
    if len(regs) < METER_REGISTERS or regs[0] != METER_MARKER or regs[1] != METER_VERSION:
        raise DeviceError(f"not a heron meter map v{METER_VERSION} (marker/version {list(regs[:2])})")
    values = struct.unpack(">5d", struct.pack(">20H", *regs[4:24]))
    if not all(math.isfinite(v) for v in values):
        raise DeviceError(f"meter reports a non-finite value: {values}")
    return MeterReading((regs[2] << 16) | regs[3], *values)


async def read_meter(link: ModbusLink, *, unit_id: int, address: int = 0) -> MeterReading:
    """Read and decode the meter on ``link`` (one request); firmware_bridge errors become DeviceError."""
    try:
        regs = await link.read(address, METER_REGISTERS, unit_id=unit_id)
    except BridgeDeviceError as exc:
        raise DeviceError(f"meter at {link.config.link_name} unit {unit_id}: {exc}") from exc
    return decode_meter(regs)


class _MeterRegisters:
    """The meter's register map: registers 0..23 computed from the reading source at each request; read-only."""

    def __init__(self, source: Callable[[], MeterReading]) -> None:
        self._source = source

    @property
    def span(self) -> tuple[int, int]:
        """Registers 0 .. METER_REGISTERS - 1."""
        return 0, METER_REGISTERS

    def read(self, address: int, count: int) -> list[int] | ExceptionCode:
        """The current reading's registers ``address .. address + count - 1``."""
        if address < 0 or count < 1 or address + count > METER_REGISTERS:
            return ExceptionCode.ILLEGAL_ADDRESS
        return encode_meter(self._source())[address : address + count]

    def write(self, address: int, values: Sequence[int]) -> ExceptionCode | None:
        """Every write is refused: the meter is read-only."""
        return ExceptionCode.ILLEGAL_ADDRESS


class _MeterAndSunSpec:
    """The heron meter map at 0..23 and a SunSpec meter's image (at its base, 40000) on one unit id."""

    def __init__(self, heron: _MeterRegisters, sunspec: SunSpecDevice) -> None:
        self._heron = heron
        self._sunspec = sunspec
        if sunspec.image.base < METER_REGISTERS:
            raise ValueError(f"a SunSpec image at {sunspec.image.base} overlaps the heron meter map")

    @property
    def span(self) -> tuple[int, int]:
        """From register 0 to the end of the SunSpec image (the gap between them answers ILLEGAL_ADDRESS)."""
        return 0, self._sunspec.image.end

    def read(self, address: int, count: int) -> list[int] | ExceptionCode:
        if address + count <= METER_REGISTERS:
            return self._heron.read(address, count)
        if address >= self._sunspec.image.base:
            return self._sunspec.read(address, count)
        return ExceptionCode.ILLEGAL_ADDRESS

    def write(self, address: int, values: Sequence[int]) -> ExceptionCode | None:
        if address >= self._sunspec.image.base:
            return self._sunspec.write(address, values)
        return ExceptionCode.ILLEGAL_ADDRESS


class MeterServer(ModbusServer):
    """Serve the meter map over Modbus TCP on ``host:port`` (port 0 picks one); read-only.

    ``source`` is called at each request and returns the current reading. With ``sunspec`` (a SunSpec meter,
    e.g. model 203 or 213 over the plant's exchange) the same unit also serves that image at its base address,
    as a site meter that speaks SunSpec does (``heron-edge probe`` finds it). Restartable on its port.
    """

    def __init__(self, source: Callable[[], MeterReading], *, host: str = "127.0.0.1", port: int = 0,
                 unit_id: int = 1, sunspec: SunSpecDevice | None = None) -> None:
        super().__init__(host=host, port=port, unit_id=unit_id)
        self._source = source
        self.sunspec = sunspec

    def _registers(self) -> _MeterRegisters | _MeterAndSunSpec:
        heron = _MeterRegisters(self._source)
        return heron if self.sunspec is None else _MeterAndSunSpec(heron, self.sunspec)
