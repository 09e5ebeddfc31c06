"""PriceSignalProtocol (vertical): the operator publishes one price per step.

Price formula (:meth:`PriceSignalProtocol.price`), with the feeder-head loading ``L`` in per unit of
its rating and the threshold ``L0 = congestion_threshold_pu``::

    adder = congestion_adder_usd_per_mwh * max(0, L - L0) / (1 - L0)      # $/MWh
    total = hourly_price + adder

i.e. no adder up to the threshold, rising linearly to ``congestion_adder_usd_per_mwh`` at full
loading (and beyond it above 1 p.u.). ``congestion_adder_usd_per_mwh = 0`` disables it.

Distributed: one ``price`` broadcast per step on the operator's ``heron/{site}/{operator}/price`` (energy price and adder
as separate fields). A receiver that gets nothing within ``timeout_s`` falls back to the last price
it received (``source="last"``), else to ``fallback_price_usd_per_mwh`` when set
(``source="fallback"``), else reports ``source="none"`` with ``signal=None``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from heron_edge.errors import ActionError, ConfigError
from heron_edge.messages import PriceBody, agent_topic
from heron_edge.protocols.base import Link, ProtocolConfig, load_config

__all__ = ["PriceSignal", "PriceSignalConfig", "PriceSignalProtocol", "ReceivedPrice"]

PriceRole = Literal["operator", "microgrid"]
_MEMORY_KEY = "price.last"


class PriceSignalConfig(ProtocolConfig):
    """Parameters of :class:`PriceSignalProtocol`."""

    congestion_threshold_pu: float = Field(default=0.8, ge=0.0, lt=1.0,
                                           description="Feeder-head loading above which the adder applies, p.u.")
    congestion_adder_usd_per_mwh: float = Field(default=50.0, ge=0.0,
                                                description="Adder at 1 p.u. loading, $/MWh (0 = no adder).")
    fallback_price_usd_per_mwh: float | None = Field(
        default=None, description="Price used before any price was received, $/MWh (None = report 'none').")
    operator_id: str = Field(default="operator", min_length=1, description="Agent id of the operator (the only accepted sender).")


@dataclass(frozen=True)
class PriceSignal:
    """The energy price and the congestion adder, $/MWh."""

    price_usd_per_mwh: float
    congestion_adder_usd_per_mwh: float = 0.0

    @property
    def total_usd_per_mwh(self) -> float:
        """What a MWh costs: energy price plus adder."""
        return self.price_usd_per_mwh + self.congestion_adder_usd_per_mwh


@dataclass(frozen=True)
class ReceivedPrice:
    """What a receiver uses this step, where it came from, and the step it was issued for."""

    signal: PriceSignal | None
    source: Literal["message", "last", "fallback", "none"]
    issued_step: int | None


class PriceSignalProtocol:
    """Vertical price protocol: :meth:`price` (centralized), :meth:`operator` and :meth:`receive`."""

    def __init__(self, config: PriceSignalConfig | Mapping[str, Any] | None = None) -> None:
        self.config: PriceSignalConfig = load_config(PriceSignalConfig, config)

    def __repr__(self) -> str:
        return f"PriceSignalProtocol({self.config!r})"

    # -- centralized --------------------------------------------------------------------------
    def congestion_adder(self, head_loading_pu: np.ndarray | float) -> np.ndarray:
        """The adder ($/MWh) for feeder-head loading(s) in p.u. (vectorized)."""
        loading = np.asarray(head_loading_pu, dtype=float)
        if not np.isfinite(loading).all() or (loading < 0.0).any():
            raise ActionError("head loading must be finite and >= 0 p.u.")
        l0 = self.config.congestion_threshold_pu
        return self.config.congestion_adder_usd_per_mwh * np.maximum(0.0, loading - l0) / (1.0 - l0)

    def price(self, hourly_price_usd_per_mwh: float, head_loading_pu: float = 0.0) -> PriceSignal:
        """The operator's price for one step (direct access in the centralized form).

        Scalar math, not :meth:`congestion_adder`'s numpy: this runs on every environment step.
        """
        hourly, loading = float(hourly_price_usd_per_mwh), float(head_loading_pu)
        if not math.isfinite(hourly):
            raise ActionError(f"hourly price must be finite, got {hourly_price_usd_per_mwh!r}")
        if not (math.isfinite(loading) and loading >= 0.0):
            raise ActionError("head loading must be finite and >= 0 p.u.")
        l0 = self.config.congestion_threshold_pu
        adder = self.config.congestion_adder_usd_per_mwh * max(0.0, loading - l0) / (1.0 - l0)
        return PriceSignal(price_usd_per_mwh=hourly, congestion_adder_usd_per_mwh=adder)

    # -- distributed --------------------------------------------------------------------------
    async def prepare(self, link: Link, role: PriceRole) -> None:
        """Subscribe what ``role`` listens to (call once per Link before the first step)."""
        if role == "microgrid":
            await link.subscribe(agent_topic(link.site, self.config.operator_id, "price"))
        elif role != "operator":
            raise ConfigError(f"unknown price role {role!r}")

    async def operator(self, link: Link, hourly_price_usd_per_mwh: float, head_loading_pu: float = 0.0) -> PriceSignal:
        """Compute this step's price and broadcast it once; returns it."""
        signal = self.price(hourly_price_usd_per_mwh, head_loading_pu)
        await link.send(agent_topic(link.site, link.agent_id, "price"),
                        PriceBody(price_usd_per_mwh=signal.price_usd_per_mwh,
                                  congestion_adder_usd_per_mwh=signal.congestion_adder_usd_per_mwh),
                        ttl_s=self.config.ttl_s)
        return signal

    async def receive(self, link: Link) -> ReceivedPrice:
        """This step's price, or the documented fallback after ``link.timeout_s``."""
        env = await link.receive(agent_topic(link.site, self.config.operator_id, "price"), PriceBody, deadline=link.deadline(),
                                 senders=(self.config.operator_id,))
        if env is not None:
            assert isinstance(env.body, PriceBody)
            signal = PriceSignal(env.body.price_usd_per_mwh, env.body.congestion_adder_usd_per_mwh)
            result = ReceivedPrice(signal=signal, source="message", issued_step=env.step)
            link.memory[_MEMORY_KEY] = result
            return result
        link.stats.timeouts += 1
        last: ReceivedPrice | None = link.memory.get(_MEMORY_KEY)
        if last is not None:
            return ReceivedPrice(signal=last.signal, source="last", issued_step=last.issued_step)
        if self.config.fallback_price_usd_per_mwh is not None:
            return ReceivedPrice(signal=PriceSignal(self.config.fallback_price_usd_per_mwh), source="fallback",
                                 issued_step=None)
        return ReceivedPrice(signal=None, source="none", issued_step=None)
