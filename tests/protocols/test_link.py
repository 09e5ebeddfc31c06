"""Link: shared state across views, reset, close, and bounded receive."""
from __future__ import annotations

import asyncio
import time

import pytest

from heron_edge.brokers import InMemoryBroker
from heron_edge.errors import ConfigError
from heron_edge.messages import PriceBody, make_envelope
from heron_edge.protocols import Link
from tests.conftest import run_async


def test_views_share_state_and_reset_forgets_queued_messages() -> None:
    async def main() -> None:
        async with InMemoryBroker() as broker:
            link = Link(broker, site="s", agent_id="a", timeout_s=0.05)
            await link.subscribe("heron/s/op/price")
            view = link.at(4)
            assert view.step == 4 and link.step == 0 and view.stats is link.stats and view.memory is link.memory
            await broker.publish("heron/s/op/price", make_envelope("op", PriceBody(price_usd_per_mwh=1.0), step=4))
            link.reset(step=4)  # the queued message of the old run is dropped
            t0 = time.perf_counter()
            got = await link.receive("heron/s/op/price", PriceBody, deadline=link.deadline())
            assert got is None and time.perf_counter() - t0 < 0.5
            await broker.publish("heron/s/op/price", make_envelope("op", PriceBody(price_usd_per_mwh=2.0), step=5))
            got = await view.at(5).receive("heron/s/op/price", PriceBody, deadline=view.deadline())
            assert got is not None and got.body.price_usd_per_mwh == 2.0 and link.stats.received == 1
            await view.close()
            await link.close()  # idempotent, and the view's close reached the shared subscriptions
            assert broker._filters == {}

    run_async(main())


def test_a_message_for_a_later_step_waits_for_that_step() -> None:
    async def main() -> None:
        async with InMemoryBroker() as broker:
            link = Link(broker, site="s", agent_id="a", step=1, timeout_s=0.05)
            await link.subscribe("heron/s/op/price")
            await broker.publish("heron/s/op/price", make_envelope("op", PriceBody(price_usd_per_mwh=3.0), step=2))
            assert await link.receive("heron/s/op/price", PriceBody, deadline=link.deadline()) is None
            link.step = 2
            got = await link.receive("heron/s/op/price", PriceBody, deadline=link.deadline())
            assert got is not None and got.step == 2

    run_async(main())


def test_invalid_link_parameters() -> None:
    with pytest.raises(ConfigError):
        Link(InMemoryBroker(), site="s", agent_id="a", timeout_s=0.0)
    with pytest.raises(ConfigError):
        Link(InMemoryBroker(), site="s", agent_id="a", step=-1)


def test_a_far_future_step_is_rejected_and_never_waited_for() -> None:
    async def main() -> None:
        async with InMemoryBroker() as broker:
            link = Link(broker, site="s", agent_id="a", step=10, timeout_s=0.05, step_window=3)
            topic = "heron/s/op/price"
            await link.subscribe(topic)
            for step in (13, 14, 10**9):  # 13 is inside the window and kept; the others are refused
                await broker.publish(topic, make_envelope("op", PriceBody(price_usd_per_mwh=float(step % 1000)), step=step))
            assert await link.receive(topic, PriceBody, deadline=link.deadline()) is None
            assert link.stats.rejected == {"bounds": 2}
            link.step = 13
            got = await link.receive(topic, PriceBody, deadline=link.deadline())
            assert got is not None and got.body.price_usd_per_mwh == 13.0

    run_async(main())


def test_receive_waits_on_several_filters_and_binds_each_sender_to_its_topic() -> None:
    async def main() -> None:
        async with InMemoryBroker() as broker:
            link = Link(broker, site="s", agent_id="a", timeout_s=1.0)
            topics = ("heron/s/b/price", "heron/s/c/price")
            got = []

            async def later() -> None:
                await asyncio.sleep(0.01)
                await broker.publish(topics[1], make_envelope("b", PriceBody(price_usd_per_mwh=1.0), step=0))  # forged
                await broker.publish(topics[1], make_envelope("c", PriceBody(price_usd_per_mwh=2.0), step=0))

            await link.subscribe(topics[0])
            await link.subscribe(topics[1])
            task = asyncio.ensure_future(later())
            env = await link.receive(topics, PriceBody, deadline=link.deadline())
            await task
            got.append(env)
            assert env is not None and env.sender == "c" and link.stats.rejected == {"sender": 1}

    run_async(main())
