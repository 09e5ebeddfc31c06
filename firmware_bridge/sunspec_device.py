"""A SunSpec device without sockets: a register image kept in step with a ``DeviceModel``.

Reads refresh the measured points; writes are checked (whole points only, writable points only,
values within the nameplate) and then applied to the model. The active-power control of model 704
carries a revert timer: when WSetRvrtTms seconds pass without a rewrite of the WSet group, the
device falls back to WSetEnaRvrt / WSetRvrt (by default: disabled, i.e. the device's default
behaviour). This is the in-memory twin the Modbus server in ``emulator`` serves, and the one tests
use without sockets.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from enum import IntEnum

from firmware_bridge.device import DeviceModel, Measurement, Nameplate
from firmware_bridge.errors import ConfigurationError
from firmware_bridge.sunspec import PointDef, SunSpecImage, fit_scale_factor, raw_range
from firmware_bridge.sunspec_models import (
    COMMON,
    DER_CAPACITY,
    DER_CTL_AC,
    DER_MEASURE_AC,
    DER_STORAGE_CAPACITY,
    DISABLED,
    ENABLED,
    WSET_MOD_WATTS,
)

__all__ = ["WSET_POINTS", "ExceptionCode", "SunSpecDevice"]

_SQRT3 = math.sqrt(3.0)
_INV_RUNNING, _INV_THROTTLED = 3, 4
_CTRL_MODES = (1 << 0) | (1 << 1)  # MAX_W | FIXED_W: the two active-power functions we honour
_MEASURED_701 = ("W", "VA", "Var", "PF", "A", "LLV", "LNV", "Hz", "TotWhInj", "TotWhAbs", "InvSt")

WSET_POINTS = frozenset({"WSetEna", "WSetMod", "WSet", "WSetRvrt", "WSetEnaRvrt", "WSetRvrtTms"})
"""Writable points of model 704 (the active-power setpoint group); every other write is refused."""


class ExceptionCode(IntEnum):
    """Modbus exception codes the device answers with (same numbers as pymodbus's ExcCodes)."""

    ILLEGAL_FUNCTION = 1
    ILLEGAL_ADDRESS = 2
    ILLEGAL_VALUE = 3


class SunSpecDevice:
    """SunSpec image (models 1, 701, 702, 704 and, for a battery, 713) over a device model.

    ``unit_id`` goes into model 1's DA point; ``clock`` (seconds, monotonic) drives the revert timer.
    """

    def __init__(
        self,
        model: DeviceModel,
        *,
        unit_id: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.nameplate: Nameplate = model.nameplate
        self._clock = clock
        models = [COMMON, DER_MEASURE_AC, DER_CAPACITY, DER_CTL_AC]
        if self.nameplate.kind == "battery":
            models.append(DER_STORAGE_CAPACITY)
        self.image = SunSpecImage(models)
        self.revert_deadline: float | None = None
        self.reverts = 0
        self.writes = 0
        self._fill_static(unit_id)
        self._ctl = self.image[704]
        # scale factors are static from here on: bind fast setters for what changes over time
        meas = self.image[701]
        self._set_701 = {name: meas.value_setter(name) for name in _MEASURED_701}
        self._set_713 = {name: self.image[713].value_setter(name) for name in ("SoC", "WHAvail")} if 713 in self.image else {}
        self._set_rem = self._ctl.value_setter("WSetRvrtRem")
        rem = DER_CTL_AC.point("WSetRvrtRem")
        rem_address = self.image.base + self._ctl.start + rem.offset
        # (first address, one past the last, refresh): the measured models, whole (ID and L included)
        self._measured: list[tuple[int, int, Callable[[Measurement], None]]] = [
            (loc.address, loc.address + loc.length + 2, self._refresh_701 if loc.model_id == 701 else self._refresh_713)
            for loc in self.image.locations
            if loc.model_id in (701, 713)
        ]
        self._rem_span = (rem_address, rem_address + rem.size)  # WSetRvrtRem: computed from the clock, no measurement
        self.refresh()

    # ------------------------------------------------------------------ static content

    def _fill_static(self, unit_id: int) -> None:
        plate = self.nameplate
        a_max = plate.s_max_va / (_SQRT3 * plate.v_nom_v)
        v_max = 1.1 * plate.v_nom_v

        common = self.image[1]
        common.set_raw("Mn", plate.manufacturer)
        common.set_raw("Md", plate.model)
        common.set_raw("Vr", plate.version)
        common.set_raw("SN", plate.serial)
        common.set_raw("DA", unit_id)

        meas = self.image[701]
        meas.set_raw("W_SF", fit_scale_factor(plate.s_max_va, "int16"))
        meas.set_raw("VA_SF", fit_scale_factor(plate.s_max_va, "int16"))
        meas.set_raw("Var_SF", fit_scale_factor(plate.s_max_va, "int16"))
        meas.set_raw("PF_SF", -3)
        meas.set_raw("A_SF", fit_scale_factor(1.2 * a_max, "int16", finest=-2))
        meas.set_raw("V_SF", fit_scale_factor(1.2 * v_max, "uint16", finest=-1))
        meas.set_raw("Hz_SF", -3)
        meas.set_raw("TotWh_SF", 0)
        meas.set_raw("ACType", 2)  # THREE_PHASE
        meas.set_raw("St", 1)  # ON
        meas.set_raw("ConnSt", 1)  # CONNECTED
        meas.set_raw("Alrm", 0)

        cap = self.image[702]
        p_rating = max(plate.p_max_w, plate.p_charge_max_w)
        cap.set_raw("W_SF", fit_scale_factor(max(p_rating, plate.s_max_va), "uint16"))
        cap.set_raw("VA_SF", fit_scale_factor(plate.s_max_va, "uint16"))
        cap.set_raw("Var_SF", fit_scale_factor(plate.s_max_va, "uint16"))
        cap.set_raw("V_SF", fit_scale_factor(v_max, "uint16", finest=-1))
        cap.set_raw("A_SF", fit_scale_factor(a_max, "uint16", finest=-2))
        cap.set_value("WMaxRtg", plate.p_max_w)
        cap.set_value("VAMaxRtg", plate.s_max_va)
        cap.set_value("VarMaxInjRtg", plate.s_max_va)
        cap.set_value("VarMaxAbsRtg", plate.s_max_va)
        cap.set_value("VNomRtg", plate.v_nom_v)
        cap.set_value("VMaxRtg", v_max)
        cap.set_value("VMinRtg", 0.9 * plate.v_nom_v)
        cap.set_value("AMaxRtg", a_max)
        cap.set_raw("CtrlModes", _CTRL_MODES)
        cap.set_value("WMax", plate.p_max_w)
        cap.set_value("VAMax", plate.s_max_va)
        cap.set_value("VNom", plate.v_nom_v)
        if plate.kind == "battery":
            for name in ("WChaRteMaxRtg", "WChaRteMax"):
                cap.set_value(name, plate.p_charge_max_w)
            for name in ("WDisChaRteMaxRtg", "WDisChaRteMax"):
                cap.set_value(name, plate.p_max_w)

        ctl = self.image[704]
        ctl.set_raw("WSet_SF", fit_scale_factor(p_rating, "int32"))
        ctl.set_raw("WSetEna", DISABLED)
        ctl.set_raw("WSetMod", WSET_MOD_WATTS)
        ctl.set_raw("WSet", 0)
        ctl.set_raw("WSetRvrt", 0)
        ctl.set_raw("WSetEnaRvrt", DISABLED)
        ctl.set_raw("WSetRvrtTms", 0)
        ctl.set_raw("WSetRvrtRem", 0)

        if plate.kind == "battery":
            if plate.energy_wh is None:  # Nameplate refuses this; a duck-typed nameplate may not
                raise ConfigurationError(f"battery {plate.serial!r}: the nameplate needs energy_wh for model 713")
            storage = self.image[713]
            storage.set_raw("WH_SF", fit_scale_factor(plate.energy_wh, "uint16"))
            storage.set_raw("Pct_SF", -1)
            storage.set_value("WHRtg", plate.energy_wh)
            storage.set_value("SoH", 100.0)
            storage.set_raw("Sta", 0)  # OK

    # ------------------------------------------------------------------ reads

    def refresh(self) -> None:
        """Copy the model's measurement into models 701/713 and the revert time left into 704."""
        self.check_revert()
        m = self.model.measure()
        for _, _, section in self._measured:
            section(m)
        self._refresh_rem()

    def _refresh_701(self, m: Measurement) -> None:
        s = math.hypot(m.p_w, m.q_var)
        set_ = self._set_701
        set_["W"](m.p_w)
        set_["VA"](s)
        set_["Var"](m.q_var)
        set_["PF"](m.p_w / s if s > 0 else 1.0)
        set_["A"](s / (_SQRT3 * m.v_v) if m.v_v > 0 else 0.0)
        set_["LLV"](m.v_v)
        set_["LNV"](m.v_v / _SQRT3)
        set_["Hz"](m.hz)
        set_["TotWhInj"](None if m.energy_injected_wh is None else math.floor(m.energy_injected_wh))
        set_["TotWhAbs"](None if m.energy_absorbed_wh is None else math.floor(m.energy_absorbed_wh))
        set_["InvSt"](_INV_THROTTLED if m.throttled else _INV_RUNNING)

    def _refresh_713(self, m: Measurement) -> None:
        self._set_713["SoC"](None if m.soc is None else 100.0 * m.soc)
        self._set_713["WHAvail"](m.energy_available_wh)

    def _refresh_rem(self) -> None:
        left = 0 if self.revert_deadline is None else math.ceil(max(0.0, self.revert_deadline - self._clock()))
        self._set_rem(left)

    def read(self, address: int, count: int) -> list[int] | ExceptionCode:
        """Registers ``address .. address+count-1`` (what they cover refreshed first), or ILLEGAL_ADDRESS."""
        begin = address - self.image.base
        if begin < 0 or count < 1 or begin + count > len(self.image.registers):
            return ExceptionCode.ILLEGAL_ADDRESS
        end = address + count
        touched = [section for low, high, section in self._measured if address < high and low < end]
        rem_low, rem_high = self._rem_span
        rem = address < rem_high and rem_low < end
        if touched or rem:
            self.check_revert()
            if touched:  # measure once, and only when a measured model is read
                m = self.model.measure()
                for section in touched:
                    section(m)
            if rem:
                self._refresh_rem()
        return self.image.registers[begin : begin + count]

    # ------------------------------------------------------------------ writes

    def write(self, address: int, values: Sequence[int]) -> ExceptionCode | None:
        """Write whole points of the WSet group atomically and apply them; an exception code otherwise."""
        self.check_revert()
        covered = self.image.points_in(address, len(values))
        if covered is None or any(model_id != 704 or p.name not in WSET_POINTS for model_id, p in covered):
            return ExceptionCode.ILLEGAL_ADDRESS
        if any(not 0 <= v <= 0xFFFF for v in values):
            return ExceptionCode.ILLEGAL_VALUE
        begin = address - self.image.base
        saved = self.image.registers[begin : begin + len(values)]
        self.image.registers[begin : begin + len(values)] = list(values)
        if not all(self._valid(point) for _, point in covered):
            self.image.registers[begin : begin + len(values)] = saved
            return ExceptionCode.ILLEGAL_VALUE
        self.writes += 1
        now = self._clock()
        tms = self._ctl.raw("WSetRvrtTms")
        if self._ctl.raw("WSetEna") == ENABLED and isinstance(tms, int) and tms > 0:
            self.revert_deadline = now + tms
        else:
            self.revert_deadline = None
        self._apply()
        return None

    def _valid(self, point: PointDef) -> bool:
        raw = self._ctl.raw(point.name)
        if point.name in ("WSetEna", "WSetEnaRvrt"):
            return raw in (ENABLED, DISABLED)
        if point.name == "WSetMod":
            return raw == WSET_MOD_WATTS
        if point.name in ("WSet", "WSetRvrt"):
            value = self._ctl.value(point.name)
            return value is not None and -self.nameplate.p_charge_max_w <= value <= self.nameplate.p_max_w
        if point.name == "WSetRvrtTms":
            return isinstance(raw, int) and raw <= raw_range("uint32")[1]
        return False

    def _apply(self) -> None:
        if self._ctl.raw("WSetEna") == ENABLED:
            self.model.apply_setpoint(self._ctl.value("WSet"))
        else:
            self.model.apply_setpoint(None)

    # ------------------------------------------------------------------ failsafe

    def check_revert(self) -> bool:
        """Revert the setpoint if its timer has run out; True when it did."""
        if self.revert_deadline is None or self._clock() < self.revert_deadline:
            return False
        self.revert_deadline = None
        self._ctl.set_raw("WSetEna", self._ctl.raw("WSetEnaRvrt"))
        self._ctl.set_raw("WSet", self._ctl.raw("WSetRvrt"))
        self._ctl.set_raw("WSetRvrtRem", 0)
        self.reverts += 1
        self._apply()
        return True
