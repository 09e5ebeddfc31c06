"""Standalone device physics: battery SoC integration, limits and efficiency; PV curve and curtailment."""
from __future__ import annotations

import pytest

from firmware_bridge.device import DeviceModel, Nameplate
from firmware_bridge.models import (
    BatteryModel,
    PVInverterModel,
    battery_nameplate,
    daily_irradiance,
    inverter_nameplate,
)
from tests.firmware_bridge.conftest import FakeClock


def test_both_models_satisfy_the_device_model_protocol() -> None:
    clock = FakeClock()
    assert isinstance(BatteryModel(battery_nameplate(), clock=clock), DeviceModel)
    assert isinstance(PVInverterModel(inverter_nameplate(), clock=clock), DeviceModel)


def test_battery_integrates_state_of_charge_with_efficiency() -> None:
    clock = FakeClock()
    battery = BatteryModel(battery_nameplate(p_max_w=5000, energy_wh=10000), soc=0.5, efficiency=0.9, clock=clock)
    battery.apply_setpoint(-2000.0)  # charge 2 kW
    clock.advance(1800)  # half an hour: 1000 Wh from the grid, 900 Wh stored
    m = battery.measure()
    assert m.p_w == -2000.0
    assert m.soc == pytest.approx(0.5 + 900 / 10000)
    assert m.energy_absorbed_wh == pytest.approx(1000.0)
    battery.apply_setpoint(3000.0)  # discharge 3 kW
    clock.advance(1200)  # 1000 Wh delivered, 1000/0.9 Wh taken from the cells
    m = battery.measure()
    assert m.soc == pytest.approx(0.59 - 1000 / 0.9 / 10000)
    assert m.energy_injected_wh == pytest.approx(1000.0)


def test_battery_stops_at_its_soc_limits_and_power_rating() -> None:
    clock = FakeClock()
    battery = BatteryModel(battery_nameplate(p_max_w=5000, energy_wh=10000), soc=0.2, soc_min=0.1, efficiency=1.0, clock=clock)
    battery.apply_setpoint(9000.0)  # above the rating: delivers 5 kW
    assert battery.measure().p_w == 5000.0
    clock.advance(3600)  # would take 5 kWh, only 1 kWh is above soc_min
    m = battery.measure()
    assert m.soc == pytest.approx(0.1)
    assert m.p_w == 0.0 and m.throttled
    assert m.energy_injected_wh == pytest.approx(1000.0)
    battery.apply_setpoint(None)  # default: idle
    clock.advance(600)
    assert battery.measure().p_w == 0.0
    assert battery.soc == pytest.approx(0.1)


def test_battery_rejects_a_non_battery_nameplate() -> None:
    with pytest.raises(ValueError):
        BatteryModel(inverter_nameplate())
    with pytest.raises(ValueError):
        Nameplate(kind="battery", p_max_w=1000, s_max_va=1000)  # no energy_wh


def test_daily_irradiance_curve() -> None:
    assert daily_irradiance(3 * 3600) == 0.0
    assert daily_irradiance(12 * 3600) == pytest.approx(1.0)
    assert daily_irradiance(9 * 3600) == pytest.approx(2**-0.5)
    assert daily_irradiance(20 * 3600) == 0.0


def test_pv_follows_the_sun_and_a_setpoint_only_curtails() -> None:
    clock = FakeClock()
    hour = [12.0]
    pv = PVInverterModel(inverter_nameplate(p_max_w=10000), time_of_day=lambda: hour[0] * 3600, clock=clock)
    assert pv.measure().p_w == pytest.approx(10000.0)
    pv.apply_setpoint(4000.0)
    m = pv.measure()
    assert m.p_w == pytest.approx(4000.0) and m.throttled
    clock.advance(3600)
    assert pv.measure().energy_injected_wh == pytest.approx(4000.0)
    hour[0] = 7.0  # less sun than the cap: the cap does not bind
    assert pv.measure().p_w == pytest.approx(10000 * daily_irradiance(7 * 3600))
    pv.apply_setpoint(-500.0)  # a PV inverter cannot absorb
    assert pv.measure().p_w == 0.0
    pv.apply_setpoint(None)
    hour[0] = 12.0
    assert pv.measure().p_w == pytest.approx(10000.0)
