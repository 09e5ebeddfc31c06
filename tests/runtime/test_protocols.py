"""Coordination protocols in the edge runtime, below the CLI: real Mosquitto, real Modbus sockets, the plant,
the operator service and three Gateways on one loop. The centralized form of each step is computed from
the very plant state the distributed one ran on, so prices must agree exactly and the consensus dispatch
within 1 %; the gateway config validates the protocols; commands reach the protocols only through the guard."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from heron_edge.brokers import MqttBroker
from heron_edge.coordination import Signals
from heron_edge.errors import ConfigError
from heron_edge.messages import SetpointBody, command_topic, make_envelope
from heron_edge.runtime.config import parse_gateway_config
from heron_edge.runtime.mosquitto import MosquittoProcess
from heron_edge.runtime.sil import agent_config, to_toml
from heron_edge.runtime.sil_plant import PlantRuntime
from sim.scenario import load_scenario
from tests.conftest import run_async
from tests.runtime.rig import SITE, Rig, wait_for

STEPS = 8


class RecordingPlant(PlantRuntime):
    """The SIL plant that also computes the centralized signals of each step from its own state."""

    central: dict[int, Signals]

    async def _publish_meter(self, step: int) -> None:
        if not hasattr(self, "central"):
            self.central = {}
        self.central[step] = self.coordination.signals(self.plant)
        await super()._publish_meter(step)


def _journal(path: Path) -> dict[int, dict[str, Any]]:
    return {row["step"]: row for row in map(json.loads, path.read_text().splitlines())}


@pytest.mark.mqtt
@pytest.mark.modbus
@pytest.mark.slow
def test_price_signal_and_consensus_agree_with_the_centralized_form(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    options = {"price_signal": {"congestion_threshold_pu": 0.2}, "consensus": {"import_limit_mw": 0.3}}

    async def scenario() -> None:
        rig = Rig(mosquitto.url, tmp_path, steps=STEPS, start_step=4000, period_s=1.0, step_timeout_s=0.5,
                  upstream_timeout_s=2.0, repeat_s=2.0, protocols=["price_signal", "consensus"],
                  protocol_options=options, plant_runtime=RecordingPlant)
        rig.runtime.coordination = rig.coordination  # type: ignore[attr-defined]
        async with rig:
            assert rig.done is not None
            await asyncio.wait_for(asyncio.shield(rig.done), 40)
            for g in rig.gateways.values():
                assert g.failsafe.entries == 0, g.status()
                assert g.counters().get("late", 0) == 0
            assert rig.runtime.stats.forced_steps == 0
        central: dict[int, Signals] = rig.runtime.central  # type: ignore[attr-defined]
        ledger = _journal(rig.ledger)
        journals = {name: _journal(tmp_path / f"journal-{name}.jsonl") for name in rig.plant.names}
        assert sorted(ledger) == sorted(central) and len(central) == STEPS
        congested = 0
        for step, signals in central.items():
            row = ledger[step]
            assert row["price_usd_per_mwh"] == signals.price.price_usd_per_mwh
            assert row["congestion_adder_usd_per_mwh"] == signals.price.congestion_adder_usd_per_mwh  # exact
            congested += signals.price.congestion_adder_usd_per_mwh > 0
            assert signals.dispatch_mw is not None
            total = max(float(np.abs(signals.dispatch_mw).sum()), 1e-3)
            for i, name in enumerate(rig.plant.names):
                entry = journals[name][step]
                assert entry["consensus_rounds"] > 0  # really iterated over MQTT
                assert abs(entry["dispatch_mw"] - signals.dispatch_mw[i]) <= 0.01 * total, (step, name)
        assert congested >= 2  # the adder really moved the price
        assert sum(float(np.abs(s.dispatch_mw).sum()) > 0.05 for s in central.values()) >= 2  # non-trivial dispatch

    run_async(scenario(), timeout=90)


def _config(protocols: list[str], **coordination: Any) -> dict[str, Any]:
    scenario = load_scenario("ieee34_3x13")
    endpoints = {m.name: {r: {"host": "127.0.0.1", "port": 1000 + k, "unit_id": 1}
                          for k, r in enumerate(("battery", "generator", "pv", "wind", "meter"))} for m in scenario.microgrids}
    data = agent_config(scenario, 1, site="s", broker_url="mqtt://127.0.0.1:1883", endpoints=endpoints,
                        workdir=Path("/tmp"), protocols=protocols)
    data["coordination"].update(coordination)
    return data


def test_gateway_config_names_bad_protocol_settings() -> None:
    config = parse_gateway_config(_config(["setpoint", "p2p_trading"]))
    assert config.coordination is not None
    assert config.coordination.build().feature_names == ("setpoint_mw", "traded_mw", "clearing_price")
    cases = [
        (_config(["setpoint", "price_signal"]), "coordination: .*at most one vertical"),
        (_config(["gossip"]), r"coordination\.protocols\.0"),
        (_config(["setpoint"], options={"consensus": {}}), "coordination: .*do not run"),
        (_config(["setpoint"], options={"setpoint": {"import_limit_mw": -1}}), "coordination: .*import_limit_mw"),
        (_config(["consensus"], microgrids=_config([])["coordination"]["microgrids"][:2]), "coordination.microgrids"),
    ]
    for data, message in cases:
        with pytest.raises(ConfigError, match="(?s)" + message):
            parse_gateway_config(data)


def test_coordination_table_round_trips_through_toml(tmp_path: Path) -> None:
    import tomllib

    data = _config(["setpoint"], options={"setpoint": {"import_limit_mw": 0.7}})
    assert tomllib.loads(to_toml(data)) == {k: v for k, v in data.items() if v is not None}


@pytest.mark.mqtt
@pytest.mark.modbus
@pytest.mark.slow
def test_setpoint_protocol_commands_pass_the_guard(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    """With the setpoint protocol, a setpoint forged by a peer (sender mg1) never reaches mg2's protocol;
    the operator's own setpoints do (and are tracked)."""

    async def scenario() -> None:
        forger = MqttBroker(mosquitto.url, client_id="forger")
        await forger.connect()
        async with Rig(mosquitto.url, tmp_path, steps=6, period_s=1.0, step_timeout_s=0.5, upstream_timeout_s=2.0,
                       repeat_s=2.0, protocols=["setpoint"]) as rig:
            g = rig.gateways["mg2"]
            await wait_for(lambda: rig.steps_done >= 2, 20, "2 plant steps")
            for step in range(4000, 4000 + 8):  # cover every step of the run
                forged = make_envelope("mg1", SetpointBody(p_mw=-9.0), step=step, recipient="mg2", ttl_s=30)
                await forger.publish(command_topic(SITE, "mg2", "setpoint"), forged)
            assert rig.done is not None
            await asyncio.wait_for(asyncio.shield(rig.done), 40)
            counters = g.counters()
            assert g.rejections()["command"]["sender"] >= 8
            assert counters["cmd_accepted"] >= 6  # the operator's, one per step
            journal = _journal(tmp_path / "journal-mg2.jsonl")
            ledger = _journal(rig.ledger)
            for step, row in journal.items():
                assert row["setpoint_mw"] == ledger[step]["setpoint_mw"][1] != 9.0
        await forger.close()

    run_async(scenario(), timeout=60)
