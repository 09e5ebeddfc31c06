"""MqttBroker: MQTT 5 over paho-mqtt 2.x, driven by the asyncio event loop (no paho thread).

The one bridge from paho to asyncio (DESIGN.md, anchor 4): paho's socket hooks put its socket on
the event loop (``add_reader`` / ``add_writer``) and a small task calls ``loop_misc`` for
keepalives, as aiomqtt 2.x does; every request (CONNECT, PUBLISH QoS 1, SUBSCRIBE, UNSUBSCRIBE)
waits on a future keyed by its message id, removed in ``finally``, with a finite timeout. Many
brokers then share one loop (one thread per paho client does not scale). TCP_NODELAY is set on
every socket (Nagle otherwise stalls QoS-1 round trips at ~40 ms).

Each topic filter gets an MQTT 5 subscription identifier, so a message matching several filters of
one client reaches each :class:`Subscription` exactly once, as with :class:`InMemoryBroker`.
After a lost connection the broker reconnects with exponential backoff and restores every
subscription; paho errors and return codes become :class:`~heron_edge.errors.BrokerError`.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import ssl
import threading
import urllib.parse
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Callable, Final, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

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
from heron_edge.errors import BrokerError, ConfigError
from heron_edge.messages import offline_will, parse_topic

__all__ = ["MqttBroker", "TlsOptions", "is_loopback_host"]

log = logging.getLogger(__name__)

_QOS: Final = frozenset((0, 1, 2))
_MISC_INTERVAL_S: Final = 1.0
_FORWARD_SLACK_BYTES: Final = 1024
"""What we let the broker add to a forwarded PUBLISH (subscription identifiers) above MAX_PACKET_BYTES
in the Maximum Packet Size we announce in CONNECT; the payload itself is checked in _on_message."""
_State = Literal["new", "connecting", "connected", "reconnecting", "failed", "closing", "closed"]


@dataclass(frozen=True)
class TlsOptions:
    """TLS for ``mqtts://``: CA bundle (None = system CAs), optional client certificate and key,
    and whether the server's certificate must name the host we connect to."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """An SSL context for a client; certificates are always verified."""
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
            if self.cert_file is not None:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS options: {exc}") from exc
        ctx.check_hostname = self.check_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


@dataclass
class _Filter:
    """One MQTT subscription (one filter) and the local Subscriptions fed by it."""

    topic_filter: str
    sid: int
    qos: int
    subs: list[Subscription] = field(default_factory=list)
    retained_to: list[Subscription] = field(default_factory=list)  # who gets the retained burst


def _reason_failed(reason: Any) -> bool:
    return bool(getattr(reason, "is_failure", False)) or (isinstance(reason, int) and reason >= 0x80)


def _expire(future: asyncio.Future[Any], what: str) -> None:
    if not future.done():
        future.set_exception(BrokerError(f"timed out waiting for {what}"))


def _parse_url(url: str) -> tuple[str, int, bool]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"broker url {url!r}: scheme must be mqtt:// or mqtts://")
    if parts.username or parts.password:
        raise ConfigError(f"broker url {url!r}: pass username/password as arguments, not in the url")
    if not parts.hostname:
        raise ConfigError(f"broker url {url!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"broker url {url!r}: only mqtt[s]://host[:port] is supported")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError(f"broker url {url!r}: {exc}") from exc
    return parts.hostname, port, tls


def _publish_packet_bytes(topic: str, payload: bytes, qos: int) -> int:
    """Size of the MQTT 5 PUBLISH packet we send (no properties): fixed header, topic, packet id, payload."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + 1 + len(payload)
    varint = 1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2_097_152 else 4
    return 1 + varint + remaining


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); no DNS lookup."""
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_secure(url: str, host: str, use_tls: bool, username: str | None, tls: TlsOptions | None) -> None:
    """Refuse plaintext or unauthenticated MQTT to a non-loopback host (see MqttBroker, allow_insecure)."""
    if is_loopback_host(host):
        return
    if not use_tls:
        raise ConfigError(
            f"broker url {url!r}: plaintext MQTT to a non-loopback host exposes credentials and commands; "
            "use mqtts:// with TLS, or pass allow_insecure=True to opt in explicitly"
        )
    if username is None and (tls is None or tls.cert_file is None):
        raise ConfigError(
            f"broker url {url!r}: no authentication (neither username/password nor a client certificate) "
            "for a non-loopback host; configure credentials, or pass allow_insecure=True to opt in explicitly"
        )


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
        host, port, use_tls = _parse_url(url)
        if tls is not None and not use_tls:
            raise ConfigError("TLS options given for an mqtt:// url; use mqtts://")
        if password is not None and username is None:
            raise ConfigError("password given without username")
        if not allow_insecure:
            _check_secure(url, host, use_tls, username, tls)
        if will is not None and status_topic is not None:
            raise ConfigError("give either will or status_topic, not both")
        if keepalive < 1 or request_timeout_s <= 0:
            raise ConfigError("keepalive and request_timeout_s must be positive")
        if not 0 < reconnect_min_delay_s <= reconnect_max_delay_s:
            raise ConfigError("need 0 < reconnect_min_delay_s <= reconnect_max_delay_s")
        if reconnect_max_attempts is not None and reconnect_max_attempts < 1:
            raise ConfigError("reconnect_max_attempts must be at least 1 (or None)")
        if status_topic is not None:
            parts = parse_topic(status_topic)
            if parts is None or parts.agent_id is None or parts.command or parts.kind != "status":
                raise ConfigError(f"status_topic {status_topic!r} is not heron/{{site}}/{{agent_id}}/status")
            will = offline_will(parts.site, parts.agent_id)
        if will is not None:
            validate_topic(will[0])

        self.url: str = url
        self.client_id: str = client_id or f"heron-{uuid.uuid4().hex[:12]}"
        self._host, self._port = host, port
        self._keepalive = keepalive
        self._timeout = request_timeout_s
        self._backoff = (reconnect_min_delay_s, reconnect_max_delay_s, reconnect_max_attempts)
        self._has_will = will is not None

        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
        client.connect_timeout = request_timeout_s
        client.enable_logger(logging.getLogger(__name__ + ".paho"))
        if username is not None:
            client.username_pw_set(username, password)
        if use_tls:
            client.tls_set_context((tls or TlsOptions()).context())
        if will is not None:
            client.will_set(will[0], payload_bytes(will[1]), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self._client = client

        self._state: _State = "new"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._fd: int | None = None
        self._misc_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._opening: asyncio.Future[Any] | None = None  # the executor's blocking connect
        self._connack: asyncio.Future[None] | None = None
        self._closed_ack: asyncio.Future[None] | None = None
        self._connected_event: asyncio.Event | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._sub_mids: dict[int, tuple[_Filter, list[Subscription]]] = {}
        self._filters: dict[str, _Filter] = {}
        self._by_sid: dict[int, _Filter] = {}
        self._next_sid = 1
        self._sid_available = True
        self._fail_reason: str | None = None
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

    # ------------------------------------------------------------------------------------------
    # lifecycle
    # ------------------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect and bind to the running loop (idempotent). Raises BrokerError when the broker is
        unreachable or refuses us (no retry: reconnecting is for connections lost later)."""
        if self._state in ("closing", "closed"):
            raise BrokerError(f"MqttBroker {self.url} is closed")
        if self._state == "failed":
            raise BrokerError(f"MqttBroker {self.url} gave up: {self._fail_reason}")
        if self._state in ("connected", "reconnecting"):
            self._check_loop()
            return
        if self._state == "connecting":
            assert self._connected_event is not None
            await self.wait_connected()
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._connected_event = asyncio.Event()
        self._state = "connecting"
        try:
            await self._open()
        except BaseException:
            if self._state == "connecting":
                self._state = "new"
            self._connected_event.set()  # wake concurrent connect() calls; they re-check the state
            self._connected_event = asyncio.Event()
            raise
        if self._state != "connecting":  # closed while connecting
            raise BrokerError(f"MqttBroker {self.url} was closed while connecting")
        self._state = "connected"
        self._connected_event.set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until connected (e.g. after a reconnect); TimeoutError after ``timeout`` seconds
        (default the request timeout), BrokerError when closed or given up."""
        while True:
            if self._state == "connected":
                return
            if self._state in ("new", "closing", "closed", "failed"):
                raise self._unusable()
            assert self._connected_event is not None
            try:
                await asyncio.wait_for(self._connected_event.wait(), self._timeout if timeout is None else timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(f"{self.url}: not connected within the timeout") from None

    async def close(self, *, will: bool = True) -> None:
        """Disconnect, end every subscription. Idempotent. The broker publishes the last will (if set) unless
        ``will=False``: a plain disconnect, for a client that has just published its own final status."""
        if self._state in ("closing", "closed"):
            return
        was = self._state
        self._state = "closing"
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            # the loop we connected on is gone or elsewhere: no goodbye, just release everything
            self._hard_close()
            return
        task, self._reconnect_task = self._reconnect_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._opening is not None and not self._opening.done():
            await asyncio.wait([self._opening], timeout=self._timeout)
        if was == "connected" and self._client.socket() is not None and self._loop is not None:
            self._closed_ack = self._loop.create_future()
            with_will = self._has_will and will
            reason = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message" if with_will else "Success")
            rc = self._client.disconnect(reasoncode=reason)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                await asyncio.wait([self._closed_ack], timeout=min(self._timeout, 2.0))
        self._drop_socket()
        self._fail_pending("broker closed")
        self._end_all("broker closed")
        if self._connected_event is not None:
            self._connected_event.set()

    def _hard_close(self) -> None:
        sock = self._client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        self._fd = None
        self._end_all("broker closed")

    def _end_all(self, reason: str) -> None:
        for flt in self._filters.values():
            for sub in flt.subs:
                sub._fail(reason)
        self._filters.clear()
        self._by_sid.clear()
        self._state = "closed"

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
        if type(payload) is not bytes:
            payload = payload_bytes(payload)
        validate_topic(topic)
        if qos not in _QOS:
            raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
        if len(payload) + 4 * len(topic) + 10 > MAX_PACKET_BYTES:  # near the limit: count exactly
            size = _publish_packet_bytes(topic, payload, qos)
            if size > MAX_PACKET_BYTES:
                raise ValueError(f"publish to {topic!r}: a {len(payload)}-byte payload makes a {size}-byte packet, "
                                 f"over the limit of {MAX_PACKET_BYTES} bytes (MAX_PACKET_BYTES)")
        self._check_loop()
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
        self.published += 1
        self.published_bytes += len(payload)
        if qos == 0:
            return
        await self._request(info.mid, f"PUBACK of a publish to {topic!r}")

    async def subscribe(self, topic_filter: str, *, qos: int = 1, maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        """A new subscription; the broker's retained messages for the filter arrive first (retain=True)."""
        if self._state != "connected":
            raise self._unusable()
        validate_filter(topic_filter)
        if qos not in _QOS:
            raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
        self._check_loop()
        sub = Subscription(topic_filter, qos=qos, maxsize=maxsize)
        flt = self._filters.get(topic_filter)
        if flt is None:
            flt = _Filter(topic_filter, self._next_sid, qos)
            self._next_sid += 1
            self._filters[topic_filter] = flt
            self._by_sid[flt.sid] = flt
        flt.qos = max(flt.qos, qos)
        flt.subs.append(sub)
        try:
            await self._send_subscribe(flt, [sub])
        except BaseException:
            self._forget(flt, sub)
            raise
        return sub

    async def unsubscribe(self, subscription: Subscription) -> None:
        """Stop deliveries to ``subscription`` (the MQTT filter is dropped with its last user). Idempotent."""
        flt = self._filters.get(subscription.topic_filter)
        subscription._end()
        if flt is None or subscription not in flt.subs:
            return
        self._forget(flt, subscription)
        if flt.subs or self._state != "connected":
            return
        rc, mid = self._client.unsubscribe(flt.topic_filter)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerError(f"unsubscribe {flt.topic_filter!r} failed: {paho.error_string(rc)}")
        await self._request(mid, f"UNSUBACK for {flt.topic_filter!r}")

    def _forget(self, flt: _Filter, sub: Subscription) -> None:
        if sub in flt.subs:
            flt.subs.remove(sub)
        if sub in flt.retained_to:
            flt.retained_to.remove(sub)
        if not flt.subs and self._filters.get(flt.topic_filter) is flt:
            del self._filters[flt.topic_filter]
            self._by_sid.pop(flt.sid, None)

    async def _send_subscribe(self, flt: _Filter, retained_to: list[Subscription]) -> None:
        properties = None
        if self._sid_available:
            properties = Properties(PacketTypes.SUBSCRIBE)
            properties.SubscriptionIdentifier = flt.sid
        rc, mid = self._client.subscribe(flt.topic_filter, options=SubscribeOptions(qos=flt.qos), properties=properties)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerError(f"subscribe {flt.topic_filter!r} failed: {paho.error_string(rc)}")
        # on_subscribe points the retained burst that follows the SUBACK at `retained_to`
        self._sub_mids[mid] = (flt, retained_to)
        try:
            await self._request(mid, f"SUBACK for {flt.topic_filter!r}")
        finally:
            self._sub_mids.pop(mid, None)

    async def _request(self, mid: int, what: str) -> Any:
        """Wait for the acknowledgement of request ``mid`` (future keyed by mid, removed in finally)."""
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[mid] = future
        timer = self._loop.call_later(self._timeout, _expire, future, what)
        try:
            return await future
        finally:
            timer.cancel()
            self._pending.pop(mid, None)

    # ------------------------------------------------------------------------------------------
    # connection management
    # ------------------------------------------------------------------------------------------
    def _check_loop(self) -> None:
        if asyncio.get_running_loop() is not self._loop:
            raise BrokerError("MqttBroker used from a different event loop than the one it connected on")

    def _unusable(self) -> BrokerError:
        if self._state == "new":
            return BrokerError(f"MqttBroker {self.url} is not connected: call 'await broker.connect()' or use 'async with'")
        if self._state in ("closing", "closed"):
            return BrokerError(f"MqttBroker {self.url} is closed")
        if self._state == "failed":
            return BrokerError(f"MqttBroker {self.url} gave up reconnecting: {self._fail_reason}")
        return BrokerError(f"MqttBroker {self.url} is {self._state}; the connection was lost")

    async def _open(self) -> None:
        """One TCP + MQTT connect: the blocking socket connect runs in the default executor."""
        assert self._loop is not None
        loop = self._loop
        connack: asyncio.Future[None] = loop.create_future()
        self._connack = connack

        properties = Properties(PacketTypes.CONNECT)
        properties.MaximumPacketSize = MAX_PACKET_BYTES + _FORWARD_SLACK_BYTES

        def blocking_connect() -> MQTTErrorCode:
            return self._client.connect(self._host, self._port, keepalive=self._keepalive, clean_start=True,
                                        properties=properties)

        timer = loop.call_later(self._timeout, _expire, connack, f"CONNACK from {self.url}")
        try:
            self._opening = loop.run_in_executor(None, blocking_connect)
            try:
                rc = await asyncio.wait_for(asyncio.shield(self._opening), self._timeout + 1.0)
            except (OSError, ssl.SSLError, ValueError, asyncio.TimeoutError) as exc:
                raise BrokerError(f"cannot connect to {self.url}: {exc or type(exc).__name__}") from None
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise BrokerError(f"cannot connect to {self.url}: {paho.error_string(rc)}")
            await connack
        except BaseException:
            self._drop_socket()
            raise
        finally:
            timer.cancel()
            self._connack = None
            if not connack.done():
                connack.cancel()
            elif not connack.cancelled():
                connack.exception()  # retrieved: it was raised above or superseded by another error

    def _drop_socket(self) -> None:
        """Take the socket off the loop and close it (paho will open a new one on reconnect)."""
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = None
        if self._misc_task is not None:
            self._misc_task.cancel()
            self._misc_task = None
        sock = self._client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _connection_lost(self, reason: str) -> None:
        """Called on the loop when an established connection drops."""
        log.warning("%s: connection lost (%s); reconnecting", self.url, reason)
        self._state = "reconnecting"
        assert self._loop is not None
        self._connected_event = asyncio.Event()
        self._fail_pending(f"connection lost ({reason})")
        self._reconnect_task = self._loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        low, high, max_attempts = self._backoff
        delay = low
        attempt = 0
        while self._state == "reconnecting":
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            if self._state != "reconnecting":
                return
            attempt += 1
            try:
                await self._open()
                for flt in list(self._filters.values()):
                    await self._send_subscribe(flt, list(flt.subs))
            except BrokerError as exc:
                log.info("%s: reconnect attempt %d failed: %s", self.url, attempt, exc)
                if max_attempts is not None and attempt >= max_attempts:
                    self._give_up(f"{attempt} reconnect attempts failed, last: {exc}")
                    return
                delay = min(delay * 2.0, high)
                continue
            if self._state != "reconnecting":
                return
            self.reconnects += 1
            self._state = "connected"
            assert self._connected_event is not None
            self._connected_event.set()
            log.info("%s: reconnected, %d filters restored", self.url, len(self._filters))
            return

    def _give_up(self, reason: str) -> None:
        self._state = "failed"
        self._fail_reason = reason
        self._drop_socket()
        self._fail_pending(reason)
        for flt in self._filters.values():
            for sub in flt.subs:
                sub._fail(f"connection lost for good: {reason}")
        if self._connected_event is not None:
            self._connected_event.set()

    def _fail_pending(self, reason: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrokerError(f"{self.url}: {reason}"))
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(BrokerError(f"{self.url}: {reason}"))

    def _call_in_loop(self, func: Callable[..., None], *args: Any) -> None:
        """Run ``func`` now when on the loop's thread, else schedule it there (paho's connect runs
        in an executor thread and fires socket hooks from it)."""
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            func(*args)
        else:
            self._loop.call_soon_threadsafe(func, *args)

    # ------------------------------------------------------------------------------------------
    # paho socket hooks (the asyncio bridge)
    # ------------------------------------------------------------------------------------------
    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._call_in_loop(self._watch, sock.fileno())

    def _watch(self, fd: int) -> None:
        assert self._loop is not None
        if self._state == "closed":
            return
        self._fd = fd
        self._loop.add_reader(fd, self._on_readable)
        if self._misc_task is None or self._misc_task.done():
            self._misc_task = self._loop.create_task(self._misc_loop())

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        self._call_in_loop(self._unwatch, fd)

    def _unwatch(self, fd: int) -> None:
        assert self._loop is not None
        if fd >= 0:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        if self._fd == fd:
            self._fd = None
            if self._misc_task is not None:
                self._misc_task.cancel()
                self._misc_task = None

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call_in_loop(self._watch_write, sock.fileno())

    def _watch_write(self, fd: int) -> None:
        assert self._loop is not None
        if fd >= 0 and self._client.socket() is not None:
            self._loop.add_writer(fd, self._on_writable)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        self._call_in_loop(self._unwatch_write, fd)

    def _unwatch_write(self, fd: int) -> None:
        assert self._loop is not None
        if fd >= 0:
            self._loop.remove_writer(fd)

    def _on_readable(self) -> None:
        client = self._client
        try:
            rc = client.loop_read()
            sock = client.socket()
            # TLS may hold decrypted bytes the selector cannot see
            while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and isinstance(sock, ssl.SSLSocket) and sock.pending():
                rc = client.loop_read()
        except Exception as exc:  # paho may raise on a broken socket
            log.warning("%s: read failed: %r", self.url, exc)
            self._socket_broken(repr(exc))

    def _on_writable(self) -> None:
        try:
            self._client.loop_write()
        except Exception as exc:
            log.warning("%s: write failed: %r", self.url, exc)
            self._socket_broken(repr(exc))

    def _socket_broken(self, reason: str) -> None:
        self._drop_socket()
        if self._state == "connected":
            self._connection_lost(reason)

    async def _misc_loop(self) -> None:
        """Keepalive pings and timeouts (paho's loop_misc), once a second."""
        while True:
            await asyncio.sleep(_MISC_INTERVAL_S)
            if self._client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return

    # ------------------------------------------------------------------------------------------
    # paho protocol callbacks (VERSION2 signatures); all run on the loop thread except as noted
    # ------------------------------------------------------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        self._call_in_loop(self._handle_connack, reason, properties)

    def _handle_connack(self, reason: ReasonCode, properties: Any) -> None:
        future = self._connack
        if future is None or future.done():
            return
        if _reason_failed(reason):
            future.set_exception(BrokerError(f"{self.url} refused the connection: {reason}"))
            return
        available = getattr(properties, "SubscriptionIdentifierAvailable", 1) if properties is not None else 1
        self._sid_available = bool(available)
        future.set_result(None)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        self._call_in_loop(self._handle_disconnect, str(reason))

    def _handle_disconnect(self, reason: str) -> None:
        if self._closed_ack is not None and not self._closed_ack.done():
            self._closed_ack.set_result(None)
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(BrokerError(f"{self.url} closed the connection: {reason}"))
        if self._state == "connected":
            self._connection_lost(reason)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if len(message.payload) > MAX_PACKET_BYTES:  # a broker without max_packet_size: never queue it
            self.oversized += 1
            log.warning("%s: dropped a %d-byte payload on %r (over MAX_PACKET_BYTES = %d; %d dropped so far)",
                        self.url, len(message.payload), message.topic, MAX_PACKET_BYTES, self.oversized)
            return
        topic = message.topic
        retain = bool(message.retain)
        delivery = Delivery(topic, message.payload, retain)
        sids = getattr(message.properties, "SubscriptionIdentifier", None) if message.properties else None
        if sids:
            for sid in sids:
                flt = self._by_sid.get(sid)
                if flt is not None:
                    for sub in flt.retained_to if retain else flt.subs:
                        sub._put(delivery)
            return
        # a broker without subscription identifiers: match locally (overlapping filters may duplicate)
        for flt in self._filters.values():
            if topic_matches(flt.topic_filter, topic):
                for sub in flt.retained_to if retain else flt.subs:
                    sub._put(delivery)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        future = self._pending.get(mid)
        if future is None or future.done():
            return
        if _reason_failed(reason):
            future.set_exception(BrokerError(f"{self.url} rejected a publish: {reason}"))
        else:
            future.set_result(None)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        entry = self._sub_mids.get(mid)
        if entry is not None:
            flt, retained_to = entry
            flt.retained_to = [sub for sub in retained_to if sub in flt.subs]
        future = self._pending.get(mid)
        if future is None or future.done():
            return
        failed = [r for r in reasons if _reason_failed(r)]
        if failed:
            future.set_exception(BrokerError(f"{self.url} refused subscription: {failed[0]}"))
        else:
            future.set_result(None)

    def _on_unsubscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        future = self._pending.get(mid)
        if future is not None and not future.done():
            future.set_result(None)
