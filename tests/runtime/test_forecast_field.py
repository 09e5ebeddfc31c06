"""A field gateway: an Eastron SDM630 site meter (the shipped register map, no custom meter map) and a ``profile``
forecast, emulated devices, the operator on the timer clock, a real Mosquitto: its cycles run without failsafe and
say which forecast they used."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge import Emulator
from firmware_bridge.models import BatteryModel, battery_nameplate
from firmware_bridge.regmap import MapEmulation, RegmapServer, load_map
from heron_edge.agents import SystemOperator
from heron_edge.brokers import MqttBroker
from heron_edge.coordination import Coordination
from heron_edge.runtime.config import parse_gateway_config
from heron_edge.runtime.gateway import Gateway
from heron_edge.runtime.mosquitto import MosquittoProcess
from heron_edge.runtime.operator import CoordinationService, OperatorRuntime
from sim.scenario import Ieee34Network, load_scenario
from tests.conftest import run_async
from tests.runtime.rig import wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.modbus]

SITE = "field"
PERIOD_S = 0.4

def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _gateway_config(url: str, tmp_path: Path, battery: Emulator, meter: RegmapServer) -> dict[str, Any]:
    """What a field gateway's TOML says: timer clock, a SunSpec battery, an SDM630 meter, a profile forecast."""
    return {
        "agent_id": "mg1", "site": SITE, "peers": ["mg1"], "battery_p_max_mw": 0.005,
        "broker": {"url": url, "reconnect_min_delay_s": 0.1, "reconnect_max_delay_s": 0.5},
        "devices": {"battery": {"host": "127.0.0.1", "port": battery.port, "unit_id": 1, "timeout_s": 0.5},
                    "meter": {"host": "127.0.0.1", "port": meter.port, "unit_id": 1, "timeout_s": 0.5,
                              "map": "eastron-sdm630"},
                    "meter_v_nom_v": 400.0},
        "policy": {"kind": "rule", "cost_a_usd_per_mw2h": 0.0, "cost_b_usd_per_mwh": 1000.0, "min_history": 1},
        "cycle": {"clock": "timer", "period_s": PERIOD_S, "step_timeout_s": 0.3, "time_zone": "Europe/Berlin"},
        "failsafe": {"upstream_timeout_s": 3 * PERIOD_S},
        "forecast": {"kind": "profile", "load": [0.6] * 7 + [1.0] * 12 + [0.8] * 5,
                     "pv": [0.05] * 6 + [1.0] * 12 + [0.05] * 6, "wind": [1.0] * 24, "window_steps": 4},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        "status_file": str(tmp_path / "status.json"), "journal_file": str(tmp_path / "journal.jsonl"),
    }


def test_field_gateway_with_a_standard_meter_and_a_profile_forecast(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    base = load_scenario("ieee34_3x13")
    assert isinstance(base.network, Ieee34Network)
    network = base.network.model_copy(update={"attach_buses": {"mg1": base.network.attach_buses["mg1"]}})
    scenario = base.model_copy(update={"microgrids": base.microgrids[:1], "network": network})

    async def run() -> None:
        battery = Emulator(BatteryModel(battery_nameplate()), profile="ieee1547")
        meter = RegmapServer({1: MapEmulation(load_map("eastron-sdm630")).tables})  # 1.5 kW import, 400 V
        await battery.start()
        await meter.start()
        op_broker = MqttBroker(mosquitto.url, client_id=f"{SITE}-operator")
        operator = SystemOperator("system_operator", op_broker, Coordination(scenario, [], {}), site=SITE,
                                  step_timeout_s=0.2)
        runtime = OperatorRuntime(op_broker, site=SITE, operator_id="system_operator",
                                  services=[CoordinationService(operator, lambda step: 40.0 + step % 7)],
                                  clock="timer", period_s=PERIOD_S)
        gateway = Gateway(parse_gateway_config(_gateway_config(mosquitto.url, tmp_path, battery, meter)))
        tasks = [asyncio.ensure_future(runtime.run()), asyncio.ensure_future(gateway.run())]
        journal = tmp_path / "journal.jsonl"
        try:
            await wait_for(lambda: len(_rows(journal)) >= 6, 30, "6 cycles")
        finally:
            runtime.stop()
            gateway.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            await gateway.close()
            await operator.close()
            await op_broker.close()
            await battery.stop()
            await meter.stop()
        rows = _rows(journal)[2:]  # the first cycles may run before the operator is subscribed
        assert rows and not any(row["failsafe"] for row in rows), rows
        assert {row["forecast"] for row in rows} == {"profile"}  # every observation says which forecast it used
        load, pv, wind, _, _, battery_mw, exchange, violation = rows[-1]["observation"][3:11]  # after the context
        assert exchange == pytest.approx(0.0015) and violation == 0.0  # the SDM630's total power and its voltage
        # the meter's 1.5 kW import plus the battery's output (this emulated meter does not see the battery)
        assert 0.0 < load < 0.01 and pv == 0.0 and wind == 0.0
        status = json.loads((tmp_path / "status.json").read_text())
        assert status["forecast"]["kind"] == "profile" and status["counters"]["forecast_profile"] >= len(rows)
        assert "read_failed_meter" not in status["counters"]  # the standard meter read fresh every cycle

    run_async(run(), timeout=60)
