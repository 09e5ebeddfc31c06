"""Interoperability with a client no one here wrote: pysunspec2 scans our emulator over TCP."""
from __future__ import annotations

import asyncio

import pytest
import sunspec2.modbus.client

from firmware_bridge import Emulator, ModbusDevice, ModbusDeviceConfig
from firmware_bridge.models import BatteryModel, PVInverterModel, battery_nameplate, inverter_nameplate
from firmware_bridge.sunspec import ModelView
from tests.firmware_bridge.conftest import run

pytestmark = pytest.mark.modbus
client_module = sunspec2.modbus.client


def _pysunspec2_points(model: object) -> dict[str, object]:
    """Every point of a pysunspec2 model (groups flattened as Group.Point), as engineering values."""
    values: dict[str, object] = {}
    for name, point in model.points.items():  # type: ignore[attr-defined]
        if name not in ("ID", "L", "Pad"):  # padding carries no value
            values[name] = point.cvalue
    for gname, group in model.groups.items():  # type: ignore[attr-defined]
        for name, point in group.points.items():
            values[f"{gname}.{name}"] = point.cvalue
    return values


def _our_points(view: ModelView) -> dict[str, object]:
    values: dict[str, object] = {}
    for point in view.model.points:
        if point.type == "pad":
            continue
        if point.type == "string":
            values[point.name] = view.text(point.name)
        elif point.type == "sunssf":
            values[point.name] = view.raw(point.name)
        else:
            values[point.name] = view.value(point.name)
    return values


@pytest.mark.parametrize("kind", ["battery", "inverter"])
def test_pysunspec2_reads_what_we_serve(kind: str) -> None:
    if kind == "battery":
        model = BatteryModel(battery_nameplate(p_max_w=50_000, energy_wh=200_000), soc=0.63)
    else:
        model = PVInverterModel(inverter_nameplate(p_max_w=100_000), time_of_day=lambda: 10 * 3600.0)

    def scan(port: int) -> dict[int, dict[str, object]]:
        device = client_module.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=2)
        try:
            device.scan()
            device.connect()
            found: dict[int, dict[str, object]] = {}
            for model_id in (1, 701, 702, 704, 713):
                if model_id in device.models:
                    sunspec_model = device.models[model_id][0]
                    sunspec_model.read()
                    found[model_id] = _pysunspec2_points(sunspec_model)
            return found
        finally:
            device.close()

    async def scenario() -> None:
        async with Emulator(model) as emu, ModbusDevice(ModbusDeviceConfig(port=emu.port)) as ours:
            await ours.write_setpoint(-30_000.0 if kind == "battery" else 60_000.0, revert_s=0)
            theirs = await asyncio.to_thread(scan, emu.port)
            expected_models = [1, 701, 702, 704] + ([713] if kind == "battery" else [])
            assert sorted(theirs) == expected_models
            for model_id in expected_models:
                mine = _our_points(await ours.read_model(model_id))
                assert theirs[model_id].keys() == mine.keys()
                for name, value in mine.items():
                    other = theirs[model_id][name]
                    if isinstance(value, float):
                        assert other == pytest.approx(value), (model_id, name)
                    else:
                        assert other == value, (model_id, name)
            # scale factors that actually scale something, seen the same way by both
            assert theirs[701]["W_SF"] == 1  # 60 kVA / 110 kVA do not fit int16 watts
            assert theirs[701]["W"] == (-30_000.0 if kind == "battery" else 60_000.0)
            assert theirs[704]["WSet"] == (-30_000.0 if kind == "battery" else 60_000.0)
            if kind == "battery":
                assert theirs[713]["SoC"] == pytest.approx(63.0, abs=0.1)
                assert theirs[702]["WChaRteMaxRtg"] == 50_000.0

    run(scenario())


def test_pysunspec2_writes_a_setpoint_our_emulator_applies() -> None:
    model = BatteryModel(battery_nameplate(p_max_w=5000, energy_wh=10000))

    def write(port: int) -> float:
        device = client_module.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=2)
        try:
            device.scan()
            device.connect()
            ctl = device.models[704][0]
            ctl.read()
            ctl.WSetEna.value = 1
            ctl.WSet.cvalue = -1234
            ctl.write()
            measure = device.models[701][0]
            measure.read()
            return float(measure.W.cvalue)
        finally:
            device.close()

    async def scenario() -> None:
        async with Emulator(model) as emu:
            assert await asyncio.to_thread(write, emu.port) == -1234.0
            assert model.measure().p_w == -1234.0

    run(scenario())
