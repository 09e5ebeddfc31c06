"""PahoBridge: a paho-mqtt 2.x client driven by the asyncio event loop, with no paho thread.

paho's socket hooks put its socket on the loop (``add_reader`` / ``add_writer``) and a small task
calls ``loop_misc`` for keepalives, as aiomqtt 2.x does, so many clients share one loop. Every
request (CONNECT, PUBLISH QoS 1/2, SUBSCRIBE, UNSUBSCRIBE) waits on a future keyed by its message
id, removed in ``finally``, with a finite timeout. TCP_NODELAY is set on every socket (Nagle
otherwise stalls QoS-1 round trips at ~40 ms). paho errors and return codes become BrokerError.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from heron_edge.brokers.base import payload_bytes
from heron_edge.errors import BrokerError, UsageError

__all__ = ["PahoBridge", "new_client"]

log = logging.getLogger("heron_edge.brokers.mqtt")  # MqttBroker's logger: one name to configure

_MISC_INTERVAL_S: Final = 1.0


def new_client(
    client_id: str,
    *,
    username: str | None,
    password: str | None,
    ssl_context: ssl.SSLContext | None,
    will: tuple[str, bytes] | None,
    connect_timeout_s: float,
) -> paho.Client:
    """An MQTT 5 paho client without its own reconnect logic; the will is sent retained with QoS 1."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
        reconnect_on_failure=False,
    )
    client.connect_timeout = connect_timeout_s
    client.enable_logger(logging.getLogger("heron_edge.brokers.mqtt.paho"))
    if username is not None:
        client.username_pw_set(username, password)
    if ssl_context is not None:
        client.tls_set_context(ssl_context)
    if will is not None:
        client.will_set(will[0], payload_bytes(will[1]), qos=1, retain=True)
    return client


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def _reason_failed(reason: Any) -> bool:
    return bool(getattr(reason, "is_failure", False)) or (isinstance(reason, int) and reason >= 0x80)


def _expire(future: asyncio.Future[Any], what: str) -> None:
    if not future.done():
        future.set_exception(BrokerError(f"timed out waiting for {what}"))


@dataclass
class _Request:
    """A request waiting for its acknowledgement; ``on_ack`` runs as the ack is read, before anything after it."""

    future: asyncio.Future[None]
    on_ack: Callable[[], None] | None
    deadline: float
    """Event-loop time after which it fails (every request has the same timeout: later requests, later deadlines)."""
    what: str


class PahoBridge:
    """Drives ``client`` on the event loop it is bound to and turns its requests into awaitables.

    ``on_message`` gets every received PUBLISH; ``on_lost`` is told when the socket breaks or the
    broker disconnects (whether that loses a session is the caller's business).
    """

    def __init__(
        self,
        client: paho.Client,
        *,
        url: str,
        timeout_s: float,
        on_message: Callable[[paho.MQTTMessage], None],
        on_lost: Callable[[str], None],
    ) -> None:
        self.client = client
        self._url = url
        self._timeout = timeout_s
        self._deliver = on_message
        self._lost = on_lost
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

        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._retired = False
        self._fd: int | None = None
        self._misc_task: asyncio.Task[None] | None = None
        self._opening: asyncio.Future[Any] | None = None  # the executor's blocking connect
        self._connack: asyncio.Future[None] | None = None
        self._closed_ack: asyncio.Future[None] | None = None
        self._pending: dict[int, _Request] = {}  # in the order sent, so in the order of their deadlines
        self._sweep: asyncio.TimerHandle | None = None  # one timer, at the oldest pending request's deadline
        self._sid_available = True

    # ------------------------------------------------------------------------------------------
    # the loop
    # ------------------------------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop bound by :meth:`bind`."""
        if self._loop is None:
            raise UsageError("PahoBridge used before bind()")
        return self._loop

    def bind(self) -> None:
        """Bind to the running loop: the socket, the timers and every future live there."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._sweep = None

    def check_loop(self) -> None:
        """BrokerError unless called on the bound loop."""
        if asyncio.get_running_loop() is not self._loop:
            raise BrokerError("MqttBroker used from a different event loop than the one it connected on")

    def on_foreign_loop(self) -> bool:
        """True when bound to a loop other than the running one (gone, or in another thread)."""
        return self._loop is not None and self._loop is not asyncio.get_running_loop()

    def _call_in_loop(self, func: Callable[..., None], *args: Any) -> None:
        """Run ``func`` now when on the loop's thread, else schedule it there (paho's connect runs
        in an executor thread and fires socket hooks from it)."""
        if threading.get_ident() == self._loop_thread:
            func(*args)
        else:
            self.loop.call_soon_threadsafe(func, *args)

    # ------------------------------------------------------------------------------------------
    # requests
    # ------------------------------------------------------------------------------------------
    async def open(self, host: str, port: int, *, keepalive: int, max_packet_size: int) -> None:
        """One TCP + MQTT connect (clean start, announcing ``max_packet_size``) up to the CONNACK; the
        blocking socket connect runs in the default executor. BrokerError when unreachable or refused."""
        loop = self.loop
        connack: asyncio.Future[None] = loop.create_future()
        self._connack = connack
        properties = _properties(PacketTypes.CONNECT)
        properties.MaximumPacketSize = max_packet_size

        def blocking_connect() -> MQTTErrorCode:
            return self.client.connect(host, port, keepalive=keepalive, clean_start=True, properties=properties)

        timer = loop.call_later(self._timeout, _expire, connack, f"CONNACK from {self._url}")
        try:
            self._opening = loop.run_in_executor(None, blocking_connect)
            try:
                rc = await asyncio.wait_for(asyncio.shield(self._opening), self._timeout + 1.0)
            except (OSError, ssl.SSLError, ValueError, TimeoutError) as exc:
                raise BrokerError(f"cannot connect to {self._url}: {exc or type(exc).__name__}") from None
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise BrokerError(f"cannot connect to {self._url}: {paho.error_string(rc)}")
            await connack
        except BaseException:
            self.drop_socket()
            raise
        finally:
            timer.cancel()
            self._connack = None
            if not connack.done():
                connack.cancel()
            elif not connack.cancelled():
                connack.exception()  # retrieved: it was raised above or superseded by another error

    async def wait_opening(self) -> None:
        """Let a blocking connect still running in the executor finish (at most the request timeout)."""
        if self._opening is not None and not self._opening.done():
            await asyncio.wait([self._opening], timeout=self._timeout)

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> int:
        """Send a PUBLISH; its message id (await :meth:`request` for the ack of QoS 1/2)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
        return info.mid

    def subscribe(self, topic_filter: str, *, qos: int, sid: int) -> int:
        """Send a SUBSCRIBE with subscription identifier ``sid`` (if the broker supports them); its message id."""
        properties = None
        if self._sid_available:
            properties = _properties(PacketTypes.SUBSCRIBE)
            properties.SubscriptionIdentifier = sid
        rc, mid = self.client.subscribe(topic_filter, options=SubscribeOptions(qos=qos), properties=properties)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerError(f"subscribe {topic_filter!r} failed: {paho.error_string(rc)}")
        return mid

    def unsubscribe(self, topic_filter: str) -> int:
        """Send an UNSUBSCRIBE; its message id."""
        rc, mid = self.client.unsubscribe(topic_filter)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerError(f"unsubscribe {topic_filter!r} failed: {paho.error_string(rc)}")
        return mid

    async def request(self, mid: int, what: str, *, on_ack: Callable[[], None] | None = None) -> None:
        """Wait for the acknowledgement of request ``mid`` (a future keyed by mid, removed in finally);
        BrokerError when refused, failed or not acknowledged within the request timeout."""
        loop = self.loop
        future: asyncio.Future[None] = loop.create_future()
        request = self._pending[mid] = _Request(future, on_ack, loop.time() + self._timeout, what)
        if self._sweep is None:  # one timer for every pending request, not one each (hundreds per step)
            self._sweep = loop.call_at(request.deadline, self._expire_due)
        try:
            await future
        finally:
            self._pending.pop(mid, None)
            if not self._pending and self._sweep is not None:  # nothing left to time out: hold no timer
                self._sweep.cancel()
                self._sweep = None

    def _expire_due(self) -> None:
        """Fail the requests whose deadline has passed; wait for the next one's."""
        self._sweep = None
        now = self.loop.time()
        for request in list(self._pending.values()):
            if request.deadline > now:
                self._sweep = self.loop.call_at(request.deadline, self._expire_due)
                return
            _expire(request.future, request.what)

    def fail_pending(self, reason: str) -> None:
        """Fail every waiting request and a pending CONNACK with BrokerError(reason)."""
        for request in self._pending.values():
            if not request.future.done():
                request.future.set_exception(BrokerError(f"{self._url}: {reason}"))
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(BrokerError(f"{self._url}: {reason}"))

    async def disconnect(self, *, with_will: bool) -> None:
        """Send DISCONNECT (asking the broker to publish the will, or not) and wait briefly for the close."""
        if self.client.socket() is None or self._loop is None:
            return
        self._closed_ack = self._loop.create_future()
        reason = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message" if with_will else "Success")
        if self.client.disconnect(reasoncode=reason) == MQTTErrorCode.MQTT_ERR_SUCCESS:
            await asyncio.wait([self._closed_ack], timeout=min(self._timeout, 2.0))

    # ------------------------------------------------------------------------------------------
    # the socket on the loop
    # ------------------------------------------------------------------------------------------
    def drop_socket(self) -> None:
        """Take the socket off the loop and close it (paho opens a new one on the next connect)."""
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = None
        if self._misc_task is not None:
            self._misc_task.cancel()
            self._misc_task = None
        self.abandon()

    def abandon(self) -> None:
        """Close the socket without touching the loop (the loop it was bound to is gone or elsewhere)."""
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._fd = None

    def retire(self) -> None:
        """Put no further socket on the loop (a connect still running in the executor may open one later)."""
        self._retired = True

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._call_in_loop(self._watch, sock.fileno())

    def _watch(self, fd: int) -> None:
        if self._retired:
            return
        self._fd = fd
        self.loop.add_reader(fd, self._on_readable)
        if self._misc_task is None or self._misc_task.done():
            self._misc_task = self.loop.create_task(self._misc_loop())

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call_in_loop(self._unwatch, sock.fileno())

    def _unwatch(self, fd: int) -> None:
        if fd >= 0:
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
        if self._fd == fd:
            self._fd = None
            if self._misc_task is not None:
                self._misc_task.cancel()
                self._misc_task = None

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call_in_loop(self._watch_write, sock.fileno())

    def _watch_write(self, fd: int) -> None:
        if fd >= 0 and self.client.socket() is not None:
            self.loop.add_writer(fd, self._on_writable)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call_in_loop(self._unwatch_write, sock.fileno())

    def _unwatch_write(self, fd: int) -> None:
        if fd >= 0:
            self.loop.remove_writer(fd)

    def _on_readable(self) -> None:
        client = self.client
        try:
            rc = client.loop_read()
            sock = client.socket()
            # TLS may hold decrypted bytes the selector cannot see
            while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and isinstance(sock, ssl.SSLSocket) and sock.pending():
                rc = client.loop_read()
        except Exception as exc:  # paho may raise on a broken socket
            log.warning("%s: read failed: %r", self._url, exc)
            self._socket_broken(repr(exc))

    def _on_writable(self) -> None:
        try:
            self.client.loop_write()
        except Exception as exc:
            log.warning("%s: write failed: %r", self._url, exc)
            self._socket_broken(repr(exc))

    def _socket_broken(self, reason: str) -> None:
        self.drop_socket()
        self._lost(reason)

    async def _misc_loop(self) -> None:
        """Keepalive pings and timeouts (paho's loop_misc), once a second."""
        while True:
            await asyncio.sleep(_MISC_INTERVAL_S)
            if self.client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return

    # ------------------------------------------------------------------------------------------
    # paho protocol callbacks (VERSION2 signatures), on the loop thread except as noted
    # ------------------------------------------------------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        self._call_in_loop(self._handle_connack, reason, properties)

    def _handle_connack(self, reason: ReasonCode, properties: Any) -> None:
        future = self._connack
        if future is None or future.done():
            return
        if _reason_failed(reason):
            future.set_exception(BrokerError(f"{self._url} refused the connection: {reason}"))
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
            self._connack.set_exception(BrokerError(f"{self._url} closed the connection: {reason}"))
        self._lost(reason)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._deliver(message)

    def _settle(self, mid: int, failure: str | None) -> None:
        """Acknowledge request ``mid``: run its ``on_ack``, then resolve it (BrokerError(failure) if refused)."""
        request = self._pending.get(mid)
        if request is None:
            return
        if request.on_ack is not None:
            request.on_ack()
        if request.future.done():
            return
        if failure is None:
            request.future.set_result(None)
        else:
            request.future.set_exception(BrokerError(failure))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        self._settle(mid, f"{self._url} rejected a publish: {reason}" if _reason_failed(reason) else None)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        failed = [r for r in reasons if _reason_failed(r)]
        self._settle(mid, f"{self._url} refused subscription: {failed[0]}" if failed else None)

    def _on_unsubscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        self._settle(mid, None)
