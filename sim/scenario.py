"""Scenario configuration: every parameter of a plant in one validated pydantic model, loadable from TOML.

A scenario is data: the network it builds, where each microgrid sits, its devices' ratings, which
profile columns drive it, the step length and the penalty weights. Shipped scenarios live in
``sim/scenarios/*.toml``; a user passes a name or a path to their own file.

The profiles come from the shipped data (CAISO 2023-2024, California local time) or, by name, from the
user's own hourly CSV (``[data]``: path, time zone, and per series its column and unit; see
``sim.user_data``). The scenario's :attr:`Scenario.time_zone` is its data's: the hour-of-day features a
policy learns are hours of that zone's wall clock.
"""
from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SHIPPED_TIME_ZONE = "America/Los_Angeles"
"""The shipped data's time zone: CAISO publishes its hourly series in California local time."""
PowerUnit = Literal["MW", "kW", "W", "pu"]
PriceUnit = Literal["USD/MWh", "USD/kWh"]
POWER_UNITS: tuple[str, ...] = ("MW", "kW", "W", "pu")
PRICE_UNITS: tuple[str, ...] = ("USD/MWh", "USD/kWh")


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
    regulator_taps: int = Field(8, ge=-16, le=16, description="the regulators' tap at reset, before automatic control")
    regulator_control: Literal["auto", "fixed"] = Field(
        "auto", description="auto: the regulators' relays move the taps (sim.regulators); fixed: taps stay at regulator_taps")
    poc_mva: float = Field(2.5, gt=0)


class Ieee123Network(_Model):
    """IEEE 123 feeder (4.16 kV) with an IEEE 13 microgrid at each of ``attach_buses`` (microgrid name -> a
    bus of its three-phase trunk); its four regulators start at the published taps and move automatically."""

    kind: Literal["ieee123_13"] = "ieee123_13"
    attach_buses: dict[str, str]
    load_scale: float = Field(0.3, gt=0, description="IEEE 13 loads (3.47 MW) times this = microgrid peak load")
    feeder_load_scale: float = Field(1.0, ge=0)
    source_vm_pu: float = Field(1.0, gt=0.8, lt=1.2)
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
    """Penalties (USD) added to a microgrid's cost for violations inside its zone, as rates per hour: a step of
    ``step_minutes`` is charged rate x violation x step_minutes / 60, so a violation costs the same per hour
    whatever the step length."""

    v_min_pu: float = 0.95
    v_max_pu: float = 1.05
    loading_max_percent: float = 100.0
    usd_per_pu_voltage: float = Field(1000.0, ge=0, description="USD per p.u. outside the band (summed over buses) per hour")
    usd_per_percent_overload: float = Field(
        10.0, ge=0, description="USD per percent above the limit (summed over lines and transformers) per hour")
    usd_divergence: float = Field(1000.0, ge=0, description="USD per hour, each agent, while the power flow does not converge")


class SeriesConfig(_Model):
    """One series of the user's CSV: its column and unit. Powers (``MW``, ``kW``, ``W``) are scaled to per unit of
    their largest value (the microgrid's ratings scale them, as the shipped data's); ``pu`` is taken as is (0..1);
    prices (``USD/MWh``, ``USD/kWh``) become USD/MWh."""

    column: str = Field(min_length=1)
    unit: PowerUnit | PriceUnit


class DataConfig(_Model):
    """The user's hourly data: a CSV file (relative paths: from the scenario file), its time column (ISO 8601
    times, hourly, starting on 1 January 00:00; times without an offset are local times of ``time_zone``), the
    IANA time zone of the data, and the series a scenario may name as profiles (name -> column and unit).
    One calendar year of rows is used for training and testing; with two, the first trains and the second tests."""

    path: str = Field(min_length=1)
    time_column: str = Field("time", min_length=1)
    time_zone: str = Field("UTC", min_length=1)
    series: dict[str, SeriesConfig] = Field(min_length=1)

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as 'Europe/Berlin' or 'UTC')") from exc
        return value


class Scenario(_Model):
    """A whole plant: network, microgrids, profiles, time step and penalties."""

    name: str
    network: Annotated[Ieee34Network | Ieee123Network | CigreNetwork, Field(discriminator="kind")]
    microgrids: list[MicrogridConfig] = Field(min_length=1)
    feeder_load_profile: str = "load_caiso"
    price_profile: str = "price_usd_per_mwh"
    step_minutes: int = Field(60, gt=0, le=24 * 60)
    export_price_ratio: float = Field(1.0, ge=0, le=1, description="exports are credited at this fraction of the hourly price")
    feeder_head_rating_mva: float = Field(2.5, gt=0, description="substation rating, for the feeder-head loading in p.u.")
    penalties: PenaltyConfig = PenaltyConfig()
    data: DataConfig | None = Field(None, description="the user's own hourly series (None: the shipped data only)")

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        names = [m.name for m in self.microgrids]
        if len(set(names)) != len(names):
            raise ValueError(f"microgrid names must be unique, got {names}")
        placed = self.network.zones if isinstance(self.network, CigreNetwork) else self.network.attach_buses
        if set(placed) != set(names):
            raise ValueError(f"network places microgrids {sorted(placed)} but the scenario defines {sorted(names)}")
        if (60 % self.step_minutes) and (self.step_minutes % 60):
            raise ValueError(f"step_minutes must divide an hour or be a whole number of hours, got {self.step_minutes}")
        self._check_series_units()
        return self

    def _check_series_units(self) -> None:
        """A profile taken from the user's data has a unit of its kind: a power for loads, PV and wind, a price."""
        if self.data is None:
            return
        uses = [("price_profile", self.price_profile, PRICE_UNITS), ("feeder_load_profile", self.feeder_load_profile,
                                                                      POWER_UNITS)]
        for m in self.microgrids:
            uses += [(f"{m.name}.{field}", getattr(m, field), POWER_UNITS)
                     for field in ("load_profile", "solar_profile", "wind_profile")]
        for field, name, units in uses:
            series = self.data.series.get(name)
            if series is not None and series.unit not in units:
                raise ValueError(f"{field} = {name!r}: data series in {series.unit}, expected one of {', '.join(units)}")

    @property
    def time_zone(self) -> str:
        """The IANA time zone of the scenario's data (the shipped data: California local time)."""
        return self.data.time_zone if self.data is not None else SHIPPED_TIME_ZONE

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
        scenario = Scenario.model_validate(tomllib.loads(text))
        if scenario.data is not None and not Path(scenario.data.path).is_absolute():  # relative to the scenario file
            data = scenario.data.model_copy(update={"path": str(path.parent / scenario.data.path)})
            scenario = scenario.model_copy(update={"data": data})
        if scenario.data is not None:  # the user's series checked now, not when a plant first loads a year
            from sim.user_data import load_user_data

            load_user_data(scenario.data)
        return scenario
    return Scenario.model_validate(tomllib.loads(text))
