"""What a SunSpec device can do in a role, resolved from whatever models it exposes.

A gateway's devices fill **roles** (battery, pv, wind, generator, meter); each role needs a few
**capabilities**, and each capability has sources tried in a documented order of preference. A
source counts only when its model is there and the points it needs hold values (a point that reads
'not implemented' does not count: a device may ship model 124 without ``ChaState``).

=================  ============================================================================================
capability         sources, in order of preference
=================  ============================================================================================
battery_power      704 ``WSet`` (W; ``WSetEna``/``WSetMod``, revert ``WSetRvrtTms``);
                   124 ``StorCtl_Mod`` + ``OutWRte`` / ``InWRte`` as % of ``WChaMax`` (revert ``InOutWRte_RvrtTms``)
soc                713 ``SoC``; 124 ``ChaState``; 802 ``SoC``
limits             per bound, the first that has it: largest output 702 (``WMaxRtg``, ``WMax``, for storage
                   ``WDisChaRteMax``), 121 ``WMax``, 124 ``WChaMax`` (storage), 802 ``WDisChaRteMax``; largest charge
                   702 ``WChaRteMax``, 124 ``WChaMax``, 802 ``WChaRteMax``
curtailment        123 ``WMaxLimPct`` + ``WMaxLim_Ena`` (% of 121 ``WMax``, revert ``WMaxLimPct_RvrtTms``);
                   704 ``WMaxLimPct`` + ``WMaxLimPctEna`` (% of 702 ``WMax``, revert ``WMaxLimPctRvrtTms``)
power              (a generator's output) 704 ``WSet``; 123 ``WMaxLimPct`` (its output limit)
measurement        701 ``W``; 103, 102, 101 ``W``; 113, 112, 111 ``W`` (and what else they measure)
mppt               160 (per-module ``DCW``), read when present
exchange           203, 204, 202, 201, 213, 214, 212, 211 ``W`` and ``WphA``-``WphC`` (a meter at the point of
                   connection: W > 0 imported from the grid, < 0 exported)
=================  ============================================================================================

=========  =========================================================
role       needs (optional)
=========  =========================================================
battery    battery_power, soc, limits, measurement
pv, wind   curtailment, limits, measurement (mppt)
generator  power, limits, measurement
meter      exchange
=========  =========================================================
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from firmware_bridge.sunspec import ModelView

__all__ = ["CAPABILITIES", "PROVIDED_BY", "ROLES", "ROLE_NEEDS", "Capability", "PowerLimits", "Role", "RoleResolution",
           "resolve", "resolve_all"]

Role = Literal["battery", "pv", "wind", "generator", "meter"]
ROLES: tuple[Role, ...] = ("battery", "pv", "wind", "generator", "meter")

ROLE_NEEDS: dict[Role, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "battery": (("battery_power", "soc", "limits", "measurement"), ()),
    "pv": (("curtailment", "limits", "measurement"), ("mppt",)),
    "wind": (("curtailment", "limits", "measurement"), ("mppt",)),
    "generator": (("power", "limits", "measurement"), ()),
    "meter": (("exchange",), ()),
}
"""Per role: (required capabilities, optional ones)."""

CAPABILITIES: dict[str, str] = {
    "battery_power": "command the battery's active power (W, + discharge)",
    "soc": "state of charge (%)",
    "limits": "active-power limits (W)",
    "curtailment": "cap the output (% of WMax)",
    "power": "command the output (W)",
    "measurement": "AC measurements (W, var, V, Hz)",
    "mppt": "DC input per MPPT module (W)",
    "exchange": "power at the point of connection (W, + import), per phase and total",
}
"""What each capability is, for messages and the probe."""

PROVIDED_BY: dict[str, str] = {
    "battery_power": "model 704 (WSet) or model 124 (StorCtl_Mod, InWRte, OutWRte, WChaMax)",
    "soc": "model 713 (SoC), 124 (ChaState) or 802 (SoC)",
    "limits": "model 702 (WMaxRtg), 121 (WMax), 124 (WChaMax) or 802 (WChaRteMax, WDisChaRteMax)",
    "curtailment": "model 123 (WMaxLimPct, WMaxLim_Ena, with 121 WMax) or 704 (WMaxLimPct, WMaxLimPctEna, with 702 WMax)",
    "power": "model 704 (WSet) or 123 (WMaxLimPct, with 121 WMax)",
    "measurement": "model 701, 101-103 or 111-113 (W)",
    "mppt": "model 160",
    "exchange": "a meter model 201-204 or 211-214 (W)",
}
"""What would provide each capability (the error names it when it is missing)."""

_MEASUREMENT_MODELS = (701, 103, 102, 101, 113, 112, 111)
_METER_MODELS = (203, 204, 202, 201, 213, 214, 212, 211)


@dataclass(frozen=True, slots=True)
class PowerLimits:
    """Active-power range a device accepts, W (+ injected): p_min_w <= 0 <= p_max_w."""

    p_min_w: float
    p_max_w: float

    def clamp(self, p_w: float) -> float:
        """``p_w`` limited to the range."""
        return min(max(p_w, self.p_min_w), self.p_max_w)


@dataclass(frozen=True, slots=True)
class Capability:
    """What fills one need of a role: the capability's name, the model it uses and its points; ``via`` names
    the path when a model offers several (``wset``, ``storctl``, ``wmaxlimpct``)."""

    name: str
    model_id: int
    points: tuple[str, ...]
    via: str = ""
    detail: str = ""
    sources: tuple[tuple[int, str], ...] = ()
    """(model, point) pairs when the capability draws on several models (limits)."""

    def describe(self) -> str:
        """``model 124 StorCtl_Mod, InWRte, OutWRte (% of WChaMax)``."""
        if self.sources:
            by_model: dict[int, list[str]] = {}
            for m, p in self.sources:
                by_model.setdefault(m, []).append(p)
            text = "; ".join(f"model {m} {', '.join(points)}" for m, points in by_model.items())
        else:
            text = f"model {self.model_id} {', '.join(self.points)}"
        return f"{text} ({self.detail})" if self.detail else text


@dataclass(frozen=True)
class RoleResolution:
    """A role's capabilities as resolved on one device: those found and, for each required one that is not, what
    would provide it. ``limits``: the power range (when the limits capability resolved)."""

    role: Role
    capabilities: dict[str, Capability] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    limits: PowerLimits | None = None

    @property
    def ok(self) -> bool:
        """Every required capability resolved."""
        return not self.missing

    def explain(self, device: str, models: Sequence[int]) -> str:
        """One line naming the device, the models found, and what is missing and what would provide it."""
        found = ", ".join(str(m) for m in models) or "none"
        need = "; ".join(f"{name} ({CAPABILITIES[name]}) needs {PROVIDED_BY[name]}" for name in self.missing)
        return f"{device}: cannot be a {self.role}: models found {found}; missing {need}"


def _has(views: Mapping[int, ModelView], model_id: int, *points: str) -> bool:
    """The model is there and every point holds a value, its scale factor too."""
    view = views.get(model_id)
    if view is None:
        return False
    for name in points:
        if not view.implemented(name):
            return False
        sf = view.model.point(name).sf
        if isinstance(sf, str) and not view.implemented(sf):
            return False
    return True


def _value(views: Mapping[int, ModelView], model_id: int, point: str) -> float | None:
    view = views.get(model_id)
    if view is None or point not in view.model:
        return None
    value = view.value(point)
    return value if value is not None and value > 0 else None


def _battery_power(views: Mapping[int, ModelView]) -> Capability | None:
    if _has(views, 704, "WSetEna", "WSetMod", "WSet"):
        return Capability("battery_power", 704, ("WSetEna", "WSetMod", "WSet"), "wset", "W, revert WSetRvrtTms")
    if _has(views, 124, "StorCtl_Mod", "InWRte", "OutWRte", "WChaMax"):
        return Capability("battery_power", 124, ("StorCtl_Mod", "InWRte", "OutWRte"), "storctl",
                          "% of WChaMax, revert InOutWRte_RvrtTms")
    return None


def _soc(views: Mapping[int, ModelView]) -> Capability | None:
    for model_id, point in ((713, "SoC"), (124, "ChaState"), (802, "SoC")):
        if _has(views, model_id, point):
            return Capability("soc", model_id, (point,), detail="%")
    return None


def _curtailment(views: Mapping[int, ModelView]) -> Capability | None:
    if _has(views, 123, "WMaxLimPct", "WMaxLim_Ena") and _value(views, 121, "WMax") is not None:
        return Capability("curtailment", 123, ("WMaxLimPct", "WMaxLim_Ena"), "wmaxlimpct",
                          "% of 121 WMax, revert WMaxLimPct_RvrtTms")
    if _has(views, 704, "WMaxLimPct", "WMaxLimPctEna") and _value(views, 702, "WMax") is not None:
        return Capability("curtailment", 704, ("WMaxLimPctEna", "WMaxLimPct"), "wmaxlimpct",
                          "% of 702 WMax, revert WMaxLimPctRvrtTms")
    return None


def _power(views: Mapping[int, ModelView]) -> Capability | None:
    if _has(views, 704, "WSetEna", "WSetMod", "WSet"):
        return Capability("power", 704, ("WSetEna", "WSetMod", "WSet"), "wset", "W, revert WSetRvrtTms")
    if _has(views, 123, "WMaxLimPct", "WMaxLim_Ena") and _value(views, 121, "WMax") is not None:
        return Capability("power", 123, ("WMaxLimPct", "WMaxLim_Ena"), "wmaxlimpct",
                          "output limit, % of 121 WMax, revert WMaxLimPct_RvrtTms")
    return None


def _measurement(views: Mapping[int, ModelView]) -> Capability | None:
    for model_id in _MEASUREMENT_MODELS:
        if _has(views, model_id, "W"):
            return Capability("measurement", model_id, ("W",))
    return None


def _mppt(views: Mapping[int, ModelView]) -> Capability | None:
    view = views.get(160)
    if view is None:
        return None
    modules = tuple(p.name for p in view.model.points if p.name.endswith(".DCW"))
    return Capability("mppt", 160, modules, detail=f"{len(modules)} module(s)") if modules else None


def _exchange(views: Mapping[int, ModelView]) -> Capability | None:
    for model_id in _METER_MODELS:
        if _has(views, model_id, "W"):
            phases = tuple(p for p in ("WphA", "WphB", "WphC") if _has(views, model_id, p))
            return Capability("exchange", model_id, ("W", *phases), detail="+ import")
    return None


def _limits(views: Mapping[int, ModelView], storage: bool) -> tuple[Capability | None, PowerLimits | None]:
    """The output bound (and for storage the charge bound), each from the first source that has it."""
    high_sources: list[tuple[int, str]] = [(702, "WMaxRtg"), (702, "WMax")]
    if storage:
        high_sources += [(702, "WDisChaRteMaxRtg"), (702, "WDisChaRteMax")]
    high: tuple[float, list[tuple[int, str]]] | None = None
    found = [(m, p, v) for m, p in high_sources if (v := _value(views, m, p)) is not None]
    if found:  # model 702: the tighter of ratings and settings
        high = (min(v for _, _, v in found), [(m, p) for m, p, _ in found])
    else:
        fallbacks = [(121, "WMax")] + ([(124, "WChaMax"), (802, "WDisChaRteMax")] if storage else [])
        for m, p in fallbacks:
            if (v := _value(views, m, p)) is not None:
                high = (v, [(m, p)])
                break
    if high is None:
        return None, None
    low = 0.0
    sources = list(high[1])
    if storage:
        charge: tuple[float, list[tuple[int, str]]] | None = None
        found = [(m, p, v) for m, p in ((702, "WChaRteMaxRtg"), (702, "WChaRteMax")) if (v := _value(views, m, p)) is not None]
        if found:
            charge = (min(v for _, _, v in found), [(m, p) for m, p, _ in found])
        else:
            for m, p in ((124, "WChaMax"), (802, "WChaRteMax")):
                if (v := _value(views, m, p)) is not None:
                    charge = (v, [(m, p)])
                    break
        if charge is None:
            return None, None
        low = -charge[0]
        sources += charge[1]
    limits = PowerLimits(p_min_w=low, p_max_w=high[0])
    detail = f"{low:g} .. {high[0]:g} W"
    return Capability("limits", sources[0][0], tuple(p for _, p in sources), detail=detail, sources=tuple(sources)), limits


_RESOLVERS = {"battery_power": _battery_power, "soc": _soc, "curtailment": _curtailment, "power": _power,
              "measurement": _measurement, "mppt": _mppt, "exchange": _exchange}


def resolve(role: Role, views: Mapping[int, ModelView]) -> RoleResolution:
    """The capabilities of ``role`` on a device whose models (read at discovery) are ``views``."""
    required, optional = ROLE_NEEDS[role]
    found: dict[str, Capability] = {}
    missing: dict[str, str] = {}
    limits: PowerLimits | None = None
    for name in (*required, *optional):
        if name == "limits":
            capability, limits = _limits(views, storage=role == "battery")
        else:
            capability = _RESOLVERS[name](views)
        if capability is not None:
            found[name] = capability
        elif name in required:
            missing[name] = PROVIDED_BY[name]
    return RoleResolution(role, found, missing, limits)


def resolve_all(views: Mapping[int, ModelView]) -> dict[Role, RoleResolution]:
    """Every role's resolution on one device (the probe shows which roles it can fill)."""
    return {role: resolve(role, views) for role in ROLES}
