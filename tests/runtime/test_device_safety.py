"""The gateway's write safety with real emulated devices and a real Mosquitto: keep-alive holds the setpoints
through revert windows shorter than a cycle, a device that acknowledges writes and ignores them is counted and
sends the gateway to failsafe, and each gateway drives legacy (1xx) devices as well as IEEE 1547 (7xx) ones."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from firmware_bridge import Quirks
from heron_edge.errors import ConfigError
from heron_edge.runtime.config import parse_gateway_config
from heron_edge.runtime.mosquitto import MosquittoProcess
from heron_edge.runtime.sil import agent_config
from sim.scenario import load_scenario
from tests.conftest import run_async
from tests.runtime.rig import Rig, wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.modbus, pytest.mark.slow]


def test_a_revert_time_shorter_than_the_cycle_needs_keepalive(tmp_path: Path) -> None:
    scenario = load_scenario("ieee34_3x13")
    endpoints = {m.name: {r: {"host": "127.0.0.1", "port": 1000 + k, "unit_id": 1}
                          for k, r in enumerate(("battery", "generator", "pv", "wind", "meter"))}
                 for m in scenario.microgrids}
    data = agent_config(scenario, 0, site="s", broker_url="mqtt://127.0.0.1:1883", endpoints=endpoints, workdir=tmp_path,
                        period_s=3600.0)
    data["failsafe"]["upstream_timeout_s"] = 5400.0
    data["cycle"]["step_timeout_s"] = 10.0
    with pytest.raises(ConfigError, match=r"devices.battery: setpoint_revert_s \(60 s\) is shorter than cycle.period_s "
                                          r"\(3600 s\) without keepalive"):
        parse_gateway_config(data)
    for role in ("battery", "generator", "pv", "wind"):
        data["devices"][role]["keepalive"] = True
    assert parse_gateway_config(data).devices.battery.keepalive


def test_keepalive_keeps_control_across_a_two_cycle_revert_window(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    """Gateways on a 2 s timer, devices that drop a setpoint after 1 s: the keep-alive re-writes every 0.5 s, so over
    two full cycles no device reverts and every setpoint stays in force; the status counts the re-writes."""
    period = 2.0

    async def scenario() -> None:
        async with Rig(mosquitto.url, tmp_path, clock="timer", steps=50, period_s=period, step_timeout_s=0.3,
                       upstream_timeout_s=3 * period, device_overrides={"keepalive": True, "setpoint_revert_s": 1},
                       device_profile="mixed") as rig:
            journals = {name: tmp_path / f"journal-{name}.jsonl" for name in rig.gateways}

            def cycles(name: str) -> int:
                path = journals[name]
                return len(path.read_text().splitlines()) if path.exists() else 0

            await wait_for(lambda: all(cycles(n) >= 1 for n in rig.gateways), 20, "a first cycle each")
            start = {name: cycles(name) for name in rig.gateways}
            reverts = {name: {role: e.device.reverts for role, e in mg.emulators.items()}
                       for name, mg in rig.runtime.microgrids.items()}
            await wait_for(lambda: all(cycles(n) >= start[n] + 2 for n in rig.gateways), 20, "two more cycles each")
            for name, mg in rig.runtime.microgrids.items():
                for role in ("battery", "generator"):
                    emulator = mg.emulators[role]
                    assert emulator.device.reverts == reverts[name][role], (name, role)  # nothing dropped
                    assert emulator.device.command_w() is not None, (name, role)  # the setpoint still in force
                gateway = rig.gateways[name]
                assert gateway.counters()["keepalive_writes"] >= 4, name
                assert not gateway.failsafe.active, (name, gateway.failsafe.detail)
            assert {mg.emulators["battery"].profile for mg in rig.runtime.microgrids.values()} == {"legacy", "ieee1547"}

    run_async(scenario(), timeout=90)


def test_a_device_that_ignores_writes_sends_its_gateway_to_failsafe(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Rig(mosquitto.url, tmp_path, steps=40, device_profile="legacy") as rig:
            g = rig.gateways["mg1"]
            await wait_for(lambda: rig.steps_done >= 3, 20, "3 plant steps")
            registers = rig.runtime.microgrids["mg1"].emulators["battery"].registers
            registers.quirks = replace(registers.quirks, ignore_writes=True)  # from now on: acknowledged, ignored
            await wait_for(lambda: g.failsafe.active, 20, "mg1 failsafe")
            assert "read-back differs" in g.failsafe.detail and "battery" in g.failsafe.detail
            counters = g.counters()
            assert counters["write_mismatch_battery"] >= g.config.devices.write_mismatches_to_failsafe
            status = json.loads(Path(g.config.status_file or "").read_text())
            assert status["counters"]["write_mismatch_battery"] >= 3
            assert not rig.gateways["mg2"].failsafe.active
            registers.quirks = Quirks()  # the device holds commands again
            await wait_for(lambda: not g.failsafe.active, 20, "mg1 recovered")
            assert g.failsafe.entries == 1

    run_async(scenario(), timeout=90)
