"""A gateway config builds register-map devices on a shared link: ``[links.NAME]`` declared once, devices naming it
with their unit ids and maps; the DeviceIO reads them through one connection and commands the battery through its
map. Bad link or map references are refused at load, naming the device."""
from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from firmware_bridge.regmap import RegisterTables, RegmapDevice, RegmapServer
from heron_edge.errors import ConfigError
from heron_edge.runtime.config import load_gateway_config, parse_gateway_config
from heron_edge.runtime.modbus_io import ModbusDeviceIO
from tests.firmware_bridge.conftest import run

pytestmark = pytest.mark.modbus


def _config(port: int, tmp_path: Path, **devices: dict[str, Any]) -> dict[str, Any]:
    return {
        "agent_id": "mg1", "site": "s", "peers": ["mg1"], "battery_p_max_mw": 0.005,
        "broker": {"url": "mqtt://127.0.0.1:1"},
        "links": {"site": {"host": "127.0.0.1", "port": port, "timeout_s": 0.5, "retries": 0}},
        "devices": devices or {"battery": {"link": "site", "unit_id": 227, "map": "victron-gx-ess", "keepalive": True},
                               "meter": {"link": "site", "unit_id": 1, "map": "eastron-sdm630"}},
        "policy": {"cost_a_usd_per_mw2h": 0.0, "cost_b_usd_per_mwh": 100.0},
        "cycle": {"clock": "timer", "period_s": 3600.0, "step_timeout_s": 1.0},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")},
    }


def _f32(value: float) -> list[int]:
    return list(struct.unpack(">2H", struct.pack(">f", value)))


def _site() -> dict[int, RegisterTables]:
    """An SDM630 at unit 1 importing 1.2 kW at 400 V, a Victron Multi at unit 227 discharging 2.5 kW at 64.5 %."""
    meter = {("input", 52 + i): w for i, w in enumerate(_f32(1200.0))}
    meter |= {("input", 200 + i): w for i, w in enumerate(_f32(400.0))}
    meter |= {("input", 70 + i): w for i, w in enumerate(_f32(50.0))}
    for phase in range(3):
        meter |= {("input", 12 + 2 * phase + i): w for i, w in enumerate(_f32(400.0))}
    battery = {("holding", 9): 5000, ("holding", 12): (-250) & 0xFFFF, ("holding", 30): 645, ("holding", 37): 0}
    return {1: RegisterTables(meter),  # type: ignore[arg-type]
            227: RegisterTables(battery, writable=[("holding", 37)])}  # type: ignore[arg-type]


def test_the_gateway_builds_map_devices_on_one_shared_link(tmp_path: Path) -> None:
    units = _site()

    async def scenario() -> tuple[np.ndarray, int, int]:
        async with RegmapServer(units) as server:
            path = tmp_path / "gateway.toml"
            path.write_text("\n".join(_toml(_config(server.port, tmp_path))))
            config = load_gateway_config(path)
            assert config.devices.meter.map == "eastron-sdm630" and config.devices.meter.port == server.port
            async with ModbusDeviceIO(config.devices) as io:
                assert all(isinstance(d, RegmapDevice) for d in io.devices.values())
                assert len(io.links.links) == 1  # two devices, one connection and one request queue
                features = await io.read()
                await io.write(-0.002, 0.0, 0.0, 0.0)  # charge 2 kW
                connects = io.links.links[0].stats.connects
            return features, units[227].values["holding", 37], connects

    features, setpoint, connects = run(scenario())
    assert features[3] == pytest.approx(0.645)  # soc from the Multi's register 30
    assert features[5] == pytest.approx(0.0025)  # battery MW, + discharging
    assert features[6] == pytest.approx(0.0012)  # exchange MW from the SDM630's total power, + import
    assert setpoint == 2000  # charging 2 kW is the Multi's ESS setpoint +2000 W (taken from AC-in)
    assert connects == 1


def _toml(data: dict[str, Any], prefix: str = "") -> list[str]:
    scalars = [f"{k} = {_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    lines = ([f"[{prefix}]"] if prefix and scalars else []) + scalars
    for key, value in data.items():
        if isinstance(value, dict):
            lines += _toml(value, f"{prefix}.{key}" if prefix else key)
    return lines


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return repr(v)


@pytest.mark.parametrize(("device", "expected"), [
    ({"link": "bus", "unit_id": 1, "map": "eastron-sdm630"}, "devices.meter.link: no [links.bus] (declared: site)"),
    ({"link": "site", "unit_id": 1, "port": 5020, "map": "eastron-sdm630"}, "devices.meter: port: set in [links.site]"),
    ({"link": "site", "unit_id": 10, "map": "deepsea-dse7320"},
     "devices.meter.map: deepsea-dse7320 cannot fill the meter role: it has no point for meter.p_w"),
    ({"link": "site", "unit_id": 1, "map": "acme-x1"}, "devices.meter.map: no shipped map 'acme-x1'"),
    ({"link": "site", "unit_id": 256, "map": "eastron-sdm630"}, "devices.meter.unit_id"),
])
def test_bad_link_and_map_references_are_refused_at_load(tmp_path: Path, device: dict[str, Any], expected: str) -> None:
    data = _config(502, tmp_path, battery={"link": "site", "unit_id": 227, "map": "victron-gx-ess",
                                           "keepalive": True}, meter=device)
    with pytest.raises(ConfigError, match=re.escape(expected)) as err:
        parse_gateway_config(data)
    assert "\n" not in str(err.value)


def test_a_bad_map_file_is_named_in_the_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "my-meter.toml"
    bad.write_text('[device]\nvendor = "a"\nmodel = "b"\n[[points]]\nname = "p"\nrole = "meter.p_w"\naddress = 1\n'
                   'type = "f16"\n')
    data = _config(502, tmp_path, battery={"link": "site", "unit_id": 227, "map": "victron-gx-ess", "keepalive": True},
                   meter={"link": "site", "unit_id": 1, "map": str(bad)})
    with pytest.raises(ConfigError, match=f"devices.meter.map: {bad}: point p: type: "):
        parse_gateway_config(data)


def test_host_and_port_per_device_still_work_and_share_an_endpoint(tmp_path: Path) -> None:
    """Configs written before links: each device with its own host / port; two on one endpoint share its link."""
    data = _config(502, tmp_path, battery={"host": "127.0.0.1", "port": 1502, "unit_id": 227, "map": "victron-gx-ess",
                                           "keepalive": True},
                   meter={"host": "127.0.0.1", "port": 1502, "unit_id": 1, "map": "eastron-sdm630"},
                   pv={"host": "10.0.0.9", "port": 502, "unit_id": 1, "keepalive": True})
    del data["links"]
    config = parse_gateway_config(data)
    io = ModbusDeviceIO(config.devices)
    assert len(io.links.links) == 2
    assert io.devices["battery"].link is io.devices["meter"].link is not io.devices["pv"].link
