"""The gateway under faults, in a real SIL rig (Mosquitto process, Modbus sockets, one loop):
broker killed and restarted, a Modbus device stopped, malformed and forged commands."""
from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path

import pytest

from heron_edge.brokers import MqttBroker
from heron_edge.messages import (
    SetpointBody,
    StatusBody,
    TelemetryBody,
    agent_filter,
    agent_topic,
    command_topic,
    decode,
    encode,
    make_envelope,
)
from heron_edge.runtime.mosquitto import MosquittoProcess
from tests.conftest import run_async
from tests.runtime.rig import OPERATOR, SITE, Rig, wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.modbus, pytest.mark.slow]


def test_broker_killed_and_restarted(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    """Failsafe within two cycles of the kill; reconnect; every telemetry record arrives, in order."""
    period = 0.3

    async def scenario() -> None:
        logger = MqttBroker(mosquitto.url, client_id="logger", reconnect_min_delay_s=0.01, reconnect_max_delay_s=0.02)
        await logger.connect()
        telemetry = await logger.subscribe(agent_filter(SITE, "telemetry"), maxsize=100_000)
        async with Rig(mosquitto.url, tmp_path, steps=16, period_s=period, step_timeout_s=period) as rig:
            await wait_for(lambda: rig.steps_done >= 4, 20, "4 plant steps")
            killed_at = time.time()
            mosquitto.kill()
            await wait_for(lambda: all(g.failsafe.active for g in rig.gateways.values()), 5 * period, "failsafe")
            for name, g in rig.gateways.items():
                entered = g.failsafe.transitions[-1][0]
                assert entered - killed_at <= 2 * period + 0.1, (name, entered - killed_at)
                assert "broker" in g.failsafe.reasons
            await asyncio.sleep(4 * period)  # failsafe cycles queue telemetry in the outbox meanwhile
            assert all(len(g.outbox) > 0 for g in rig.gateways.values())
            mosquitto.start()
            await wait_for(lambda: logger.connected, 5, "logger reconnected")
            assert rig.done is not None
            await asyncio.wait_for(asyncio.shield(rig.done), 60)
            await wait_for(lambda: all(len(g.outbox) == 0 for g in rig.gateways.values()), 10, "outboxes flushed")
            await wait_for(lambda: all(not g.failsafe.active for g in rig.gateways.values()), 10, "failsafe left")
            await asyncio.sleep(0.5)  # the last flushed records reach the logger
            received: dict[str, list[tuple[float, str]]] = defaultdict(list)
            for delivery in telemetry.drain():
                env = decode(delivery.payload)
                assert isinstance(env.body, TelemetryBody)
                received[env.sender].append((env.ts, env.id))
            for name, g in rig.gateways.items():
                ids = [i for _, i in received[name]]
                distinct = list(dict.fromkeys(ids))  # QoS 1: a record in flight at the kill may come twice
                assert len(distinct) == g.counters()["telemetry"], name
                first = {i: ts for ts, i in reversed(received[name])}
                assert [first[i] for i in distinct] == sorted(first[i] for i in distinct), f"{name}: out of order"
                assert g.counters()["outbox_sent"] >= 4 and g.outbox.overflow == 0
                assert g.raw_broker.reconnects >= 1
            assert rig.steps_done == 16
        await logger.close()

    run_async(scenario(), timeout=90)


def test_modbus_device_stopped_then_back(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    """A stopped battery emulator: stale values, failsafe (status says why), the rig keeps stepping; recovery after restart."""

    async def scenario() -> None:
        async with Rig(mosquitto.url, tmp_path, steps=40) as rig:
            g = rig.gateways["mg1"]
            await wait_for(lambda: rig.steps_done >= 3, 20, "3 plant steps")
            battery = rig.runtime.microgrids["mg1"].emulators["battery"]
            await battery.stop()
            await wait_for(lambda: g.failsafe.active, 5, "mg1 failsafe")
            assert "device" in g.failsafe.reasons and "battery" in g.devices.stale
            steps_at_failure = rig.steps_done
            await wait_for(lambda: rig.steps_done >= steps_at_failure + 3, 20, "steps during the outage")
            status = json.loads(Path(g.config.status_file or "").read_text())
            assert status["state"] == "failsafe" and "battery" in status["detail"]
            assert status["counters"]["read_failed_battery"] >= 1
            assert not rig.gateways["mg2"].failsafe.active  # the others are not affected
            # in failsafe, mg1's generator and renewables got the safe commands (battery unreachable)
            assert rig.runtime.devices.request.generator_mw[0] == 0.0
            await battery.start()
            await wait_for(lambda: not g.failsafe.active, 10, "mg1 recovered")
            assert g.devices.stale == {}
            assert rig.done is not None
            await asyncio.wait_for(asyncio.shield(rig.done), 60)
            assert g.failsafe.entries == 1 and g.counters()["failsafe_cycles"] >= 3

    run_async(scenario(), timeout=90)


def test_malformed_and_forged_commands_rejected(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    """Garbage, a forged sender, another recipient, no expiry, expired: each rejected and counted; a valid setpoint applies."""

    async def scenario() -> None:
        async with Rig(mosquitto.url, tmp_path, steps=60) as rig:
            g = rig.gateways["mg1"]
            await wait_for(lambda: rig.steps_done >= 2, 20, "2 plant steps")
            attacker = MqttBroker(mosquitto.url, client_id="attacker")
            await attacker.connect()
            topic = command_topic(SITE, "mg1", "setpoint")
            body = SetpointBody(p_mw=-0.2)
            bad = [
                b"\x00not json",
                b'{"sender": "system_operator"}',
                encode(make_envelope("mg2", body, step=0, recipient="mg1", ttl_s=60)),  # forged sender
                encode(make_envelope(OPERATOR, body, step=0, recipient="mg3", ttl_s=60)),  # not for mg1
                encode(make_envelope(OPERATOR, body, step=0, recipient="mg1")),  # no expiry
                encode(make_envelope(OPERATOR, body, step=0, recipient="mg1", ttl_s=-1.0)),  # expired
                encode(make_envelope(OPERATOR, StatusBody(state="online"), step=0, recipient="mg1", ttl_s=60)),
            ]
            for payload in bad:
                await attacker.publish(topic, payload)
            await wait_for(lambda: g.counters().get("cmd_received", 0) >= len(bad), 10, "commands seen")
            assert g.counters()["cmd_accepted"] == 0
            rejected = g.rejections()["command"]
            for reason in ("not_json", "schema", "sender", "recipient", "no_expiry", "expired", "kind"):
                assert rejected.get(reason, 0) >= 1, (reason, rejected)
            assert g.counters().get("setpoint_applied", 0) == 0
            before = rig.steps_done
            await wait_for(lambda: rig.steps_done >= before + 2, 10, "still stepping")
            assert not g.failsafe.active
            await attacker.publish(topic, encode(make_envelope(OPERATOR, body, step=0, recipient="mg1", ttl_s=60)))
            await wait_for(lambda: g.counters().get("setpoint_applied", 0) >= 1, 10, "valid setpoint applied")
            assert g.counters()["cmd_accepted"] == 1
            # the retained status carries the counters
            statuses = await attacker.subscribe(agent_topic(SITE, "mg1", "status"))
            env = decode((await statuses.get(timeout=5)).payload)
            assert isinstance(env.body, StatusBody) and env.body.rejected["command"].get("sender", 0) >= 1
            assert env.body.cycle_ms is not None and env.body.cycle_ms > 0
            await attacker.close()

    run_async(scenario(), timeout=90)


def test_operator_gone_while_the_clock_runs_means_failsafe(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    """The plant keeps announcing (repeating the step the dead operator never finished): the clock alone
    must not keep the agents out of failsafe; no price for upstream_timeout_s does put them in it."""
    async def scenario() -> None:
        async with Rig(mosquitto.url, tmp_path, steps=50, upstream_timeout_s=1.0) as rig:
            await wait_for(lambda: rig.steps_done >= 3, 20, "3 plant steps")
            assert not any(g.failsafe.active for g in rig.gateways.values())
            rig.op_runtime.stop()  # the operator process dies; the plant repeats its announcement meanwhile
            took = await wait_for(lambda: all(g.failsafe.active for g in rig.gateways.values()), 10, "failsafe")
            assert took < 1.0 + 2.0  # the upstream timeout plus a couple of repeats
            for g in rig.gateways.values():
                assert "upstream" in g.failsafe.reasons and "broker" not in g.failsafe.reasons

    run_async(scenario(), timeout=60)
