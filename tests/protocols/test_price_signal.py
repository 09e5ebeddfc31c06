"""PriceSignalProtocol: the formula, both forms agree, loss -> last price."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heron_edge.brokers import InMemoryBroker
from heron_edge.errors import ActionError, ConfigError
from heron_edge.messages import PriceBody, agent_topic, make_envelope
from heron_edge.protocols import Link, PriceSignal, PriceSignalProtocol, ReceivedPrice
from tests.conftest import run_async
from tests.protocols.conftest import Transport

MGS = ("mg1", "mg2", "mg3")


def test_congestion_adder_formula() -> None:
    proto = PriceSignalProtocol({"congestion_threshold_pu": 0.8, "congestion_adder_usd_per_mwh": 50.0})
    assert proto.congestion_adder(np.array([0.0, 0.8, 0.9, 1.0, 1.2])).tolist() == pytest.approx([0, 0, 25, 50, 100])
    signal = proto.price(40.0, 0.9)
    assert signal == PriceSignal(40.0, pytest.approx(25.0)) and signal.total_usd_per_mwh == pytest.approx(65.0)
    assert PriceSignalProtocol({"congestion_adder_usd_per_mwh": 0.0}).price(40.0, 1.5).total_usd_per_mwh == 40.0
    assert PriceSignalProtocol().config.congestion_adder_usd_per_mwh == 50.0  # the default, defined once
    with pytest.raises(ActionError):
        proto.price(float("nan"))
    with pytest.raises(ConfigError):
        PriceSignalProtocol({"congestion_threshold_pu": 1.0})


def test_distributed_price_equals_direct_access(transport: Transport) -> None:
    proto = PriceSignalProtocol({"congestion_adder_usd_per_mwh": 30.0})
    hours = [(31.5, 0.5), (55.25, 0.95), (-3.0, 1.1)]

    async def main() -> list[list[ReceivedPrice]]:
        async with transport.links(("operator", *MGS)) as links:
            await asyncio.gather(*(proto.prepare(links[m], "microgrid") for m in MGS))
            out = []
            for step, (price, loading) in enumerate(hours):
                for link in links.values():
                    link.step = step
                _, *got = await asyncio.gather(proto.operator(links["operator"], price, loading),
                                               *(proto.receive(links[m]) for m in MGS))
                out.append(got)
            return out

    for (price, loading), got in zip(hours, run_async(main())):
        assert all(r.source == "message" and r.signal == proto.price(price, loading) for r in got)


def test_lost_price_falls_back_to_the_last_price_and_never_hangs() -> None:
    proto = PriceSignalProtocol({"fallback_price_usd_per_mwh": 99.0})

    async def main() -> list[ReceivedPrice]:
        async with InMemoryBroker() as broker:
            op = Link(broker, site="s", agent_id="operator")
            mg = Link(broker, site="s", agent_id="mg1", timeout_s=0.05)
            bare = Link(broker, site="s", agent_id="mg2", timeout_s=0.05)
            await proto.prepare(mg, "microgrid")
            before = await proto.receive(mg)  # nothing ever received: the configured fallback
            mg.step = op.step = 1
            await asyncio.gather(proto.operator(op, 42.0), proto.receive(mg))
            mg.step = 2  # lost
            lost = await proto.receive(mg)
            await broker.publish(agent_topic("s", "operator", "price"), b'{"sender":"operator","step":3,"body":{"kind":"price"}}')
            mg.step = 3
            malformed = await proto.receive(mg)
            none = await PriceSignalProtocol().receive(bare)
            return [before, lost, malformed, none, mg.stats.rejected["schema"]]  # type: ignore[list-item]

    before, lost, malformed, none, schema = run_async(main())
    assert before == ReceivedPrice(PriceSignal(99.0), "fallback", None)
    assert lost == ReceivedPrice(PriceSignal(42.0), "last", 1)
    assert malformed == ReceivedPrice(PriceSignal(42.0), "last", 1) and schema == 1
    assert none == ReceivedPrice(None, "none", None)


def test_a_price_from_someone_else_is_ignored() -> None:
    proto = PriceSignalProtocol()

    async def main() -> tuple[ReceivedPrice, int]:
        async with InMemoryBroker() as broker:
            mg = Link(broker, site="s", agent_id="mg1", timeout_s=0.05)
            await proto.prepare(mg, "microgrid")
            # on the operator's own topic, signed by mg2: the envelope's sender is not the topic's
            await broker.publish(agent_topic("s", "operator", "price"), make_envelope("mg2", PriceBody(price_usd_per_mwh=1.0), step=0))
            await broker.publish(agent_topic("s", "mg2", "price"), make_envelope("mg2", PriceBody(price_usd_per_mwh=1.0), step=0))
            return await proto.receive(mg), mg.stats.rejected["sender"]

    got, rejected = run_async(main())
    assert got.source == "none" and rejected == 1  # mg2's own price topic is not even heard


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 5.0), st.floats(-500.0, 2000.0), st.floats(0.0, 0.95), st.floats(0.0, 500.0))
def test_scalar_price_and_vectorised_adder_agree(loading: float, hourly: float, threshold: float, adder: float) -> None:
    proto = PriceSignalProtocol({"congestion_threshold_pu": threshold, "congestion_adder_usd_per_mwh": adder})
    signal = proto.price(hourly, loading)
    assert signal.price_usd_per_mwh == hourly
    assert signal.congestion_adder_usd_per_mwh == pytest.approx(float(proto.congestion_adder(np.array([loading]))[0]))
