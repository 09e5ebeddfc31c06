"""Interoperability with a client no one here wrote: pysunspec2 scans every emulator profile over TCP, reads
every point as we do, and writes each profile's controls, which the emulated device then applies."""
from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import sunspec2.modbus.client

from firmware_bridge import (
    BatteryModel,
    DeviceModel,
    Emulator,
    ModbusDevice,
    ModbusDeviceConfig,
    PVInverterModel,
    SiteMeterModel,
    battery_nameplate,
    inverter_nameplate,
    meter_nameplate,
)
from firmware_bridge.sunspec import ModelView
from firmware_bridge.sunspec_device import PROFILE_MODELS
from tests.firmware_bridge.conftest import run

pytestmark = pytest.mark.modbus
client_module = sunspec2.modbus.client


def _pysunspec2_points(model: object) -> dict[str, object]:
    """Every point of a pysunspec2 model (groups flattened as ours are), as engineering values."""
    values: dict[str, object] = {}

    def walk(group: object, prefix: str, top: bool) -> None:
        for name, point in group.points.items():  # type: ignore[attr-defined]
            if not (top and name in ("ID", "L")) and point.pdef["type"] != "pad":  # padding carries no value
                values[prefix + name] = point.cvalue
        for gname, sub in group.groups.items():  # type: ignore[attr-defined]
            for i, g in enumerate(sub if isinstance(sub, list) else [sub]):
                walk(g, f"{prefix}{gname}[{i + 1}]." if isinstance(sub, list) else f"{prefix}{gname}.", False)

    walk(model, "", True)
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


def _model(kind: str) -> DeviceModel:
    noon = 12 * 3600.0
    if kind == "battery":
        return BatteryModel(battery_nameplate(p_max_w=50_000, energy_wh=200_000), soc=0.63)
    if kind == "inverter":
        return PVInverterModel(inverter_nameplate(p_max_w=100_000), time_of_day=lambda: noon)
    return SiteMeterModel(meter_nameplate(p_max_w=60_000), time_of_day=lambda: 20 * 3600.0)


def _scan(port: int, unit: int = 1) -> dict[int, dict[str, object]]:
    device = client_module.SunSpecModbusClientDeviceTCP(slave_id=unit, ipaddr="127.0.0.1", ipport=port, timeout=2)
    try:
        device.scan()
        found: dict[int, dict[str, object]] = {}
        for model_id, models in device.models.items():
            if isinstance(model_id, int):
                models[0].read()
                found[model_id] = _pysunspec2_points(models[0])
        return found
    finally:
        device.close()


@pytest.mark.parametrize("profile", ["ieee1547", "legacy"])
@pytest.mark.parametrize("kind", ["battery", "inverter", "meter"])
def test_pysunspec2_reads_every_point_we_serve(kind: str, profile: str) -> None:
    role = {"battery": "battery", "inverter": "pv", "meter": "meter"}[kind]

    async def scenario() -> None:
        model = _model(kind)
        async with Emulator(model, profile=profile) as emu, \
                ModbusDevice(ModbusDeviceConfig(port=emu.port), role=role) as ours:  # type: ignore[arg-type]
            if kind != "meter":
                await ours.write_setpoint(-30_000.0 if kind == "battery" else 60_000.0, revert_s=0)
            theirs = await asyncio.to_thread(_scan, emu.port)
            expected = list(PROFILE_MODELS[profile][kind])  # type: ignore[index]
            assert sorted(theirs) == sorted(expected)
            for model_id in expected:
                mine = _our_points(await ours.read_model(model_id))
                assert theirs[model_id].keys() == mine.keys(), model_id
                for name, value in mine.items():
                    other = theirs[model_id][name]
                    if name.startswith("TotWh") and value is not None:  # an energy counter still counting: ours is read after
                        assert 0.0 <= value - other <= 10.0, (model_id, name, value, other)
                    elif isinstance(value, float):
                        assert other == pytest.approx(value, rel=1e-6), (model_id, name)
                    else:
                        assert other == value, (model_id, name)
            telemetry = await ours.read_telemetry()
            measured = {"battery": -30_000.0, "inverter": 60_000.0}.get(kind, model.measure().p_w)
            assert telemetry.p_w == pytest.approx(measured, abs=1.0)
            meas_model = next(m for m in expected if m in (701, 103, 203, 213))
            assert theirs[meas_model]["W"] == pytest.approx(telemetry.p_w, abs=1.0)
            if kind == "battery":
                soc_model = 713 if profile == "ieee1547" else 802
                assert theirs[soc_model]["SoC"] == pytest.approx(63.0, abs=0.1)
            if kind == "meter":
                assert telemetry.phase_w == pytest.approx((measured / 3,) * 3, abs=10.0)

    run(scenario())


Writer = Callable[[object], None]


def _write_wset(device: object) -> None:
    ctl = device.models[704][0]  # type: ignore[attr-defined]
    ctl.read()
    ctl.WSetEna.value = 1
    ctl.WSet.cvalue = -1234
    ctl.write()


def _write_704_limit(device: object) -> None:
    ctl = device.models[704][0]  # type: ignore[attr-defined]
    ctl.read()
    ctl.WMaxLimPctEna.value = 1
    ctl.WMaxLimPct.cvalue = 40
    ctl.write()


def _write_124(device: object) -> None:
    storage = device.models[124][0]  # type: ignore[attr-defined]
    storage.read()
    storage.StorCtl_Mod.value = 3  # both limits: the window [-InWRte, OutWRte] x WChaMax collapses to -20 %
    storage.OutWRte.cvalue = -20
    storage.InWRte.cvalue = 20
    storage.write()


def _write_123(device: object) -> None:
    controls = device.models[123][0]  # type: ignore[attr-defined]
    controls.read()
    controls.WMaxLimPct.cvalue = 40
    controls.WMaxLim_Ena.value = 1
    controls.write()


@pytest.mark.parametrize(("kind", "profile", "writer", "expected_w"), [
    ("battery", "ieee1547", _write_wset, -1234.0),
    ("inverter", "ieee1547", _write_704_limit, 4000.0),
    ("battery", "legacy", _write_124, -1000.0),
    ("inverter", "legacy", _write_123, 4000.0),
])
def test_pysunspec2_writes_controls_our_emulator_applies(kind: str, profile: str, writer: Writer,
                                                        expected_w: float) -> None:
    model: DeviceModel = (BatteryModel(battery_nameplate(p_max_w=5000, energy_wh=10000)) if kind == "battery"
                          else PVInverterModel(inverter_nameplate(p_max_w=10000), time_of_day=lambda: 12 * 3600.0))

    def write(port: int) -> float:
        device = client_module.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=2)
        try:
            device.scan()
            writer(device)
            measure = device.models[701 if profile == "ieee1547" else 103][0]
            measure.read()
            return float(measure.W.cvalue)
        finally:
            device.close()

    async def scenario() -> None:
        async with Emulator(model, profile=profile) as emu:  # type: ignore[arg-type]
            assert await asyncio.to_thread(write, emu.port) == expected_w
            assert model.measure().p_w == pytest.approx(expected_w)
            assert emu.device.writes >= 1

    run(scenario())


def test_pysunspec2_cannot_write_a_meter() -> None:
    """A meter has no control: pysunspec2's write of a measured point is refused with an exception answer."""
    def write(port: int) -> str:
        device = client_module.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=2)
        try:
            device.scan()
            meter = device.models[203][0]
            meter.read()
            meter.W.cvalue = 5
            try:
                meter.write()
            except Exception as exc:  # pysunspec2's own exception type for an exception answer
                return str(exc)
            return "accepted"
        finally:
            device.close()

    async def scenario() -> None:
        async with Emulator(SiteMeterModel(meter_nameplate()), profile="legacy") as emu:
            answer = await asyncio.to_thread(write, emu.port)
            assert answer != "accepted" and emu.device.writes == 0

    run(scenario())
