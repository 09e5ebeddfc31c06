"""Message brokers: one async port, an in-process twin, MQTT over paho-mqtt driven by asyncio, and a wrapper that
impairs either (loss, latency, jitter, duplication, reordering; seeded).

``from heron_edge.brokers import Broker, InMemoryBroker, MqttBroker, ImpairedBroker, Subscription, Delivery``
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from heron_edge.brokers.base import Broker, Delivery, Subscription, topic_matches
from heron_edge.brokers.impaired import ImpairedBroker, ImpairmentConfig
from heron_edge.brokers.memory import InMemoryBroker

__all__ = ["Broker", "Delivery", "ImpairedBroker", "ImpairmentConfig", "InMemoryBroker", "MqttBroker", "Subscription",
           "TlsOptions", "topic_matches"]

if TYPE_CHECKING:
    from heron_edge.brokers.mqtt import MqttBroker, TlsOptions


def __getattr__(name: str) -> Any:
    # paho is imported only when MQTT is used.
    if name in ("MqttBroker", "TlsOptions"):
        from heron_edge.brokers import mqtt

        return getattr(mqtt, name)
    raise AttributeError(f"module 'heron_edge.brokers' has no attribute {name!r}")
