"""Scenario configuration: every parameter of a plant in one validated pydantic model, loadable from TOML.

A scenario is data: the network it builds, where each microgrid sits, its devices' ratings, which
profile columns drive it, the step length and the penalty weights. Shipped scenarios live in
``sim/scenarios/*.toml``; a user passes a name or a path to their own file.
"""
from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatteryConfig(_Model):
    """Energy storage: ±p_max_mw, state of charge kept in [soc_min, soc_max], one-way efficiency."""

    capacity_mwh: float = Field(2.0, gt=0)
    p_max_mw: float = Field(0.5, gt=0)
    soc_min: float = Field(0.1, ge=0, le=1)
    soc_max: float = Field(0.9, ge=0, le=1)
    soc_init: float = Field(0.5, ge=0, le=1)
    efficiency: float = Field(0.95, gt=0, le=1, description="charging and discharging efficiency, each way")

    @model_validator(mode="after")
    def _soc_order(self) -> BatteryConfig:
        if not self.soc_min <= self.soc_init <= self.soc_max:
            raise ValueError(f"need soc_min <= soc_init <= soc_max, got {self.soc_min}, {self.soc_init}, {self.soc_max}")
        return self


class GeneratorConfig(_Model):
    """Diesel generator: p in [p_min_mw, p_max_mw], ramp limit, fuel cost a*p^2 + b*p + c (USD/h, p in MW)."""

    p_min_mw: float = Field(0.0, ge=0)
    p_max_mw: float = Field(0.66, gt=0)
    ramp_mw_per_h: float = Field(0.33, gt=0)
    cost_a_usd_per_mw2h: float = Field(80.0, ge=0)
    cost_b_usd_per_mwh: float = Field(110.0, ge=0)
    cost_c_usd_per_h: float = Field(0.0, ge=0, description="no-load cost, charged in every step the unit runs")

    @model_validator(mode="after")
    def _limits(self) -> GeneratorConfig:
        if self.p_min_mw > self.p_max_mw:
            raise ValueError(f"p_min_mw {self.p_min_mw} > p_max_mw {self.p_max_mw}")
        return self


class MicrogridConfig(_Model):
    """One microgrid: its devices and the profile columns that drive its load, PV and wind."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    battery: BatteryConfig = BatteryConfig()
    generator: GeneratorConfig = GeneratorConfig()
    pv_mw: float = Field(0.1, ge=0)
    wind_mw: float = Field(0.1, ge=0)
    load_profile: str = "load_caiso"
    solar_profile: str = "solar_np15"
    wind_profile: str = "wind_np15"


class Ieee34Network(_Model):
    """IEEE 34 feeder with an IEEE 13 microgrid at each of ``attach_buses`` (microgrid name -> feeder bus)."""

    kind: Literal["ieee34_3x13"] = "ieee34_3x13"
    attach_buses: dict[str, str]
    load_scale: float = Field(0.3, gt=0, description="IEEE 13 loads (3.47 MW) times this = microgrid peak load")
    feeder_load_scale: float = Field(1.0, ge=0)
    source_vm_pu: float = Field(1.05, gt=0.8, lt=1.2)
    regulator_taps: int = Field(8, ge=-16, le=16)
    poc_mva: float = Field(2.5, gt=0)


class CigreZone(_Model):
    """A microgrid zone inside the CIGRE MV network: its buses, where its devices sit, its PoC line."""

    buses: list[int] = Field(min_length=1)
    device_bus: int
    poc_line: int


class CigreNetwork(_Model):
    """pandapower's CIGRE MV benchmark network with microgrid zones (microgrid name -> zone)."""

    kind: Literal["cigre_mv_der"] = "cigre_mv_der"
    zones: dict[str, CigreZone]
    load_scale: float = Field(1.0, gt=0)


class PenaltyConfig(_Model):
    """Penalties (USD) added to a microgrid's cost for violations inside its zone."""

    v_min_pu: float = 0.95
    v_max_pu: float = 1.05
    loading_max_percent: float = 100.0
    usd_per_pu_voltage: float = Field(1000.0, ge=0, description="per p.u. outside the band, summed over buses")
    usd_per_percent_overload: float = Field(10.0, ge=0, description="per percent above the limit, summed over branches")
    usd_divergence: float = Field(1000.0, ge=0, description="each agent, when the power flow does not converge")


class Scenario(_Model):
    """A whole plant: network, microgrids, profiles, time step and penalties."""

    name: str
    network: Annotated[Ieee34Network | CigreNetwork, Field(discriminator="kind")]
    microgrids: list[MicrogridConfig] = Field(min_length=1)
    feeder_load_profile: str = "load_caiso"
    price_profile: str = "price_usd_per_mwh"
    step_minutes: int = Field(60, gt=0, le=24 * 60)
    export_price_ratio: float = Field(1.0, ge=0, le=1, description="exports are credited at this fraction of the hourly price")
    feeder_head_rating_mva: float = Field(2.5, gt=0, description="substation rating, for the feeder-head loading in p.u.")
    penalties: PenaltyConfig = PenaltyConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        names = [m.name for m in self.microgrids]
        if len(set(names)) != len(names):
            raise ValueError(f"microgrid names must be unique, got {names}")
        placed = self.network.attach_buses if isinstance(self.network, Ieee34Network) else self.network.zones
        if set(placed) != set(names):
            raise ValueError(f"network places microgrids {sorted(placed)} but the scenario defines {sorted(names)}")
        if (60 % self.step_minutes) and (self.step_minutes % 60):
            raise ValueError(f"step_minutes must divide an hour or be a whole number of hours, got {self.step_minutes}")
        return self

    @property
    def step_hours(self) -> float:
        return self.step_minutes / 60.0

    @property
    def steps_per_day(self) -> int:
        return round(24 * 60 / self.step_minutes)


SHIPPED = ("ieee34_3x13", "cigre_mv_der")


def load_scenario(name_or_path: str | Path | Scenario) -> Scenario:
    """A shipped scenario by name, a TOML file by path, or a Scenario as is."""
    if isinstance(name_or_path, Scenario):
        return name_or_path
    text: str
    if str(name_or_path) in SHIPPED:
        text = resources.files("sim.scenarios").joinpath(f"{name_or_path}.toml").read_text()
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"no scenario named {name_or_path!r} (shipped: {', '.join(SHIPPED)}) and no such file")
        text = path.read_text()
    return Scenario.model_validate(tomllib.loads(text))
