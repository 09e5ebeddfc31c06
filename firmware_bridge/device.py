"""The port between an emulated SunSpec device and whatever computes its physics.

The emulator reads measurements from, and hands setpoints to, any object that satisfies
``DeviceModel``: the standalone models in ``firmware_bridge.models``, or (wired by the runtime) the
simulator's devices. firmware_bridge never imports the simulator.

Sign convention everywhere: active power ``p_w`` > 0 is injected into the grid (PV output, battery
discharge), < 0 is absorbed (battery charge), as in SunSpec model 701. A site meter (kind ``meter``)
measures the exchange at the point of connection instead: ``p_w`` > 0 is imported from the grid
(delivered to the site), < 0 exported, as the SunSpec meter models 201-204 / 211-214 count it (their
``TotWhImp`` grows while W > 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

__all__ = ["DeviceKind", "DeviceModel", "Measurement", "Nameplate"]

DeviceKind = Literal["inverter", "battery", "meter"]


@dataclass(frozen=True, slots=True)
class Nameplate:
    """Static ratings of a device, published in its SunSpec nameplate models (1, 702 / 120, 713 / 802, ...).

    p_max_w: largest injection (PV output or battery discharge), W; for a meter, its rating (largest |W|).
    p_charge_max_w: largest absorption (battery charge), W, >= 0; 0 for a PV inverter.
    s_max_va: apparent power rating, VA. v_nom_v: nominal line-to-line voltage, V.
    energy_wh: storage capacity, Wh (batteries only).
    """

    kind: DeviceKind
    p_max_w: float
    s_max_va: float
    p_charge_max_w: float = 0.0
    v_nom_v: float = 400.0
    f_nom_hz: float = 50.0
    energy_wh: float | None = None
    manufacturer: str = "heron-edge"
    model: str = "emulated"
    serial: str = "0001"
    version: str = "1.0"

    def __post_init__(self) -> None:
        if not self.p_max_w > 0 or not self.s_max_va >= self.p_max_w:
            raise ValueError("need 0 < p_max_w <= s_max_va")
        if self.p_charge_max_w < 0 or self.p_charge_max_w > self.s_max_va:
            raise ValueError("need 0 <= p_charge_max_w <= s_max_va")
        if self.kind == "battery" and not (self.energy_wh and self.energy_wh > 0):
            raise ValueError("a battery needs energy_wh > 0")
        if self.kind != "battery" and self.p_charge_max_w:
            raise ValueError(f"{'an inverter (PV)' if self.kind == 'inverter' else 'a meter'} does not absorb power: "
                             "p_charge_max_w must be 0")


@dataclass(frozen=True, slots=True)
class Measurement:
    """What a device measures now. p_w: active power, W (+ injected). q_var: reactive power, var.
    v_v: line-to-line voltage, V. hz: frequency. soc: state of charge, 0..1 (batteries).
    energy_available_wh: energy left to discharge, Wh. energy_*_wh: lifetime AC energy counters, Wh (a meter:
    injected = exported, absorbed = imported).
    throttled: output held below what the device could deliver (curtailed by a setpoint)."""

    p_w: float
    v_v: float
    q_var: float = 0.0
    hz: float = 50.0
    soc: float | None = None
    energy_available_wh: float | None = None
    energy_injected_wh: float | None = None
    energy_absorbed_wh: float | None = None
    throttled: bool = False


@runtime_checkable
class DeviceModel(Protocol):
    """What the emulator needs from a device: its ratings, a measurement, and a setpoint sink."""

    @property
    def nameplate(self) -> Nameplate:
        """Static ratings."""
        ...

    def measure(self) -> Measurement:
        """The device's state now."""
        ...

    def apply_setpoint(self, p_w: float | None) -> None:
        """Follow an active-power setpoint (W, + injected), or return to the default behaviour (None).

        The emulator only passes values within the nameplate limits.
        """
        ...
