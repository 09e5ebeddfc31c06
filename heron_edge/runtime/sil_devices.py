"""The simulator's devices as firmware_bridge ``DeviceModel`` objects (the SIL plant's hardware).

firmware_bridge never imports the simulator and the simulator never imports firmware_bridge; these
adapters (which import both) let an emulated SunSpec device read a microgrid's state out of ONE
shared ``sim.plant.Plant`` and put the setpoints written to it into ONE shared request that the
plant applies (clamped by the plant) when it advances.

What each device measures (W, + injected: model 701 or 103, by the device's profile), at the start of
step N (after step N-1): battery: its power in step N-1 and its state of charge (713 or 802); generator:
its output in step N-1; PV / wind inverter: its output in step N-1; the site meter: the exchange at the
point of connection in step N-1 (+ import; a standard SunSpec meter, 213 or 203 by the profile) and the
voltage of the microgrid's device bus. The next step's load, PV and wind are no device's: the SIL plant
publishes them as the microgrids' exact forecast (:meth:`PlantDevices.forecast`).
Setpoints (W, whatever path the profile has: 704 WSet, 124 InWRte / OutWRte, 123 or 704 WMaxLimPct):
battery power (+ discharge), generator output, and for PV / wind an output cap, turned into the
curtailment of the step being dispatched when the plant advances (:meth:`PlantDevices.request_for_step`).
A setpoint released (or reverted by the device's timer) returns the device to its default: battery
idle, generator off, PV / wind uncurtailed.
"""
from __future__ import annotations

from firmware_bridge import Measurement, Nameplate
from heron_edge.messages import ForecastBody, ForecastValues
from sim.plant import Plant, Setpoints

__all__ = ["BatteryDevice", "GeneratorDevice", "PlantDevices", "RenewableDevice", "SiteMeterDevice"]

_W = 1e6  # W per MW


class PlantDevices:
    """The shared request of every emulated device of a plant, and its adapters."""

    def __init__(self, plant: Plant) -> None:
        self.plant = plant
        self.request = Setpoints.zeros(plant.n)
        self.pv_cap_w: list[float | None] = [None] * plant.n
        self.wind_cap_w: list[float | None] = [None] * plant.n
        net = plant.net
        self._device_bus = [z.device_bus for z in plant.built.zones]
        self._v_nom_v = [float(net.bus.vn_kv.at[b]) * 1e3 for b in self._device_bus]

    def v_nom_v(self, i: int) -> float:
        """Nominal line-to-line voltage of microgrid ``i``'s device bus, V."""
        return self._v_nom_v[i]

    def v_v(self, i: int) -> float:
        """Line-to-line voltage of microgrid ``i``'s device bus after the last step, V."""
        last = self.plant.last
        vm = float(last.vm_pu[self._device_bus[i]]) if last is not None and last.converged else 1.0
        return self._v_nom_v[i] * vm

    def battery(self, i: int) -> BatteryDevice:
        return BatteryDevice(self, i)

    def generator(self, i: int) -> GeneratorDevice:
        return GeneratorDevice(self, i)

    def renewable(self, i: int, kind: str) -> RenewableDevice:
        return RenewableDevice(self, i, kind)

    def site_meter(self, i: int) -> SiteMeterDevice:
        return SiteMeterDevice(self, i)

    def forecast(self) -> ForecastBody:
        """Every microgrid's exact forecast of the step about to be simulated (MW: the plant's own profiles), as an
        external forecaster would publish it (sim's PlantStateError before the plant's first reset())."""
        forecast = self.plant.forecast()
        return ForecastBody(microgrids={
            name: ForecastValues(load_mw=float(forecast.load_mw[i]), pv_mw=float(forecast.pv_mw[i]),
                                 wind_mw=float(forecast.wind_mw[i]))
            for i, name in enumerate(self.plant.names)})

    def request_for_step(self) -> Setpoints:
        """The request to apply to the step about to be simulated: caps become curtailment fractions of its availability."""
        forecast = self.plant.forecast()
        for caps, available, out in ((self.pv_cap_w, forecast.pv_mw, self.request.pv_curtailment),
                                     (self.wind_cap_w, forecast.wind_mw, self.request.wind_curtailment)):
            for i, cap in enumerate(caps):
                avail_w = float(available[i]) * _W
                if cap is None or cap >= avail_w or avail_w <= 0.0:
                    out[i] = 0.0
                else:
                    out[i] = 1.0 - max(cap, 0.0) / avail_w
        return self.request


class BatteryDevice:
    """Microgrid ``i``'s battery (a SunSpec storage device)."""

    def __init__(self, devices: PlantDevices, i: int) -> None:
        self._d = devices
        self._i = i
        mg = devices.plant.scenario.microgrids[i]
        self._cfg = mg.battery
        p_w = mg.battery.p_max_mw * _W
        self._nameplate = Nameplate(kind="battery", p_max_w=p_w, p_charge_max_w=p_w, s_max_va=p_w,
                                    v_nom_v=devices.v_nom_v(i), f_nom_hz=60.0, energy_wh=mg.battery.capacity_mwh * _W,
                                    model="sim battery", serial=f"{mg.name}-BAT")

    @property
    def nameplate(self) -> Nameplate:
        return self._nameplate

    def measure(self) -> Measurement:
        last = self._d.plant.latest()
        i, cfg = self._i, self._cfg
        soc = float(last.soc[i])
        p_w = float(last.applied.battery_mw[i]) * _W
        return Measurement(p_w=p_w, v_v=self._d.v_v(i), hz=60.0, soc=soc,
                           energy_available_wh=max(0.0, (soc - cfg.soc_min) * cfg.capacity_mwh * cfg.efficiency * _W),
                           throttled=bool(last.clamped["battery_mw"][i]))

    def apply_setpoint(self, p_w: float | None) -> None:
        self._d.request.battery_mw[self._i] = 0.0 if p_w is None else p_w / _W


class GeneratorDevice:
    """Microgrid ``i``'s diesel generator, served as a SunSpec DER (inverter kind, no absorption)."""

    def __init__(self, devices: PlantDevices, i: int) -> None:
        self._d = devices
        self._i = i
        mg = devices.plant.scenario.microgrids[i]
        p_w = mg.generator.p_max_mw * _W
        self._nameplate = Nameplate(kind="inverter", p_max_w=p_w, s_max_va=p_w, v_nom_v=devices.v_nom_v(i),
                                    f_nom_hz=60.0, model="sim diesel generator", serial=f"{mg.name}-GEN")

    @property
    def nameplate(self) -> Nameplate:
        return self._nameplate

    def measure(self) -> Measurement:
        last = self._d.plant.latest()
        p_w = float(last.applied.generator_mw[self._i]) * _W
        return Measurement(p_w=p_w, v_v=self._d.v_v(self._i), hz=60.0, throttled=bool(last.clamped["generator_mw"][self._i]))

    def apply_setpoint(self, p_w: float | None) -> None:
        self._d.request.generator_mw[self._i] = 0.0 if p_w is None else p_w / _W


class RenewableDevice:
    """Microgrid ``i``'s PV (``kind="pv"``) or wind (``kind="wind"``) inverter: a setpoint caps its output."""

    def __init__(self, devices: PlantDevices, i: int, kind: str) -> None:
        if kind not in ("pv", "wind"):
            raise ValueError(f"kind must be 'pv' or 'wind', got {kind!r}")
        self._d = devices
        self._i = i
        self._kind = kind
        plant = devices.plant
        rating = plant.pv_rating if kind == "pv" else plant.wind_rating
        name = plant.names[i]
        self._nameplate = Nameplate(kind="inverter", p_max_w=float(rating[i]) * _W, s_max_va=float(rating[i]) * _W,
                                    v_nom_v=devices.v_nom_v(i), f_nom_hz=60.0, model=f"sim {kind} inverter",
                                    serial=f"{name}-{kind.upper()}")
        self._caps = devices.pv_cap_w if kind == "pv" else devices.wind_cap_w

    @property
    def nameplate(self) -> Nameplate:
        return self._nameplate

    def measure(self) -> Measurement:
        last = self._d.plant.latest()
        out = last.pv_mw if self._kind == "pv" else last.wind_mw
        avail = last.pv_available_mw if self._kind == "pv" else last.wind_available_mw
        p = float(out[self._i])
        return Measurement(p_w=p * _W, v_v=self._d.v_v(self._i), hz=60.0, throttled=bool(p < float(avail[self._i]) - 1e-12))

    def apply_setpoint(self, p_w: float | None) -> None:
        self._caps[self._i] = None if p_w is None else float(p_w)


class SiteMeterDevice:
    """Microgrid ``i``'s meter at its point of connection (a SunSpec meter: + import), rated at the scenario's
    point-of-connection transformer (``network.poc_mva``)."""

    def __init__(self, devices: PlantDevices, i: int) -> None:
        self._d = devices
        self._i = i
        plant = devices.plant
        rating = float(getattr(plant.scenario.network, "poc_mva", 2.5)) * _W
        self._nameplate = Nameplate(kind="meter", p_max_w=rating, s_max_va=rating, v_nom_v=devices.v_nom_v(i),
                                    f_nom_hz=60.0, model="sim site meter", serial=f"{plant.names[i]}-MTR")

    @property
    def nameplate(self) -> Nameplate:
        return self._nameplate

    def measure(self) -> Measurement:
        last = self._d.plant.latest()
        return Measurement(p_w=float(last.exchange_mw[self._i]) * _W, v_v=self._d.v_v(self._i), hz=60.0)

    def apply_setpoint(self, p_w: float | None) -> None:
        """A meter takes no setpoint."""
