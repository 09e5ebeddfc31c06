"""MqttBroker: the Broker port over MQTT 5 (docs/architecture.md, 'MQTT on the event loop').

This module is the session: connect, reconnect with backoff, subscriptions (one MQTT 5
subscription identifier per filter, so a message matching several filters reaches each
:class:`Subscription` once, restored after a reconnect), delivery, size limits, the last will and
close. :mod:`heron_edge.brokers.paho_bridge` drives paho-mqtt on the asyncio event loop, and
:mod:`heron_edge.brokers.mqtt_security` parses the URL and refuses insecure connections.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import random
import ssl
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal

from heron_edge.brokers.base import (
    DEFAULT_MAXSIZE,
    MAX_PACKET_BYTES,
    Delivery,
    Payload,
    Subscription,
    payload_bytes,
    topic_matches,
    validate_filter,
    validate_topic,
)
from heron_edge.brokers.mqtt_security import Endpoint, TlsOptions, is_loopback_host, secure_endpoint, ssl_context
from heron_edge.brokers.paho_bridge import PahoBridge, new_client
from heron_edge.errors import BrokerError, ConfigError
from heron_edge.messages import offline_will, parse_topic

if TYPE_CHECKING:
    import paho.mqtt.client as paho

__all__ = ["MqttBroker", "TlsOptions", "is_loopback_host"]

log = logging.getLogger(__name__)

_QOS: Final = frozenset((0, 1, 2))
_FORWARD_SLACK_BYTES: Final = 1024
"""What we let the broker add to a forwarded PUBLISH (subscription identifiers) above MAX_PACKET_BYTES
in the Maximum Packet Size we announce in CONNECT; the payload itself is checked in _on_message."""
_State = Literal["new", "connecting", "connected", "reconnecting", "failed", "closing", "closed"]


# ----------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: ``min_delay_s`` doubling up to ``max_delay_s``, ``max_attempts`` tries (None = forever)."""

    min_delay_s: float
    max_delay_s: float
    max_attempts: int | None

    def __post_init__(self) -> None:
        if not 0 < self.min_delay_s <= self.max_delay_s:
            raise ConfigError("need 0 < reconnect_min_delay_s <= reconnect_max_delay_s")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigError("reconnect_max_attempts must be at least 1 (or None)")

    def delays(self) -> Iterator[float]:
        """The wait before each attempt, seconds (without jitter)."""
        delay = self.min_delay_s
        for _ in itertools.count() if self.max_attempts is None else range(self.max_attempts):
            yield delay
            delay = min(delay * 2.0, self.max_delay_s)


@dataclass(frozen=True)
class ConnectionSettings:
    """Everything one MqttBroker connects with, validated by :func:`connection_settings`."""

    endpoint: Endpoint
    client_id: str
    username: str | None
    password: str | None = field(repr=False)
    ssl_context: ssl.SSLContext | None
    will: tuple[str, bytes] | None
    keepalive: int
    request_timeout_s: float
    backoff: Backoff


def _last_will(will: tuple[str, bytes] | None, status_topic: str | None) -> tuple[str, bytes] | None:
    """The will as given, or the offline status of the agent named by a heron ``status_topic``."""
    if status_topic is not None:
        parts = parse_topic(status_topic)
        if parts is None or parts.agent_id is None or parts.command or parts.kind != "status":
            raise ConfigError(f"status_topic {status_topic!r} is not heron/{{site}}/{{agent_id}}/status")
        will = offline_will(parts.site, parts.agent_id)
    if will is not None:
        validate_topic(will[0])
    return will


def connection_settings(
    url: str,
    *,
    client_id: str | None,
    username: str | None,
    password: str | None,
    tls: TlsOptions | None,
    will: tuple[str, bytes] | None,
    status_topic: str | None,
    keepalive: int,
    request_timeout_s: float,
    reconnect_min_delay_s: float,
    reconnect_max_delay_s: float,
    reconnect_max_attempts: int | None,
    allow_insecure: bool,
) -> ConnectionSettings:
    """The settings for :class:`MqttBroker`'s keywords; ConfigError (ValueError for a bad will topic) naming the problem."""
    endpoint = secure_endpoint(url, username=username, password=password, tls=tls, allow_insecure=allow_insecure)
    if will is not None and status_topic is not None:
        raise ConfigError("give either will or status_topic, not both")
    if keepalive < 1 or request_timeout_s <= 0:
        raise ConfigError("keepalive and request_timeout_s must be positive")
    backoff = Backoff(reconnect_min_delay_s, reconnect_max_delay_s, reconnect_max_attempts)
    last_will = _last_will(will, status_topic)
    return ConnectionSettings(
        endpoint=endpoint,
        client_id=client_id or f"heron-{uuid.uuid4().hex[:12]}",
        username=username,
        password=password,
        ssl_context=ssl_context(endpoint, tls),
        will=last_will,
        keepalive=keepalive,
        request_timeout_s=request_timeout_s,
        backoff=backoff,
    )


def _publish_packet_bytes(topic: str, payload: bytes, qos: int) -> int:
    """Size of the MQTT 5 PUBLISH packet we send (no properties): fixed header, topic, packet id, payload."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + 1 + len(payload)
    varint = 1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2_097_152 else 4
    return 1 + varint + remaining


def _check_qos(qos: int) -> None:
    if qos not in _QOS:
        raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")


def _outgoing(topic: str, payload: Payload, qos: int) -> bytes:
    """The bytes to publish, once topic, QoS and packet size are valid (ValueError otherwise)."""
    data = payload if type(payload) is bytes else payload_bytes(payload)
    validate_topic(topic)
    _check_qos(qos)
    if len(data) + 4 * len(topic) + 10 > MAX_PACKET_BYTES:  # near the limit: count exactly
        size = _publish_packet_bytes(topic, data, qos)
        if size > MAX_PACKET_BYTES:
            raise ValueError(f"publish to {topic!r}: a {len(data)}-byte payload makes a {size}-byte packet, "
                             f"over the limit of {MAX_PACKET_BYTES} bytes (MAX_PACKET_BYTES)")
    return data


# ----------------------------------------------------------------------------------------------
# subscriptions
# ----------------------------------------------------------------------------------------------
@dataclass
class _Filter:
    """One MQTT subscription (one filter) and the local Subscriptions fed by it."""

    topic_filter: str
    sid: int
    qos: int
    subs: list[Subscription] = field(default_factory=list)
    retained_to: list[Subscription] = field(default_factory=list)  # who gets the retained burst

    def retain_for(self, subs: Iterable[Subscription]) -> None:
        """Point the retained burst that follows a SUBACK at ``subs`` (those still subscribed)."""
        self.retained_to = [sub for sub in subs if sub in self.subs]


class _Filters:
    """The MQTT subscriptions by filter and by subscription identifier."""

    def __init__(self) -> None:
        self._by_filter: dict[str, _Filter] = {}
        self._by_sid: dict[int, _Filter] = {}
        self._next_sid = 1

    def __len__(self) -> int:
        return len(self._by_filter)

    def all(self) -> list[_Filter]:
        return list(self._by_filter.values())

    def get(self, topic_filter: str) -> _Filter | None:
        return self._by_filter.get(topic_filter)

    def add(self, sub: Subscription) -> _Filter:
        """The filter feeding ``sub`` (new, with the next identifier, or shared at the highest QoS)."""
        flt = self._by_filter.get(sub.topic_filter)
        if flt is None:
            flt = _Filter(sub.topic_filter, self._next_sid, sub.qos)
            self._next_sid += 1
            self._by_filter[flt.topic_filter] = flt
            self._by_sid[flt.sid] = flt
        flt.qos = max(flt.qos, sub.qos)
        flt.subs.append(sub)
        return flt

    def forget(self, flt: _Filter, sub: Subscription) -> None:
        """Stop feeding ``sub``; the filter goes with its last Subscription."""
        if sub in flt.subs:
            flt.subs.remove(sub)
        if sub in flt.retained_to:
            flt.retained_to.remove(sub)
        if not flt.subs and self._by_filter.get(flt.topic_filter) is flt:
            del self._by_filter[flt.topic_filter]
            self._by_sid.pop(flt.sid, None)

    def deliver(self, delivery: Delivery, sids: Iterable[int] | None) -> None:
        """Queue ``delivery`` on the Subscriptions of the filters it came for (retained: only those just subscribed)."""
        for flt in self._targets(delivery.topic, sids):
            for sub in flt.retained_to if delivery.retain else flt.subs:
                sub._put(delivery)

    def _targets(self, topic: str, sids: Iterable[int] | None) -> list[_Filter]:
        """The filters by subscription identifier, or (a broker without them) by matching locally,
        where overlapping filters may duplicate."""
        if sids:
            return [self._by_sid[sid] for sid in sids if sid in self._by_sid]
        return [flt for flt in self._by_filter.values() if topic_matches(flt.topic_filter, topic)]

    def fail_all(self, reason: str) -> None:
        for flt in self._by_filter.values():
            for sub in flt.subs:
                sub._fail(reason)

    def clear(self) -> None:
        self._by_filter.clear()
        self._by_sid.clear()


# ----------------------------------------------------------------------------------------------
# the session
# ----------------------------------------------------------------------------------------------
class MqttBroker:
    """A :class:`~heron_edge.brokers.Broker` over an MQTT 5 broker (e.g. Mosquitto).

    ``url`` is ``mqtt://host:port`` or ``mqtts://host:port`` (with ``tls``, default system CAs).
    ``will`` is a ``(topic, payload)`` last will, published retained with QoS 1 when this client
    dies, and also on a graceful :meth:`close` (MQTT 5 "disconnect with will"), so a retained
    status topic always ends ``offline``; ``status_topic`` builds that will from a heron status
    topic (``heron/{site}/{agent_id}/status``). Every request waits at most ``request_timeout_s``.
    A lost connection is retried after ``reconnect_min_delay_s``, doubling up to
    ``reconnect_max_delay_s``; after ``reconnect_max_attempts`` failures (None = forever) the
    broker gives up and subscriptions raise BrokerError. Counters: :attr:`published`,
    :attr:`published_bytes`, :attr:`reconnects`, :attr:`oversized`.

    Size: a publish whose packet would exceed :data:`~heron_edge.brokers.base.MAX_PACKET_BYTES` raises
    ValueError (a site broker would disconnect us for it); the CONNECT asks the broker not to send us
    larger packets, and a received payload over the limit is dropped before any Subscription sees it,
    counted in :attr:`oversized` and logged.

    Security: to a non-loopback host the connection must use TLS (``mqtts://``) and authenticate
    (username/password or a client certificate); anything else raises ConfigError unless
    ``allow_insecure=True`` is given explicitly. Loopback hosts (``localhost``, 127.0.0.0/8,
    ``::1``) are exempt: the traffic never leaves the machine, and tests, benchmarks and the
    in-process and SIL runs use a plaintext anonymous Mosquitto on 127.0.0.1.
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: TlsOptions | None = None,
        will: tuple[str, bytes] | None = None,
        status_topic: str | None = None,
        keepalive: int = 30,
        request_timeout_s: float = 10.0,
        reconnect_min_delay_s: float = 0.1,
        reconnect_max_delay_s: float = 10.0,
        reconnect_max_attempts: int | None = None,
        allow_insecure: bool = False,
    ) -> None:
        settings = connection_settings(
            url, client_id=client_id, username=username, password=password, tls=tls, will=will,
            status_topic=status_topic, keepalive=keepalive, request_timeout_s=request_timeout_s,
            reconnect_min_delay_s=reconnect_min_delay_s, reconnect_max_delay_s=reconnect_max_delay_s,
            reconnect_max_attempts=reconnect_max_attempts, allow_insecure=allow_insecure,
        )
        self.url: str = url
        self.client_id: str = settings.client_id
        self._settings = settings
        client = new_client(settings.client_id, username=settings.username, password=settings.password,
                            ssl_context=settings.ssl_context, will=settings.will,
                            connect_timeout_s=settings.request_timeout_s)
        self._bridge = PahoBridge(client, url=url, timeout_s=settings.request_timeout_s,
                                  on_message=self._on_message, on_lost=self._on_lost)
        self._state: _State = "new"
        self._connected_event: asyncio.Event | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._fail_reason: str | None = None
        self._filters = _Filters()
        self.published: int = 0
        self.published_bytes: int = 0
        self.reconnects: int = 0
        self.oversized: int = 0

    def __repr__(self) -> str:
        return f"<MqttBroker {self.url} {self.client_id} {self._state}>"

    @property
    def connected(self) -> bool:
        """True while the MQTT session is up (False while reconnecting)."""
        return self._state == "connected"

    @property
    def _client(self) -> paho.Client:
        """The paho client (white-box tests look at its socket and SSL context)."""
        return self._bridge.client

    # ------------------------------------------------------------------------------------------
    # lifecycle
    # ------------------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect and bind to the running loop (idempotent). Raises BrokerError when the broker is
        unreachable or refuses us (no retry: reconnecting is for connections lost later)."""
        if self._state != "new":
            await self._join()
            return
        self._bridge.bind()
        connected = self._connected_event = asyncio.Event()
        self._state = "connecting"
        try:
            await self._open()
        except BaseException:
            if self._state == "connecting":
                self._state = "new"
            connected.set()  # wake concurrent connect() calls; they re-check the state
            self._connected_event = asyncio.Event()
            raise
        if not self._state_is("connecting"):  # closed while connecting
            raise BrokerError(f"MqttBroker {self.url} was closed while connecting")
        self._state = "connected"
        connected.set()

    async def _join(self) -> None:
        """connect() after the first: nothing to do while up, wait while connecting, else BrokerError."""
        if self._state in ("closing", "closed"):
            raise BrokerError(f"MqttBroker {self.url} is closed")
        if self._state == "failed":
            raise BrokerError(f"MqttBroker {self.url} gave up: {self._fail_reason}")
        if self._state == "connecting":
            await self.wait_connected()
            return
        self._bridge.check_loop()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until connected (e.g. after a reconnect); TimeoutError after ``timeout`` seconds
        (default the request timeout), BrokerError when closed or given up."""
        while True:
            if self._state == "connected":
                return
            if self._state in ("new", "closing", "closed", "failed"):
                raise self._unusable()
            assert self._connected_event is not None
            wait_s = self._settings.request_timeout_s if timeout is None else timeout
            try:
                await asyncio.wait_for(self._connected_event.wait(), wait_s)
            except TimeoutError:
                raise TimeoutError(f"{self.url}: not connected within the timeout") from None

    async def close(self, *, will: bool = True) -> None:
        """Disconnect, end every subscription. Idempotent. The broker publishes the last will (if set) unless
        ``will=False``: a plain disconnect, for a client that has just published its own final status."""
        if self._state in ("closing", "closed"):
            return
        was, self._state = self._state, "closing"
        if self._bridge.on_foreign_loop():
            # the loop we connected on is gone or elsewhere: no goodbye, just release everything
            self._bridge.abandon()
            self._end_all("broker closed")
            return
        await self._stop_reconnecting()
        await self._bridge.wait_opening()
        if was == "connected":
            await self._bridge.disconnect(with_will=will and self._settings.will is not None)
        self._bridge.drop_socket()
        self._bridge.fail_pending("broker closed")
        self._end_all("broker closed")
        if self._connected_event is not None:
            self._connected_event.set()

    async def _stop_reconnecting(self) -> None:
        task, self._reconnect_task = self._reconnect_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _end_all(self, reason: str) -> None:
        self._filters.fail_all(reason)
        self._filters.clear()
        self._state = "closed"
        self._bridge.retire()

    async def __aenter__(self) -> MqttBroker:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------------
    # messaging
    # ------------------------------------------------------------------------------------------
    async def publish(self, topic: str, payload: Payload, *, qos: int = 1, retain: bool = False) -> None:
        """Publish; with QoS 1/2 wait for the broker's acknowledgement (at most the request timeout)."""
        if self._state != "connected":
            raise self._unusable()
        data = _outgoing(topic, payload, qos)
        self._bridge.check_loop()
        mid = self._bridge.publish(topic, data, qos=qos, retain=retain)
        self.published += 1
        self.published_bytes += len(data)
        if qos:
            await self._bridge.request(mid, f"PUBACK of a publish to {topic!r}")

    async def subscribe(self, topic_filter: str, *, qos: int = 1, maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        """A new subscription; the broker's retained messages for the filter arrive first (retain=True)."""
        if self._state != "connected":
            raise self._unusable()
        validate_filter(topic_filter)
        _check_qos(qos)
        self._bridge.check_loop()
        sub = Subscription(topic_filter, qos=qos, maxsize=maxsize)
        flt = self._filters.add(sub)
        try:
            await self._send_subscribe(flt, [sub])
        except BaseException:
            self._filters.forget(flt, sub)
            raise
        return sub

    async def unsubscribe(self, subscription: Subscription) -> None:
        """Stop deliveries to ``subscription`` (the MQTT filter is dropped with its last user). Idempotent."""
        flt = self._filters.get(subscription.topic_filter)
        subscription._end()
        if flt is None or subscription not in flt.subs:
            return
        self._filters.forget(flt, subscription)
        if flt.subs or self._state != "connected":
            return
        mid = self._bridge.unsubscribe(flt.topic_filter)
        await self._bridge.request(mid, f"UNSUBACK for {flt.topic_filter!r}")

    async def _send_subscribe(self, flt: _Filter, retained_to: list[Subscription]) -> None:
        """SUBSCRIBE ``flt``; the retained burst right after its SUBACK goes to ``retained_to`` only."""
        mid = self._bridge.subscribe(flt.topic_filter, qos=flt.qos, sid=flt.sid)
        await self._bridge.request(mid, f"SUBACK for {flt.topic_filter!r}", on_ack=lambda: flt.retain_for(retained_to))

    def _on_message(self, message: paho.MQTTMessage) -> None:
        if len(message.payload) > MAX_PACKET_BYTES:  # a broker without max_packet_size: never queue it
            self.oversized += 1
            log.warning("%s: dropped a %d-byte payload on %r (over MAX_PACKET_BYTES = %d; %d dropped so far)",
                        self.url, len(message.payload), message.topic, MAX_PACKET_BYTES, self.oversized)
            return
        # paho 2.2 types payload bytes | bytearray (it is bytes; bytes() of bytes is the same object, no copy)
        delivery = Delivery(message.topic, bytes(message.payload), bool(message.retain))
        sids = getattr(message.properties, "SubscriptionIdentifier", None) if message.properties else None
        self._filters.deliver(delivery, sids)

    # ------------------------------------------------------------------------------------------
    # connection state
    # ------------------------------------------------------------------------------------------
    def _state_is(self, state: _State) -> bool:
        """The current state (a call, so checks after an await are not narrowed away by the type checker)."""
        return self._state == state

    def _unusable(self) -> BrokerError:
        if self._state == "new":
            return BrokerError(f"MqttBroker {self.url} is not connected: call 'await broker.connect()' or use 'async with'")
        if self._state in ("closing", "closed"):
            return BrokerError(f"MqttBroker {self.url} is closed")
        if self._state == "failed":
            return BrokerError(f"MqttBroker {self.url} gave up reconnecting: {self._fail_reason}")
        return BrokerError(f"MqttBroker {self.url} is {self._state}; the connection was lost")

    async def _open(self) -> None:
        endpoint = self._settings.endpoint
        await self._bridge.open(endpoint.host, endpoint.port, keepalive=self._settings.keepalive,
                                max_packet_size=MAX_PACKET_BYTES + _FORWARD_SLACK_BYTES)

    def _on_lost(self, reason: str) -> None:
        """The bridge lost the socket; an established session then reconnects in the background."""
        if self._state != "connected":
            return
        log.warning("%s: connection lost (%s); reconnecting", self.url, reason)
        self._state = "reconnecting"
        self._connected_event = asyncio.Event()
        self._bridge.fail_pending(f"connection lost ({reason})")
        self._reconnect_task = self._bridge.loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Reopen after a jittered, growing delay and restore every filter; give up after the last attempt."""
        attempt, error = 0, ""
        for attempt, delay in enumerate(self._settings.backoff.delays(), start=1):
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            if not self._state_is("reconnecting"):
                return
            try:
                await self._open()
                for flt in self._filters.all():
                    await self._send_subscribe(flt, list(flt.subs))
            except BrokerError as exc:
                log.info("%s: reconnect attempt %d failed: %s", self.url, attempt, exc)
                error = str(exc)
                continue
            if self._state_is("reconnecting"):
                self._reconnected()
            return
        self._give_up(f"{attempt} reconnect attempts failed, last: {error}")

    def _reconnected(self) -> None:
        self.reconnects += 1
        self._state = "connected"
        assert self._connected_event is not None
        self._connected_event.set()
        log.info("%s: reconnected, %d filters restored", self.url, len(self._filters))

    def _give_up(self, reason: str) -> None:
        self._state = "failed"
        self._fail_reason = reason
        self._bridge.drop_socket()
        self._bridge.fail_pending(reason)
        self._filters.fail_all(f"connection lost for good: {reason}")
        if self._connected_event is not None:
            self._connected_event.set()
