"""MqttBroker beyond the shared contract: reconnect, last will, TCP_NODELAY, failure modes."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from heron_edge.brokers import MqttBroker, TlsOptions
from heron_edge.brokers.base import MAX_PACKET_BYTES
from heron_edge.errors import BrokerError, ConfigError
from heron_edge.messages import StatusBody, agent_filter, agent_topic, decode, encode, make_envelope
from heron_edge.runtime.mosquitto import MosquittoProcess, running_mosquitto
from tests.conftest import require_mosquitto, run_async

pytestmark = pytest.mark.mqtt


def nodelay(broker: MqttBroker) -> int:
    sock = broker._client.socket()  # the adapter's own socket: white-box check of the Nagle fix
    assert isinstance(sock, socket.socket)
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


async def wait_until(predicate: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.01)


def test_tcp_nodelay_is_set_on_the_client_socket(mosquitto: MosquittoProcess) -> None:
    async def main() -> None:
        async with MqttBroker(mosquitto.url) as broker:
            assert nodelay(broker) != 0

    run_async(main())


def test_reconnects_after_broker_restart_and_restores_subscriptions(mosquitto: MosquittoProcess) -> None:
    async def main() -> None:
        broker = MqttBroker(mosquitto.url, reconnect_min_delay_s=0.05, reconnect_max_delay_s=0.5, request_timeout_s=5)
        async with broker:
            sub = await broker.subscribe("plant/+/setpoint")
            await broker.publish("plant/a/setpoint", b"before")
            assert (await sub.get(timeout=5)).payload == b"before"
            waiting = asyncio.ensure_future(sub.get(timeout=20))  # a consumer rides through the outage

            mosquitto.kill()
            await wait_until(lambda: not broker.connected)
            with pytest.raises(BrokerError, match="connection was lost"):
                await broker.publish("plant/a/setpoint", b"lost")
            await asyncio.sleep(0.3)  # a few failed attempts against the closed port
            mosquitto.start()
            await broker.wait_connected(timeout=15)
            assert broker.reconnects == 1
            assert nodelay(broker) != 0  # the new socket too

            async with MqttBroker(mosquitto.url) as other:  # someone else publishes after the restart
                await other.publish("plant/b/setpoint", b"after")
            assert (await waiting).payload == b"after"
            await broker.publish("plant/a/setpoint", b"again")
            assert (await sub.get(timeout=5)).payload == b"again"
            assert sub.dropped == 0

    run_async(main(), timeout=60)


def test_gives_up_after_max_attempts_and_subscriptions_raise(mosquitto: MosquittoProcess) -> None:
    async def main() -> None:
        broker = MqttBroker(
            mosquitto.url, reconnect_min_delay_s=0.02, reconnect_max_delay_s=0.05, reconnect_max_attempts=2
        )
        async with broker:
            sub = await broker.subscribe("x/#")
            mosquitto.kill()
            with pytest.raises(BrokerError, match="gave up|for good"):
                await sub.get(timeout=10)
            with pytest.raises(BrokerError, match="gave up"):
                await broker.publish("x/y", b"1")
            with pytest.raises(BrokerError):
                await broker.wait_connected(timeout=1)

    run_async(main())


_DYING_AGENT = textwrap.dedent(
    """
    import asyncio, sys
    from heron_edge.brokers import MqttBroker
    from heron_edge.messages import StatusBody, agent_topic, make_envelope

    async def main(url):
        topic = agent_topic("site", "ess1", "status")
        async with MqttBroker(url, status_topic=topic, keepalive=5) as broker:
            online = make_envelope("ess1", StatusBody(state="online"), step=0)
            await broker.publish(topic, online, retain=True)
            print("ready", flush=True)
            await asyncio.sleep(60)

    asyncio.run(main(sys.argv[1]))
    """
)


def test_last_will_marks_a_dead_client_offline(mosquitto: MosquittoProcess) -> None:
    async def main() -> None:
        async with MqttBroker(mosquitto.url) as watcher:
            statuses = await watcher.subscribe(agent_filter("site", "status"))
            agent = subprocess.Popen(
                [sys.executable, "-c", _DYING_AGENT, mosquitto.url], stdout=subprocess.DEVNULL
            )
            try:
                online = decode((await statuses.get(timeout=20)).payload)
                assert isinstance(online.body, StatusBody) and online.body.state == "online"
                os.kill(agent.pid, signal.SIGKILL)  # dies without DISCONNECT
                delivery = await statuses.get(timeout=10)
            finally:
                agent.kill()
                agent.wait(timeout=10)
            offline = decode(delivery.payload)
            assert delivery.topic == agent_topic("site", "ess1", "status")
            assert isinstance(offline.body, StatusBody) and offline.body.state == "offline"
            assert offline.sender == "ess1"
            late = await watcher.subscribe(agent_topic("site", "ess1", "status"))
            retained = await late.get(timeout=5)
            assert retained.retain and decode(retained.payload).body == offline.body

    run_async(main(), timeout=60)


def test_graceful_close_also_leaves_status_offline(mosquitto: MosquittoProcess) -> None:
    async def main() -> None:
        topic = agent_topic("site", "pv1", "status")
        async with MqttBroker(mosquitto.url) as watcher:
            sub = await watcher.subscribe(topic)
            async with MqttBroker(mosquitto.url, status_topic=topic) as agent:
                await agent.publish(topic, make_envelope("pv1", StatusBody(state="online"), step=0), retain=True)
            states = [decode((await sub.get(timeout=5)).payload).body for _ in range(2)]
            assert [s.state for s in states] == ["online", "offline"]  # type: ignore[union-attr]

    run_async(main())


def test_unreachable_broker_raises_broker_error_then_connects_once_up() -> None:
    require_mosquitto()
    process = MosquittoProcess()
    try:
        process.start()
        url = process.url
        process.stop()

        async def main() -> None:
            broker = MqttBroker(url, request_timeout_s=2)
            with pytest.raises(BrokerError, match="cannot connect"):
                await broker.connect()
            with pytest.raises(BrokerError, match="not connected"):
                await broker.subscribe("a/b")
            process.start()  # same port
            async with broker:
                sub = await broker.subscribe("a/b")
                await broker.publish("a/b", encode(make_envelope("x", StatusBody(state="online"), step=1)))
                assert decode((await sub.get(timeout=5)).payload).step == 1

        run_async(main())
    finally:
        process.cleanup()


def test_use_from_another_event_loop_is_refused(mosquitto: MosquittoProcess) -> None:
    broker = MqttBroker(mosquitto.url)

    async def first() -> None:
        await broker.connect()

    run_async(first())

    async def second() -> None:
        with pytest.raises(BrokerError, match="different event loop"):
            await broker.publish("a/b", b"x")
        await broker.close()  # still releases the socket
        assert broker._client.socket() is None or broker._client.socket().fileno() == -1
        with pytest.raises(BrokerError, match="closed"):
            await broker.publish("a/b", b"x")

    run_async(second())


def test_configuration_is_validated() -> None:
    for url in ["http://127.0.0.1:1883", "mqtt://user:pw@127.0.0.1:1883", "mqtt://:1883", "mqtt://h:1/path"]:
        with pytest.raises(ConfigError):
            MqttBroker(url)
    with pytest.raises(ConfigError, match="mqtts"):
        MqttBroker("mqtt://127.0.0.1:1883", tls=TlsOptions())
    with pytest.raises(ConfigError):
        MqttBroker("mqtt://127.0.0.1:1883", status_topic="heron/site/ess1/telemetry")
    with pytest.raises(ConfigError):
        MqttBroker("mqtts://127.0.0.1:8883", tls=TlsOptions(ca_file="/nonexistent/ca.pem"))
    with pytest.raises(ConfigError):
        MqttBroker("mqtt://127.0.0.1:1883", password="secret")
    tls = MqttBroker("mqtts://127.0.0.1", tls=TlsOptions(check_hostname=False))
    assert tls._client._ssl_context is not None  # paho got our verified context


def test_a_burst_to_another_client_is_not_dropped_by_the_broker(mosquitto: MosquittoProcess) -> None:
    """Mosquitto's default max_queued_messages (1000) silently drops QoS-1 messages to a subscriber
    that falls behind; the launcher raises it. 3000 concurrent publishes must all arrive."""

    async def main() -> None:
        async with MqttBroker(mosquitto.url) as publisher, MqttBroker(mosquitto.url) as subscriber:
            sub = await subscriber.subscribe("burst/+")
            await asyncio.gather(*(publisher.publish(f"burst/{i % 5}", str(i).encode()) for i in range(3000)))
            await publisher.publish("burst/end", b"end")
            got = []
            while (delivery := await sub.get(timeout=10)).topic != "burst/end":
                got.append(delivery)
            assert len(got) == 3000 and sub.dropped == 0
            for t in range(5):
                seq = [int(d.payload) for d in got if d.topic == f"burst/{t}"]
                assert seq == sorted(seq)

    run_async(main())


def test_fan_out_through_mosquitto_to_separate_clients(mosquitto: MosquittoProcess) -> None:
    """One publisher, five subscriber connections with exact and wildcard filters: each gets every
    message once, in order, through the broker (not a local short cut)."""
    filters = ["fan/site/a/telemetry", "fan/site/+/telemetry", "fan/#", "fan/site/a/#", "fan/+/+/telemetry"]

    async def main() -> list[list[bytes]]:
        publisher = MqttBroker(mosquitto.url, client_id="fan-pub")
        subscribers = [MqttBroker(mosquitto.url, client_id=f"fan-sub{i}") for i in range(len(filters))]
        async with publisher:
            subs = []
            for broker, topic_filter in zip(subscribers, filters):
                await broker.connect()
                subs.append(await broker.subscribe(topic_filter))
            for i in range(20):
                await publisher.publish("fan/site/a/telemetry", str(i).encode())
            await publisher.publish("fan/site/b/status", b"not for the exact ones")
            got = [[(await sub.get(timeout=5)).payload for _ in range(20)] for sub in subs]
            await asyncio.sleep(0.2)
            extra = [[d.topic for d in sub.drain()] for sub in subs]
            for broker in subscribers:
                await broker.close()
        assert extra == [[], [], ["fan/site/b/status"], [], []]
        return got

    expected = [str(i).encode() for i in range(20)]
    assert run_async(main(), timeout=30) == [expected] * len(filters)


def test_publish_refuses_a_packet_over_the_limit(mosquitto: MosquittoProcess) -> None:
    """Up to MAX_PACKET_BYTES goes through the launcher's broker (same limit); one byte more is refused locally."""

    async def main() -> None:
        async with MqttBroker(mosquitto.url) as publisher, MqttBroker(mosquitto.url) as subscriber:
            sub = await subscriber.subscribe("big/+")
            largest = MAX_PACKET_BYTES - 14  # QoS-1 PUBLISH on "big/t": 1 + 3 (length) + 2 + 5 + 2 + 1 + payload
            with pytest.raises(ValueError, match=f"over the limit of {MAX_PACKET_BYTES} bytes"):
                await publisher.publish("big/t", bytes(largest + 1))
            await publisher.publish("big/t", bytes(largest))
            assert len((await sub.get(timeout=5)).payload) == largest
            assert publisher.connected and publisher.published == 1 and subscriber.oversized == 0

    run_async(main())


def test_oversized_payloads_never_reach_a_subscription() -> None:
    """Against a broker with a larger max_packet_size: the broker honours the Maximum Packet Size our CONNECT
    announces (1 MB is never sent to us), and a payload just over MAX_PACKET_BYTES is dropped and counted."""
    require_mosquitto()
    from tests.security.conftest import raw_client

    async def main(proc: MosquittoProcess) -> None:
        async with MqttBroker(proc.url) as victim, raw_client(proc.port, client_id="flood") as flood:
            sub = await victim.subscribe("big/+")
            for size in (MAX_PACKET_BYTES + 100, 1_000_000):
                info = flood.client.publish("big/t", bytes(size), qos=1)
                await asyncio.to_thread(info.wait_for_publish, 10)  # the broker took it
            flood.client.publish("big/end", b"sentinel", qos=1)  # one publisher, one subscriber: in order
            delivery = await sub.get(timeout=5)
            assert (delivery.topic, delivery.payload) == ("big/end", b"sentinel")
            assert len(sub) == 0 and sub.dropped == 0
            assert victim.oversized == 1  # the first; the broker kept the second from us
            assert victim.connected and victim.reconnects == 0

    with running_mosquitto(max_packet_bytes=4 * 1024 * 1024) as proc:
        run_async(main(proc))
