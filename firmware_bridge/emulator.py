"""Emulated SunSpec devices: a pymodbus TCP server over a ``SunSpecDevice`` of any profile.

    async with Emulator(BatteryModel(battery_nameplate()), port=0, profile="legacy") as emu:
        ...  # emu.port is the port actually bound; 127.0.0.1 unless told otherwise

The server answers only its unit id (others get exception 0x0B, gateway target failed to respond),
serves holding registers only, and refuses writes outside the control groups of its profile (see
``sunspec_device``). A loop timer enforces the revert timers even when nobody polls.

:class:`Quirks` make it behave as real devices sometimes do: acknowledge a write and ignore it, answer
bursts of exception 04 (server device failure), answer slowly, or answer only at its own unit id
(no answer at all for any other, as an SMA inverter at unit 126 does).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from firmware_bridge.device import DeviceKind, DeviceModel
from firmware_bridge.errors import ConfigurationError
from firmware_bridge.models import (
    BatteryModel,
    PVInverterModel,
    SiteMeterModel,
    battery_nameplate,
    inverter_nameplate,
    meter_nameplate,
)
from firmware_bridge.server import Framing, ModbusServer, ServerError
from firmware_bridge.sunspec import BASE_ADDRESS
from firmware_bridge.sunspec_device import ExceptionCode, Profile, SunSpecDevice

__all__ = ["QUIRKS", "Emulator", "EmulatorError", "Quirks", "make_model", "parse_quirks"]

log = logging.getLogger(__name__)

EmulatorError = ServerError
"""The emulator could not start (e.g. the port is taken)."""


@dataclass(frozen=True)
class Quirks:
    """Misbehaviour of real devices, on demand.

    ignore_writes: a write is acknowledged and nothing changes (read-back finds the old values).
    busy_every / busy_burst: every ``busy_every``-th request starts a burst of ``busy_burst`` requests answered
    with exception 04 (server device failure); 0 = never. reply_delay_s: every answer waits this long.
    own_unit_only: requests for any other unit id get no answer (instead of exception 0x0B).
    """

    ignore_writes: bool = False
    busy_every: int = 0
    busy_burst: int = 2
    reply_delay_s: float = 0.0
    own_unit_only: bool = False

    def __post_init__(self) -> None:
        if self.busy_every < 0 or self.busy_burst < 1 or (self.busy_every and self.busy_burst >= self.busy_every):
            raise ConfigurationError("need busy_every = 0, or busy_every > busy_burst >= 1")
        if not 0.0 <= self.reply_delay_s <= 60.0:
            raise ConfigurationError(f"reply_delay_s {self.reply_delay_s} outside 0..60")


QUIRKS: dict[str, Quirks] = {
    "ignore-writes": Quirks(ignore_writes=True),
    "busy": Quirks(busy_every=10, busy_burst=2),
    "slow": Quirks(reply_delay_s=0.2),
    "own-unit-only": Quirks(own_unit_only=True),
}
"""The named quirks ``heron-edge emulate --quirk`` offers."""


def parse_quirks(names: Iterable[str]) -> Quirks:
    """The quirks named (see ``QUIRKS``) together; ConfigurationError naming an unknown one."""
    quirks = Quirks()
    for name in names:
        named = QUIRKS.get(name)
        if named is None:
            raise ConfigurationError(f"unknown quirk {name!r}; expected one of {', '.join(QUIRKS)}")
        default = Quirks()
        changes = {f: getattr(named, f) for f in ("ignore_writes", "busy_every", "busy_burst", "reply_delay_s",
                                                   "own_unit_only") if getattr(named, f) != getattr(default, f)}
        quirks = replace(quirks, **changes)
    return quirks


class _SunSpecRegisters:
    """The emulator's register map: the SunSpec image of a ``SunSpecDevice``, with its quirks; an accepted
    write also calls ``on_write`` (the emulator re-arms its revert timer)."""

    def __init__(self, device: SunSpecDevice, quirks: Quirks, on_write: Callable[[], None]) -> None:
        self.device = device
        self.quirks = quirks
        self._on_write = on_write
        self.requests = 0
        self.busy_answers = 0
        self.ignored_writes = 0

    @property
    def span(self) -> tuple[int, int]:
        """The whole image: 'SunS' through the end marker."""
        return self.device.image.base, len(self.device.image.registers)

    def _busy(self) -> bool:
        self.requests += 1
        every = self.quirks.busy_every
        if every and self.requests >= every and self.requests % every < self.quirks.busy_burst:
            self.busy_answers += 1
            return True
        return False

    def read(self, address: int, count: int) -> list[int] | ExceptionCode:
        """The device's registers (measured points refreshed first), or its exception code."""
        if self._busy():
            return ExceptionCode.DEVICE_FAILURE
        return self.device.read(address, count)

    def write(self, address: int, values: Sequence[int]) -> ExceptionCode | None:
        """A write checked and applied by the device; None when accepted (or, ignoring writes, acknowledged)."""
        if self._busy():
            return ExceptionCode.DEVICE_FAILURE
        if self.quirks.ignore_writes:
            self.ignored_writes += 1
            return None
        result = self.device.write(address, values)
        if result is None:
            self._on_write()
        return result


def make_model(kind: DeviceKind) -> DeviceModel:
    """A standalone device model with the default nameplate: a 5 kW / 10 kWh battery, a 10 kW PV inverter or a
    30 kW site meter."""
    if kind == "battery":
        return BatteryModel(battery_nameplate())
    if kind == "inverter":
        return PVInverterModel(inverter_nameplate())
    if kind == "meter":
        return SiteMeterModel(meter_nameplate())
    raise ConfigurationError(f"unknown device kind {kind!r}; expected 'battery', 'inverter' or 'meter'")


class Emulator(ModbusServer):
    """A SunSpec device on a Modbus TCP port (``framing='rtu'`` serves RTU frames over TCP).

    ``profile``: which SunSpec models it exposes (``sunspec_device.PROFILE_MODELS``); ``base``: the address of
    its 'SunS' marker; ``quirks``: see :class:`Quirks`.
    """

    def __init__(
        self,
        model: DeviceModel,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unit_id: int = 1,
        framing: Framing = "socket",
        clock: Callable[[], float] = time.monotonic,
        profile: Profile = "ieee1547",
        quirks: Quirks | None = None,
        base: int = BASE_ADDRESS,
    ) -> None:
        quirks = quirks or Quirks()
        super().__init__(host=host, port=port, unit_id=unit_id, framing=framing,
                         other_units="silent" if quirks.own_unit_only else "refuse", reply_delay_s=quirks.reply_delay_s)
        self.device = SunSpecDevice(model, unit_id=unit_id, clock=clock, profile=profile, base=base)
        self.quirks = quirks
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline = 0.0
        self.registers = _SunSpecRegisters(self.device, quirks, self._arm_timer)

    @property
    def profile(self) -> Profile:
        return self.device.profile

    def _registers(self) -> _SunSpecRegisters:
        return self.registers

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
        self._arm_timer()  # another control may still run its timer, or the deadline moved (a rewrite)
