"""A live mutation test: during a real SIL run over Mosquitto, a plain paho client that none of our code
wrote takes one message of each kind it sees on the site and republishes mutations of it (every numeric
field at +/-1e308, every step at -1, the year's end and 10**30; a forged clock at the year's end stays
retained). Every process must survive, the run must complete and still match the centralized run, and
the processes must say (in their logs and counters) that they rejected what they got.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from heron_edge.runtime.mosquitto import MosquittoProcess

pytestmark = [pytest.mark.mqtt, pytest.mark.modbus, pytest.mark.slow]

SITE = "mut"
YEAR_END = 365 * 24  # the first step past the 2023 profile year of the default (hourly) scenario
STEPS = (-1, YEAR_END, 10**30)
EXTREMES = (1e308, -1e308)


def _numeric_paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every (path, value) of a number (not a bool) inside a decoded JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _numeric_paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _numeric_paths(value, (*path, i))
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, node


def _with(doc: Any, path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``doc`` with ``path`` set to ``value`` and a fresh message id (no duplicate shortcut)."""
    out = json.loads(json.dumps(doc))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    out["id"] = secrets.token_hex(16)
    return out


def mutations(payload: bytes) -> list[bytes]:
    """The mutations of one envelope: each numeric field at +/-1e308, each step field at -1, the year's end
    and 10**30 (a clock's two step fields together too, so the pair stays consistent)."""
    doc = json.loads(payload)
    out = []
    for path, _ in _numeric_paths(doc):
        values = STEPS if path[-1] == "step" else EXTREMES
        out += [_with(doc, path, v) for v in values]
    if doc.get("body", {}).get("kind") == "clock":
        for step in STEPS:
            both = _with(doc, ("step",), step)
            both["body"]["step"] = step
            out.append(both)
    return [json.dumps(m).encode() for m in out]


def forged_clock(step: int) -> bytes:
    """A well-formed plant clock announcement of ``step`` (what killed the operator)."""
    return json.dumps({"id": secrets.token_hex(16), "sender": "plant", "recipient": None, "step": step,
                       "ts": 1.0e9, "expires": None, "body": {"kind": "clock", "step": step, "done": False}}).encode()


class Mutator:
    """A raw paho client on its own thread: takes the first message of each topic kind, republishes its mutations."""

    def __init__(self, mosquitto: MosquittoProcess) -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"mutator-{secrets.token_hex(4)}")
        self.kinds: dict[str, str] = {}  # kind -> the topic it was first seen on
        self.published = 0
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(f"heron/{SITE}/#", qos=0)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", mosquitto.port)

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        kind = "/".join(message.topic.split("/")[3:])  # status, telemetry, price, cmd/setpoint, ...
        if kind in self.kinds or message.retain:
            return
        self.kinds[kind] = message.topic
        for payload in mutations(message.payload):
            client.publish(message.topic, payload, qos=0)
            self.published += 1

    def __enter__(self) -> Mutator:
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise TimeoutError("the mutator's subscription was not acknowledged")
        # retained: every process that subscribes to the plant's clock gets it first, on every restart
        self.client.publish(f"heron/{SITE}/plant/clock", forged_clock(YEAR_END), qos=1, retain=True).wait_for_publish(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.parametrize("protocols", [("setpoint", "p2p_trading"), ("price_signal", "consensus")],
                         ids=lambda p: "+".join(p))
def test_mutated_messages_during_a_sil_run_are_rejected_and_the_run_still_matches(
        protocols: tuple[str, str], mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "heron_edge.cli", "sil", "--days", "1", "--workdir", str(tmp_path), "--timeout-s", "240",
            "--broker", mosquitto.url, "--site", SITE]
    for name in protocols:
        argv += ["--protocol", name]
    with Mutator(mosquitto) as mutator:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "SIL vs centralized (24 vs 24 steps): MATCH" in result.stdout, out
    expected = {"status", "telemetry", "price", "done", "clock"} | (
        {"cmd/setpoint", "market", "clearing"} if "setpoint" in protocols else {"meter", "consensus"})
    assert expected <= set(mutator.kinds), sorted(mutator.kinds)
    assert mutator.published >= 50
    logs = {p.name: p.read_text(errors="replace") for p in tmp_path.rglob("*.log")}
    assert logs, "sil keeps a log per process"
    for name, text in logs.items():  # every process survived: no traceback, and each one rejected something
        assert "Traceback" not in text, (name, text[-3000:])
    rejected = [name for name, text in logs.items() if "rejected" in text]
    assert any("operator" in name for name in rejected) and sum("mg" in name for name in rejected) == 3, \
        (rejected, sorted(logs))
