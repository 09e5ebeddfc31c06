"""Emulated SunSpec inverters and batteries: a pymodbus TCP server over a ``SunSpecDevice``.

    async with Emulator(BatteryModel(battery_nameplate()), port=0) as emu:
        ...  # emu.port is the port actually bound; 127.0.0.1 unless told otherwise

The server answers only its unit id (others get exception 0x0B, gateway target failed to respond),
serves holding registers only, and refuses writes outside the 704 WSet group (see
``sunspec_device``). A loop timer enforces the setpoint revert timer even when nobody polls.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from firmware_bridge.device import DeviceKind, DeviceModel
from firmware_bridge.models import BatteryModel, PVInverterModel, battery_nameplate, inverter_nameplate
from firmware_bridge.server import Framing, ModbusServer, ServerError
from firmware_bridge.sunspec_device import ExceptionCode, SunSpecDevice

__all__ = ["Emulator", "EmulatorError", "make_model"]

log = logging.getLogger(__name__)

EmulatorError = ServerError
"""The emulator could not start (e.g. the port is taken)."""


class _SunSpecRegisters:
    """The emulator's register map: the SunSpec image of a ``SunSpecDevice``; an accepted write also
    calls ``on_write`` (the emulator re-arms its revert timer)."""

    def __init__(self, device: SunSpecDevice, on_write: Callable[[], None]) -> None:
        self.device = device
        self._on_write = on_write

    @property
    def span(self) -> tuple[int, int]:
        """The whole image: 'SunS' through the end marker."""
        return self.device.image.base, len(self.device.image.registers)

    def read(self, address: int, count: int) -> list[int] | ExceptionCode:
        """The device's registers (measured points refreshed first), or its exception code."""
        return self.device.read(address, count)

    def write(self, address: int, values: Sequence[int]) -> ExceptionCode | None:
        """A write checked and applied by the device; None when accepted."""
        result = self.device.write(address, values)
        if result is None:
            self._on_write()
        return result


def make_model(kind: DeviceKind) -> DeviceModel:
    """A standalone device model with the default nameplate: a 5 kW / 10 kWh battery or a 10 kW PV inverter."""
    if kind == "battery":
        return BatteryModel(battery_nameplate())
    if kind == "inverter":
        return PVInverterModel(inverter_nameplate())
    raise ValueError(f"unknown device kind {kind!r}; expected 'battery' or 'inverter'")


class Emulator(ModbusServer):
    """A SunSpec device on a Modbus TCP port (``framing='rtu'`` serves RTU frames over TCP)."""

    def __init__(
        self,
        model: DeviceModel,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unit_id: int = 1,
        framing: Framing = "socket",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(host=host, port=port, unit_id=unit_id, framing=framing)
        self.device = SunSpecDevice(model, unit_id=unit_id, clock=clock)
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline = 0.0

    def _registers(self) -> _SunSpecRegisters:
        return _SunSpecRegisters(self.device, self._arm_timer)

    async def start(self) -> None:
        """Listen on host:port (see ModbusServer.start) and keep the revert timer armed."""
        await super().start()
        self._arm_timer()

    async def stop(self) -> None:
        """Stop listening and the revert timer; stopping twice is harmless."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await super().stop()

    def _arm_timer(self) -> None:
        """Make sure a loop timer fires by the device's revert deadline; called after every accepted write.

        A rewrite only pushes the deadline later, so a pending earlier timer is kept: when it fires
        early it looks again (no timer churn on the hot write path).
        """
        deadline = self.device.revert_deadline
        if deadline is None or self._server is None:
            return
        if self._timer is not None and self._timer_deadline <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_deadline = deadline
        self._timer = asyncio.get_running_loop().call_later(max(0.0, deadline - self._clock()), self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        if self.device.check_revert():
            log.info("setpoint revert timer ran out: back to the default behaviour")
        else:
            self._arm_timer()  # the deadline moved (a rewrite) or the clocks differ: look again later
