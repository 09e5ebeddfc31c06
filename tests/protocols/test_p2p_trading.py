"""P2PTradingProtocol: the distributed market gives the same trades and price as one order book;
a silent participant is excluded after the order window; malformed orders are counted."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heron_edge.brokers import InMemoryBroker
from heron_edge.errors import ConfigError
from heron_edge.messages import ClearingBody, OrderBody, agent_topic, make_envelope
from heron_edge.protocols import Clearing, Confirmation, Link, Order, P2PTradingProtocol
from tests.conftest import run_async
from tests.protocols.conftest import Transport

MGS = ("mg1", "mg2", "mg3", "mg4")
STEPS = [  # (net need MW, limit price $/MWh) per microgrid, three steps
    ([1.2, -0.7, 0.5, -1.0], [60.0, 30.0, 45.5, 41.0]),
    ([0.0, 0.0, 0.3, -0.3], [10.0, 10.0, 20.0, 25.0]),  # spread below the fee: nothing clears
    ([-2.0, 0.75, 0.75, 1.0], [12.0, 80.0, 80.0, 15.0]),  # tie at 80 broken by id
]


async def _round(proto: P2PTradingProtocol, links: dict[str, Link], orders: list[Order],
                 participants: tuple[str, ...]) -> tuple[Clearing, list[Confirmation]]:
    by_id = {o.agent_id: o for o in orders}
    market, *confs = await asyncio.gather(
        proto.market(links["market"], participants),
        *(proto.participant(links[p], by_id.get(p)) for p in participants if p in links))
    return market, confs


def test_distributed_market_equals_the_single_order_book(transport: Transport) -> None:
    proto = P2PTradingProtocol({"fee_usd_per_mwh": 1.0})

    async def main() -> list[tuple[Clearing, list[Confirmation]]]:
        async with transport.links(("market", *MGS)) as links:
            await proto.prepare(links["market"], "market")
            await asyncio.gather(*(proto.prepare(links[m], "participant") for m in MGS))
            out = []
            for step, (net, limit) in enumerate(STEPS):
                for link in links.values():
                    link.step = step
                out.append(await _round(proto, links, proto.orders_from_net(MGS, np.array(net), np.array(limit)), MGS))
            return out

    results = run_async(main())
    for (net, limit), (market, confs) in zip(STEPS, results):
        expected = proto.clear(proto.orders_from_net(MGS, np.array(net), np.array(limit)))
        assert market == expected  # same trades, same price, nobody excluded
        for mg, conf in zip(MGS, confs):
            assert conf.clearing == expected and conf.trades == expected.trades_of(mg)
            assert conf.net_mw == pytest.approx(float(expected.net_mw([mg])[0]))
    assert results[0][0].volume_mw > 0 and results[1][0].trades == ()
    assert [t.buyer for t in results[2][0].trades][:2] == ["mg2", "mg3"]


def test_a_silent_participant_is_excluded_and_nobody_hangs() -> None:
    proto = P2PTradingProtocol({"order_window_s": 0.2})
    orders = [Order("mg1", "bid", 1.0, 50.0), Order("mg2", "ask", 0.6, 20.0), Order("mg3", "ask", 1.0, 10.0)]

    async def main() -> tuple[Clearing, list[Confirmation], float]:
        async with InMemoryBroker() as broker:
            links = {a: Link(broker, site="s", agent_id=a, timeout_s=0.2) for a in ("market", "mg1", "mg2")}
            for a, link in links.items():
                await proto.prepare(link, "market" if a == "market" else "participant")
            t0 = time.perf_counter()
            market, confs = await _round(proto, links, orders, ("mg1", "mg2", "mg3"))  # mg3 never answers
            return market, confs, time.perf_counter() - t0

    market, confs, elapsed = run_async(main(), timeout=10.0)
    assert 0.15 < elapsed < 1.0
    assert market.excluded == ("mg3",)
    assert market.trades == proto.clear(orders[:2]).trades  # cleared without the silent one
    assert all(c.clearing is not None and c.clearing.trades == market.trades for c in confs)


def test_a_participant_without_clearing_trades_nothing() -> None:
    proto = P2PTradingProtocol({"order_window_s": 0.05})

    async def main() -> tuple[Confirmation, float]:
        async with InMemoryBroker() as broker:
            link = Link(broker, site="s", agent_id="mg1", timeout_s=0.05)
            await proto.prepare(link, "participant")
            t0 = time.perf_counter()
            conf = await proto.participant(link, Order("mg1", "bid", 1.0, 50.0))  # no market running
            return conf, time.perf_counter() - t0

    conf, elapsed = run_async(main())
    assert conf.clearing is None and conf.trades == () and conf.net_mw == 0.0 and conf.cash_usd() == 0.0
    assert elapsed < 0.5


def test_malformed_and_foreign_market_messages_are_counted_not_fatal() -> None:
    proto = P2PTradingProtocol()

    async def main() -> tuple[Clearing, Confirmation, Link, Link]:
        async with InMemoryBroker() as broker:
            links = {a: Link(broker, site="s", agent_id=a, step=1) for a in ("market", "mg1", "mg2")}
            for a, link in links.items():
                await proto.prepare(link, "market" if a == "market" else "participant")
            topic = agent_topic("s", "mg1", "market")
            await broker.publish(topic, b"[]")
            await broker.publish(topic, b'{"sender":"mg1","step":1,"body":{"kind":"order","side":"bid","quantity_mw":-1,"limit_price_usd_per_mwh":1}}')
            await broker.publish(topic, make_envelope("mg1", OrderBody(side="bid", quantity_mw=5, limit_price_usd_per_mwh=99), step=0))
            await broker.publish(agent_topic("s", "mallory", "market"),
                                 make_envelope("mallory", OrderBody(side="ask", quantity_mw=5, limit_price_usd_per_mwh=0), step=1))
            await broker.publish(agent_topic("s", "mg1", "market"),  # mg2's order forged on mg1's topic
                                 make_envelope("mg2", OrderBody(side="ask", quantity_mw=5, limit_price_usd_per_mwh=0), step=1))
            await broker.publish(agent_topic("s", "mg2", "market"),  # beyond the configured quantity bound
                                 make_envelope("mg2", OrderBody(side="ask", quantity_mw=5e4, limit_price_usd_per_mwh=0), step=1))
            await broker.publish(agent_topic("s", "market", "clearing"),  # mallory's clearing on the market's topic
                                 make_envelope("mallory", ClearingBody(clearing_price_usd_per_mwh=1.0, trades=[]), step=1))
            market, c1, _ = await asyncio.gather(
                proto.market(links["market"], ("mg1", "mg2")),
                proto.participant(links["mg1"], Order("mg1", "bid", 1.0, 40.0)),
                proto.participant(links["mg2"], Order("mg2", "ask", 2.0, 30.0)))
            return market, c1, links["market"], links["mg1"]

    market, c1, mlink, plink = run_async(main())
    assert market.excluded == () and market.price_usd_per_mwh == 35.0 and market.volume_mw == 1.0
    assert c1.clearing == market
    assert mlink.stats.stale == 1 and mlink.stats.ignored >= 1  # mallory's order
    assert mlink.stats.rejected == {"schema": 1, "bounds": 2, "sender": 1}  # [], -1 MW and 5e4 MW, mg2 as mg1
    assert plink.stats.rejected == {"sender": 1}  # mallory's clearing


def test_orders_through_the_wrong_link_are_refused() -> None:
    async def main() -> None:
        async with InMemoryBroker() as broker:
            await P2PTradingProtocol().participant(Link(broker, site="s", agent_id="mg1"), Order("mg2", "bid", 1.0, 1.0))

    with pytest.raises(ConfigError):
        run_async(main())


def test_a_late_order_is_excluded_and_never_used_in_a_later_step() -> None:
    proto = P2PTradingProtocol({"order_window_s": 0.1})

    async def late(link: Link) -> Confirmation:
        await asyncio.sleep(0.2)  # misses the window
        return await proto.participant(link, Order("mg2", "ask", 1.0, 10.0))

    async def main() -> tuple[Clearing, Clearing, Confirmation, Link]:
        async with InMemoryBroker() as broker:
            links = {a: Link(broker, site="s", agent_id=a, timeout_s=0.3) for a in ("market", "mg1", "mg2")}
            for a, link in links.items():
                await proto.prepare(link, "market" if a == "market" else "participant")
            first, _, conf = await asyncio.gather(proto.market(links["market"], ("mg1", "mg2")),
                                                  proto.participant(links["mg1"], Order("mg1", "bid", 1.0, 50.0)),
                                                  late(links["mg2"]))
            for link in links.values():
                link.step = 1
            second, _, _ = await asyncio.gather(proto.market(links["market"], ("mg1", "mg2")),
                                                proto.participant(links["mg1"], Order("mg1", "bid", 1.0, 50.0)),
                                                proto.participant(links["mg2"], None))
            return first, second, conf, links["market"]

    first, second, conf, market_link = run_async(main(), timeout=10.0)
    assert first.excluded == ("mg2",) and first.trades == ()
    assert conf.clearing is not None and conf.trades == ()  # it still learns step 0's outcome: no trade for it
    assert second.excluded == () and second.trades == ()  # step 0's late ask is stale at step 1
    assert market_link.stats.stale >= 1


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(-3.0, 3.0), st.floats(0.0, 100.0).map(lambda p: round(p, 1))),
                min_size=2, max_size=6), st.sampled_from([0.0, 0.5, 2.0]))
def test_random_books_clear_identically_in_both_forms(rows: list[tuple[float, float]], fee: float) -> None:
    proto = P2PTradingProtocol({"fee_usd_per_mwh": fee})
    ids = tuple(f"p{k}" for k in range(len(rows)))
    book = proto.orders_from_net(ids, np.array([r[0] for r in rows]), np.array([r[1] for r in rows]))

    async def main() -> tuple[Clearing, list[Confirmation]]:
        async with InMemoryBroker() as broker:
            links = {a: Link(broker, site="s", agent_id=a) for a in ("market", *ids)}
            for a, link in links.items():
                await proto.prepare(link, "market" if a == "market" else "participant")
            return await _round(proto, links, book, ids)

    market, confs = run_async(main())
    assert market == proto.clear(book)
    assert all(c.clearing == market for c in confs)


@pytest.mark.parametrize("n", [3, 24])
def test_each_participant_decodes_one_message_per_round_whatever_the_market_size(transport: Transport, n: int) -> None:
    """Orders reach the market only, one clearing goes out: a participant's Link takes exactly one message a round
    (the clearing) and has nothing else queued, at 3 and at 24 participants; the market takes the n orders."""
    proto = P2PTradingProtocol({"fee_usd_per_mwh": 1.0})
    names = tuple(f"mg{i + 1}" for i in range(n))
    rng = np.random.default_rng(n)
    rounds = 3

    async def main() -> tuple[list[Clearing], list[Clearing], dict[str, Link]]:
        async with transport.links(("market", *names), timeout_s=5.0) as links:
            await proto.prepare(links["market"], "market")
            await asyncio.gather(*(proto.prepare(links[m], "participant") for m in names))
            got, expected = [], []
            for step in range(rounds):
                for link in links.values():
                    link.step = step
                orders = proto.orders_from_net(names, rng.uniform(-1.0, 1.0, n), rng.uniform(20.0, 80.0, n))
                market, confs = await _round(proto, links, orders, names)
                assert all(c.clearing == market for c in confs)
                got.append(market)
                expected.append(proto.clear(orders))
            queued = {a: sum(len(box.sub) + len(box.stash) for box in link._boxes.values()) for a, link in links.items()}
            assert not any(queued.values()), queued
            return got, expected, links

    got, expected, links = run_async(main(), timeout=60.0)
    assert got == expected and any(c.trades for c in got)
    for name in names:
        s = links[name].stats
        assert (s.received, s.ignored, s.stale, s.duplicates, s.sent) == (rounds, 0, 0, 0, rounds), (name, s)
    market = links["market"].stats
    assert (market.received, market.ignored, market.sent) == (rounds * n, 0, rounds)
