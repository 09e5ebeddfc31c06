"""Per-agent cycle periods in real time: a slower agent runs every k-th announced step and holds in between."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from heron_edge.errors import ConfigError
from heron_edge.runtime.config import parse_gateway_config
from heron_edge.runtime.mosquitto import MosquittoProcess
from heron_edge.runtime.sil import agent_config, agent_every_steps
from sim.scenario import load_scenario
from tests.conftest import run_async
from tests.runtime.rig import Rig

NAMES = ["mg1", "mg2", "mg3"]


def test_agent_every_names_known_agents_and_whole_steps() -> None:
    assert agent_every_steps({"mg2": 3}, names=NAMES) == {"mg1": 1, "mg2": 3, "mg3": 1}
    assert agent_every_steps({}, names=NAMES) == {"mg1": 1, "mg2": 1, "mg3": 1}
    with pytest.raises(ConfigError, match=r"unknown agents \['mg7'\]"):
        agent_every_steps({"mg7": 2}, names=NAMES)
    with pytest.raises(ConfigError, match="at least 1"):
        agent_every_steps({"mg2": 0}, names=NAMES)


@pytest.mark.parametrize(("argv", "says"), [
    (["--agent-every", "mg2=3"], "needs --mode realtime"),
    (["--mode", "realtime", "--agent-every", "mg9=3"], "unknown agents ['mg9']"),
    (["--mode", "realtime", "--agent-every", "mg2=0"], "--agent-every"),
    (["--mode", "realtime", "--agent-every", "mg2"], "not AGENT=N"),
])
def test_sil_says_a_bad_agent_every_in_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], says: str) -> None:
    from heron_edge.cli import main

    try:
        code = main(["sil", *argv])
    except SystemExit as exc:  # argparse's own usage error
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and says in err, err


def test_the_gateway_config_carries_the_agents_period(tmp_path: Path) -> None:
    scenario = load_scenario("ieee34_3x13")
    endpoints = {mg.name: {role: {"host": "127.0.0.1", "port": 1502 + i, "unit_id": 1}
                           for i, role in enumerate(("battery", "generator", "pv", "wind", "meter"))}
                 for mg in scenario.microgrids}
    slow = agent_config(scenario, 1, site="s", broker_url="mqtt://127.0.0.1:1883", endpoints=endpoints,
                        workdir=tmp_path, every_steps=3)
    default = agent_config(scenario, 0, site="s", broker_url="mqtt://127.0.0.1:1883", endpoints=endpoints,
                           workdir=tmp_path)
    assert "every_steps" not in default["cycle"]  # unchanged for everyone else
    assert parse_gateway_config(slow).cycle.every_steps == 3
    assert parse_gateway_config(default).cycle.every_steps == 1


def _steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.mqtt
@pytest.mark.modbus
def test_a_slower_agent_runs_every_third_step_of_a_real_time_plant(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    async def scenario() -> dict[str, list[int]]:
        rig = Rig(mosquitto.url, tmp_path, steps=9, period_s=0.5, step_timeout_s=0.2, upstream_timeout_s=5.0)
        rig.runtime.mode = "realtime"  # the plant announces a step every period whoever is done (SIL --mode realtime)
        async with rig:
            gateway = rig.gateways["mg2"]  # built by agent_config; nothing has run yet: make it the slower one
            gateway.config = gateway.config.model_copy(
                update={"cycle": gateway.config.cycle.model_copy(update={"every_steps": 3})})
            assert rig.done is not None
            await rig.done
        return {name: _steps(tmp_path / f"journal-{name}.jsonl") for name in NAMES}

    steps = run_async(scenario(), timeout=90)
    slow = steps["mg2"]
    assert len(slow) >= 2, steps
    assert all(b - a >= 3 for a, b in itertools.pairwise(slow)), slow  # never two cycles within its period
    assert all(len(steps[name]) > len(slow) for name in ("mg1", "mg3")), steps
