"""A SunSpec device without sockets: a register image kept in step with a ``DeviceModel``.

The image is built from the SunSpec model definitions (pysunspec2's JSON, see ``firmware_bridge.sunspec``)
for a **profile** of models, as field devices expose them:

============  =========================================  ============================================
profile       battery (storage)                          inverter (PV, wind, generator)      meter
============  =========================================  ============================================
ieee1547      1, 701, 702, 704, 713                      1, 701, 702, 704                    1, 213
legacy        1, 103, 120, 121, 124, 802                 1, 103, 120, 121, 122, 123, 160     1, 203
============  =========================================  ============================================

``legacy`` is what SunSpec 1.x products ship (SMA, Fronius Symo / Primo / GEN24, SolarEdge, KACO): the
legacy storage keeps its state of charge only in model 802 (124 ``ChaState`` is not implemented, as on
an SMA Sunny Island), so a client must look past 124 for it. ``ieee1547`` is the IEEE 1547-2018 DER
information model (7xx); its meter is the float meter 213.

Reads refresh the measured points; writes are checked (whole writable points of a control group
only, values within the definition's symbols and the nameplate) and then applied to the model. The
controls and their revert timers (when the timer runs out without a rewrite of the group, the group
falls back to its revert values: the device's default behaviour):

- 704 ``WSet`` group (``WSetEna``, ``WSetMod``, ``WSet``; revert ``WSetEnaRvrt`` / ``WSetRvrt`` after
  ``WSetRvrtTms``) and the ``WMaxLimPct`` group (revert ``WMaxLimPctEnaRvrt`` / ``WMaxLimPctRvrt``
  after ``WMaxLimPctRvrtTms``), a limit in % of 702 ``WMax``;
- 123 ``WMaxLimPct`` + ``WMaxLim_Ena`` (% of 121 ``WMax``; disabled after ``WMaxLimPct_RvrtTms``);
- 124 ``StorCtl_Mod`` + ``InWRte`` / ``OutWRte`` (% of ``WChaMax``; ``StorCtl_Mod`` back to 0 after
  ``InOutWRte_RvrtTms``). The battery's power is held inside the window [-InWRte, +OutWRte] x WChaMax
  (each bound only when its ``StorCtl_Mod`` bit, CHARGE or DISCHARGE, is set): idle when 0 W is inside,
  else the nearer bound, so OutWRte = -InWRte = P / WChaMax commands exactly P (negative rates force
  the other direction, as Fronius and SMA document).

What the model gets (``DeviceModel.apply_setpoint``): a battery its power (704 ``WSet`` when enabled,
else the 124 window), an inverter the smallest of its enabled controls in W (``WSet``, the limits), or
None (default behaviour) when none is in force. This is the in-memory twin the Modbus server in
``emulator`` serves, and the one tests use without sockets.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

from firmware_bridge.device import DeviceKind, DeviceModel, Measurement, Nameplate
from firmware_bridge.errors import ConfigurationError
from firmware_bridge.sunspec import (
    BASE_ADDRESS,
    ModelView,
    PointDef,
    SunSpecImage,
    fit_scale_factor,
    load_model,
    raw_range,
)

__all__ = ["PROFILES", "PROFILE_MODELS", "ExceptionCode", "Profile", "SunSpecDevice"]

Profile = Literal["ieee1547", "legacy"]
PROFILES: tuple[Profile, ...] = ("ieee1547", "legacy")
PROFILE_MODELS: dict[Profile, dict[DeviceKind, tuple[int, ...]]] = {
    "ieee1547": {"battery": (1, 701, 702, 704, 713), "inverter": (1, 701, 702, 704), "meter": (1, 213)},
    "legacy": {"battery": (1, 103, 120, 121, 124, 802), "inverter": (1, 103, 120, 121, 122, 123, 160),
               "meter": (1, 203)},
}
"""The models each profile serves, per device kind, in chain order."""

_SQRT3 = math.sqrt(3.0)
_MPPT_MODULES = 2
_DC_V = 400.0  # the emulated battery's and arrays' DC voltage
_DISABLED, _ENABLED = 0, 1
_WSET_MOD_WATTS = 1
_CHARGE_BIT, _DISCHARGE_BIT = 1, 2  # 124 StorCtl_Mod


class ExceptionCode(IntEnum):
    """Modbus exception codes the device answers with (same numbers as pymodbus's ExcCodes)."""

    ILLEGAL_FUNCTION = 1
    ILLEGAL_ADDRESS = 2
    ILLEGAL_VALUE = 3
    DEVICE_FAILURE = 4


@dataclass
class _Control:
    """A writable control group of one model: its points, the point holding its revert time, what 'in force'
    means, what a revert does, and the current deadline (monotonic s) of its timer."""

    model_id: int
    points: frozenset[str]
    revert_tms: str
    enabled: Callable[[], bool]
    revert: Callable[[], None]
    remaining: str | None = None
    deadline: float | None = None


@dataclass(slots=True, eq=False)
class _Quantities:
    """One measurement in the units the models want."""

    p: float
    q: float
    s: float
    pf: float
    a_phase: float
    v_ll: float
    v_ln: float
    hz: float
    e_inj: float | None
    e_abs: float | None
    soc_pct: float | None
    available_wh: float | None
    throttled: bool

    @classmethod
    def of(cls, m: Measurement) -> _Quantities:
        s = math.hypot(m.p_w, m.q_var)
        return cls(p=m.p_w, q=m.q_var, s=s, pf=m.p_w / s if s > 0 else 1.0,
                   a_phase=s / (_SQRT3 * m.v_v) if m.v_v > 0 else 0.0, v_ll=m.v_v, v_ln=m.v_v / _SQRT3, hz=m.hz,
                   e_inj=None if m.energy_injected_wh is None else float(math.floor(m.energy_injected_wh)),
                   e_abs=None if m.energy_absorbed_wh is None else float(math.floor(m.energy_absorbed_wh)),
                   soc_pct=None if m.soc is None else 100.0 * m.soc, available_wh=m.energy_available_wh,
                   throttled=m.throttled)


Getter = Callable[[_Quantities], float | None]


def _acc(value: float | None) -> float | None:
    """An accumulator's value: 0 is its 'not implemented' sentinel, so an empty counter reads as not implemented."""
    return None if value is None or value < 1 else value


_MEASURED: dict[int, dict[str, Getter]] = {
    701: {"W": lambda q: q.p, "VA": lambda q: q.s, "Var": lambda q: q.q, "PF": lambda q: q.pf,
          "A": lambda q: q.a_phase, "LLV": lambda q: q.v_ll, "LNV": lambda q: q.v_ln, "Hz": lambda q: q.hz,
          "TotWhInj": lambda q: q.e_inj, "TotWhAbs": lambda q: q.e_abs,
          "InvSt": lambda q: 4.0 if q.throttled else 3.0},  # THROTTLED / RUNNING
    713: {"SoC": lambda q: q.soc_pct, "WHAvail": lambda q: q.available_wh},
    103: {"A": lambda q: 3 * q.a_phase, "AphA": lambda q: q.a_phase, "AphB": lambda q: q.a_phase,
          "AphC": lambda q: q.a_phase, "PPVphAB": lambda q: q.v_ll, "PPVphBC": lambda q: q.v_ll,
          "PPVphCA": lambda q: q.v_ll, "PhVphA": lambda q: q.v_ln, "PhVphB": lambda q: q.v_ln,
          "PhVphC": lambda q: q.v_ln, "W": lambda q: q.p, "Hz": lambda q: q.hz, "VA": lambda q: q.s,
          "VAr": lambda q: q.q, "PF": lambda q: 100.0 * q.pf, "WH": lambda q: _acc(q.e_inj),
          "St": lambda q: 5.0 if q.throttled else 4.0},  # THROTTLED / MPPT
    124: {"ChaSt": lambda q: 4.0 if q.p < 0 else 3.0 if q.p > 0 else 6.0},  # CHARGING / DISCHARGING / HOLDING
    802: {"SoC": lambda q: q.soc_pct, "ChaSt": lambda q: 4.0 if q.p < 0 else 3.0 if q.p > 0 else 6.0,
          "W": lambda q: q.p, "A": lambda q: q.p / _DC_V},
    160: {f"module[{i}].{name}": getter for i in range(1, _MPPT_MODULES + 1) for name, getter in (
        ("DCW", lambda q: max(q.p, 0.0) / _MPPT_MODULES), ("DCA", lambda q: max(q.p, 0.0) / _MPPT_MODULES / _DC_V),
        ("DCWH", lambda q: _acc(None if q.e_inj is None else math.floor(q.e_inj / _MPPT_MODULES))))},
}
_METER_PHASES = ("A", "B", "C")


def _meter_points(float_model: bool) -> dict[str, Getter]:
    """The measured points of meter 203 (int + scale factors) or 213 (floats): W + import, per phase a third."""
    ll = "PPVph" if float_model else "PhVph"
    points: dict[str, Getter] = {
        "A": lambda q: q.a_phase, "PhV": lambda q: q.v_ln, "PPV": lambda q: q.v_ll, "Hz": lambda q: q.hz,
        "W": lambda q: q.p, "VA": lambda q: q.s, "VAR": lambda q: q.q, "PF": lambda q: (100.0 if not float_model else 1.0) * q.pf,
        "TotWhExp": lambda q: q.e_inj if float_model else _acc(q.e_inj),
        "TotWhImp": lambda q: q.e_abs if float_model else _acc(q.e_abs)}
    for ph in _METER_PHASES:  # the mandatory per-phase points and W (the optional VA, VAR, PF per phase: none)
        points.update({f"Aph{ph}": lambda q: q.a_phase, f"PhVph{ph}": lambda q: q.v_ln, f"Wph{ph}": lambda q: q.p / 3})
    for pair in ("AB", "BC", "CA"):
        points[f"{ll}{pair}"] = lambda q: q.v_ll
    return points


_MEASURED[203] = _meter_points(False)
_MEASURED[213] = _meter_points(True)


class SunSpecDevice:
    """SunSpec image of one profile over a device model.

    ``unit_id`` goes into model 1's DA point; ``clock`` (seconds, monotonic) drives the revert timers;
    ``base`` is the address of the 'SunS' marker (40000, or 0 / 50000 as some devices have it).
    """

    def __init__(
        self,
        model: DeviceModel,
        *,
        unit_id: int = 1,
        clock: Callable[[], float] = time.monotonic,
        profile: Profile = "ieee1547",
        base: int = BASE_ADDRESS,
    ) -> None:
        if profile not in PROFILE_MODELS:
            raise ConfigurationError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
        self.model = model
        self.nameplate: Nameplate = model.nameplate
        self.profile: Profile = profile
        self._clock = clock
        if self.nameplate.kind == "battery" and self.nameplate.energy_wh is None:  # Nameplate refuses this
            raise ConfigurationError(f"battery {self.nameplate.serial!r}: the nameplate needs energy_wh for its storage model")
        model_ids = PROFILE_MODELS[profile][self.nameplate.kind]
        layouts = [load_model(m).layout(counts={"module": _MPPT_MODULES}) for m in model_ids]
        self.image = SunSpecImage(layouts, base=base)
        self.reverts = 0
        self.writes = 0
        self._fill_static(unit_id)
        self.controls = self._controls()
        self._control_of = {(c.model_id, name): c for c in self.controls for name in c.points}
        # scale factors are static from here on: bind fast setters for what changes over time
        self._measured: list[tuple[int, int, Callable[[_Quantities], None]]] = []
        for loc in self.image.locations:
            getters = _MEASURED.get(loc.model_id)
            if getters:
                view = self.image[loc.model_id]
                names = [name for name in getters if name in view.model]
                self._measured.append((loc.address, loc.address + loc.length + 2,
                                       _refresher(view.values_setter(names), [getters[n] for n in names])))
        self._remaining = [(self.image.address(c.model_id, c.remaining), c) for c in self.controls if c.remaining]
        self.refresh()

    @property
    def kind(self) -> DeviceKind:
        return self.nameplate.kind

    # ------------------------------------------------------------------ static content

    def _fill_static(self, unit_id: int) -> None:
        plate = self.nameplate
        common = self.image[1]
        common.set_raw("Mn", plate.manufacturer)
        common.set_raw("Md", plate.model)
        common.set_raw("Vr", plate.version)
        common.set_raw("SN", plate.serial)
        common.set_raw("DA", unit_id)
        for model_id, view in self.image.views.items():
            fill = _STATIC.get(model_id)
            if fill is not None:
                fill(self, view)

    def _controls(self) -> list[_Control]:
        controls: list[_Control] = []
        if 704 in self.image:
            ctl = self.image[704]

            def revert_wset() -> None:
                ctl.set_raw("WSetEna", ctl.raw("WSetEnaRvrt"))
                ctl.set_raw("WSet", ctl.raw("WSetRvrt"))

            def revert_limit() -> None:
                ctl.set_raw("WMaxLimPctEna", ctl.raw("WMaxLimPctEnaRvrt"))
                ctl.set_raw("WMaxLimPct", ctl.raw("WMaxLimPctRvrt"))

            controls.append(_Control(
                704, frozenset({"WSetEna", "WSetMod", "WSet", "WSetRvrt", "WSetEnaRvrt", "WSetRvrtTms"}), "WSetRvrtTms",
                lambda: ctl.raw("WSetEna") == _ENABLED, revert_wset, remaining="WSetRvrtRem"))
            controls.append(_Control(
                704, frozenset({"WMaxLimPctEna", "WMaxLimPct", "WMaxLimPctRvrt", "WMaxLimPctEnaRvrt", "WMaxLimPctRvrtTms"}),
                "WMaxLimPctRvrtTms", lambda: ctl.raw("WMaxLimPctEna") == _ENABLED, revert_limit,
                remaining="WMaxLimPctRvrtRem"))
        if 123 in self.image:
            imm = self.image[123]
            controls.append(_Control(
                123, frozenset({"WMaxLimPct", "WMaxLimPct_WinTms", "WMaxLimPct_RvrtTms", "WMaxLimPct_RmpTms", "WMaxLim_Ena"}),
                "WMaxLimPct_RvrtTms", lambda: imm.raw("WMaxLim_Ena") == _ENABLED,
                lambda: imm.set_raw("WMaxLim_Ena", _DISABLED)))
        if 124 in self.image:
            stor = self.image[124]
            controls.append(_Control(
                124, frozenset({"StorCtl_Mod", "OutWRte", "InWRte", "InOutWRte_WinTms", "InOutWRte_RvrtTms",
                                "InOutWRte_RmpTms"}), "InOutWRte_RvrtTms",
                lambda: stor.raw("StorCtl_Mod") not in (None, 0),
                lambda: stor.set_raw("StorCtl_Mod", 0)))
        return controls

    # ------------------------------------------------------------------ reads

    def refresh(self) -> None:
        """Copy the model's measurement into the measured models and the revert times left into their points."""
        self.check_revert()
        q = _Quantities.of(self.model.measure())
        for _, _, section in self._measured:
            section(q)
        for address, control in self._remaining:
            self._refresh_remaining(address, control)

    def _refresh_remaining(self, address: int, control: _Control) -> None:
        left = 0 if control.deadline is None else math.ceil(max(0.0, control.deadline - self._clock()))
        begin = address - self.image.base
        self.image.registers[begin : begin + 2] = [left >> 16, left & 0xFFFF]

    def read(self, address: int, count: int) -> list[int] | ExceptionCode:
        """Registers ``address .. address+count-1`` (what they cover refreshed first), or ILLEGAL_ADDRESS."""
        begin = address - self.image.base
        if begin < 0 or count < 1 or begin + count > len(self.image.registers):
            return ExceptionCode.ILLEGAL_ADDRESS
        end = address + count
        touched = [section for low, high, section in self._measured if address < high and low < end]
        remaining = [(a, c) for a, c in self._remaining if address < a + 2 and a < end]
        if touched or remaining:
            self.check_revert()
            if touched:  # measure once, and only when a measured model is read
                q = _Quantities.of(self.model.measure())
                for section in touched:
                    section(q)
            for a, control in remaining:
                self._refresh_remaining(a, control)
        return self.image.registers[begin : begin + count]

    # ------------------------------------------------------------------ writes

    def write(self, address: int, values: Sequence[int]) -> ExceptionCode | None:
        """Write whole points of one control group atomically and apply them; an exception code otherwise."""
        self.check_revert()
        covered = self.image.points_in(address, len(values))
        if covered is None:
            return ExceptionCode.ILLEGAL_ADDRESS
        groups: dict[int, _Control] = {}
        for model_id, point in covered:
            control = self._control_of.get((model_id, point.name))
            if control is None:  # not a writable point of a control group
                return ExceptionCode.ILLEGAL_ADDRESS
            groups[id(control)] = control
        if any(not 0 <= v <= 0xFFFF for v in values):
            return ExceptionCode.ILLEGAL_VALUE
        begin = address - self.image.base
        saved = self.image.registers[begin : begin + len(values)]
        self.image.registers[begin : begin + len(values)] = list(values)
        if not all(self._valid(model_id, point) for model_id, point in covered):
            self.image.registers[begin : begin + len(values)] = saved
            return ExceptionCode.ILLEGAL_VALUE
        self.writes += 1
        now = self._clock()
        for control in groups.values():
            tms = self.image[control.model_id].raw(control.revert_tms)
            control.deadline = now + tms if control.enabled() and isinstance(tms, int) and tms > 0 else None
        self._apply()
        return None

    def _valid(self, model_id: int, point: PointDef) -> bool:
        view = self.image[model_id]
        raw = view.raw(point.name)
        if raw is None or not isinstance(raw, int):
            return False
        name = point.name
        if model_id == 704 and name == "WSetMod":
            return raw == _WSET_MOD_WATTS  # percent mode is not implemented
        if point.type == "enum16":
            return any(value == raw for _, value in point.symbols)
        if point.type == "bitfield16":
            return raw & ~sum(1 << bit for _, bit in point.symbols) == 0
        if name in ("WSet", "WSetRvrt"):
            value = view.value(name)
            return value is not None and -self.nameplate.p_charge_max_w <= value <= self.nameplate.p_max_w
        if name in ("WMaxLimPct", "WMaxLimPctRvrt"):
            value = view.value(name)
            return value is not None and 0.0 <= value <= 100.0
        if name in ("InWRte", "OutWRte"):
            value = view.value(name)
            return value is not None and -100.0 <= value <= 100.0
        return raw <= raw_range(point.type)[1]  # times: any implemented value

    def _limit_w(self, model_id: int, enable: str, pct: str, rating_model: int) -> float | None:
        view = self.image[model_id]
        if view.raw(enable) != _ENABLED:
            return None
        value = view.value(pct)
        rating = self.image[rating_model].value("WMax") if rating_model in self.image else None
        if value is None or rating is None:
            return None
        return rating * value / 100.0

    def command_w(self) -> float | None:
        """What the controls in force ask of the model now (W, + injected), None for the default behaviour."""
        plate = self.nameplate
        if 704 in self.image and self.image[704].raw("WSetEna") == _ENABLED:
            wset = self.image[704].value("WSet")
        else:
            wset = None
        if plate.kind == "battery":
            if wset is not None:
                return wset
            if 124 in self.image:
                stor = self.image[124]
                mode = stor.raw("StorCtl_Mod")
                w_cha = stor.value("WChaMax")
                if isinstance(mode, int) and mode and w_cha is not None:
                    low, high = -plate.p_charge_max_w, plate.p_max_w
                    if mode & _CHARGE_BIT and (rate := stor.value("InWRte")) is not None:
                        low = -rate / 100.0 * w_cha
                    if mode & _DISCHARGE_BIT and (rate := stor.value("OutWRte")) is not None:
                        high = rate / 100.0 * w_cha
                    if low > high:  # an empty window: the device keeps the discharge bound
                        low = high
                    return min(max(0.0, low), high)
            return None
        caps = [w for w in (wset,
                            self._limit_w(704, "WMaxLimPctEna", "WMaxLimPct", 702) if 704 in self.image else None,
                            self._limit_w(123, "WMaxLim_Ena", "WMaxLimPct", 121) if 123 in self.image else None)
                if w is not None]
        return min(caps) if caps else None

    def _apply(self) -> None:
        self.model.apply_setpoint(self.command_w())

    # ------------------------------------------------------------------ failsafe

    @property
    def revert_deadline(self) -> float | None:
        """The earliest revert deadline of a control in force (monotonic s), None when no timer runs."""
        deadlines = [c.deadline for c in self.controls if c.deadline is not None]
        return min(deadlines) if deadlines else None

    def check_revert(self) -> bool:
        """Revert every control whose timer has run out; True when one did."""
        now = self._clock()
        expired = [c for c in self.controls if c.deadline is not None and now >= c.deadline]
        if not expired:
            return False
        for control in expired:
            control.deadline = None
            control.revert()
            self.reverts += 1
        for address, control in self._remaining:
            self._refresh_remaining(address, control)
        self._apply()
        return True


def _refresher(set_values: Callable[[Sequence[float | None]], None], getters: list[Getter]) -> Callable[[_Quantities], None]:
    def refresh(q: _Quantities) -> None:
        set_values([getter(q) for getter in getters])

    return refresh


# ---------------------------------------------------------------------- static content per model


def _sf(view: ModelView, name: str, max_abs: float, ptype: str = "uint16", finest: int = 0) -> None:
    """Set scale-factor point ``name`` to the finest value at which ``max_abs`` fits ``ptype``."""
    if name in view.model:
        view.set_raw(name, fit_scale_factor(max_abs, ptype, finest=finest))  # type: ignore[arg-type]


def _set(view: ModelView, **values: float | None) -> None:
    for name, value in values.items():
        view.set_value(name, value)


def _ratings(device: SunSpecDevice) -> tuple[Nameplate, float, float, float]:
    plate = device.nameplate
    a_max = plate.s_max_va / (_SQRT3 * plate.v_nom_v)
    return plate, a_max, 1.1 * plate.v_nom_v, max(plate.p_max_w, plate.p_charge_max_w)


def _fill_701(device: SunSpecDevice, view: ModelView) -> None:
    plate, a_max, v_max, _ = _ratings(device)
    for name in ("W_SF", "VA_SF", "Var_SF"):
        _sf(view, name, plate.s_max_va, "int16")
    view.set_raw("PF_SF", -3)
    _sf(view, "A_SF", 1.2 * a_max, "int16", finest=-2)
    _sf(view, "V_SF", 1.2 * v_max, "uint16", finest=-1)
    view.set_raw("Hz_SF", -3)
    view.set_raw("TotWh_SF", 0)
    view.set_raw("ACType", 2)  # THREE_PHASE
    view.set_raw("St", 1)  # ON
    view.set_raw("ConnSt", 1)  # CONNECTED
    view.set_raw("Alrm", 0)


def _fill_702(device: SunSpecDevice, view: ModelView) -> None:
    plate, a_max, v_max, p_rating = _ratings(device)
    _sf(view, "W_SF", max(p_rating, plate.s_max_va))
    _sf(view, "VA_SF", plate.s_max_va)
    _sf(view, "Var_SF", plate.s_max_va)
    _sf(view, "V_SF", v_max, finest=-1)
    _sf(view, "A_SF", a_max, finest=-2)
    _set(view, WMaxRtg=plate.p_max_w, VAMaxRtg=plate.s_max_va, VarMaxInjRtg=plate.s_max_va, VarMaxAbsRtg=plate.s_max_va,
         VNomRtg=plate.v_nom_v, VMaxRtg=v_max, VMinRtg=0.9 * plate.v_nom_v, AMaxRtg=a_max, WMax=plate.p_max_w,
         VAMax=plate.s_max_va, VNom=plate.v_nom_v)
    view.set_raw("CtrlModes", (1 << 0) | (1 << 1))  # MAX_W | FIXED_W: the two active-power functions we honour
    if plate.kind == "battery":
        _set(view, WChaRteMaxRtg=plate.p_charge_max_w, WChaRteMax=plate.p_charge_max_w,
             WDisChaRteMaxRtg=plate.p_max_w, WDisChaRteMax=plate.p_max_w)


def _fill_704(device: SunSpecDevice, view: ModelView) -> None:
    _, _, _, p_rating = _ratings(device)
    _sf(view, "WSet_SF", p_rating, "int32")
    view.set_raw("WMaxLimPct_SF", -2)
    for name, raw in (("WSetEna", _DISABLED), ("WSetMod", _WSET_MOD_WATTS), ("WSet", 0), ("WSetRvrt", 0),
                      ("WSetEnaRvrt", _DISABLED), ("WSetRvrtTms", 0), ("WSetRvrtRem", 0), ("WMaxLimPctEna", _DISABLED),
                      ("WMaxLimPct", 10_000), ("WMaxLimPctRvrt", 10_000), ("WMaxLimPctEnaRvrt", _DISABLED),
                      ("WMaxLimPctRvrtTms", 0), ("WMaxLimPctRvrtRem", 0)):
        view.set_raw(name, raw)


def _fill_713(device: SunSpecDevice, view: ModelView) -> None:
    energy = device.nameplate.energy_wh or 0.0
    _sf(view, "WH_SF", energy)
    view.set_raw("Pct_SF", -1)
    _set(view, WHRtg=energy, SoH=100.0)
    view.set_raw("Sta", 0)  # OK


def _fill_103(device: SunSpecDevice, view: ModelView) -> None:
    plate, a_max, v_max, _ = _ratings(device)
    _sf(view, "A_SF", 3.6 * a_max, finest=-2)
    _sf(view, "V_SF", 1.2 * v_max, finest=-1)
    for name in ("W_SF", "VA_SF", "VAr_SF"):
        _sf(view, name, plate.s_max_va, "int16")
    view.set_raw("Hz_SF", -2)
    view.set_raw("PF_SF", -1)
    view.set_raw("WH_SF", 0)
    view.set_raw("Tmp_SF", -1)
    _set(view, TmpCab=35.0)
    for name in ("Evt1", "Evt2"):
        view.set_raw(name, 0)


def _fill_120(device: SunSpecDevice, view: ModelView) -> None:
    plate, a_max, _, _ = _ratings(device)
    battery = plate.kind == "battery"
    view.set_raw("DERTyp", 82 if battery else 4)  # PV_STOR / PV
    _sf(view, "WRtg_SF", plate.p_max_w)
    _sf(view, "VARtg_SF", plate.s_max_va)
    _sf(view, "VArRtg_SF", plate.s_max_va, "int16")
    _sf(view, "ARtg_SF", a_max, finest=-2)
    view.set_raw("PFRtg_SF", -2)
    _set(view, WRtg=plate.p_max_w, VARtg=plate.s_max_va, VArRtgQ1=plate.s_max_va, VArRtgQ2=plate.s_max_va,
         VArRtgQ3=-plate.s_max_va, VArRtgQ4=-plate.s_max_va, ARtg=a_max, PFRtgQ1=0.8, PFRtgQ2=0.8, PFRtgQ3=-0.8,
         PFRtgQ4=-0.8)
    if battery and plate.energy_wh:
        _sf(view, "WHRtg_SF", plate.energy_wh)
        _sf(view, "MaxChaRte_SF", plate.p_charge_max_w)
        _sf(view, "MaxDisChaRte_SF", plate.p_max_w)
        _set(view, WHRtg=plate.energy_wh, MaxChaRte=plate.p_charge_max_w, MaxDisChaRte=plate.p_max_w)


def _fill_121(device: SunSpecDevice, view: ModelView) -> None:
    plate, _, v_max, _ = _ratings(device)
    _sf(view, "WMax_SF", plate.p_max_w)
    _sf(view, "VRef_SF", plate.v_nom_v, finest=-1)
    _sf(view, "VRefOfs_SF", plate.v_nom_v, "int16", finest=-1)
    _sf(view, "VMinMax_SF", v_max, finest=-1)
    _sf(view, "VAMax_SF", plate.s_max_va)
    view.set_raw("ECPNomHz_SF", -2)
    _set(view, WMax=plate.p_max_w, VRef=plate.v_nom_v, VRefOfs=0.0, VMax=v_max, VMin=0.9 * plate.v_nom_v,
         VAMax=plate.s_max_va, ECPNomHz=plate.f_nom_hz)


def _fill_122(device: SunSpecDevice, view: ModelView) -> None:
    view.set_raw("PVConn", 0b111)  # CONNECTED | AVAILABLE | OPERATING
    view.set_raw("StorConn", 0)
    view.set_raw("ECPConn", 1)  # CONNECTED
    view.set_raw("StSetLimMsk", 0)
    view.set_raw("StActCtl", 0)


def _fill_123(device: SunSpecDevice, view: ModelView) -> None:
    view.set_raw("WMaxLimPct_SF", -2)
    view.set_raw("OutPFSet_SF", -3)
    view.set_raw("VArPct_SF", -1)
    for name, raw in (("Conn_WinTms", 0), ("Conn_RvrtTms", 0), ("Conn", 1), ("WMaxLimPct", 10_000),
                      ("WMaxLimPct_WinTms", 0), ("WMaxLimPct_RvrtTms", 0), ("WMaxLimPct_RmpTms", 0),
                      ("WMaxLim_Ena", _DISABLED), ("OutPFSet", 1000), ("OutPFSet_WinTms", 0), ("OutPFSet_RvrtTms", 0),
                      ("OutPFSet_RmpTms", 0), ("OutPFSet_Ena", _DISABLED), ("VArPct_Ena", _DISABLED)):
        view.set_raw(name, raw)


def _fill_124(device: SunSpecDevice, view: ModelView) -> None:
    plate = device.nameplate
    _sf(view, "WChaMax_SF", plate.p_charge_max_w)
    view.set_raw("WChaDisChaGra_SF", 0)
    view.set_raw("InOutWRte_SF", -2)
    _set(view, WChaMax=plate.p_charge_max_w, WChaGra=100.0, WDisChaGra=100.0)
    for name, raw in (("StorCtl_Mod", 0), ("OutWRte", 10_000), ("InWRte", 10_000), ("InOutWRte_WinTms", 0),
                      ("InOutWRte_RvrtTms", 0), ("InOutWRte_RmpTms", 0), ("ChaGriSet", 1)):  # GRID
        view.set_raw(name, raw)
    # ChaState stays 'not implemented': the legacy storage keeps its state of charge in model 802


def _fill_802(device: SunSpecDevice, view: ModelView) -> None:
    plate = device.nameplate
    energy = plate.energy_wh or 0.0
    _sf(view, "AHRtg_SF", energy / _DC_V)
    _sf(view, "WHRtg_SF", energy)
    _sf(view, "WChaDisChaMax_SF", max(plate.p_max_w, plate.p_charge_max_w))
    view.set_raw("SoC_SF", -2)
    view.set_raw("SoH_SF", 0)
    view.set_raw("V_SF", -1)
    view.set_raw("CellV_SF", -3)
    _sf(view, "A_SF", 1.2 * max(plate.p_max_w, plate.p_charge_max_w) / _DC_V, "int16", finest=-2)
    view.set_raw("AMax_SF", 0)
    _sf(view, "W_SF", max(plate.p_max_w, plate.p_charge_max_w), "int16")
    _set(view, AHRtg=energy / _DC_V, WHRtg=energy, WChaRteMax=plate.p_charge_max_w, WDisChaRteMax=plate.p_max_w,
         SoH=100.0, V=_DC_V)
    for name, raw in (("LocRemCtl", 0), ("Typ", 4), ("State", 3), ("Evt1", 0), ("Evt2", 0), ("EvtVnd1", 0),
                      ("EvtVnd2", 0), ("AlmRst", 0), ("SetOp", 1), ("SetInvState", 3)):  # REMOTE, LITHIUM_ION, CONNECTED
        view.set_raw(name, raw)


def _fill_160(device: SunSpecDevice, view: ModelView) -> None:
    plate = device.nameplate
    view.set_raw("DCA_SF", -2)
    view.set_raw("DCV_SF", -1)
    _sf(view, "DCW_SF", plate.p_max_w / _MPPT_MODULES)
    view.set_raw("DCWH_SF", 0)
    view.set_raw("Evt", 0)
    view.set_raw("N", _MPPT_MODULES)
    for i in range(1, _MPPT_MODULES + 1):
        view.set_raw(f"module[{i}].ID", i)
        view.set_raw(f"module[{i}].IDStr", f"MPPT {i}")
        view.set_value(f"module[{i}].DCV", _DC_V)
        view.set_raw(f"module[{i}].DCSt", 4)  # MPPT
        view.set_raw(f"module[{i}].DCEvt", 0)


def _fill_203(device: SunSpecDevice, view: ModelView) -> None:
    plate, a_max, v_max, _ = _ratings(device)
    _sf(view, "A_SF", 1.2 * a_max, "int16", finest=-2)
    _sf(view, "V_SF", 1.2 * v_max, "int16", finest=-1)
    view.set_raw("Hz_SF", -2)
    for name in ("W_SF", "VA_SF", "VAR_SF"):
        _sf(view, name, 1.2 * plate.s_max_va, "int16")
    view.set_raw("PF_SF", -1)
    view.set_raw("TotWh_SF", 0)
    view.set_raw("Evt", 0)


def _fill_213(device: SunSpecDevice, view: ModelView) -> None:
    view.set_raw("Evt", 0)


_STATIC: dict[int, Callable[[SunSpecDevice, ModelView], None]] = {
    701: _fill_701, 702: _fill_702, 704: _fill_704, 713: _fill_713, 103: _fill_103, 120: _fill_120, 121: _fill_121,
    122: _fill_122, 123: _fill_123, 124: _fill_124, 802: _fill_802, 160: _fill_160, 203: _fill_203, 213: _fill_213,
}
