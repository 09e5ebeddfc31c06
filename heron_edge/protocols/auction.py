"""The double auction that both forms of P2PTradingProtocol use: orders in, a Clearing out.

Rule (deterministic, documented once here):

1. Orders below the minimum trade quantity ``min_trade_mw`` (default :data:`MIN_TRADE_MW`) are
   ignored, zero-quantity orders always; each agent has at most one order.
2. Bids are sorted by limit price descending, asks by limit price ascending; ties are broken by
   agent id ascending.
3. The fee ``f`` ($/MWh) is split equally: the buyer pays ``price + f/2``, the seller receives
   ``price - f/2``, and the market keeps ``f`` per MWh traded. A bid and an ask are matched while
   ``bid_limit - ask_limit >= f`` (so that neither limit is crossed once the fee is paid), each
   match trading ``min(remaining bid, remaining ask)`` MW. An order whose remaining quantity falls
   below ``min_trade_mw`` is done: its rest (rounding dust) never trades, so every trade is at least
   ``min_trade_mw`` and float noise (1e-10 MW) never counts as a trade or sets the price.
4. One uniform price for every trade: the midpoint of the last matched pair,
   ``price = (bid_last + ask_last) / 2``. Every matched bid has ``bid >= bid_last`` and every
   matched ask ``ask <= ask_last``, hence ``price + f/2 <= bid`` and ``price - f/2 >= ask`` for all.

Energy and money balance by construction: sum bought == sum sold, and
sum paid by buyers == sum received by sellers + fees collected.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from heron_edge.errors import ActionError

__all__ = ["MIN_TRADE_MW", "Clearing", "Order", "Trade", "clear", "orders_from_net"]

Side = Literal["bid", "ask"]

MIN_TRADE_MW = 1e-6
"""Default minimum trade quantity (MW): a match below it is float noise from the net-need arithmetic, not a trade."""


@dataclass(frozen=True)
class Order:
    """One agent's order for this step: ``bid`` = wants to buy, ``ask`` = wants to sell.

    ``quantity_mw`` >= 0 (MW over the step), ``limit_price_usd_per_mwh`` the highest price a buyer
    pays / the lowest a seller accepts, fee included.
    """

    agent_id: str
    side: Side
    quantity_mw: float
    limit_price_usd_per_mwh: float

    def __post_init__(self) -> None:
        if self.side not in ("bid", "ask"):
            raise ActionError(f"order side must be 'bid' or 'ask', got {self.side!r}")
        if not (math.isfinite(self.quantity_mw) and self.quantity_mw >= 0.0):
            raise ActionError(f"order quantity must be finite and >= 0 MW, got {self.quantity_mw!r}")
        if not math.isfinite(self.limit_price_usd_per_mwh):
            raise ActionError(f"order limit price must be finite, got {self.limit_price_usd_per_mwh!r}")


@dataclass(frozen=True)
class Trade:
    """A matched quantity (MW over the step) between a buyer and a seller at the uniform price."""

    buyer: str
    seller: str
    quantity_mw: float
    price_usd_per_mwh: float


@dataclass(frozen=True)
class Clearing:
    """Result of one auction. ``price_usd_per_mwh`` is None when nothing traded.

    ``excluded`` lists expected participants whose order did not arrive in time (distributed form).
    """

    price_usd_per_mwh: float | None
    trades: tuple[Trade, ...]
    fee_usd_per_mwh: float
    excluded: tuple[str, ...] = field(default=())

    @property
    def volume_mw(self) -> float:
        """Total quantity traded (MW)."""
        return float(sum(t.quantity_mw for t in self.trades))

    @property
    def buyer_price_usd_per_mwh(self) -> float | None:
        """What a buyer pays per MWh, fee share included."""
        p = self.price_usd_per_mwh
        return None if p is None else p + self.fee_usd_per_mwh / 2.0

    @property
    def seller_price_usd_per_mwh(self) -> float | None:
        """What a seller receives per MWh, fee share deducted."""
        p = self.price_usd_per_mwh
        return None if p is None else p - self.fee_usd_per_mwh / 2.0

    def trades_of(self, agent_id: str) -> tuple[Trade, ...]:
        """The trades in which ``agent_id`` is buyer or seller."""
        return tuple(t for t in self.trades if agent_id in (t.buyer, t.seller))

    def net_mw(self, agent_ids: Sequence[str]) -> np.ndarray:
        """Per agent, MW bought minus MW sold (+ = import through trades), in ``agent_ids`` order."""
        pos = {a: k for k, a in enumerate(agent_ids)}
        out = np.zeros(len(agent_ids))
        for t in self.trades:
            if t.buyer in pos:
                out[pos[t.buyer]] += t.quantity_mw
            if t.seller in pos:
                out[pos[t.seller]] -= t.quantity_mw
        return out

    def cash_usd(self, agent_ids: Sequence[str], step_h: float = 1.0) -> np.ndarray:
        """Per agent, money received minus money paid ($) over a step of ``step_h`` hours, fees included."""
        pos = {a: k for k, a in enumerate(agent_ids)}
        out = np.zeros(len(agent_ids))
        half = self.fee_usd_per_mwh / 2.0
        for t in self.trades:
            energy = t.quantity_mw * step_h
            if t.buyer in pos:
                out[pos[t.buyer]] -= energy * (t.price_usd_per_mwh + half)
            if t.seller in pos:
                out[pos[t.seller]] += energy * (t.price_usd_per_mwh - half)
        return out

    def fees_usd(self, step_h: float = 1.0) -> float:
        """Fees the market collected ($) over a step of ``step_h`` hours."""
        return self.volume_mw * step_h * self.fee_usd_per_mwh


def clear(orders: Iterable[Order], fee_usd_per_mwh: float = 0.0, min_trade_mw: float = MIN_TRADE_MW) -> Clearing:
    """Clear one order book by the rule in this module's docstring (pure, deterministic).

    ``min_trade_mw`` (>= 0): smaller quantities are not traded (0 = any positive quantity trades).
    """
    if not (math.isfinite(fee_usd_per_mwh) and fee_usd_per_mwh >= 0.0):
        raise ActionError(f"fee must be finite and >= 0 $/MWh, got {fee_usd_per_mwh!r}")
    if not (math.isfinite(min_trade_mw) and min_trade_mw >= 0.0):
        raise ActionError(f"minimum trade must be finite and >= 0 MW, got {min_trade_mw!r}")

    def tradable(quantity_mw: float) -> bool:
        return quantity_mw > 0.0 and quantity_mw >= min_trade_mw

    book = list(orders)
    seen: set[str] = set()
    for o in book:
        if o.agent_id in seen:
            raise ActionError(f"agent {o.agent_id!r} has more than one order")
        seen.add(o.agent_id)
    bids = sorted((o for o in book if o.side == "bid" and tradable(o.quantity_mw)),
                  key=lambda o: (-o.limit_price_usd_per_mwh, o.agent_id))
    asks = sorted((o for o in book if o.side == "ask" and tradable(o.quantity_mw)),
                  key=lambda o: (o.limit_price_usd_per_mwh, o.agent_id))
    rem_bid = [o.quantity_mw for o in bids]
    rem_ask = [o.quantity_mw for o in asks]
    matches: list[tuple[int, int, float]] = []
    i = j = 0
    while (i < len(bids) and j < len(asks)
           and bids[i].limit_price_usd_per_mwh - asks[j].limit_price_usd_per_mwh >= fee_usd_per_mwh):
        q = min(rem_bid[i], rem_ask[j])  # both remainders are tradable, so q >= min_trade_mw
        matches.append((i, j, q))
        rem_bid[i] -= q
        rem_ask[j] -= q
        if not tradable(rem_bid[i]):
            i += 1
        if not tradable(rem_ask[j]):
            j += 1
    if not matches:
        return Clearing(price_usd_per_mwh=None, trades=(), fee_usd_per_mwh=fee_usd_per_mwh)
    li, lj, _ = matches[-1]
    price = 0.5 * (bids[li].limit_price_usd_per_mwh + asks[lj].limit_price_usd_per_mwh)
    trades = tuple(Trade(buyer=bids[a].agent_id, seller=asks[b].agent_id, quantity_mw=q,
                         price_usd_per_mwh=price) for a, b, q in matches)
    return Clearing(price_usd_per_mwh=price, trades=trades, fee_usd_per_mwh=fee_usd_per_mwh)


def orders_from_net(agent_ids: Sequence[str], net_mw: np.ndarray,
                    limit_price_usd_per_mwh: np.ndarray) -> list[Order]:
    """One order per agent from its net need: ``net > 0`` (deficit) bids ``net`` MW, ``net < 0``
    (surplus) asks ``-net`` MW, ``net == 0`` gives a zero-quantity bid (a "nothing to trade" answer).

    ``limit_price_usd_per_mwh`` is typically the agent's marginal cost of supplying itself.
    """
    net = np.asarray(net_mw, dtype=float).reshape(-1)
    limit = np.broadcast_to(np.asarray(limit_price_usd_per_mwh, dtype=float), net.shape)
    if net.shape[0] != len(agent_ids):
        raise ActionError(f"net_mw has {net.shape[0]} entries for {len(agent_ids)} agents")
    return [Order(agent_id=a, side="ask" if q < 0 else "bid", quantity_mw=float(abs(q)),
                  limit_price_usd_per_mwh=float(p)) for a, q, p in zip(agent_ids, net, limit, strict=True)]
