"""P2PTradingProtocol (horizontal): bids and asks between microgrids, cleared by a double auction.

Centralized: :meth:`P2PTradingProtocol.clear` on one order book (the rule is in
:mod:`heron_edge.protocols.auction`). Distributed: orders on each participant's
``heron/{site}/{agent}/market``, the clearing on the market's ``heron/{site}/{market}/clearing``:

1. every participant publishes exactly one ``order`` (quantity 0 = nothing to trade this step);
2. the market agent collects orders from the expected participants until all answered or
   ``order_window_s`` passed; a participant whose order did not arrive is **excluded** from this
   step's clearing (listed in ``Clearing.excluded``);
3. the market clears with the same function and broadcasts one ``clearing`` message with every
   trade (the confirmations, batched);
4. a participant waits for the clearing at most ``order_window_s + timeout_s``; without it, it
   trades nothing this step (``Confirmation.clearing is None``).

Who hears what (so a round costs each participant the same at any market size): only the market
subscribes to the orders (``heron/{site}/+/market``); a participant subscribes to the market's clearing
topic alone, so it sends one message and decodes one message a round. The market decodes the n orders
and sends one clearing; it lists every trade (at most n - 1 with one order per participant, within the
wire's 1,024 entries), which is what lets every participant check the price and its own fills.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from heron_edge.errors import ConfigError
from heron_edge.messages import ClearingBody, OrderBody, agent_filter, agent_topic
from heron_edge.messages import Trade as TradeBody
from heron_edge.protocols.auction import MIN_TRADE_MW, Clearing, Order, Trade, clear, orders_from_net
from heron_edge.protocols.base import Link, ProtocolConfig, load_config

__all__ = ["Confirmation", "P2PTradingConfig", "P2PTradingProtocol"]

P2PRole = Literal["market", "participant"]


class P2PTradingConfig(ProtocolConfig):
    """Parameters of :class:`P2PTradingProtocol`."""

    fee_usd_per_mwh: float = Field(default=1.0, ge=0.0, description="Trading fee, $/MWh, split equally buyer/seller.")
    market_id: str = Field(default="market", min_length=1, description="Agent id of the market (the only accepted clearing sender).")
    order_window_s: float = Field(default=1.0, gt=0.0, description="How long the market collects orders at most, s.")
    max_quantity_mw: float = Field(default=1e3, gt=0.0, description="The market refuses orders for more MW.")
    max_price_usd_per_mwh: float = Field(default=1e4, gt=0.0,
                                         description="The market refuses limit prices beyond +/- this, $/MWh.")
    min_trade_mw: float = Field(default=MIN_TRADE_MW, ge=0.0,
                                description="Smaller matches are not trades (float noise), MW; 0 = any positive quantity.")


@dataclass(frozen=True)
class Confirmation:
    """A participant's outcome: the clearing it received (None if it did not arrive in time)."""

    agent_id: str
    clearing: Clearing | None

    @property
    def trades(self) -> tuple[Trade, ...]:
        """This participant's trades (empty without a clearing)."""
        return () if self.clearing is None else self.clearing.trades_of(self.agent_id)

    @property
    def net_mw(self) -> float:
        """MW bought minus MW sold (+ = import through trades)."""
        return 0.0 if self.clearing is None else float(self.clearing.net_mw([self.agent_id])[0])

    def cash_usd(self, step_h: float = 1.0) -> float:
        """Money received minus paid over a step of ``step_h`` hours, fee share included, $."""
        return 0.0 if self.clearing is None else float(self.clearing.cash_usd([self.agent_id], step_h)[0])


def _to_body(clearing: Clearing) -> ClearingBody:
    return ClearingBody(clearing_price_usd_per_mwh=clearing.price_usd_per_mwh,
                        trades=[TradeBody(buyer=t.buyer, seller=t.seller, quantity_mw=t.quantity_mw,
                                          price_usd_per_mwh=t.price_usd_per_mwh) for t in clearing.trades],
                        fee_usd_per_mwh=clearing.fee_usd_per_mwh)


def _from_body(body: ClearingBody) -> Clearing:
    return Clearing(price_usd_per_mwh=body.clearing_price_usd_per_mwh,
                    trades=tuple(Trade(t.buyer, t.seller, t.quantity_mw, t.price_usd_per_mwh) for t in body.trades),
                    fee_usd_per_mwh=body.fee_usd_per_mwh)


class P2PTradingProtocol:
    """Peer-to-peer trading: :meth:`clear` (centralized), :meth:`market` and :meth:`participant`."""

    def __init__(self, config: P2PTradingConfig | Mapping[str, Any] | None = None) -> None:
        self.config: P2PTradingConfig = load_config(P2PTradingConfig, config)

    def __repr__(self) -> str:
        return f"P2PTradingProtocol({self.config!r})"

    # -- centralized --------------------------------------------------------------------------
    def clear(self, orders: Sequence[Order]) -> Clearing:
        """Clear one order book with the configured fee and minimum trade (both forms clear through here)."""
        return clear(orders, self.config.fee_usd_per_mwh, self.config.min_trade_mw)

    @staticmethod
    def orders_from_net(agent_ids: Sequence[str], net_mw: np.ndarray, limit_price_usd_per_mwh: np.ndarray) -> list[Order]:
        """One order per agent from its net need (MW, + = deficit) and limit price ($/MWh)."""
        return orders_from_net(agent_ids, net_mw, limit_price_usd_per_mwh)

    # -- distributed --------------------------------------------------------------------------
    async def prepare(self, link: Link, role: P2PRole) -> None:
        """Subscribe what ``role`` listens to (call once per Link before the first step)."""
        if role == "market":
            await link.subscribe(agent_filter(link.site, "market"))
        elif role == "participant":
            await link.subscribe(agent_topic(link.site, self.config.market_id, "clearing"))
        else:
            raise ConfigError(f"unknown p2p role {role!r}")

    async def market(self, link: Link, participants: Sequence[str]) -> Clearing:
        """Collect one order per expected participant (bounded by ``order_window_s``), clear,
        broadcast the clearing; returns it (``excluded`` = participants that did not answer)."""
        topic = agent_filter(link.site, "market")
        await link.subscribe(topic)
        waiting = set(participants)
        orders: list[Order] = []
        deadline = link.deadline(self.config.order_window_s)
        while waiting:
            env = await link.receive(topic, OrderBody, deadline=deadline, senders=waiting)
            if env is None:
                link.stats.timeouts += 1
                break
            body = env.body
            if not isinstance(body, OrderBody):
                continue
            if body.quantity_mw > self.config.max_quantity_mw or \
                    abs(body.limit_price_usd_per_mwh) > self.config.max_price_usd_per_mwh:
                link.reject("bounds", agent_topic(link.site, env.sender, "market"),
                            f"order of {body.quantity_mw} MW at {body.limit_price_usd_per_mwh} $/MWh")
                continue
            waiting.discard(env.sender)
            orders.append(Order(agent_id=env.sender, side=body.side, quantity_mw=body.quantity_mw,
                                limit_price_usd_per_mwh=body.limit_price_usd_per_mwh))
        result = self.clear(orders)
        await link.send(agent_topic(link.site, link.agent_id, "clearing"), _to_body(result), ttl_s=self.config.ttl_s)
        excluded = tuple(sorted(waiting))
        return Clearing(result.price_usd_per_mwh, result.trades, result.fee_usd_per_mwh, excluded)

    async def participant(self, link: Link, order: Order | None) -> Confirmation:
        """Send this step's order (None = nothing to trade) and wait for the clearing."""
        if order is not None and order.agent_id != link.agent_id:
            raise ConfigError(f"order of {order.agent_id!r} sent through the link of {link.agent_id!r}")
        clearing_topic = agent_topic(link.site, self.config.market_id, "clearing")
        await link.subscribe(clearing_topic)
        body = (OrderBody(side="bid", quantity_mw=0.0, limit_price_usd_per_mwh=0.0) if order is None else
                OrderBody(side=order.side, quantity_mw=order.quantity_mw,
                          limit_price_usd_per_mwh=order.limit_price_usd_per_mwh))
        await link.send(agent_topic(link.site, link.agent_id, "market"), body, recipient=self.config.market_id,
                        ttl_s=self.config.ttl_s)
        env = await link.receive(clearing_topic, ClearingBody, deadline=link.deadline(self.config.order_window_s + link.timeout_s),
                                 senders=(self.config.market_id,))
        if env is None:
            link.stats.timeouts += 1
            return Confirmation(agent_id=link.agent_id, clearing=None)
        assert isinstance(env.body, ClearingBody)
        return Confirmation(agent_id=link.agent_id, clearing=_from_body(env.body))
