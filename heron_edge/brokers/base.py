"""The broker port: a few async methods, a bounded subscription stream, and MQTT filter matching.

A broker carries BYTES. Publishing an :class:`~heron_edge.messages.Envelope` encodes it; decoding
and validation are the receiver's job, so a malformed payload reaches an agent the same way over
every broker and the agent counts the rejection.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Protocol, runtime_checkable

from heron_edge.errors import BrokerError, ConfigError
from heron_edge.messages import Envelope, encode

__all__ = [
    "DEFAULT_GET_TIMEOUT_S",
    "DEFAULT_MAXSIZE",
    "MAX_PACKET_BYTES",
    "Broker",
    "BrokerWrapper",
    "Delivery",
    "Payload",
    "Subscription",
    "get_any",
    "payload_bytes",
    "topic_matches",
    "validate_filter",
    "validate_topic",
]

DEFAULT_GET_TIMEOUT_S: Final = 10.0
"""Default wait of :meth:`Subscription.get`, seconds."""
DEFAULT_MAXSIZE: Final = 10_000
"""Default bound of a subscription queue, messages."""
MAX_PACKET_BYTES: Final = 262_144
"""Largest MQTT packet, bytes: the brokers' ``max_packet_size`` and MqttBroker's own send/receive
limit. The largest real envelope is a market clearing, ~10 kB with 100 trades (a 100-value consensus
vector ~2 kB), so 256 KiB leaves >25x headroom while huge messages cannot exhaust anyone's memory."""

Payload = bytes | bytearray | memoryview | Envelope


@dataclass(frozen=True, slots=True)
class Delivery:
    """One received message: its topic, its payload bytes verbatim, and whether it came from the
    retained store (True only for retained messages delivered on subscribe, as in MQTT)."""

    topic: str
    payload: bytes
    retain: bool = False


def payload_bytes(payload: Payload) -> bytes:
    """The bytes to send: an Envelope is encoded, bytes-likes are copied to ``bytes``."""
    if type(payload) is bytes:
        return payload
    if isinstance(payload, Envelope):
        return encode(payload)
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    raise TypeError(f"payload must be bytes or an Envelope, not {type(payload).__name__}")


# --------------------------------------------------------------------------------------------
# Topic names and filters (MQTT 3.1.1 / 5, section 4.7)
# --------------------------------------------------------------------------------------------


def validate_topic(topic: str) -> str:
    """A topic name to publish to: non-empty, no wildcards, no NUL. Raises ConfigError (a ValueError)."""
    if not isinstance(topic, str) or not topic:
        raise ConfigError("topic must be a non-empty string")
    if "+" in topic or "#" in topic or "\0" in topic:
        raise ConfigError(f"topic {topic!r} must not contain '+', '#' or NUL (wildcards are for filters)")
    if len(topic.encode()) > 65535:
        raise ConfigError("topic longer than 65535 bytes")
    return topic


def validate_filter(topic_filter: str) -> str:
    """A subscription filter: ``+`` fills a whole level, ``#`` only as the whole last level."""
    if not isinstance(topic_filter, str) or not topic_filter:
        raise ConfigError("topic filter must be a non-empty string")
    if "\0" in topic_filter:
        raise ConfigError("topic filter must not contain NUL")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ConfigError(f"invalid filter {topic_filter!r}: '#' must be the whole last level")
        if "+" in level and level != "+":
            raise ConfigError(f"invalid filter {topic_filter!r}: '+' must be a whole level")
    return topic_filter


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` with exact MQTT semantics.

    ``+`` matches one level (possibly empty), ``#`` the parent level and any number of levels
    below it; topics starting with ``$`` are not matched by a filter starting with a wildcard.
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    if topic_filter == topic:
        return True
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    n_t = len(t_levels)
    for i, f in enumerate(f_levels):
        if f == "#":
            return True  # '#' is the last level; also matches the parent ("a/#" matches "a")
        if i >= n_t:
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == n_t


# --------------------------------------------------------------------------------------------
# Subscription
# --------------------------------------------------------------------------------------------


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no message within the timeout"))


class Subscription:
    """A bounded stream of deliveries for one topic filter.

    Brokers push with :meth:`_put` from their network loop; when the queue is full the delivery is
    dropped and counted in :attr:`dropped` (the network loop never blocks). After the broker closed
    or lost its connection for good, queued deliveries can still be taken, then :meth:`get` and
    iteration raise :class:`~heron_edge.errors.BrokerError`. After :meth:`Broker.unsubscribe`,
    iteration stops and :meth:`get` raises BrokerError.
    """

    __slots__ = ("_ended", "_error", "_queue", "_waiters", "dropped", "maxsize", "qos", "topic_filter")

    def __init__(self, topic_filter: str, *, qos: int = 1, maxsize: int = DEFAULT_MAXSIZE) -> None:
        if maxsize < 1:
            raise ConfigError("maxsize must be at least 1")
        self.topic_filter: str = topic_filter
        self.qos: int = qos
        self.maxsize: int = maxsize
        self.dropped: int = 0
        self._queue: deque[Delivery] = deque()
        self._waiters: list[asyncio.Future[None]] = []
        self._error: str | None = None
        self._ended: bool = False  # unsubscribed: no more deliveries, iteration stops

    def __repr__(self) -> str:
        return f"<Subscription {self.topic_filter!r} queued={len(self._queue)} dropped={self.dropped}>"

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def active(self) -> bool:
        """True while deliveries may still arrive."""
        return self._error is None and not self._ended

    # -- broker side --------------------------------------------------------------------------
    def _put(self, delivery: Delivery) -> None:
        """Enqueue without blocking; drop and count when full (ignore when no longer active)."""
        if len(self._queue) >= self.maxsize:
            self.dropped += 1
            return
        if self._ended or self._error is not None:
            return
        self._queue.append(delivery)
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def _fail(self, reason: str) -> None:
        """The broker is gone for good: wake waiters, then raise once the queue is empty."""
        if self._error is None:
            self._error = reason
        self._wake()

    def _end(self) -> None:
        """Unsubscribed: wake waiters; iteration stops once the queue is empty."""
        self._ended = True
        self._wake()

    # -- consumer side ------------------------------------------------------------------------
    def get_nowait(self) -> Delivery | None:
        """The oldest queued delivery, or None when nothing is queued."""
        return self._queue.popleft() if self._queue else None

    def drain(self) -> list[Delivery]:
        """Everything queued now, oldest first (empty list when nothing is queued)."""
        items = list(self._queue)
        self._queue.clear()
        return items

    def _raise_if_over(self) -> None:
        if self._error is not None:
            raise BrokerError(f"subscription {self.topic_filter!r}: {self._error}")
        if self._ended:
            raise BrokerError(f"subscription {self.topic_filter!r} was unsubscribed")

    async def get(self, timeout: float | None = DEFAULT_GET_TIMEOUT_S) -> Delivery:
        """The next delivery; raises TimeoutError after ``timeout`` seconds (None waits forever)
        and BrokerError when the broker closed / disconnected for good or we unsubscribed."""
        if self._queue:
            return self._queue.popleft()
        self._raise_if_over()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            handle = None if deadline is None else loop.call_at(deadline, _expire, waiter)
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if handle is not None:
                    handle.cancel()
                if not waiter.done():  # cancelled by the caller
                    waiter.cancel()
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            if self._queue:
                return self._queue.popleft()
            self._raise_if_over()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Delivery:
        """Next delivery (waits without timeout); stops after unsubscribe, raises after close."""
        if not self._queue and self._ended and self._error is None:
            raise StopAsyncIteration
        try:
            return await self.get(timeout=None)
        except BrokerError:
            if self._ended and self._error is None:
                raise StopAsyncIteration from None
            raise


async def get_any(subscriptions: Sequence[Subscription], timeout: float) -> tuple[int, Delivery]:
    """The next delivery on any of ``subscriptions`` (the first in order when several have one), with the
    index of its subscription: one wait for many filters (e.g. each neighbour's consensus topic).
    Raises TimeoutError after ``timeout`` seconds, BrokerError when one of them is over. A single
    subscription may be a wrapper that overrides ``get`` (a guarded command subscription); several must
    be plain ones, whose queues it watches together."""
    for i, sub in enumerate(subscriptions):
        if (delivery := sub.get_nowait()) is not None:
            return i, delivery
    if len(subscriptions) == 1:
        return 0, await subscriptions[0].get(timeout)
    if any(type(sub) is not Subscription for sub in subscriptions):
        raise TypeError("get_any over several subscriptions needs plain Subscriptions, not wrappers")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for sub in subscriptions:
            sub._raise_if_over()
        waiter: asyncio.Future[None] = loop.create_future()
        handle = loop.call_at(deadline, _expire, waiter)
        for sub in subscriptions:
            sub._waiters.append(waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            if not waiter.done():
                waiter.cancel()
            for sub in subscriptions:
                try:
                    sub._waiters.remove(waiter)
                except ValueError:
                    pass
        for i, sub in enumerate(subscriptions):
            if (delivery := sub.get_nowait()) is not None:
                return i, delivery


# --------------------------------------------------------------------------------------------
# The port
# --------------------------------------------------------------------------------------------


@runtime_checkable
class Broker(Protocol):
    """What agents, protocols and the environment need from a message broker.

    Lifecycle: ``connect()`` is idempotent and binds the broker to the running event loop (a broker
    may be constructed outside any loop); ``close()`` twice is harmless; any use after ``close()``
    raises BrokerError. ``async with broker:`` connects and closes.
    """

    async def connect(self) -> None:
        """Connect (idempotent) and bind to the running event loop."""
        ...

    async def publish(self, topic: str, payload: Payload, *, qos: int = 1, retain: bool = False) -> None:
        """Send ``payload`` (bytes verbatim, or an Envelope encoded) to ``topic``."""
        ...

    async def subscribe(self, topic_filter: str, *, qos: int = 1, maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        """A new bounded stream of every later message matching ``topic_filter`` (+ retained ones)."""
        ...

    async def unsubscribe(self, subscription: Subscription) -> None:
        """Stop deliveries to ``subscription`` (idempotent)."""
        ...

    async def close(self) -> None:
        """Disconnect and end every subscription (idempotent)."""
        ...

    async def __aenter__(self) -> Broker: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class BrokerWrapper:
    """A Broker that passes everything to ``inner``; subclasses override what they change
    (e.g. publish through an outbox, sign commands, guard subscriptions)."""

    def __init__(self, inner: Broker) -> None:
        self.inner = inner

    async def connect(self) -> None:
        await self.inner.connect()

    async def publish(self, topic: str, payload: Payload, *, qos: int = 1, retain: bool = False) -> None:
        await self.inner.publish(topic, payload, qos=qos, retain=retain)

    async def subscribe(self, topic_filter: str, *, qos: int = 1, maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        return await self.inner.subscribe(topic_filter, qos=qos, maxsize=maxsize)

    async def unsubscribe(self, subscription: Subscription) -> None:
        await self.inner.unsubscribe(subscription)

    async def close(self) -> None:
        await self.inner.close()

    async def __aenter__(self) -> BrokerWrapper:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
