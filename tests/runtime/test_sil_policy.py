"""A policy bundle on gateways: ``[policy] kind = "onnx"``; the manifest checked at start (a mismatch is one line,
exit 2); ``cmd/action`` from an external policy service applied when fresh, the gateway's own policy otherwise (both
counted); ``heron-edge train`` -> ``heron-edge sil --policy DIR`` matches the centralized run, and every journal row
replays exactly through the bundle."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from heron_edge.brokers import MqttBroker
from heron_edge.messages import ActionBody, ClockBody, agent_topic, command_topic, decode, encode, make_envelope
from heron_edge.observations import Ratings
from heron_edge.policies.bundle import load_bundle
from heron_edge.runtime.mosquitto import MosquittoProcess
from tests.conftest import require_mosquitto, run_async
from tests.runtime.rig import OPERATOR, SITE, Rig, wait_for

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "heron_edge.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A bundle of a small untrained network on local observations, no protocol (export only: fast)."""
    import torch

    from heron_edge import MultiAgentMicrogrids
    from heron_edge.policies.bundle import TrainingSpec
    from heron_edge.training.export import export_bundle

    env = MultiAgentMicrogrids({"observation": "local", "normalize": True})
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(env.layout.size, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    directory = tmp_path_factory.mktemp("bundle")
    export_bundle(net, env, directory, training=TrainingSpec(library="torch", library_version=torch.__version__,
                                                              algorithm="untrained", steps=0))
    env.close()
    return directory


def test_gateway_refuses_a_bundle_that_does_not_fit_in_one_line(bundle: Path, tmp_path: Path) -> None:
    from heron_edge.runtime.config import parse_gateway_config
    from heron_edge.runtime.gateway import make_policy
    from heron_edge.runtime.sil import agent_config, to_toml
    from sim.scenario import load_scenario

    scenario = load_scenario("ieee34_3x13")
    device = {"host": "127.0.0.1", "port": 1502, "unit_id": 1}
    endpoints = {"mg1": {"battery": device, "meter": {**device, "unit_id": 2}}}
    for protocols, code in ((None, 0), (["setpoint"], 2), (["price_signal"], 2)):
        config = agent_config(scenario, 0, site="t", broker_url="mqtt://127.0.0.1:1883", endpoints=endpoints,
                              workdir=tmp_path, protocols=protocols, policy=bundle)
        config["generator_p_max_mw"] = 0.0  # no generator device here
        for mg in config["coordination"]["microgrids"][:1]:
            mg["generator"]["p_max_mw"] = 0.0
        path = tmp_path / f"gateway-{protocols}.toml"
        path.write_text(to_toml(config))
        done = cli("agent", "--config", str(path), "--check-config")
        assert done.returncode == code, done.stderr
        if code == 0:
            policy = make_policy(parse_gateway_config(config))
            assert policy.act(np.zeros(25, np.float32)).shape == (4,)
            continue
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and f"policy.path {bundle}: policy bundle" in lines[0], done.stderr
        assert ("reads 25 observation entries; gateway mg1 gives 26" if protocols == ["setpoint"] else
                "trained with protocols none; gateway mg1 runs ['price_signal']") in lines[0]


@pytest.mark.mqtt
@pytest.mark.modbus
@pytest.mark.slow
def test_gateway_runs_the_bundle_and_applies_fresh_external_actions(mosquitto: MosquittoProcess, tmp_path: Path,
                                                                    bundle: Path) -> None:
    """mg1 gets an external action for every other announced step; the others decide with the bundle. Every journal
    row: an external step holds the sent action, a policy step the bundle's action for the logged observation."""
    sent: dict[int, list[float]] = {}

    async def scenario() -> None:
        async with Rig(mosquitto.url, tmp_path, steps=10, policy={"kind": "onnx", "path": str(bundle)}) as rig:
            service = MqttBroker(mosquitto.url, client_id="policy-service")
            await service.connect()
            clock = await service.subscribe(agent_topic(SITE, "plant", "clock"))

            async def serve() -> None:
                while True:
                    delivery = await clock.get(timeout=30)
                    body = decode(delivery.payload).body
                    if isinstance(body, ClockBody) and body.step % 2 == 0 and body.step not in sent:
                        action = [0.5, 0.25, 0.0, 0.0]
                        sent[body.step] = action
                        await service.publish(command_topic(SITE, "mg1", "action"), encode(make_envelope(
                            OPERATOR, ActionBody(values=action), step=body.step, recipient="mg1", ttl_s=30)))

            server = asyncio.ensure_future(serve())
            assert rig.done is not None
            await asyncio.wait_for(asyncio.shield(rig.done), 60)
            server.cancel()
            await service.close()
            await wait_for(lambda: all(g.stats.cycles >= 10 for g in rig.gateways.values()), 10, "10 cycles")
            g = rig.gateways["mg1"]
            assert g.stats.action_external >= 3 and g.stats.action_policy >= 3
            assert g.counters()["action_external"] == g.stats.action_external
            assert rig.gateways["mg2"].stats.action_external == 0

    run_async(scenario(), timeout=120)
    policy = load_bundle(bundle).policy(Ratings(0.5, 0.66))
    external = 0
    for name in ("mg1", "mg2", "mg3"):
        rows = [json.loads(line) for line in (tmp_path / f"journal-{name}.jsonl").read_text().splitlines()]
        assert len(rows) >= 10
        for row in rows:
            if row["failsafe"]:
                continue
            if row["action_source"] == "external":
                external += 1
                assert name == "mg1" and row["action"] == sent[row["step"]]
            else:
                expected = policy.act(np.array(row["observation"], dtype=np.float32))
                assert row["action"] == expected.astype(np.float64).tolist(), (name, row["step"])
    assert external >= 3


@pytest.mark.mqtt
@pytest.mark.modbus
@pytest.mark.slow
def test_train_then_sil_with_the_trained_bundle_matches(tmp_path: Path) -> None:
    """The CLI path a user takes: a (tiny) training run, then the SIL rig with its bundle on every gateway."""
    require_mosquitto()
    out = tmp_path / "policy"
    done = cli("train", "--out", str(out), "--steps", "1200", "--eval-every", "1200")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "held-out 2024 days" in done.stdout and f"policy bundle: {out}" in done.stdout
    manifest = load_bundle(out).manifest
    assert manifest.training.library == "stable-baselines3" and manifest.layout.kind == "local"
    work = tmp_path / "sil"
    done = cli("sil", "--days", "1", "--policy", str(out), "--workdir", str(work), "--timeout-s", "90", timeout=200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "SIL vs centralized (24 vs 24 steps): MATCH" in done.stdout
    policy = load_bundle(out).policy(Ratings(0.5, 0.66))
    for name in ("mg1", "mg2", "mg3"):
        rows = [json.loads(line) for line in (work / f"journal-{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 24 and not any(r["failsafe"] for r in rows)
        for row in rows:  # the gateway ran exactly the bundle on what it read
            expected = policy.act(np.array(row["observation"], dtype=np.float32))
            assert row["action"] == expected.astype(np.float64).tolist()
