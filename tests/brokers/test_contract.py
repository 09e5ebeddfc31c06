"""The broker contract: one set of tests that every Broker must pass (in memory and over MQTT)."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from heron_edge.brokers import Broker, Delivery, InMemoryBroker, Subscription
from heron_edge.errors import BrokerError
from heron_edge.messages import PriceBody, decode, make_envelope
from tests.conftest import require_mosquitto, run_async

BrokerFactory = Callable[[], Broker]


@pytest.fixture(params=["memory", pytest.param("mqtt", marks=pytest.mark.mqtt)])
def make_broker(request: pytest.FixtureRequest) -> BrokerFactory:
    """A factory of unconnected brokers of one kind (MQTT ones all talk to one fresh Mosquitto)."""
    if request.param == "memory":
        return InMemoryBroker
    require_mosquitto()
    from heron_edge.brokers import MqttBroker

    process = request.getfixturevalue("mosquitto")
    return lambda: MqttBroker(process.url, request_timeout_s=5.0)


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def settle(broker: Broker, root: str) -> None:
    """Wait until everything published before now has been delivered (a marker round trip)."""
    marker = await broker.subscribe(f"{root}/__settle")
    token = uuid.uuid4().bytes
    await broker.publish(f"{root}/__settle", token)
    while (await marker.get(timeout=5.0)).payload != token:
        pass
    await broker.unsubscribe(marker)


def payloads(deliveries: list[Delivery]) -> list[bytes]:
    return [d.payload for d in deliveries]


def test_broker_satisfies_the_port(make_broker: BrokerFactory) -> None:
    assert isinstance(make_broker(), Broker)


def test_bytes_are_carried_verbatim_including_garbage(make_broker: BrokerFactory) -> None:
    async def main() -> None:
        async with make_broker() as broker:
            root = unique()
            sub = await broker.subscribe(f"{root}/x")
            garbage = b"\x00\xff not json {{ \xc3\x28"
            envelope = make_envelope("op", PriceBody(price_usd_per_mwh=42.5), step=7)
            await broker.publish(f"{root}/x", garbage)
            await broker.publish(f"{root}/x", envelope)
            await broker.publish(f"{root}/x", b"")
            first, second, third = [await sub.get(timeout=5.0) for _ in range(3)]
            assert first == Delivery(f"{root}/x", garbage, False)
            assert decode(second.payload) == envelope
            assert third.payload == b"" and type(third.payload) is bytes

    run_async(main())


def test_plus_wildcard_matches_exactly_one_level(make_broker: BrokerFactory) -> None:
    async def main() -> None:
        async with make_broker() as broker:
            root = unique()
            sub = await broker.subscribe(f"{root}/site/+/status")
            for topic in [
                f"{root}/site/a/status",
                f"{root}/site/a/telemetry",
                f"{root}/site/a/cmd/status",
                f"{root}/site//status",
                f"{root}/other/a/status",
                f"{root}/site/b/status",
            ]:
                await broker.publish(topic, topic.encode())
            await settle(broker, root)
            assert [d.topic for d in sub.drain()] == [
                f"{root}/site/a/status",
                f"{root}/site//status",
                f"{root}/site/b/status",
            ]

    run_async(main())


def test_hash_wildcard_matches_parent_and_all_levels_below(make_broker: BrokerFactory) -> None:
    async def main() -> None:
        async with make_broker() as broker:
            root = unique()
            sub = await broker.subscribe(f"{root}/bus/#")
            topics = [f"{root}/bus", f"{root}/bus/price", f"{root}/bus/a/b/c", f"{root}/busy", f"{root}/x/bus"]
            for topic in topics:
                await broker.publish(topic, b"1")
            await settle(broker, root)
            assert [d.topic for d in sub.drain()] == topics[:3]

    run_async(main())


def test_per_topic_order_is_kept(make_broker: BrokerFactory) -> None:
    async def main() -> None:
        async with make_broker() as broker:
            root = unique()
            sub = await broker.subscribe(f"{root}/+")
            for i in range(300):
                await broker.publish(f"{root}/{'ab'[i % 2]}", str(i).encode())
            await settle(broker, root)
            got = sub.drain()
            for name in "ab":
                seq = [int(d.payload) for d in got if d.topic == f"{root}/{name}"]
                assert seq == sorted(seq) and len(seq) == 150

    run_async(main())


def test_many_subscribers_each_get_one_copy(make_broker: BrokerFactory) -> None:
    async def main() -> None:
        async with make_broker() as broker:
            root = unique()
            filters = [f"{root}/a/b", f"{root}/a/b", f"{root}/+/b", f"{root}/#", f"{root}/a/#", f"{root}/c"]
            subs = [await broker.subscribe(f) for f in filters]
            await broker.publish(f"{root}/a/b", b"hello")
            await settle(broker, root)
            counts = [len([d for d in s.drain() if "__settle" not in d.topic]) for s in subs]  # '#' sees the marker too
            assert counts == [1, 1, 1, 1, 1, 0]  # each matching subscription exactly one copy, 'c' none

    run_async(main())


def test_unsubscribe_stops_deliveries_and_ends_iteration(make_broker: BrokerFactory) -> None:
    async def main() -> None:
        async with make_broker() as broker:
            root = unique()
            gone = await broker.subscribe(f"{root}/x")
            kept = await broker.subscribe(f"{root}/x")
            await broker.publish(f"{root}/x", b"1")
            await settle(broker, root)
            await broker.unsubscribe(gone)
            await broker.unsubscribe(gone)  # idempotent
            await broker.publish(f"{root}/x", b"2")
            await settle(broker, root)
            assert payloads([d async for d in gone]) == [b"1"]  # queued before, then the stream ends
            with pytest.raises(BrokerError):
                await gone.get(timeout=1.0)
            assert payloads(kept.drain()) == [b"1", b"2"]
            assert not gone.active and kept.active

    run_async(main())


def test_close_ends_subscriptions_and_rejects_use(make_broker: BrokerFactory) -> None:
    broker = make_broker()  # constructed outside any event loop

    async def main() -> Subscription:
        with pytest.raises(BrokerError, match="not connected"):
            await broker.publish("a/b", b"x")
        await broker.connect()
        await broker.connect()  # idempotent
        sub = await broker.subscribe("a/#")
        waiter = asyncio.ensure_future(sub.get(timeout=5.0))
        await asyncio.sleep(0.01)
        await broker.close()
        with pytest.raises(BrokerError):
            await waiter
        await broker.close()  # harmless
        with pytest.raises(BrokerError, match="closed"):
            await broker.publish("a/b", b"x")
        with pytest.raises(BrokerError, match="closed"):
            await broker.subscribe("a/#")
        with pytest.raises(BrokerError, match="closed"):
            await broker.connect()
        with pytest.raises(BrokerError):
            async for _ in sub:
                pass
        return sub

    run_async(main())


def test_retained_message_is_delivered_on_subscribe(make_broker: BrokerFactory) -> None:
    async def main() -> None:
        async with make_broker() as broker:
            root = unique()
            live = await broker.subscribe(f"{root}/+/status")
            await broker.publish(f"{root}/a/status", b"online", retain=True)
            await broker.publish(f"{root}/b/status", b"once", retain=True)
            await broker.publish(f"{root}/b/status", b"", retain=True)  # clears b's retained message
            await settle(broker, root)
            assert [(d.payload, d.retain) for d in live.drain()] == [(b"online", False), (b"once", False), (b"", False)]
            late = await broker.subscribe(f"{root}/+/status")
            first = await late.get(timeout=5.0)
            assert (first.topic, first.payload, first.retain) == (f"{root}/a/status", b"online", True)
            await settle(broker, root)
            assert late.drain() == []
            assert live.drain() == []  # a second subscription on the filter does not replay to the first

    run_async(main())


def test_full_queue_drops_and_counts_without_blocking(make_broker: BrokerFactory) -> None:
    async def main() -> None:
        async with make_broker() as broker:
            root = unique()
            small = await broker.subscribe(f"{root}/x", maxsize=3)
            big = await broker.subscribe(f"{root}/x")
            for i in range(10):
                await broker.publish(f"{root}/x", bytes([i]))
            await settle(broker, root)
            assert payloads(small.drain()) == [b"\x00", b"\x01", b"\x02"]
            assert small.dropped == 7
            assert len(big.drain()) == 10 and big.dropped == 0

    run_async(main())


def test_get_times_out_and_get_nowait_is_none_when_empty(make_broker: BrokerFactory) -> None:
    async def main() -> None:
        async with make_broker() as broker:
            sub = await broker.subscribe(f"{unique()}/x")
            assert sub.get_nowait() is None and sub.drain() == []
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(TimeoutError):
                await sub.get(timeout=0.05)
            assert 0.04 <= loop.time() - start < 1.0

    run_async(main())


def test_invalid_topics_and_filters_are_rejected(make_broker: BrokerFactory) -> None:
    async def main() -> None:
        async with make_broker() as broker:
            for bad in ["a/#/b", "a/b#", "a+/b", ""]:
                with pytest.raises(ValueError):
                    await broker.subscribe(bad)
            for bad in ["a/+", "a/#", ""]:
                with pytest.raises(ValueError):
                    await broker.publish(bad, b"x")
            with pytest.raises(TypeError):
                await broker.publish("a/b", "text is not bytes")  # type: ignore[arg-type]

    run_async(main())


def test_concurrent_consumers_share_a_loop(make_broker: BrokerFactory) -> None:
    async def main() -> None:
        async with make_broker() as broker:
            root = unique()
            subs = [await broker.subscribe(f"{root}/bus/clock") for _ in range(5)]
            consumers = [asyncio.ensure_future(s.get(timeout=5.0)) for s in subs]
            await asyncio.sleep(0)
            await broker.publish(f"{root}/bus/clock", b"tick")
            results: list[Any] = await asyncio.gather(*consumers)
            assert [r.payload for r in results] == [b"tick"] * 5

    run_async(main())


def test_concurrent_publishes_all_arrive_in_per_topic_order(make_broker: BrokerFactory) -> None:
    async def main() -> None:
        async with make_broker() as broker:
            root = unique()
            sub = await broker.subscribe(f"{root}/#")
            await asyncio.gather(*(broker.publish(f"{root}/{i % 4}", str(i).encode()) for i in range(1500)))
            await settle(broker, root)
            got = [d for d in sub.drain() if not d.topic.endswith("__settle")]
            assert len(got) == 1500 and sub.dropped == 0
            for t in range(4):
                seq = [int(d.payload) for d in got if d.topic == f"{root}/{t}"]
                assert seq == sorted(seq)

    run_async(main())


def test_large_payload_is_carried_verbatim(make_broker: BrokerFactory) -> None:
    async def main() -> None:
        async with make_broker() as broker:
            root = unique()
            sub = await broker.subscribe(f"{root}/big")
            big = bytes(range(256)) * 1000  # 250 KiB: under MAX_PACKET_BYTES with the topic and headers
            await broker.publish(f"{root}/big", big)
            assert (await sub.get(timeout=10.0)).payload == big

    run_async(main())
