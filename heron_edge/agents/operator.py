"""SystemOperator: the microgrids' upstream. It publishes the price signal for each step.

Coordination protocols (setpoints, market clearing, consensus) extend what it sends; the
microgrid agents accept price and commands only from their configured upstream id.
"""
from __future__ import annotations

from heron_edge.brokers import Broker
from heron_edge.messages import PriceBody, bus_topic, encode, make_envelope


class SystemOperator:
    """Publishes one price broadcast per step on ``heron/{site}/bus/price``."""

    def __init__(self, agent_id: str, broker: Broker, *, site: str = "sim") -> None:
        self.agent_id = agent_id
        self.broker = broker
        self.site = site
        self._price_topic = bus_topic(site, "price")

    async def publish_price(self, step: int, price_usd_per_mwh: float, congestion_adder_usd_per_mwh: float = 0.0) -> None:
        body = PriceBody(price_usd_per_mwh=price_usd_per_mwh, congestion_adder_usd_per_mwh=congestion_adder_usd_per_mwh)
        await self.broker.publish(self._price_topic, encode(make_envelope(self.agent_id, body, step=step)))
