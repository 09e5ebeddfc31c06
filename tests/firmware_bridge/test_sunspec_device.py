"""The socket-free SunSpec device: image content, write checks, and the setpoint revert timer."""
from __future__ import annotations

import pytest

from firmware_bridge.models import BatteryModel, PVInverterModel, battery_nameplate, inverter_nameplate
from firmware_bridge.sunspec import iter_chain
from firmware_bridge.sunspec_device import ExceptionCode, SunSpecDevice
from tests.firmware_bridge.conftest import FakeClock


def _battery(clock: FakeClock) -> SunSpecDevice:
    model = BatteryModel(battery_nameplate(p_max_w=5000, energy_wh=10000), soc=0.5, clock=clock)
    return SunSpecDevice(model, unit_id=3, clock=clock)


def _address(device: SunSpecDevice, model_id: int, point: str) -> int:
    view = device.image[model_id]
    return device.image.base + view.start + view.model.point(point).offset


def test_model_chains_of_battery_and_inverter() -> None:
    clock = FakeClock()
    battery = _battery(clock)
    assert [loc.model_id for loc in iter_chain(battery.image.registers)] == [1, 701, 702, 704, 713]
    pv = SunSpecDevice(PVInverterModel(inverter_nameplate(), time_of_day=lambda: 43200.0, clock=clock), clock=clock)
    assert [loc.model_id for loc in iter_chain(pv.image.registers)] == [1, 701, 702, 704]
    assert pv.image[701].value("W") == pytest.approx(10000.0)
    assert battery.image[1].raw("DA") == 3
    assert battery.image[702].value("WChaRteMaxRtg") == 5000.0
    assert battery.image[713].value("SoC") == 50.0


def test_write_applies_a_setpoint_and_reads_refresh_measurements() -> None:
    clock = FakeClock()
    device = _battery(clock)
    wset_ena = _address(device, 704, "WSetEna")
    assert device.write(wset_ena, [1, 1, 0xFFFF, 0xF830]) is None  # WSet = -2000 W (charge)
    w = _address(device, 701, "W")
    regs = device.read(w, 1)
    assert regs == [(-2000) & 0xFFFF]
    clock.advance(3600)
    device.refresh()
    assert device.image[713].value("SoC") == pytest.approx(50.0 + 2000 * 0.95 / 10000 * 100, abs=0.1)


@pytest.mark.parametrize(
    ("point", "values", "code"),
    [
        ("WSet", [0x0000, 0x2710], ExceptionCode.ILLEGAL_VALUE),  # +10 kW > 5 kW rating
        ("WSet", [0xFFFF, 0xD8F0], ExceptionCode.ILLEGAL_VALUE),  # -10 kW
        ("WSetMod", [0], ExceptionCode.ILLEGAL_VALUE),  # percent mode is not implemented
        ("WSetEna", [7], ExceptionCode.ILLEGAL_VALUE),
        ("WMaxLimPct", [10_001], ExceptionCode.ILLEGAL_VALUE),  # 100.01 %
        ("VarSetEna", [1], ExceptionCode.ILLEGAL_ADDRESS),  # not a control this device takes
    ],
)
def test_bad_writes_are_refused_and_change_nothing(point: str, values: list[int], code: ExceptionCode) -> None:
    clock = FakeClock()
    device = _battery(clock)
    before = list(device.image.registers)
    assert device.write(_address(device, 704, point), values) == code
    assert device.image.registers == before
    assert device.writes == 0


def test_writes_must_cover_whole_points_of_model_704() -> None:
    clock = FakeClock()
    device = _battery(clock)
    assert device.write(_address(device, 704, "WSet") + 1, [5]) == ExceptionCode.ILLEGAL_ADDRESS
    assert device.write(_address(device, 701, "W"), [5]) == ExceptionCode.ILLEGAL_ADDRESS
    assert device.write(device.image.base, [1, 2]) == ExceptionCode.ILLEGAL_ADDRESS
    assert device.read(device.image.end, 1) == ExceptionCode.ILLEGAL_ADDRESS


def test_revert_timer_returns_the_device_to_its_default() -> None:
    clock = FakeClock()
    device = _battery(clock)
    assert device.write(_address(device, 704, "WSetEnaRvrt"), [0, 0, 10]) is None  # revert after 10 s
    assert device.write(_address(device, 704, "WSetEna"), [1, 1, 0, 3000]) is None
    assert device.model.measure().p_w == 3000.0
    clock.advance(6)
    device.refresh()
    assert device.image[704].raw("WSetRvrtRem") == 4
    assert device.write(_address(device, 704, "WSet"), [0, 2500]) is None  # a rewrite restarts the timer
    clock.advance(9)
    assert not device.check_revert()
    assert device.model.measure().p_w == 2500.0
    clock.advance(1.5)
    device.refresh()  # any access notices the expiry
    assert device.reverts == 1
    assert device.model.measure().p_w == 0.0
    assert device.image[704].raw("WSetEna") == 0
    assert device.image[704].raw("WSetRvrtRem") == 0


def test_no_revert_without_a_timer() -> None:
    clock = FakeClock()
    device = _battery(clock)
    assert device.write(_address(device, 704, "WSetEna"), [1, 1, 0, 1000]) is None
    clock.advance(600)
    assert not device.check_revert()
    device.refresh()
    assert device.image[704].raw("WSetEna") == 1
    assert device.image[701].value("W") == 1000.0
