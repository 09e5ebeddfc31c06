"""Standalone physics for emulated devices, for running without the simulator.

Both models integrate lazily: each ``measure()`` or ``apply_setpoint()`` first advances the state
from the last call to ``clock()`` (seconds), holding the power that was in force. An injected clock
makes them deterministic in tests.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

from firmware_bridge.device import Measurement, Nameplate

__all__ = ["BatteryModel", "PVInverterModel", "SiteMeterModel", "battery_nameplate", "daily_irradiance", "inverter_nameplate",
           "meter_nameplate"]

_SECONDS_PER_HOUR = 3600.0


def _voltage(nameplate: Nameplate, p_w: float) -> float:
    """Line-to-line voltage with a small rise under injection (1 % at full apparent power)."""
    return nameplate.v_nom_v * (1.0 + 0.01 * p_w / nameplate.s_max_va)


class BatteryModel:
    """A battery behind an inverter: state of charge integration, power and SoC limits, efficiency.

    Default behaviour (no setpoint) is idle, 0 W. The one-way efficiency applies on both sides:
    charging P W for an hour stores P*eta Wh; discharging P W for an hour takes P/eta Wh.
    """

    def __init__(
        self,
        nameplate: Nameplate,
        *,
        soc: float = 0.5,
        soc_min: float = 0.1,
        soc_max: float = 0.9,
        efficiency: float = 0.95,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if nameplate.kind != "battery" or nameplate.energy_wh is None:
            raise ValueError("BatteryModel needs a battery nameplate")
        if not 0.0 <= soc_min < soc_max <= 1.0 or not soc_min <= soc <= soc_max:
            raise ValueError("need 0 <= soc_min <= soc <= soc_max <= 1")
        if not 0.0 < efficiency <= 1.0:
            raise ValueError("efficiency must be in (0, 1]")
        self._nameplate = nameplate
        self._energy_wh: float = nameplate.energy_wh
        self.soc = soc
        self.soc_min = soc_min
        self.soc_max = soc_max
        self.efficiency = efficiency
        self._clock = clock
        self._last = clock()
        self._command_w = 0.0
        self.energy_injected_wh = 0.0
        self.energy_absorbed_wh = 0.0

    @property
    def nameplate(self) -> Nameplate:
        """Static ratings."""
        return self._nameplate

    def _power(self) -> float:
        """The power actually delivered now: the command, limited by ratings and by the SoC window."""
        p = min(max(self._command_w, -self._nameplate.p_charge_max_w), self._nameplate.p_max_w)
        if p > 0 and self.soc <= self.soc_min:
            return 0.0
        if p < 0 and self.soc >= self.soc_max:
            return 0.0
        return p

    def _advance(self) -> None:
        now = self._clock()
        dt = max(0.0, now - self._last)
        self._last = now
        p = self._power()
        if dt == 0.0 or p == 0.0:
            return
        hours = dt / _SECONDS_PER_HOUR
        if p > 0:  # discharge: the cells lose p/eta
            stored_rate = -p / self.efficiency
            room = (self.soc - self.soc_min) * self._energy_wh
        else:  # charge: the cells gain |p|*eta
            stored_rate = -p * self.efficiency
            room = (self.soc_max - self.soc) * self._energy_wh
        hours = min(hours, room / abs(stored_rate))  # stop at the SoC limit
        self.soc += stored_rate * hours / self._energy_wh
        self.soc = min(max(self.soc, self.soc_min), self.soc_max)
        if p > 0:
            self.energy_injected_wh += p * hours
        else:
            self.energy_absorbed_wh += -p * hours

    def measure(self) -> Measurement:
        """State now (advances the integration to ``clock()``)."""
        self._advance()
        p = self._power()
        return Measurement(
            p_w=p,
            v_v=_voltage(self._nameplate, p),
            hz=self._nameplate.f_nom_hz,
            soc=self.soc,
            energy_available_wh=max(0.0, (self.soc - self.soc_min) * self._energy_wh * self.efficiency),
            energy_injected_wh=self.energy_injected_wh,
            energy_absorbed_wh=self.energy_absorbed_wh,
            throttled=p != self._command_w,
        )

    def apply_setpoint(self, p_w: float | None) -> None:
        """Charge (< 0) or discharge (> 0) at ``p_w`` W from now on; None returns to idle (0 W)."""
        self._advance()
        self._command_w = 0.0 if p_w is None else float(p_w)


def daily_irradiance(seconds_of_day: float, *, sunrise_h: float = 6.0, sunset_h: float = 18.0) -> float:
    """Clear-sky irradiance as a fraction of the rated one: a half sine between sunrise and sunset."""
    hour = (seconds_of_day / _SECONDS_PER_HOUR) % 24.0
    if not sunrise_h < hour < sunset_h:
        return 0.0
    return math.sin(math.pi * (hour - sunrise_h) / (sunset_h - sunrise_h))


def _seconds_of_local_day() -> float:
    now = time.localtime()
    return now.tm_hour * 3600.0 + now.tm_min * 60.0 + now.tm_sec + (time.time() % 1.0)


class PVInverterModel:
    """A PV inverter: output follows the irradiance curve, capped by an active-power setpoint.

    ``time_of_day`` returns seconds since local midnight (default: the wall clock);
    ``irradiance`` maps it to a fraction of the rated power. Default behaviour (no setpoint) is
    maximum power point tracking; a setpoint curtails (it can only lower the output).
    """

    def __init__(
        self,
        nameplate: Nameplate,
        *,
        irradiance: Callable[[float], float] = daily_irradiance,
        time_of_day: Callable[[], float] = _seconds_of_local_day,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if nameplate.kind != "inverter":
            raise ValueError("PVInverterModel needs an inverter nameplate")
        self._nameplate = nameplate
        self._irradiance = irradiance
        self._time_of_day = time_of_day
        self._clock = clock
        self._last = clock()
        self._limit_w: float | None = None
        self._p_w = 0.0
        self.energy_injected_wh = 0.0

    @property
    def nameplate(self) -> Nameplate:
        """Static ratings."""
        return self._nameplate

    def available_w(self) -> float:
        """What the array could deliver now, W."""
        fraction = min(max(self._irradiance(self._time_of_day()), 0.0), 1.0)
        return fraction * self._nameplate.p_max_w

    def _advance(self) -> None:
        now = self._clock()
        self.energy_injected_wh += self._p_w * max(0.0, now - self._last) / _SECONDS_PER_HOUR
        self._last = now

    def _output(self, available: float) -> float:
        return available if self._limit_w is None else min(available, max(0.0, self._limit_w))

    def measure(self) -> Measurement:
        """State now (advances the energy counter to ``clock()``)."""
        self._advance()
        available = self.available_w()
        p = self._p_w = self._output(available)
        return Measurement(
            p_w=p,
            v_v=_voltage(self._nameplate, p),
            hz=self._nameplate.f_nom_hz,
            energy_injected_wh=self.energy_injected_wh,
            energy_absorbed_wh=0.0,
            throttled=p < available,
        )

    def apply_setpoint(self, p_w: float | None) -> None:
        """Cap the output at ``p_w`` W from now on; None returns to maximum power point tracking."""
        self._advance()
        self._limit_w = None if p_w is None else float(p_w)
        self._p_w = self._output(self.available_w())


class SiteMeterModel:
    """A site meter at the point of connection: the site's load (a base with a daily swing) minus its PV (the
    irradiance curve), so ``p_w`` > 0 is imported and < 0 exported. Integrates the import and export energy."""

    def __init__(
        self,
        nameplate: Nameplate,
        *,
        base_load_w: float | None = None,
        pv_peak_w: float | None = None,
        irradiance: Callable[[float], float] = daily_irradiance,
        time_of_day: Callable[[], float] = _seconds_of_local_day,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if nameplate.kind != "meter":
            raise ValueError("SiteMeterModel needs a meter nameplate")
        self._nameplate = nameplate
        self.base_load_w = 0.3 * nameplate.p_max_w if base_load_w is None else base_load_w
        self.pv_peak_w = 0.5 * nameplate.p_max_w if pv_peak_w is None else pv_peak_w
        self._irradiance = irradiance
        self._time_of_day = time_of_day
        self._clock = clock
        self._last = clock()
        self._p_w = self._exchange()
        self.energy_imported_wh = 0.0
        self.energy_exported_wh = 0.0

    @property
    def nameplate(self) -> Nameplate:
        """Static ratings."""
        return self._nameplate

    def _exchange(self) -> float:
        hour = (self._time_of_day() / _SECONDS_PER_HOUR) % 24.0
        load = self.base_load_w * (1.0 + 0.3 * math.sin(math.pi * (hour - 6.0) / 12.0))
        p = load - self.pv_peak_w * min(max(self._irradiance(self._time_of_day()), 0.0), 1.0)
        return min(max(p, -self._nameplate.p_max_w), self._nameplate.p_max_w)

    def measure(self) -> Measurement:
        """The exchange now (+ import), with the energy counters advanced to ``clock()``."""
        now = self._clock()
        hours = max(0.0, now - self._last) / _SECONDS_PER_HOUR
        self._last = now
        if self._p_w > 0:
            self.energy_imported_wh += self._p_w * hours
        else:
            self.energy_exported_wh += -self._p_w * hours
        self._p_w = self._exchange()
        return Measurement(p_w=self._p_w, v_v=self._nameplate.v_nom_v, hz=self._nameplate.f_nom_hz,
                           energy_injected_wh=self.energy_exported_wh, energy_absorbed_wh=self.energy_imported_wh)

    def apply_setpoint(self, p_w: float | None) -> None:
        """A meter takes no setpoint (its map has no control): ignored."""


def battery_nameplate(
    *, p_max_w: float = 5000.0, energy_wh: float = 10000.0, serial: str = "BAT-0001"
) -> Nameplate:
    """A default battery: symmetric charge/discharge rating, apparent power 20 % above it."""
    return Nameplate(
        kind="battery",
        p_max_w=p_max_w,
        p_charge_max_w=p_max_w,
        s_max_va=1.2 * p_max_w,
        energy_wh=energy_wh,
        model="emulated battery",
        serial=serial,
    )


def inverter_nameplate(*, p_max_w: float = 10000.0, serial: str = "PV-0001") -> Nameplate:
    """A default PV inverter: apparent power 10 % above the active-power rating."""
    return Nameplate(kind="inverter", p_max_w=p_max_w, s_max_va=1.1 * p_max_w, model="emulated PV inverter", serial=serial)


def meter_nameplate(*, p_max_w: float = 30000.0, serial: str = "MTR-0001") -> Nameplate:
    """A default site meter rated 30 kW (the largest exchange it reports)."""
    return Nameplate(kind="meter", p_max_w=p_max_w, s_max_va=p_max_w, model="emulated site meter", serial=serial)
