"""InMemoryBroker: the in-process twin of MqttBroker (no network), with MQTT filter semantics.

It is the hot path of the environment's distributed mode, so a publish is a dictionary lookup of
the (cached) subscriptions matching the topic and one append per subscriber; routes are
recomputed only when subscriptions change.
"""
from __future__ import annotations

from types import TracebackType
from typing import Final, Literal

from heron_edge.brokers.base import (
    DEFAULT_MAXSIZE,
    Delivery,
    Payload,
    Subscription,
    payload_bytes,
    topic_matches,
    validate_filter,
    validate_topic,
)
from heron_edge.errors import BrokerError, ConfigError

__all__ = ["InMemoryBroker"]

_ROUTE_CACHE_MAX: Final = 65_536
_QOS: Final = frozenset((0, 1, 2))


class InMemoryBroker:
    """An in-process broker: per-topic order, retained messages, ``+``/``#`` filters, bounded queues.

    Delivery is immediate: when ``publish`` returns, every matching subscription has the message
    queued (or counted as dropped when its queue is full). QoS is accepted for API parity and has
    no effect (nothing can be lost in process). Counters: :attr:`published` messages and
    :attr:`published_bytes`.
    """

    def __init__(self) -> None:
        self._state: Literal["new", "open", "closed"] = "new"
        self._filters: dict[str, list[Subscription]] = {}
        self._routes: dict[str, tuple[Subscription, ...]] = {}
        self._retained: dict[str, bytes] = {}
        self.published: int = 0
        self.published_bytes: int = 0

    def __repr__(self) -> str:
        return f"<InMemoryBroker {self._state} filters={len(self._filters)} retained={len(self._retained)}>"

    @property
    def connected(self) -> bool:
        """True between ``connect()`` and ``close()``."""
        return self._state == "open"

    # -- lifecycle ----------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the broker (idempotent); raises BrokerError after ``close()``."""
        if self._state == "closed":
            raise BrokerError("InMemoryBroker is closed; create a new one")
        if self._state == "new":
            self._state = "open"

    async def close(self) -> None:
        """End every subscription (their ``get`` then raises BrokerError); idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        for subs in self._filters.values():
            for sub in subs:
                sub._fail("broker closed")
        self._filters.clear()
        self._routes.clear()
        self._retained.clear()

    async def __aenter__(self) -> InMemoryBroker:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _not_open(self) -> BrokerError:
        if self._state == "closed":
            return BrokerError("InMemoryBroker is closed")
        return BrokerError("InMemoryBroker is not connected: call 'await broker.connect()' or use 'async with'")

    # -- messaging ----------------------------------------------------------------------------
    async def publish(self, topic: str, payload: Payload, *, qos: int = 1, retain: bool = False) -> None:
        """Deliver ``payload`` to every subscription matching ``topic`` before returning."""
        if self._state != "open":
            raise self._not_open()
        if type(payload) is not bytes:
            payload = payload_bytes(payload)
        if qos not in _QOS:
            raise ConfigError(f"qos must be 0, 1 or 2, not {qos!r}")
        subs = self._routes.get(topic)
        if subs is None:
            subs = self._route(topic)
        self.published += 1
        self.published_bytes += len(payload)
        if retain:
            if payload:
                self._retained[topic] = payload
            else:
                self._retained.pop(topic, None)  # MQTT: an empty retained message clears the topic
        if subs:
            delivery = Delivery(topic, payload, False)
            for sub in subs:
                sub._put(delivery)

    def _route(self, topic: str) -> tuple[Subscription, ...]:
        validate_topic(topic)
        subs = tuple(
            sub for topic_filter, subs in self._filters.items() if topic_matches(topic_filter, topic) for sub in subs
        )
        if len(self._routes) >= _ROUTE_CACHE_MAX:
            self._routes.clear()
        self._routes[topic] = subs
        return subs

    async def subscribe(self, topic_filter: str, *, qos: int = 1, maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        """A new subscription; retained messages matching the filter are queued at once (retain=True)."""
        if self._state != "open":
            raise self._not_open()
        validate_filter(topic_filter)
        if qos not in _QOS:
            raise ConfigError(f"qos must be 0, 1 or 2, not {qos!r}")
        sub = Subscription(topic_filter, qos=qos, maxsize=maxsize)
        self._filters.setdefault(topic_filter, []).append(sub)
        self._routes.clear()
        for topic, payload in self._retained.items():
            if topic_matches(topic_filter, topic):
                sub._put(Delivery(topic, payload, True))
        return sub

    async def unsubscribe(self, subscription: Subscription) -> None:
        """Stop deliveries to ``subscription``; its iteration ends once its queue is empty. Idempotent."""
        if self._state == "closed":
            return
        subs = self._filters.get(subscription.topic_filter)
        if subs is not None and subscription in subs:
            subs.remove(subscription)
            if not subs:
                del self._filters[subscription.topic_filter]
            self._routes.clear()
        subscription._end()
