"""The four coordination protocols, each with a centralized and a distributed form that agree.

``from heron_edge.protocols import SetpointProtocol, PriceSignalProtocol, P2PTradingProtocol, ConsensusProtocol``

Centralized forms are plain methods on numpy arrays and dataclasses (for an environment step);
distributed forms are one coroutine per role taking a :class:`Link` (for ``asyncio.gather`` in one
process, or one role per process on an edge gateway).
"""
from __future__ import annotations

from heron_edge.protocols.auction import Clearing, Order, Trade
from heron_edge.protocols.base import Link, LinkStats, ProtocolConfig
from heron_edge.protocols.consensus import ConsensusConfig, ConsensusProtocol, ConsensusResult, NodeDispatch
from heron_edge.protocols.dispatch import DispatchResult, GeneratorCost
from heron_edge.protocols.p2p_trading import Confirmation, P2PTradingConfig, P2PTradingProtocol
from heron_edge.protocols.price_signal import PriceSignal, PriceSignalConfig, PriceSignalProtocol, ReceivedPrice
from heron_edge.protocols.setpoint import SetpointConfig, SetpointProtocol, SetpointResult, tracking_error

__all__ = [
    "Clearing",
    "Confirmation",
    "ConsensusConfig",
    "ConsensusProtocol",
    "ConsensusResult",
    "DispatchResult",
    "GeneratorCost",
    "Link",
    "LinkStats",
    "NodeDispatch",
    "Order",
    "P2PTradingConfig",
    "P2PTradingProtocol",
    "PriceSignal",
    "PriceSignalConfig",
    "PriceSignalProtocol",
    "ProtocolConfig",
    "ReceivedPrice",
    "SetpointConfig",
    "SetpointProtocol",
    "SetpointResult",
    "Trade",
    "tracking_error",
]
