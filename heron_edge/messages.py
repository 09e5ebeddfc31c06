"""Wire messages and the MQTT topic scheme, in one place.

Every payload on the wire is one :class:`Envelope` encoded as compact JSON: who sent it, to whom
(``None`` = broadcast), for which step, when, until when it is valid, and one typed body chosen by
its ``kind``. Brokers carry bytes; receivers call :func:`decode`, which raises
:class:`DecodeError` (a :class:`~heron_edge.errors.MessageError`) with a ``reason`` the agent counts.

Topics (see :data:`TOPICS` for the full table the README lists)::

    heron/{site}/{agent_id}/{kind}        what an agent publishes about itself (status, telemetry)
    heron/{site}/{agent_id}/cmd/{kind}    what is sent to one agent (setpoint, ...)
    heron/{site}/bus/{kind}               broadcasts (price, market, consensus, clock)
"""
from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Final, Literal, NamedTuple, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from heron_edge.errors import ConfigError, MessageError

__all__ = [
    "ActionBody",
    "AnyBody",
    "BODY_TYPES",
    "Body",
    "BodyKind",
    "BUS",
    "ClearingBody",
    "ClockBody",
    "ConsensusBody",
    "DECODE_REASONS",
    "DecodeError",
    "DecodeReason",
    "Envelope",
    "OrderBody",
    "PriceBody",
    "ROOT",
    "SetpointBody",
    "StatusBody",
    "TOPICS",
    "TelemetryBody",
    "TopicParts",
    "TopicSpec",
    "Trade",
    "agent_filter",
    "agent_topic",
    "bus_topic",
    "command_filter",
    "command_topic",
    "decode",
    "encode",
    "make_envelope",
    "offline_will",
    "parse_topic",
    "require_unexpired",
    "topics_markdown",
]

# --------------------------------------------------------------------------------------------
# Bodies
# --------------------------------------------------------------------------------------------

_FROZEN = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class SetpointBody(BaseModel):
    """An active (and optionally reactive) power setpoint for one agent's devices."""

    model_config = _FROZEN
    kind: Literal["setpoint"] = "setpoint"
    p_mw: float = Field(description="Active power setpoint, MW (generation positive).")
    q_mvar: float | None = Field(default=None, description="Reactive power setpoint, Mvar; None = unchanged.")


class PriceBody(BaseModel):
    """A price signal broadcast by the operator or the coordinator."""

    model_config = _FROZEN
    kind: Literal["price"] = "price"
    price_usd_per_mwh: float = Field(description="Energy price, USD/MWh.")
    congestion_adder_usd_per_mwh: float = Field(default=0.0, description="Congestion adder, USD/MWh.")


class OrderBody(BaseModel):
    """A bid (buy) or ask (sell) for peer-to-peer trading."""

    model_config = _FROZEN
    kind: Literal["order"] = "order"
    side: Literal["bid", "ask"]
    quantity_mw: float = Field(ge=0.0, description="Quantity offered or wanted, MW (for one step).")
    limit_price_usd_per_mwh: float = Field(description="Limit price, USD/MWh.")


class Trade(BaseModel):
    """One matched trade between a buyer and a seller (part of a :class:`ClearingBody`)."""

    model_config = _FROZEN
    buyer: str
    seller: str
    quantity_mw: float = Field(description="Traded quantity, MW.")
    price_usd_per_mwh: float = Field(description="Trade price, USD/MWh.")


class ClearingBody(BaseModel):
    """The result of a market clearing: the price (None when nothing cleared) and the trades."""

    model_config = _FROZEN
    kind: Literal["clearing"] = "clearing"
    clearing_price_usd_per_mwh: float | None = Field(description="Clearing price, USD/MWh; None if no trade.")
    trades: list[Trade]
    fee_usd_per_mwh: float = Field(default=0.0, description="Market fee, USD/MWh.")


class ConsensusBody(BaseModel):
    """One agent's state in one round of a consensus iteration."""

    model_config = _FROZEN
    kind: Literal["consensus"] = "consensus"
    round: int = Field(ge=0, description="Iteration number within the step, from 0.")
    values: list[float] = Field(description="The agent's current estimate (units set by the protocol).")
    converged: bool = False


class TelemetryBody(BaseModel):
    """Local measurements of one agent, e.g. ``{"load_mw": 1.2, "soc": 0.5}`` (units in the key)."""

    model_config = _FROZEN
    kind: Literal["telemetry"] = "telemetry"
    values: dict[str, float]


class ActionBody(BaseModel):
    """An agent's action vector for one step (the environment's action space layout)."""

    model_config = _FROZEN
    kind: Literal["action"] = "action"
    values: list[float]


class StatusBody(BaseModel):
    """Liveness and health of an agent; published retained, with a last will of ``offline``."""

    model_config = _FROZEN
    kind: Literal["status"] = "status"
    state: Literal["online", "offline", "failsafe"]
    detail: str = ""
    counters: dict[str, int] = Field(default_factory=dict, description="Counters, e.g. rejected messages.")
    cycle_ms: float | None = Field(default=None, description="Last measured cycle time, ms.")


class ClockBody(BaseModel):
    """A step announcement, or (``done=True``) an agent's "I finished step N" in lock-step runs."""

    model_config = _FROZEN
    kind: Literal["clock"] = "clock"
    step: int = Field(ge=0)
    done: bool = False


AnyBody = Union[
    SetpointBody,
    PriceBody,
    OrderBody,
    ClearingBody,
    ConsensusBody,
    TelemetryBody,
    ActionBody,
    StatusBody,
    ClockBody,
]
"""Any message body (for type hints)."""

Body = Annotated[AnyBody, Field(discriminator="kind")]
"""Any message body, discriminated: pydantic picks the model from the ``kind`` field."""

BodyKind = Literal["setpoint", "price", "order", "clearing", "consensus", "telemetry", "action", "status", "clock"]

BODY_TYPES: Final[dict[str, type[BaseModel]]] = {
    get_args(model.model_fields["kind"].annotation)[0]: model for model in get_args(AnyBody)
}
"""kind -> body model."""

assert set(BODY_TYPES) == set(get_args(BodyKind)), "BodyKind and the Body union disagree"

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
    id: str = Field(default_factory=_new_id, min_length=1, description="Message id (32 hex digits, unique per message).")
    sender: str = Field(min_length=1)
    recipient: str | None = Field(default=None, min_length=1, description="Recipient agent id; None = broadcast.")
    step: int = Field(ge=0, description="Environment / control step this message belongs to.")
    ts: float = Field(default_factory=time.time, description="Creation time, unix seconds.")
    expires: float | None = Field(default=None, description="Not valid after this time, unix seconds.")
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
        return self.body.kind  # type: ignore[return-value]

    def is_expired(self, now: float | None = None) -> bool:
        """True when ``expires`` is set and lies before ``now`` (default: the current time)."""
        if self.expires is None:
            return False
        return self.expires < (time.time() if now is None else now)


# the model's own core validator and serializer: what TypeAdapter and model_* call, minus a Python layer
# (every message of every step passes here)
_VALIDATE_JSON: Final = Envelope.__pydantic_validator__.validate_json
_VALIDATE_PYTHON: Final = Envelope.__pydantic_validator__.validate_python
_TO_JSON: Final = Envelope.__pydantic_serializer__.to_json
_NO_MAC: Final = {"mac"}

DecodeReason = Literal["not_json", "schema", "unknown_kind", "expired"]
DECODE_REASONS: Final[tuple[DecodeReason, ...]] = get_args(DecodeReason)


class DecodeError(MessageError):
    """A payload was rejected; ``reason`` says why (one of :data:`DECODE_REASONS`)."""

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

    Raises :class:`DecodeError` with ``reason`` ``not_json``, ``schema``, ``unknown_kind`` or
    ``expired`` (``expires`` before ``now``, default the current time).
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
    return DecodeError("schema", summary)


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
BUS: Final = "bus"
_CMD: Final = "cmd"
_FORBIDDEN = frozenset("/+#\0")


def _level(name: str, what: str) -> str:
    if not isinstance(name, str) or not name or any(c in _FORBIDDEN for c in name):
        raise ConfigError(f"{what} {name!r} must be a non-empty topic level without '/', '+', '#'")
    return name


@lru_cache(maxsize=8192)
def agent_topic(site: str, agent_id: str, kind: str) -> str:
    """``heron/{site}/{agent_id}/{kind}``: what an agent publishes about itself."""
    if agent_id == BUS:
        raise ConfigError(f"agent id {BUS!r} is reserved for broadcasts")
    return f"{ROOT}/{_level(site, 'site')}/{_level(agent_id, 'agent id')}/{_level(kind, 'kind')}"


@lru_cache(maxsize=8192)
def command_topic(site: str, agent_id: str, kind: str) -> str:
    """``heron/{site}/{agent_id}/cmd/{kind}``: what is sent to one agent."""
    if agent_id == BUS:
        raise ConfigError(f"agent id {BUS!r} is reserved for broadcasts")
    return f"{ROOT}/{_level(site, 'site')}/{_level(agent_id, 'agent id')}/{_CMD}/{_level(kind, 'kind')}"


@lru_cache(maxsize=1024)
def bus_topic(site: str, kind: str) -> str:
    """``heron/{site}/bus/{kind}``: a broadcast everyone on the site may subscribe to."""
    return f"{ROOT}/{_level(site, 'site')}/{BUS}/{_level(kind, 'kind')}"


def agent_filter(site: str, kind: str) -> str:
    """``heron/{site}/+/{kind}``: the same self-report (e.g. status) from every agent."""
    return f"{ROOT}/{_level(site, 'site')}/+/{_level(kind, 'kind')}"


def command_filter(site: str, agent_id: str) -> str:
    """``heron/{site}/{agent_id}/cmd/+``: every command sent to one agent."""
    return f"{ROOT}/{_level(site, 'site')}/{_level(agent_id, 'agent id')}/{_CMD}/+"


class TopicParts(NamedTuple):
    """A parsed heron topic; ``agent_id`` is None for bus topics."""

    site: str
    agent_id: str | None
    kind: str
    command: bool


def parse_topic(topic: str) -> TopicParts | None:
    """Split a heron topic into its parts; None if it does not follow the scheme."""
    levels = topic.split("/")
    if len(levels) == 4 and levels[0] == ROOT:
        _, site, who, kind = levels
        if who == BUS:
            return TopicParts(site, None, kind, False)
        return TopicParts(site, who, kind, False)
    if len(levels) == 5 and levels[0] == ROOT and levels[3] == _CMD and levels[2] != BUS:
        return TopicParts(levels[1], levels[2], levels[4], True)
    return None


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
    TopicSpec("heron/{site}/{agent_id}/status", ("status",), "the agent (last will: offline)",
              "its upstream, operators, monitoring", 1, True,
              "online / offline / failsafe, counters, cycle time"),
    TopicSpec("heron/{site}/{agent_id}/telemetry", ("telemetry",), "the agent", "its upstream, loggers", 1, False,
              "local measurements each cycle"),
    TopicSpec("heron/{site}/{agent_id}/action", ("action",), "the agent", "the environment, loggers", 1, False,
              "the action the agent applied this step"),
    TopicSpec("heron/{site}/{agent_id}/cmd/setpoint", ("setpoint",), "its upstream (coordinator)", "the agent", 1,
              False, "carries an expiry; a stale setpoint is never applied"),
    TopicSpec("heron/{site}/{agent_id}/cmd/action", ("action",), "the environment (policy)", "the agent", 1, False,
              "an externally chosen action for this step"),
    TopicSpec("heron/{site}/bus/price", ("price",), "system operator / coordinator", "all agents", 1, False,
              "price signal for the step"),
    TopicSpec("heron/{site}/bus/market", ("order", "clearing"), "traders (orders), the market (clearing)",
              "the market (orders), traders (clearing)", 1, False, "peer-to-peer trading"),
    TopicSpec("heron/{site}/bus/consensus", ("consensus",), "each participant", "its neighbours", 1, False,
              "one message per agent per round"),
    TopicSpec("heron/{site}/bus/clock", ("clock",), "the orchestrator (step), agents (done)", "everyone", 1,
              False, "lock-step: step N starts / agent finished step N"),
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
