"""docs/policies.md runs: its commands (train -> bundle -> simulate -> SIL), its Python example and its gateway
``[policy]`` table (inserted into a gateway config and checked by ``heron-edge agent --check-config``)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import require_mosquitto

DOC = Path(__file__).resolve().parents[1] / "docs" / "policies.md"

pytestmark = [pytest.mark.slow, pytest.mark.mqtt, pytest.mark.modbus]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_document_runs_from_training_to_the_gateway_config(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    require_mosquitto()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    commands = [line[2:] for block in blocks("console") for line in block.splitlines() if line.startswith("$ ")]
    assert [c.split()[:2] for c in commands] == [["heron-edge", "train"], ["ls", "policy"],
                                                 ["heron-edge", "simulate"], ["heron-edge", "sil"]]
    for command in commands:
        argv = shlex.split(command)
        if argv[0] == "heron-edge":
            argv = [sys.executable, "-m", "heron_edge.cli", *argv[1:]]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
        if argv[0] == "ls":
            assert done.stdout.split() == ["manifest.json", "policy.onnx"]
        if "sil" in argv:
            assert "MATCH" in done.stdout and "MISMATCH" not in done.stdout
    # the Python example, in the same folder
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        (python,) = blocks("python")
        exec(compile(python, f"{DOC.name}[python]", "exec"), {})
    finally:
        os.chdir(cwd)
    # the gateway's [policy] table, pointed at the bundle, in a gateway config of this site
    (table,) = blocks("toml")
    policy = tomllib.loads(table)["policy"]
    assert policy["kind"] == "onnx"
    from heron_edge.runtime.sil import agent_config, to_toml
    from sim.scenario import load_scenario

    device = {"host": "127.0.0.1", "port": 1502, "unit_id": 1}
    config = agent_config(load_scenario("ieee34_3x13"), 0, site="campus", broker_url="mqtt://127.0.0.1:1883",
                          endpoints={"mg1": {"battery": device, "generator": device, "meter": device}},
                          workdir=tmp_path)
    config["policy"] = {**policy, "path": str(tmp_path / "policy")}
    path = tmp_path / "gateway.toml"
    path.write_text(to_toml(config))
    done = subprocess.run([sys.executable, "-m", "heron_edge.cli", "agent", "--config", str(path), "--check-config"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
