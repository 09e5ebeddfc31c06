"""The double auction: worked examples, the minimum trade, and hypothesis properties (balance, limits, quantities)."""
from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heron_edge.brokers import InMemoryBroker
from heron_edge.errors import ActionError, ConfigError
from heron_edge.protocols import Clearing, Confirmation, Link, Order, P2PTradingProtocol
from heron_edge.protocols.auction import MIN_TRADE_MW, clear, orders_from_net
from tests.conftest import run_async


def test_worked_example_uniform_midpoint_price_and_fee() -> None:
    orders = [
        Order("b1", "bid", 2.0, 50.0),
        Order("b2", "bid", 1.0, 40.0),
        Order("s1", "ask", 1.5, 20.0),
        Order("s2", "ask", 2.0, 35.0),
    ]
    result = clear(orders, fee_usd_per_mwh=2.0)
    # b1 x s1 1.5 MW, b1 x s2 0.5 MW, b2 x s2 1.0 MW (40 - 35 >= 2); last pair (40, 35) -> 37.5
    assert [(t.buyer, t.seller, t.quantity_mw) for t in result.trades] == [
        ("b1", "s1", 1.5), ("b1", "s2", 0.5), ("b2", "s2", 1.0)]
    assert result.price_usd_per_mwh == 37.5
    assert result.buyer_price_usd_per_mwh == 38.5 and result.seller_price_usd_per_mwh == 36.5
    ids = ["b1", "b2", "s1", "s2"]
    assert result.net_mw(ids).tolist() == [2.0, 1.0, -1.5, -1.5]
    cash = result.cash_usd(ids, step_h=0.5)
    assert cash.tolist() == pytest.approx([-2.0 * 0.5 * 38.5, -1.0 * 0.5 * 38.5, 1.5 * 0.5 * 36.5, 1.5 * 0.5 * 36.5])
    assert result.fees_usd(step_h=0.5) == pytest.approx(3.0 * 0.5 * 2.0)


def test_fee_blocks_a_pair_whose_spread_is_smaller_than_the_fee() -> None:
    orders = [Order("b", "bid", 1.0, 30.0), Order("s", "ask", 1.0, 29.0)]
    assert clear(orders, 0.5).volume_mw == 1.0
    blocked = clear(orders, 1.5)
    assert blocked.trades == () and blocked.price_usd_per_mwh is None


def test_ties_are_broken_by_agent_id_whatever_the_order_of_arrival() -> None:
    orders = [Order("s_b", "ask", 1.0, 10.0), Order("s_a", "ask", 1.0, 10.0), Order("b", "bid", 1.0, 20.0)]
    assert clear(orders).trades[0].seller == "s_a"
    assert clear(list(reversed(orders))) == clear(orders)


def test_invalid_orders_are_refused() -> None:
    with pytest.raises(ActionError):
        Order("a", "bid", -1.0, 10.0)
    with pytest.raises(ActionError):
        Order("a", "buy", 1.0, 10.0)  # type: ignore[arg-type]
    with pytest.raises(ActionError):
        Order("a", "bid", 1.0, math.nan)
    with pytest.raises(ActionError):
        clear([Order("a", "bid", 1.0, 10.0), Order("a", "ask", 1.0, 5.0)])


def test_orders_from_net_and_the_protocol_facade() -> None:
    orders = P2PTradingProtocol.orders_from_net(["m1", "m2", "m3"], np.array([1.0, -2.0, 0.0]), np.array([40.0, 30.0, 35.0]))
    assert [(o.side, o.quantity_mw) for o in orders] == [("bid", 1.0), ("ask", 2.0), ("bid", 0.0)]
    result = P2PTradingProtocol({"fee_usd_per_mwh": 1.0}).clear(orders)
    assert result.trades[0].quantity_mw == 1.0 and result.price_usd_per_mwh == 35.0


def test_matches_below_the_minimum_are_not_trades() -> None:
    """Float noise (1e-10 MW) from the net-need arithmetic is no trade: no volume, no price."""
    noise = [Order("b", "bid", 1e-10, 60.0), Order("s", "ask", 0.5, 20.0)]
    result = clear(noise)
    assert result.trades == () and result.price_usd_per_mwh is None and result.volume_mw == 0.0
    assert clear([Order("b", "bid", 0.5, 60.0), Order("s", "ask", 1e-10, 20.0)]).trades == ()
    assert clear(noise, min_trade_mw=0.0).volume_mw == 1e-10  # 0 = any positive quantity trades (the old rule)
    assert clear([Order("b", "bid", MIN_TRADE_MW, 60.0), Order("s", "ask", 1.0, 20.0)]).volume_mw == MIN_TRADE_MW


def test_a_dust_remainder_neither_trades_nor_sets_the_price() -> None:
    # b's 1e-10 MW left after s1 would match s2 at 45 and move the midpoint from 35 to 47.5
    orders = [Order("b", "bid", 1.0 + 1e-10, 50.0), Order("s1", "ask", 1.0, 20.0), Order("s2", "ask", 1.0, 45.0)]
    result = clear(orders)
    assert [(t.buyer, t.seller, t.quantity_mw) for t in result.trades] == [("b", "s1", 1.0)]
    assert result.price_usd_per_mwh == 35.0
    assert clear(orders, min_trade_mw=0.0).price_usd_per_mwh == 47.5


def test_the_minimum_trade_is_a_validated_config_field() -> None:
    assert P2PTradingProtocol().config.min_trade_mw == MIN_TRADE_MW == 1e-6
    orders = [Order("b", "bid", 0.4, 60.0), Order("s", "ask", 1.0, 20.0)]
    assert P2PTradingProtocol({"min_trade_mw": 0.5}).clear(orders).trades == ()
    assert P2PTradingProtocol({"min_trade_mw": 0.0}).clear(orders).volume_mw == 0.4
    with pytest.raises(ConfigError):
        P2PTradingProtocol({"min_trade_mw": -1.0})
    with pytest.raises(ActionError):
        clear(orders, min_trade_mw=math.nan)


def test_noise_is_no_trade_in_the_distributed_form_either() -> None:
    """The market clears through the same function: the orders arrive over the broker, nothing trades."""
    proto = P2PTradingProtocol({"fee_usd_per_mwh": 1.0})
    ids = ("mg1", "mg2", "mg3")
    book = proto.orders_from_net(ids, np.array([1e-10, -1e-10, 0.3]), np.array([90.0, 20.0, 50.0]))

    async def main() -> tuple[Clearing, list[Confirmation]]:
        async with InMemoryBroker() as broker:
            links = {a: Link(broker, site="s", agent_id=a) for a in ("market", *ids)}
            for a, link in links.items():
                await proto.prepare(link, "market" if a == "market" else "participant")
            market, *confs = await asyncio.gather(proto.market(links["market"], ids),
                                                  *(proto.participant(links[o.agent_id], o) for o in book))
            return market, confs

    market, confs = run_async(main())
    assert market == proto.clear(book) and market.trades == () and market.price_usd_per_mwh is None
    assert all(c.clearing == market and c.net_mw == 0.0 for c in confs)


agents = st.lists(st.sampled_from([f"a{i}" for i in range(8)]), min_size=0, max_size=8, unique=True)


@st.composite
def order_books(draw: st.DrawFn) -> tuple[list[Order], float]:
    ids = draw(agents)
    orders = [
        Order(a, draw(st.sampled_from(["bid", "ask"])),
              draw(st.floats(0.0, 10.0, allow_nan=False)),
              draw(st.floats(-50.0, 200.0, allow_nan=False).map(lambda p: round(p, 2))))
        for a in ids
    ]
    fee = draw(st.sampled_from([0.0, 0.5, 3.0]))
    return orders, fee


@settings(max_examples=300, deadline=None)
@given(order_books())
def test_auction_balances_and_respects_every_limit_and_quantity(book: tuple[list[Order], float]) -> None:
    orders, fee = book
    result: Clearing = clear(orders, fee)
    by_id = {o.agent_id: o for o in orders}
    ids = sorted(by_id)
    # energy balance
    assert result.net_mw(ids).sum() == pytest.approx(0.0, abs=1e-9)
    # money balance: paid by buyers == received by sellers + fees
    cash = result.cash_usd(ids, step_h=1.0)
    paid = -cash[cash < 0].sum()
    received = cash[cash > 0].sum()
    assert paid == pytest.approx(received + result.fees_usd(1.0), rel=1e-12, abs=1e-9)
    half = fee / 2.0
    traded: dict[str, float] = dict.fromkeys(ids, 0.0)
    for t in result.trades:
        buyer, seller = by_id[t.buyer], by_id[t.seller]
        assert buyer.side == "bid" and seller.side == "ask" and t.quantity_mw >= MIN_TRADE_MW
        assert t.price_usd_per_mwh == result.price_usd_per_mwh
        assert t.price_usd_per_mwh + half <= buyer.limit_price_usd_per_mwh + 1e-9  # never above the bid
        assert t.price_usd_per_mwh - half >= seller.limit_price_usd_per_mwh - 1e-9  # never below the ask
        traded[t.buyer] += t.quantity_mw
        traded[t.seller] += t.quantity_mw
    for a, q in traded.items():
        assert q <= by_id[a].quantity_mw * (1 + 1e-12)  # quantities never exceeded


@settings(max_examples=200, deadline=None)
@given(order_books())
def test_auction_is_efficient_no_profitable_pair_left(book: tuple[list[Order], float]) -> None:
    """After clearing, no bid with a tradable quantity left can trade with an ask with a tradable quantity left."""
    orders, fee = book
    result = clear(orders, fee)
    left = {o.agent_id: o.quantity_mw for o in orders}
    for t in result.trades:
        left[t.buyer] -= t.quantity_mw
        left[t.seller] -= t.quantity_mw
    open_bids = [o for o in orders if o.side == "bid" and left[o.agent_id] >= MIN_TRADE_MW]
    open_asks = [o for o in orders if o.side == "ask" and left[o.agent_id] >= MIN_TRADE_MW]
    if open_bids and open_asks:
        best_bid = max(o.limit_price_usd_per_mwh for o in open_bids)
        best_ask = min(o.limit_price_usd_per_mwh for o in open_asks)
        assert best_bid - best_ask < fee


def test_orders_from_net_checks_lengths() -> None:
    with pytest.raises(ActionError):
        orders_from_net(["a"], np.array([1.0, 2.0]), np.array(3.0))
