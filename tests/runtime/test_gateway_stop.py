"""A clean stop of the gateway, and its file writes off the event loop.

SIGTERM to a real ``heron-edge agent`` process: its retained status ends ``offline`` / ``stopped``, stamped
after the signal, and the broker's last will ("connection lost", stamped at connect) is not fired. A
journal / status file whose directory vanished, or a broken outbox, is logged and counted, never raised.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from heron_edge.brokers import MqttBroker, Subscription
from heron_edge.messages import Envelope, StatusBody, agent_topic, decode
from heron_edge.runtime.config import parse_gateway_config
from heron_edge.runtime.gateway import Gateway
from heron_edge.runtime.mosquitto import MosquittoProcess
from heron_edge.runtime.outbox import Outbox
from tests.conftest import run_async

ROOT = Path(__file__).resolve().parents[2]
SITE = "stop"
AGENT = "mg1"


def _closed_port() -> int:
    """A loopback port nobody listens on (the devices are unreachable: the gateway runs in failsafe)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(broker_url: str, workdir: Path) -> dict[str, Any]:
    device = {"host": "127.0.0.1", "port": _closed_port(), "timeout_s": 0.2, "retries": 0}
    return {
        "agent_id": AGENT, "site": SITE, "peers": [AGENT], "battery_p_max_mw": 0.5,
        "status_file": str(workdir / "run" / "status.json"), "journal_file": str(workdir / "log" / "journal.jsonl"),
        "broker": {"url": broker_url, "reconnect_min_delay_s": 0.05, "reconnect_max_delay_s": 0.2},
        "devices": {"battery": device, "meter": device},
        "policy": {"cost_a_usd_per_mw2h": 0.0, "cost_b_usd_per_mwh": 100.0},
        "cycle": {"clock": "timer", "period_s": 0.3, "step_timeout_s": 0.1},
        "failsafe": {"upstream_timeout_s": 1.0},
        "outbox": {"path": str(workdir / "var" / "outbox.sqlite")},
    }


def _toml(data: dict[str, Any]) -> str:
    """Enough TOML for the config above: scalars at the top, then one table per nested mapping."""
    def value(v: Any) -> str:
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = [("", data)]
    while tables:
        name, table = tables.pop(0)
        if name:
            lines.append(f"[{name}]")
        for key, v in table.items():
            if isinstance(v, dict):
                tables.append((f"{name}.{key}" if name else key, v))
            else:
                lines.append(f"{key} = {value(v)}")
    return "\n".join(lines) + "\n"


async def _next_status(sub: Subscription, timeout: float) -> Envelope:
    envelope = decode((await sub.get(timeout=timeout)).payload)
    assert isinstance(envelope.body, StatusBody)
    return envelope


@pytest.mark.mqtt
def test_sigterm_leaves_a_fresh_offline_stopped_status(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    """SIGTERM: the last retained status is the gateway's own offline/stopped, stamped after the signal."""
    path = tmp_path / "gateway.toml"
    path.write_text(_toml(_config(mosquitto.url, tmp_path)))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    topic = agent_topic(SITE, AGENT, "status")

    async def scenario() -> None:
        async with MqttBroker(mosquitto.url, client_id="watcher") as watcher:
            live = await watcher.subscribe(topic)
            with open(tmp_path / "agent.log", "wb") as log:
                process = subprocess.Popen([sys.executable, "-m", "heron_edge.cli", "agent", "--config", str(path)],
                                           cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                first = await _next_status(live, timeout=30)  # a cycle ran: connected, publishing its status
                assert first.body.state in ("online", "failsafe")  # type: ignore[union-attr]
                signalled_at = time.time()
                process.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(process.wait, 30)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            assert code == 0, (tmp_path / "agent.log").read_text()
            seen = [first]
            while True:  # everything the watcher got until the agent was gone: no will after the final status
                try:
                    seen.append(await _next_status(live, timeout=0.5))
                except TimeoutError:
                    break
            last = seen[-1].body
            assert isinstance(last, StatusBody) and (last.state, last.detail) == ("offline", "stopped"), seen[-3:]
            async with MqttBroker(mosquitto.url, client_id="late") as late_client:  # what a newcomer is told
                retained = await _next_status(await late_client.subscribe(topic), timeout=5)
        body = retained.body
        assert isinstance(body, StatusBody) and body.state == "offline" and body.detail == "stopped"
        assert retained.sender == AGENT and retained.ts >= signalled_at, (retained.ts, signalled_at)
        assert body.counters.get("cycles", 0) >= 1
        log_text = (tmp_path / "agent.log").read_text()
        assert "Traceback" not in log_text, log_text

    run_async(scenario(), timeout=90)
    status = json.loads((tmp_path / "run" / "status.json").read_text())  # the status file says so too
    assert status["state"] == "offline" and status["detail"] == "stopped"
    assert (tmp_path / "log" / "journal.jsonl").read_text().count("\n") >= 1


def test_file_write_failures_are_counted_not_raised(tmp_path: Path) -> None:
    """The journal's and the status file's directories removed under a running gateway: the cycle goes on,
    each failure is counted; close() still waits for the queued writes and returns."""
    work = tmp_path / "w"
    data = _config(f"mqtt://127.0.0.1:{_closed_port()}", work)
    data["status_file"] = str(work / "status.json")
    data["journal_file"] = str(work / "journal.jsonl")
    data["outbox"]["path"] = str(tmp_path / "outbox.sqlite")
    work.mkdir()
    config = parse_gateway_config(data)

    async def scenario() -> Gateway:
        gateway = Gateway(config)
        await gateway.devices.open()
        await gateway.cycle(1)  # no broker, no devices: a failsafe cycle, journal and status written
        await gateway._journal_writer.drain()
        await gateway._status_writer.drain()
        assert (work / "journal.jsonl").read_text().count("\n") == 1 and (work / "status.json").exists()
        shutil.rmtree(work)
        await gateway.cycle(2)
        await gateway.cycle(3)
        await gateway.close()  # waits for the writes: the failures are counted by now
        return gateway

    gateway = run_async(scenario(), timeout=60)
    counters = gateway.counters()
    assert counters["journal_file_write_failed"] == 2 and counters["status_file_write_failed"] >= 1, counters
    assert counters["cycles"] == 3


def test_outbox_failures_are_counted_not_raised(tmp_path: Path) -> None:
    """put/flush run on the outbox's worker thread, in order; a broken database is counted, not raised."""
    box = Outbox(tmp_path / "o.sqlite")
    sent: list[bytes] = []

    async def publish(topic: str, payload: bytes) -> None:
        sent.append(payload)

    async def scenario() -> None:
        for i in range(250):
            assert await box.put("t", f"m{i}".encode())
        assert len(box) == 250
        assert await box.flush(publish) == 250 and len(box) == 0
        await box.aclose()
        assert not await box.put("t", b"late")  # the database is closed: counted, not raised
        assert await box.flush(publish) == 0

    run_async(scenario())
    assert sent == [f"m{i}".encode() for i in range(250)]
    assert box.failures == 1
    box.close()


def test_outbox_path_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    from heron_edge.errors import ConfigError

    with pytest.raises(ConfigError, match="outbox.path"):
        Outbox(tmp_path)  # a directory
