"""The runtime's parts without a broker: outbox, config, site meter, failsafe commands, agent config files."""
from __future__ import annotations

import asyncio
import socket
import tomllib
from pathlib import Path

import pytest

from firmware_bridge import Telemetry
from heron_edge.errors import BrokerError, ConfigError, DeviceError
from heron_edge.runtime.config import FailsafeSettings, load_gateway_config, parse_gateway_config
from heron_edge.runtime.failsafe import FailsafeState, safe_setpoints
from heron_edge.runtime.meter import meter_reading, violation_pu
from heron_edge.runtime.outbox import Outbox
from tests.conftest import run_async

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_outbox_keeps_order_bound_and_resumes(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_records=5)
    for i in range(7):
        box.add("t", f"m{i}".encode())
    assert len(box) == 5 and box.overflow == 2  # the two oldest dropped, counted
    sent: list[bytes] = []

    async def flaky(topic: str, payload: bytes) -> None:
        if len(sent) == 2:
            raise BrokerError("gone")
        sent.append(payload)

    assert run_async(box.flush(flaky)) == 2
    assert len(box) == 3
    box.close()
    reopened = Outbox(tmp_path / "o.sqlite", max_records=5)  # survives a restart of the gateway
    assert len(reopened) == 3 and reopened.overflow == 2

    async def ok(topic: str, payload: bytes) -> None:
        sent.append(payload)

    assert run_async(reopened.flush(ok)) == 3
    assert sent == [b"m2", b"m3", b"m4", b"m5", b"m6"]
    assert len(reopened) == 0
    reopened.close()
    reopened.close()


def test_outbox_flush_keeps_to_its_time_budget(tmp_path: Path) -> None:
    """A long backlog over a slow link drains over several calls instead of stalling one cycle."""
    box = Outbox(tmp_path / "o.sqlite")
    for i in range(50):
        box.add("t", f"m{i}".encode())
    sent: list[bytes] = []

    async def slow(topic: str, payload: bytes) -> None:
        await asyncio.sleep(0.01)  # a 10 ms round trip
        sent.append(payload)

    first = run_async(box.flush(slow, budget_s=0.1))
    assert 3 <= first < 50 and len(box) == 50 - first
    while len(box):
        run_async(box.flush(slow, budget_s=0.1))
    assert sent == [f"m{i}".encode() for i in range(50)]  # in order, each once
    box.close()


def test_site_meter_reading_from_a_standard_meter() -> None:
    t = Telemetry(timestamp=1.0, stale=False, p_w=-250_000.0, v_v=4160.0 * 1.07)
    reading = meter_reading(t, v_nom_v=4160.0, v_min_pu=0.95, v_max_pu=1.05)
    assert reading.exchange_mw == -0.25 and reading.v_pu == pytest.approx(1.07)
    assert reading.violation_pu == pytest.approx(0.02)  # 1.07 p.u. is 0.02 above the band
    assert meter_reading(t, v_nom_v=None, v_min_pu=0.95, v_max_pu=1.05).violation_pu == 0.0  # no nominal: unknown
    assert violation_pu(0.9, 0.95, 1.05) == pytest.approx(0.05)
    with pytest.raises(DeviceError, match="no active power"):
        meter_reading(Telemetry(timestamp=1.0, stale=False, p_w=None), v_nom_v=None, v_min_pu=0.95, v_max_pu=1.05)


def test_failsafe_commands_and_transitions() -> None:
    s = FailsafeSettings(generator_mw=0.1, export_limit_mw=0.05)
    assert safe_setpoints(s, load_mw=None, pv_available_mw=None, wind_available_mw=None).pv_curtailment == 1.0
    sp = safe_setpoints(s, load_mw=0.2, pv_available_mw=0.3, wind_available_mw=0.0)
    assert sp.battery_mw == 0.0 and sp.generator_mw == 0.1
    assert abs(0.3 * (1 - sp.pv_curtailment) - (0.2 + 0.05 - 0.1)) < 1e-12  # export held at the limit
    assert safe_setpoints(s, load_mw=1.0, pv_available_mw=0.3, wind_available_mw=0.1).pv_curtailment == 0.0
    state = FailsafeState()
    assert state.update({"broker": "down"}, now=1.0) and state.active and state.since == 1.0
    assert not state.update({"broker": "down", "device": "x"}, now=2.0)
    assert state.update({}, now=3.0) and not state.active and state.entries == 1


def _example() -> dict:
    return tomllib.loads((EXAMPLES / "gateway-rpi.toml").read_text())


def test_example_config_validates_and_errors_name_the_field(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = load_gateway_config(EXAMPLES / "gateway-rpi.toml")
    assert config.broker.url.startswith("mqtts://") and config.devices.battery.port == 502
    monkeypatch.delenv(config.broker.password_env or "", raising=False)
    with pytest.raises(ConfigError, match="broker.password_env"):
        config.broker.password()
    monkeypatch.setenv(config.broker.password_env or "", "s3cret")
    assert config.broker.password() == "s3cret"
    data = _example()
    data["devices"]["battery"]["port"] = 70000
    data["cycle"]["period"] = 1
    with pytest.raises(ConfigError) as err:
        parse_gateway_config(data)
    assert "devices.battery.port" in str(err.value) and "cycle.period: unknown field" in str(err.value)
    bad = tmp_path / "bad.toml"
    bad.write_text("agent_id = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_gateway_config(bad)


def test_sil_agent_config_round_trips_through_toml(tmp_path: Path) -> None:
    from heron_edge.runtime.sil import agent_config, to_toml
    from sim.scenario import load_scenario

    scenario = load_scenario("ieee34_3x13")
    endpoints = {m.name: {r: {"host": "127.0.0.1", "port": 1000 + k, "unit_id": 1}
                          for k, r in enumerate(("battery", "generator", "pv", "wind", "meter"))}
                 for m in scenario.microgrids}
    data = agent_config(scenario, 1, site="s", broker_url="mqtt://127.0.0.1:1883", endpoints=endpoints, workdir=tmp_path)
    path = tmp_path / "a.toml"
    path.write_text(to_toml(data))
    config = load_gateway_config(path)
    assert config.agent_id == "mg2" and config.agents == ["mg1", "mg2", "mg3"] and config.devices.meter.port == 1004


def test_gateway_imports_without_the_simulator() -> None:
    """A gateway installs the core only: the agent command and the runtime never import sim or pandapower."""
    import subprocess
    import sys

    code = ("import sys, heron_edge.runtime.gateway, heron_edge.commands.agent; "
            "bad = [m for m in ('sim', 'pandapower', 'pandas', 'gymnasium') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_agent_cli_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from heron_edge.cli import main

    data = (EXAMPLES / "gateway-rpi.toml").read_text().replace('site = "campus"', 'site = "bad/site"')
    path = tmp_path / "g.toml"
    path.write_text(data)
    assert main(["agent", "--config", str(path)]) == 2
    assert "site" in capsys.readouterr().err


def test_operator_cli_start_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad scenario exits 2, an unreachable broker 1; each with one clear line, not a traceback."""
    from heron_edge.cli import main

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["operator", "--broker", f"mqtt://127.0.0.1:{port}", "--scenario", "no_such_grid"]) == 2
    assert "no scenario named 'no_such_grid'" in capsys.readouterr().err
    assert main(["operator", "--broker", f"mqtt://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert "cannot connect" in err and "Traceback" not in err
