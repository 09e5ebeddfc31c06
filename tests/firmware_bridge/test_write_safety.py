"""Write safety over real sockets: every write read back (a device that acknowledges and ignores is caught), active
setpoints kept alive at half the revert time (and dropped by the device once the keep-alive stops), an optional
ramp, and device-layer problems raised as device errors."""
from __future__ import annotations

import asyncio

import pytest

from firmware_bridge import (
    BatteryModel,
    CapabilityError,
    DeviceError,
    Emulator,
    ModbusDevice,
    ModbusDeviceConfig,
    PVInverterModel,
    SetpointError,
    SiteMeterModel,
    battery_nameplate,
    inverter_nameplate,
    meter_nameplate,
    parse_quirks,
)
from tests.firmware_bridge.conftest import run

pytestmark = pytest.mark.modbus


def _config(port: int, **kwargs: object) -> ModbusDeviceConfig:
    values: dict[str, object] = {"port": port, "timeout_s": 0.5, "retries": 1, "backoff_s": 0.02}
    values.update(kwargs)
    return ModbusDeviceConfig(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("profile", ["ieee1547", "legacy"])
def test_keepalive_holds_a_setpoint_across_revert_windows_and_stops_with_the_device(profile: str) -> None:
    async def scenario() -> None:
        model = BatteryModel(battery_nameplate(p_max_w=5000, energy_wh=10000), soc=0.5)
        async with Emulator(model, profile=profile) as emu:
            async with ModbusDevice(_config(emu.port, keepalive=True, setpoint_revert_s=1), role="battery") as device:
                result = await device.write_setpoint(-1500.0)
                assert result.revert_s == 1 and result.readback_ok
                await asyncio.sleep(2.6)  # more than two revert windows without a write by the caller
                assert emu.device.reverts == 0 and model.measure().p_w == -1500.0
                assert device.stats.keepalive_writes >= 4 and device.stats.keepalive_failed == 0
            await asyncio.sleep(1.3)  # the gateway is gone: the device's own timer takes it back to idle
            assert emu.device.reverts == 1 and model.measure().p_w == 0.0

    run(scenario())


def test_without_keepalive_the_device_reverts_between_writes() -> None:
    async def scenario() -> None:
        model = BatteryModel(battery_nameplate(), soc=0.5)
        async with Emulator(model, profile="legacy") as emu, \
                ModbusDevice(_config(emu.port, setpoint_revert_s=1), role="battery") as device:
            await device.write_setpoint(2000.0)
            await asyncio.sleep(1.4)
            assert emu.device.reverts == 1 and model.measure().p_w == 0.0
            assert device.stats.keepalive_writes == 0

    run(scenario())


def test_a_device_that_ignores_writes_is_detected_by_the_read_back() -> None:
    async def scenario() -> None:
        model = PVInverterModel(inverter_nameplate(), time_of_day=lambda: 12 * 3600.0)
        async with Emulator(model, profile="legacy", quirks=parse_quirks(["ignore-writes"])) as emu, \
                ModbusDevice(_config(emu.port), role="pv") as device:
            for n in range(1, 4):
                result = await device.write_setpoint(3000.0)
                assert not result.readback_ok
                assert (device.stats.readback_mismatches, device.stats.consecutive_mismatches) == (n, n)
            assert emu.registers.ignored_writes >= 3 and model.measure().p_w == 10000.0
        async with Emulator(PVInverterModel(inverter_nameplate(), time_of_day=lambda: 43200.0), profile="legacy") as emu, \
                ModbusDevice(_config(emu.port), role="pv") as device:
            assert (await device.write_setpoint(3000.0)).readback_ok
            assert device.stats.consecutive_mismatches == 0

    run(scenario())


def test_a_ramp_limits_how_fast_the_command_moves() -> None:
    async def scenario() -> None:
        model = BatteryModel(battery_nameplate(p_max_w=5000, energy_wh=10000), soc=0.5)
        async with Emulator(model) as emu, ModbusDevice(_config(emu.port, ramp_w_per_s=2000.0), role="battery") as device:
            assert (await device.write_setpoint(0.0)).written_w == 0.0
            await asyncio.sleep(0.5)
            step = await device.write_setpoint(5000.0)
            assert step.ramped and 900.0 <= step.written_w <= 1400.0  # ~2000 W/s for ~0.5 s
            await asyncio.sleep(0.5)
            again = await device.write_setpoint(5000.0)
            assert again.ramped and step.written_w + 900 <= again.written_w <= step.written_w + 1400

    run(scenario())


def test_device_layer_problems_are_device_errors() -> None:
    async def scenario() -> None:
        async with Emulator(SiteMeterModel(meter_nameplate())) as emu:
            async with ModbusDevice(_config(emu.port), role="battery") as device:
                with pytest.raises(CapabilityError, match=r"cannot be a battery: models found 1, 213; missing battery_power"):
                    await device.write_setpoint(100.0)
                t = await device.read_telemetry()
                assert t.stale and "704" in (t.error or "") and "124" in (t.error or "")
        async with Emulator(BatteryModel(battery_nameplate())) as emu, \
                ModbusDevice(_config(emu.port), role="battery") as device:
            for bad in (float("nan"), float("inf")):
                with pytest.raises(SetpointError) as caught:
                    await device.write_setpoint(bad)
                assert isinstance(caught.value, DeviceError) and not isinstance(caught.value, ValueError)
            with pytest.raises(SetpointError):
                await device.write_setpoint(100.0, revert_s=-1)
            with pytest.raises(SetpointError):
                await device.write_limit_pct(150.0)
            assert emu.device.writes == 0

    run(scenario())


def test_pv_limits_never_go_to_zero_unless_configured() -> None:
    async def scenario() -> None:
        for min_pct, expected in ((1.0, 1.0), (0.0, 0.0), (5.0, 5.0)):
            model = PVInverterModel(inverter_nameplate(p_max_w=10000), time_of_day=lambda: 12 * 3600.0)
            async with Emulator(model, profile="legacy") as emu, \
                    ModbusDevice(_config(emu.port, min_limit_pct=min_pct), role="pv") as device:
                result = await device.write_setpoint(0.0)
                assert result.limit_pct == expected and model.measure().p_w == pytest.approx(100.0 * expected)

    run(scenario())
