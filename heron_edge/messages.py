"""Wire messages and the MQTT topic scheme, in one place.

Every payload on the wire is one :class:`Envelope` encoded as compact JSON: who sent it, to whom
(``None`` = broadcast), for which step, when, until when it is valid, and one typed body chosen by
its ``kind``. Brokers carry bytes; receivers call :func:`decode`, which raises
:class:`DecodeError` (a :class:`~heron_edge.errors.MessageError`) with a ``reason`` the agent counts.

Topics (see :data:`TOPICS` for the full table the README lists): **every topic names its sender**::

    heron/{site}/{sender}/{kind}          everything an identity says (status, telemetry, price, orders, ...)
    heron/{site}/{agent_id}/cmd/{kind}    what is sent to one agent (setpoint, action): written by its upstream only

A receiver decodes with :func:`decode_on`, which also rejects an envelope whose ``sender`` is not the
topic's sender (or, on a command topic, whose ``recipient`` is not the topic's agent) and a body that
does not belong on the topic's kind. The broker's ACL lets each identity write only its own topics,
so who says what is enforced twice: by the broker, and by every receiver.

Every value is bounded at decode (see :data:`LIMITS`): finite, and within physically generous limits
(powers, prices, steps, list and string lengths); out-of-bounds is rejected with reason ``bounds``.
Receivers add tighter, context-dependent bounds (the step window, a sender's ratings).
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Final, Literal, NamedTuple, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from heron_edge.counters import RejectSource
from heron_edge.errors import ConfigError, MessageError

__all__ = [
    "BODY_TYPES",
    "DECODE_REASONS",
    "LIMITS",
    "ROOT",
    "TOPICS",
    "TOPIC_KINDS",
    "ActionBody",
    "AggregatesBody",
    "AnyBody",
    "Body",
    "BodyKind",
    "ClearingBody",
    "ClockBody",
    "ConsensusBody",
    "DecodeError",
    "DecodeReason",
    "Envelope",
    "ForecastBody",
    "ForecastValues",
    "Limits",
    "OrderBody",
    "PriceBody",
    "SetpointBody",
    "StatusBody",
    "TelemetryBody",
    "TopicParts",
    "TopicSpec",
    "Trade",
    "agent_filter",
    "agent_topic",
    "check_topic",
    "command_filter",
    "command_topic",
    "decode",
    "decode_on",
    "encode",
    "make_envelope",
    "offline_will",
    "parse_topic",
    "require_unexpired",
    "topics_markdown",
]

# --------------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Generous physical bounds every decoded value must respect (a sanity net, not a rating check).

    They keep arithmetic on received values finite (two asks of 1.5e308 would clear at inf); each
    receiver then applies its own tighter bounds (its step window, the sender's ratings).
    """

    power_mw: float = 1e5
    """|any power|, MW (100 GW: more than any feeder)."""
    price_usd_per_mwh: float = 1e6
    """|any price or fee|, USD/MWh."""
    value: float = 1e9
    """|any other number| (consensus estimates, telemetry values), in the sender's units."""
    step: int = 2**42
    """Largest step number: a timer clock's step is unix time / period, so steps run to ~1e11 for 10 ms periods."""
    items: int = 1024
    """Most entries in a list or mapping (trades, consensus vectors, telemetry values)."""
    text: int = 256
    """Longest identifier or message id, characters."""
    detail: int = 4096
    """Longest free text (status detail), characters."""


LIMITS: Final = Limits()

_Power = Annotated[float, Field(ge=-LIMITS.power_mw, le=LIMITS.power_mw)]
_Price = Annotated[float, Field(ge=-LIMITS.price_usd_per_mwh, le=LIMITS.price_usd_per_mwh)]
_Value = Annotated[float, Field(ge=-LIMITS.value, le=LIMITS.value)]
_Id = Annotated[str, Field(min_length=1, max_length=LIMITS.text)]

# --------------------------------------------------------------------------------------------
# Bodies
# --------------------------------------------------------------------------------------------

_FROZEN = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class SetpointBody(BaseModel):
    """An active (and optionally reactive) power setpoint for one agent's devices."""

    model_config = _FROZEN
    kind: Literal["setpoint"] = "setpoint"
    p_mw: _Power = Field(description="Active power setpoint, MW (generation positive).")
    q_mvar: _Power | None = Field(default=None, description="Reactive power setpoint, Mvar; None = unchanged.")


class PriceBody(BaseModel):
    """A price signal broadcast by the operator or the coordinator."""

    model_config = _FROZEN
    kind: Literal["price"] = "price"
    price_usd_per_mwh: _Price = Field(description="Energy price, USD/MWh.")
    congestion_adder_usd_per_mwh: _Price = Field(default=0.0, description="Congestion adder, USD/MWh.")


class OrderBody(BaseModel):
    """A bid (buy) or ask (sell) for peer-to-peer trading."""

    model_config = _FROZEN
    kind: Literal["order"] = "order"
    side: Literal["bid", "ask"]
    quantity_mw: float = Field(ge=0.0, le=LIMITS.power_mw, description="Quantity offered or wanted, MW (for one step).")
    limit_price_usd_per_mwh: _Price = Field(description="Limit price, USD/MWh.")


class Trade(BaseModel):
    """One matched trade between a buyer and a seller (part of a :class:`ClearingBody`)."""

    model_config = _FROZEN
    buyer: _Id
    seller: _Id
    quantity_mw: float = Field(ge=0.0, le=LIMITS.power_mw, description="Traded quantity, MW.")
    price_usd_per_mwh: _Price = Field(description="Trade price, USD/MWh.")


class ClearingBody(BaseModel):
    """The result of a market clearing: the price (None when nothing cleared) and the trades."""

    model_config = _FROZEN
    kind: Literal["clearing"] = "clearing"
    clearing_price_usd_per_mwh: _Price | None = Field(description="Clearing price, USD/MWh; None if no trade.")
    trades: list[Trade] = Field(max_length=LIMITS.items)
    fee_usd_per_mwh: _Price = Field(default=0.0, description="Market fee, USD/MWh.")


class ConsensusBody(BaseModel):
    """One agent's state in one round of a consensus iteration."""

    model_config = _FROZEN
    kind: Literal["consensus"] = "consensus"
    round: int = Field(ge=0, le=LIMITS.step, description="Iteration number within the step, from 0.")
    values: list[_Value] = Field(max_length=LIMITS.items,
                                 description="The agent's current estimate (units set by the protocol).")
    converged: bool = False


class TelemetryBody(BaseModel):
    """Local measurements of one agent, e.g. ``{"load_mw": 1.2, "soc": 0.5}`` (units in the key)."""

    model_config = _FROZEN
    kind: Literal["telemetry"] = "telemetry"
    values: dict[_Id, _Value] = Field(max_length=LIMITS.items)


class ActionBody(BaseModel):
    """An agent's action vector for one step (the environment's action space layout)."""

    model_config = _FROZEN
    kind: Literal["action"] = "action"
    values: list[_Value] = Field(max_length=LIMITS.items)


class StatusBody(BaseModel):
    """Liveness and health of an agent; published retained, with a last will of ``offline``."""

    model_config = _FROZEN
    kind: Literal["status"] = "status"
    state: Literal["online", "offline", "failsafe"]
    detail: str = Field(default="", max_length=LIMITS.detail)
    counters: dict[_Id, int] = Field(default_factory=dict, max_length=LIMITS.items,
                                     description="Counters of the sender (cycles, late steps, outbox, ...).")
    rejected: dict[RejectSource, dict[_Id, int]] = Field(
        default_factory=dict, description="Rejected messages by source (message, command, clock, protocol, meter, forecast) "
        "and reason.")
    cycle_ms: float | None = Field(default=None, ge=0.0, le=LIMITS.value, description="Last measured cycle time, ms.")


class ForecastValues(BaseModel):
    """One microgrid's forecast for one step (MW): load (+ consumed), PV and wind power available."""

    model_config = _FROZEN
    load_mw: _Power
    pv_mw: float = Field(ge=0.0, le=LIMITS.power_mw)
    wind_mw: float = Field(ge=0.0, le=LIMITS.power_mw)


class ForecastBody(BaseModel):
    """An external forecaster's forecast of the envelope's step, per microgrid (a forecaster serving one
    microgrid sends a mapping of one entry)."""

    model_config = _FROZEN
    kind: Literal["forecast"] = "forecast"
    microgrids: dict[_Id, ForecastValues] = Field(max_length=LIMITS.items)


class AggregatesBody(BaseModel):
    """The system operator's per-step aggregates for every agent's observation: the site means of the microgrids'
    telemetry of the step and the day-ahead price outlook of its calendar day (``heron_edge.observations``)."""

    model_config = _FROZEN
    kind: Literal["aggregates"] = "aggregates"
    reporting: int = Field(ge=0, le=LIMITS.step, description="Microgrids whose telemetry of this step the means hold "
                           "(the others' last values stand in).")
    mean_load_mw: _Power = Field(description="Mean load of the step, MW.")
    mean_pv_mw: _Power = Field(description="Mean PV power available, MW.")
    mean_wind_mw: _Power = Field(description="Mean wind power available, MW.")
    mean_soc: float = Field(ge=0.0, le=1.0, description="Mean battery state of charge, fraction.")
    mean_exchange_mw: _Power = Field(description="Mean exchange of the last step, MW (+ import).")
    price_day_min_usd_per_mwh: _Price
    price_day_mean_usd_per_mwh: _Price
    price_day_max_usd_per_mwh: _Price
    price_quantile: float = Field(ge=0.0, le=1.0, description="Share of the day's prices below this step's.")
    price_rest_min_usd_per_mwh: _Price = Field(description="Lowest price from this step to the day's end.")
    price_rest_max_usd_per_mwh: _Price = Field(description="Highest price from this step to the day's end.")


class ClockBody(BaseModel):
    """A step announcement, or (``done=True``) an agent's "I finished step N" in lock-step runs."""

    model_config = _FROZEN
    kind: Literal["clock"] = "clock"
    step: int = Field(ge=0, le=LIMITS.step)
    done: bool = False


AnyBody = (
    SetpointBody
    | PriceBody
    | OrderBody
    | ClearingBody
    | ConsensusBody
    | TelemetryBody
    | ActionBody
    | StatusBody
    | ClockBody
    | AggregatesBody
    | ForecastBody
)
"""Any message body (for type hints)."""

Body = Annotated[AnyBody, Field(discriminator="kind")]
"""Any message body, discriminated: pydantic picks the model from the ``kind`` field."""

BodyKind = Literal["setpoint", "price", "order", "clearing", "consensus", "telemetry", "action", "status", "clock",
                   "forecast", "aggregates"]

BODY_TYPES: Final[dict[str, type[BaseModel]]] = {
    get_args(model.model_fields["kind"].annotation)[0]: model for model in get_args(AnyBody)
}
"""kind -> body model."""

if set(BODY_TYPES) != set(get_args(BodyKind)):  # checked at import, also under python -O
    raise TypeError("BodyKind and the Body union disagree")

# --------------------------------------------------------------------------------------------
# Envelope
# --------------------------------------------------------------------------------------------


_id_prefix = ""
_id_counter = itertools.count()


def _reseed_ids() -> None:
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(8).hex()
    _id_counter = itertools.count()


_reseed_ids()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_ids)  # a forked child must not repeat its parent's ids


def _new_id() -> str:
    """32 hex digits: a random 64-bit prefix per process and a counter; unique like uuid4, without a syscall per message."""
    return f"{_id_prefix}{next(_id_counter):016x}"


class Envelope(BaseModel):
    """One wire message: routing and timing metadata around one typed body."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    id: str = Field(default_factory=_new_id, min_length=1, max_length=LIMITS.text,
                    description="Message id (32 hex digits, unique per message).")
    sender: _Id
    recipient: _Id | None = Field(default=None, description="Recipient agent id; None = broadcast.")
    step: int = Field(ge=0, le=LIMITS.step, description="Environment / control step this message belongs to.")
    ts: float = Field(default_factory=time.time, ge=0.0, le=1e11, description="Creation time, unix seconds.")
    expires: float | None = Field(default=None, ge=0.0, le=1e11, description="Not valid after this time, unix seconds.")
    body: Body
    mac: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="HMAC-SHA256 (hex) over the encoding without this field; see heron_edge.security.auth. "
        "Absent from the wire when None, so unsigned messages encode exactly as before.",
    )

    @property
    def kind(self) -> BodyKind:
        """The body's kind (``"setpoint"``, ``"price"``, ...)."""
        return self.body.kind

    def is_expired(self, now: float | None = None) -> bool:
        """True when ``expires`` is set and lies before ``now`` (default: the current time)."""
        if self.expires is None:
            return False
        return self.expires < (time.time() if now is None else now)


# one public TypeAdapter for every message of every step: a bound method call into pydantic-core, without
# model_validate_json's extra Python layer (3.9 against 4.2 us per telemetry decode, measured here)
_ENVELOPE: Final = TypeAdapter(Envelope)
_VALIDATE_JSON: Final = _ENVELOPE.validate_json
_VALIDATE_PYTHON: Final = _ENVELOPE.validate_python
_TO_JSON: Final = _ENVELOPE.dump_json
_NO_MAC: Final = {"mac"}

DecodeReason = Literal["not_json", "schema", "unknown_kind", "expired", "bounds", "sender", "topic"]
DECODE_REASONS: Final[tuple[DecodeReason, ...]] = get_args(DecodeReason)


class DecodeError(MessageError):
    """A payload was rejected; ``reason`` says why (one of :data:`DECODE_REASONS`): ``bounds`` = a value
    outside :data:`LIMITS` (or a receiver's own bounds), ``sender`` = the envelope's sender (or recipient)
    is not the one its topic names, ``topic`` = the body does not belong on the topic's kind."""

    def __init__(self, reason: DecodeReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: DecodeReason = reason


def encode(envelope: Envelope) -> bytes:
    """Compact JSON bytes of an envelope (what goes on the wire); ``mac`` only when set."""
    if envelope.mac is None:
        return _TO_JSON(envelope, exclude=_NO_MAC)
    return _TO_JSON(envelope)


def decode(payload: bytes | bytearray | memoryview | str, *, now: float | None = None) -> Envelope:
    """Parse and validate one wire payload in a single pass.

    Raises :class:`DecodeError` with ``reason`` ``not_json``, ``schema``, ``unknown_kind``, ``bounds``
    (a value outside :data:`LIMITS`) or ``expired`` (``expires`` before ``now``, default the current time).
    Receivers of bus traffic use :func:`decode_on`, which also binds the sender to the topic.
    """
    if isinstance(payload, memoryview):
        payload = payload.tobytes()
    try:
        envelope = _VALIDATE_JSON(payload)
    except ValidationError as exc:
        raise _decode_error(exc) from None
    return require_unexpired(envelope, now)


def require_unexpired(envelope: Envelope, now: float | None = None) -> Envelope:
    """``envelope``, or :class:`DecodeError` ``expired`` when it expired before ``now`` (default: the current time)."""
    if envelope.is_expired(now):
        raise DecodeError("expired", f"message {envelope.id} from {envelope.sender} expired at {envelope.expires}")
    return envelope


def _decode_error(exc: ValidationError) -> DecodeError:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return DecodeError("not_json", first["msg"])
    for error in errors:
        if error["type"] == "union_tag_invalid" and error["loc"] == ("body",):
            return DecodeError("unknown_kind", error["msg"])
    summary = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in errors[:3])
    if all(error["type"] in _BOUND_ERRORS for error in errors):
        return DecodeError("bounds", summary)
    return DecodeError("schema", summary)


_BOUND_ERRORS: Final = frozenset({
    "greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number", "too_long", "too_short",
    "string_too_long", "string_too_short",
})


def make_envelope(
    sender: str,
    body: AnyBody,
    *,
    step: int,
    recipient: str | None = None,
    ttl_s: float | None = None,
) -> Envelope:
    """An envelope stamped now; with ``ttl_s`` it expires ``ttl_s`` seconds from now."""
    now = time.time()
    envelope: Envelope = _VALIDATE_PYTHON({
        "id": _new_id(), "sender": sender, "recipient": recipient, "step": step, "ts": now,
        "expires": None if ttl_s is None else now + ttl_s, "body": body,
    })
    return envelope


# --------------------------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------------------------

ROOT: Final = "heron"
_CMD: Final = "cmd"
_FORBIDDEN = frozenset("/+#\0")

TOPIC_KINDS: Final[dict[str, frozenset[BodyKind]]] = {
    "status": frozenset({"status"}),
    "telemetry": frozenset({"telemetry"}),
    "meter": frozenset({"telemetry"}),
    "action": frozenset({"action"}),
    "price": frozenset({"price"}),
    "market": frozenset({"order"}),
    "clearing": frozenset({"clearing"}),
    "consensus": frozenset({"consensus"}),
    "clock": frozenset({"clock"}),
    "done": frozenset({"clock"}),
    "setpoint": frozenset({"setpoint"}),
    "aggregates": frozenset({"aggregates"}),
    "forecast": frozenset({"forecast"}),
}
"""Topic kind (last level) -> the body kinds that may travel on it; anything else is rejected (``topic``)."""


def _level(name: str, what: str) -> str:
    if not isinstance(name, str) or not name or any(c in _FORBIDDEN for c in name):
        raise ConfigError(f"{what} {name!r} must be a non-empty topic level without '/', '+', '#'")
    return name


@lru_cache(maxsize=8192)
def agent_topic(site: str, sender: str, kind: str) -> str:
    """``heron/{site}/{sender}/{kind}``: what ``sender`` says (status, telemetry, price, orders, clock, ...)."""
    if sender == _CMD:
        raise ConfigError(f"id {_CMD!r} is reserved (command topics)")
    return f"{ROOT}/{_level(site, 'site')}/{_level(sender, 'agent id')}/{_level(kind, 'kind')}"


@lru_cache(maxsize=8192)
def command_topic(site: str, agent_id: str, kind: str) -> str:
    """``heron/{site}/{agent_id}/cmd/{kind}``: what is sent to one agent (by its upstream only)."""
    return f"{ROOT}/{_level(site, 'site')}/{_level(agent_id, 'agent id')}/{_CMD}/{_level(kind, 'kind')}"


def agent_filter(site: str, kind: str) -> str:
    """``heron/{site}/+/{kind}``: the same kind from every sender (e.g. every agent's status)."""
    return f"{ROOT}/{_level(site, 'site')}/+/{_level(kind, 'kind')}"


def command_filter(site: str, agent_id: str) -> str:
    """``heron/{site}/{agent_id}/cmd/+``: every command sent to one agent."""
    return f"{ROOT}/{_level(site, 'site')}/{_level(agent_id, 'agent id')}/{_CMD}/+"


class TopicParts(NamedTuple):
    """A parsed heron topic: ``agent_id`` is the sender, or on a command topic the recipient."""

    site: str
    agent_id: str
    kind: str
    command: bool


@lru_cache(maxsize=8192)
def parse_topic(topic: str) -> TopicParts | None:
    """Split a heron topic into its parts; None if it does not follow the scheme."""
    levels = topic.split("/")
    if len(levels) == 4 and levels[0] == ROOT and levels[2] != _CMD and all(levels):
        return TopicParts(levels[1], levels[2], levels[3], False)
    if len(levels) == 5 and levels[0] == ROOT and levels[3] == _CMD and all(levels):
        return TopicParts(levels[1], levels[2], levels[4], True)
    return None


def check_topic(topic: str, envelope: Envelope) -> Envelope:
    """``envelope``, or :class:`DecodeError`: ``sender`` when the topic names another sender (on a command
    topic: another recipient), ``topic`` when the topic is not a heron topic or its kind does not carry
    this body."""
    parts = parse_topic(topic)
    if parts is None:
        raise DecodeError("topic", f"{topic!r} is not a heron topic")
    if parts.command:
        if envelope.recipient not in (None, parts.agent_id):
            raise DecodeError("sender", f"command on {topic} addressed to {envelope.recipient!r}")
    elif envelope.sender != parts.agent_id:
        raise DecodeError("sender", f"{envelope.sender!r} published on {topic}, which is {parts.agent_id!r}'s")
    allowed = TOPIC_KINDS.get(parts.kind)
    body_kind = envelope.body.kind
    if (allowed is None or body_kind not in allowed):
        raise DecodeError("topic", f"a {body_kind} body on {topic}")
    if isinstance(envelope.body, ClockBody) and envelope.body.step != envelope.step:
        raise DecodeError("schema", f"clock body step {envelope.body.step} in an envelope of step {envelope.step}")
    if parts.kind == "done" and not (isinstance(envelope.body, ClockBody) and envelope.body.done):
        raise DecodeError("topic", f"a step announcement on {topic}")
    if parts.kind == "clock" and isinstance(envelope.body, ClockBody) and envelope.body.done:
        raise DecodeError("topic", f"a done report on {topic}")
    return envelope


_DECODED_CAPACITY: Final = 2048
"""The decode cache holds at most this many envelopes: a step's messages of a site of a thousand microgrids."""
_DECODED_BYTES: Final = 2 << 20
"""... and at most this many payload bytes (entries of at most 1/128 of it each)."""


class _DecodeOnce:
    """Validates each distinct payload once per process: on one broker, every subscriber of a topic (the operator and
    the sender's neighbours, a consensus node's neighbours) receives the same bytes.

    Envelopes are immutable, so sharing one between receivers is safe. Expiry is checked on every use (it depends on
    the time), the topic binding whenever the topic differs from the one the payload last passed on, and a rejected
    payload is decoded again (and rejected again). Bounded in entries and in bytes (first in, first out), so large
    payloads cannot grow it.
    """

    def __init__(self) -> None:
        self._envelopes: dict[bytes, tuple[Envelope, str]] = {}  # payload -> (envelope, a topic it passed on)
        self._order: deque[bytes] = deque()
        self.bytes = 0
        self._lock = threading.Lock()  # insertions only: a hit is one dict lookup

    def __call__(self, topic: str, payload: bytes | bytearray | memoryview | str, now: float | None) -> Envelope:
        if type(payload) is not bytes:
            return check_topic(topic, decode(payload, now=now))
        cached = self._envelopes.get(payload)
        if cached is not None:
            envelope, checked = cached
            if envelope.expires is not None:  # a cached envelope may have expired since
                require_unexpired(envelope, now)
            return envelope if topic == checked else check_topic(topic, envelope)
        envelope = check_topic(topic, decode(payload, now=now))
        size = len(payload)
        if size <= _DECODED_BYTES // 128:
            with self._lock:
                if payload not in self._envelopes:
                    while self._order and (len(self._order) >= _DECODED_CAPACITY or self.bytes + size > _DECODED_BYTES):
                        oldest = self._order.popleft()
                        del self._envelopes[oldest]
                        self.bytes -= len(oldest)
                    self._envelopes[payload] = (envelope, topic)
                    self._order.append(payload)
                    self.bytes += size
        return envelope


_decode_once: Final = _DecodeOnce()


def decode_on(topic: str, payload: bytes | bytearray | memoryview | str, *, now: float | None = None) -> Envelope:
    """:func:`decode` a payload received on ``topic`` and :func:`check_topic` it: what every receiver calls.

    Identical payloads are validated once per process (a bounded cache); expiry is checked on every call.
    """
    return _decode_once(topic, payload, now)


def offline_will(site: str, agent_id: str, *, detail: str = "connection lost") -> tuple[str, bytes]:
    """``(status topic, payload)`` of the last will marking ``agent_id`` offline (for ``MqttBroker(will=...)``)."""
    body = StatusBody(state="offline", detail=detail)
    return agent_topic(site, agent_id, "status"), encode(make_envelope(agent_id, body, step=0))


@dataclass(frozen=True)
class TopicSpec:
    """One row of the topic table: who publishes what, who listens, with which QoS and retain flag."""

    pattern: str
    body_kinds: tuple[BodyKind, ...]
    publisher: str
    subscribers: str
    qos: int
    retained: bool
    note: str = ""


TOPICS: Final[tuple[TopicSpec, ...]] = (
    TopicSpec("heron/{site}/{id}/status", ("status",), "every identity (last will: offline)",
              "upstream, operators, monitoring", 1, True,
              "online / offline / failsafe, counters, cycle time; a clean stop publishes its own offline"),
    TopicSpec("heron/{site}/{agent}/telemetry", ("telemetry",), "the agent", "its upstream, its site-graph neighbours, loggers", 1,
              False, "local measurements each cycle"),
    TopicSpec("heron/{site}/{agent}/action", ("action",), "the agent", "loggers", 1, False,
              "the action the agent applied this step"),
    TopicSpec("heron/{site}/{agent}/cmd/setpoint", ("setpoint",), "its upstream (the operator) only", "the agent", 1,
              False, "carries an expiry; a stale setpoint is never applied"),
    TopicSpec("heron/{site}/{agent}/cmd/action", ("action",), "its upstream (the operator) only", "the agent", 1,
              False, "an external policy service's action for the envelope's step (with an expiry): applied when fresh, else the agent's own policy decides"),
    TopicSpec("heron/{site}/{operator}/price", ("price",), "the system operator", "all agents", 1, False,
              "price signal for the step"),
    TopicSpec("heron/{site}/{agent}/market", ("order",), "each trader", "the market (the operator)", 1, False,
              "peer-to-peer trading: the agent's bid or ask"),
    TopicSpec("heron/{site}/{operator}/aggregates", ("aggregates",), "the system operator", "all agents", 1, False,
              "once per step: site means of the telemetry and the day's price outlook (observation features)"),
    TopicSpec("heron/{site}/{operator}/clearing", ("clearing",), "the market (the operator)", "the traders", 1,
              False, "the step's clearing price and trades"),
    TopicSpec("heron/{site}/{agent}/consensus", ("consensus",), "each participant", "its neighbours", 1, False,
              "one message per agent per round"),
    TopicSpec("heron/{site}/{plant}/clock", ("clock",), "the clock (SIL plant, site orchestrator)", "everyone", 1,
              False, "lock-step: step N starts"),
    TopicSpec("heron/{site}/{id}/done", ("clock",), "the operator and each agent", "the clock", 1, False,
              "lock-step: this identity finished step N"),
    TopicSpec("heron/{site}/{plant}/meter", ("telemetry",), "the feeder-head meter (the SIL plant)", "the operator",
              1, False, "feeder_head_mw of the last step (price_signal's congestion rule)"),
    TopicSpec("heron/{site}/{forecaster}/forecast", ("forecast",), "an external forecaster (the SIL plant: exact)",
              "gateways with an mqtt forecast", 1, False,
              "load, PV and wind of the envelope's step per microgrid (MW), sent before the step starts"),
)
"""The topic scheme as a table (the README lists it)."""


def topics_markdown() -> str:
    """:data:`TOPICS` as a Markdown table (what the README lists)."""
    rows = [
        "| topic | body kinds | published by | subscribed by | QoS | retained | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in TOPICS:
        kinds = ", ".join(spec.body_kinds)
        retained = "yes" if spec.retained else "no"
        rows.append(
            f"| `{spec.pattern}` | {kinds} | {spec.publisher} | {spec.subscribers} | {spec.qos} | {retained} | {spec.note} |"
        )
    return "\n".join(rows) + "\n"
