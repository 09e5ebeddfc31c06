"""ImpairedBroker: loss, latency, jitter, duplication and reordering on the real message path, reproducibly.

It wraps any Broker (InMemoryBroker, MqttBroker) and decides each published message's fate from a hash of
``(seed, topic, how many messages were published on that topic before)``: the same seed and the same
message sequence give the same fates whatever the timing, the interleaving of senders or the machine's
load. Every subscriber of a topic sees the same fate, as after a lossy link from its sender.

- ``loss``: probability a message never arrives;
- ``latency_s`` + ``jitter_s``: its delay, ``latency_s`` plus a uniform draw in ``[0, jitter_s)``; a topic
  stays in order (a message never overtakes an earlier one on its topic, as over one TCP connection);
- ``duplicate``: probability it arrives twice (the copy up to ``jitter_s`` after the first);
- ``reorder``: probability it is overtaken by the next message on its topic (held until that one arrived).

Impairments may differ per topic kind (the last level of ``heron/{site}/{sender}/{kind}``, e.g. telemetry,
price, consensus). With :meth:`ImpairedBroker.begin_step` the owner (the environment) opens a step whose
decision deadline lies ``deadline_s`` ahead: a message due later is **late**, counted, and held until the
next step begins (its receivers then see it as stale). What was lost or late is counted in
:attr:`ImpairedBroker.stats` and per step in :attr:`ImpairedBroker.window`, by agent (the sender, or on a
command topic the recipient). On :class:`heron_edge.simtime.SimulatedTimeLoop` the delays are simulated.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import struct
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from heron_edge.brokers.base import (
    DEFAULT_MAXSIZE,
    Broker,
    BrokerWrapper,
    Payload,
    Subscription,
    payload_bytes,
    validate_topic,
)
from heron_edge.errors import BrokerError, ConfigError
from heron_edge.messages import TOPIC_KINDS, parse_topic

__all__ = ["IMPAIRMENT_FIELDS", "ImpairedBroker", "Impairment", "ImpairmentConfig", "ImpairmentStats",
           "KindImpairment", "parse_impairment"]

log = logging.getLogger(__name__)

_UNIFORM: Final = 2.0 ** -64


class Impairment(BaseModel):
    """What happens to the messages of one topic kind (probabilities in [0, 1], delays in seconds)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    loss: float = Field(0.0, ge=0.0, le=1.0, description="probability a message is lost")
    latency_s: float = Field(0.0, ge=0.0, le=3600.0, description="fixed delay of every message, seconds")
    jitter_s: float = Field(0.0, ge=0.0, le=3600.0, description="extra delay, uniform in [0, jitter_s), seconds")
    duplicate: float = Field(0.0, ge=0.0, le=1.0, description="probability a message arrives twice")
    reorder: float = Field(0.0, ge=0.0, le=1.0, description="probability the next message on its topic overtakes it")

    @property
    def zero(self) -> bool:
        """True when nothing is impaired: messages pass at once."""
        return not (self.loss or self.latency_s or self.jitter_s or self.duplicate or self.reorder)


IMPAIRMENT_FIELDS: Final = tuple(Impairment.model_fields)


class KindImpairment(BaseModel):
    """The fields one topic kind changes from the defaults (the others are inherited)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    loss: float | None = Field(None, ge=0.0, le=1.0)
    latency_s: float | None = Field(None, ge=0.0, le=3600.0)
    jitter_s: float | None = Field(None, ge=0.0, le=3600.0)
    duplicate: float | None = Field(None, ge=0.0, le=1.0)
    reorder: float | None = Field(None, ge=0.0, le=1.0)


class ImpairmentConfig(Impairment):
    """The impairment of a run: defaults for every message, per-kind changes, the seed and the step's deadline.

    ``{"loss": 0.05, "latency_s": 0.2, "seed": 1, "kinds": {"consensus": {"loss": 0.2}}}``
    """

    seed: int = Field(0, ge=0, lt=2**63, description="the same seed and messages give the same fates")
    deadline_s: float | None = Field(None, gt=0.0, le=3600.0, description=(
        "per-step decision deadline, seconds from the step's start; a message due later is late (held until the next "
        "step). None: the environment's step_timeout_s"))
    kinds: dict[str, KindImpairment] = Field(default_factory=dict, description="topic kind -> what differs for it")

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: dict[str, KindImpairment]) -> dict[str, KindImpairment]:
        unknown = sorted(set(kinds) - set(TOPIC_KINDS))
        if unknown:
            raise ValueError(f"unknown topic kinds {unknown}; known: {', '.join(sorted(TOPIC_KINDS))}")
        return kinds

    def for_kind(self, kind: str | None) -> Impairment:
        """The impairment of messages on topics of ``kind`` (None: not a heron topic: the defaults)."""
        base = {name: getattr(self, name) for name in IMPAIRMENT_FIELDS}
        change = self.kinds.get(kind) if kind is not None else None
        if change is not None:
            base.update({k: v for k, v in change.model_dump().items() if v is not None})
        return Impairment(**base)

    @property
    def zero(self) -> bool:
        """True when no kind is impaired."""
        return self.for_kind(None).zero and all(self.for_kind(k).zero for k in self.kinds)


def impairment_config(value: ImpairmentConfig | dict[str, Any]) -> ImpairmentConfig:
    """``value`` validated (a dict) or as is; ConfigError naming every bad field."""
    if isinstance(value, ImpairmentConfig):
        return value
    try:
        return ImpairmentConfig.model_validate(value)
    except ValidationError as exc:
        raise ConfigError(f"invalid impairment: {_problems(exc)}") from None


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'impairment'}: "
                     f"{'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}" for err in exc.errors())


def parse_impairment(text: str) -> ImpairmentConfig:
    """``loss=0.05,latency_s=0.2[,seed=N][,deadline_s=S][,KIND.FIELD=V...]`` (e.g. ``consensus.loss=0.2``) as an
    ImpairmentConfig; ConfigError (one line) when malformed."""
    data: dict[str, Any] = {}
    kinds: dict[str, dict[str, str]] = defaultdict(dict)
    items = [item.strip() for item in text.split(",")] if text.strip() else []
    if not items:
        raise ConfigError("empty impairment: give e.g. loss=0.05,latency_s=0.2")
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"impairment item {item!r} is not KEY=VALUE (e.g. loss=0.05)")
        if "." in key:
            kind, _, name = key.partition(".")
            kinds[kind][name] = value
        else:
            data[key] = value
    if kinds:
        data["kinds"] = dict(kinds)
    return impairment_config(data)


@dataclass
class ImpairmentStats:
    """What the impairment did: totals, and lost / late by agent (a topic's sender, or a command's recipient)."""

    published: int = 0
    delivered: int = 0
    """Deliveries handed to the inner broker (a duplicate counts twice)."""
    lost: int = 0
    late: int = 0
    """Messages due after the step's decision deadline (delivered when the next step began)."""
    duplicated: int = 0
    reordered: int = 0
    failed: int = 0
    """Deliveries the inner broker refused (e.g. disconnected): logged, counted, never raised to the sender."""
    lost_by_agent: Counter[str] = field(default_factory=Counter)
    late_by_agent: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    due: float
    agent: str


class ImpairedBroker(BrokerWrapper):
    """A Broker that impairs what is published through it (see the module docstring); subscribing, the lifecycle
    and everything else pass to ``inner``."""

    def __init__(self, inner: Broker, impairment: ImpairmentConfig | dict[str, Any], *,
                 deadline_s: float | None = None) -> None:
        super().__init__(inner)
        self.impairment = impairment_config(impairment)
        self.deadline_s = self.impairment.deadline_s if self.impairment.deadline_s is not None else deadline_s
        """The decision deadline of a step opened by :meth:`begin_step` (None: no deadline, nothing is late)."""
        self.stats = ImpairmentStats()
        self.window = ImpairmentStats()
        """What happened since the last :meth:`begin_step`."""
        self.deadline: float | None = None
        """Event-loop time of the current step's deadline (None: no step open)."""
        self._key = self.impairment.seed.to_bytes(8, "little")
        self._by_topic: dict[str, tuple[Impairment, str, str]] = {}
        self._sequence: Counter[str] = Counter()
        self._last_due: dict[str, float] = {}
        """Per topic, the latest time a message is due: a later one never arrives before it."""
        self._held: dict[str, list[_Message]] = {}
        self._late: list[_Message] = []
        self._queues: dict[str, deque[_Message]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<ImpairedBroker over {self.inner!r} seed={self.impairment.seed} lost={self.stats.lost} late={self.stats.late}>"

    # -- fates ------------------------------------------------------------------------------------
    def _topic_info(self, topic: str) -> tuple[Impairment, str, str]:
        """The topic's impairment, its agent, and its name within the site (what the fates are keyed on: an
        environment's site is random, and the same run on another site must meet the same fates)."""
        info = self._by_topic.get(topic)
        if info is None:
            parts = parse_topic(topic)
            if parts is None:
                info = (self.impairment.for_kind(None), "", topic)
            else:
                name = f"{parts.agent_id}/{'cmd/' if parts.command else ''}{parts.kind}"
                info = (self.impairment.for_kind(parts.kind), parts.agent_id, name)
            self._by_topic[topic] = info
        return info

    def _draws(self, name: str, n: int) -> tuple[float, ...]:
        """Five uniforms in [0, 1) for the ``n``-th message on topic ``name``: loss, jitter, duplicate, its jitter, reorder."""
        digest = hashlib.blake2b(f"{name}\0{n}".encode(), digest_size=40, key=self._key).digest()
        return tuple(v * _UNIFORM for v in struct.unpack("<5Q", digest))

    def _count(self, what: str, agent: str) -> None:
        for stats in (self.stats, self.window):
            setattr(stats, what, getattr(stats, what) + 1)
            if what == "lost":
                stats.lost_by_agent[agent] += 1
            elif what == "late":
                stats.late_by_agent[agent] += 1

    # -- the port -----------------------------------------------------------------------------------
    async def publish(self, topic: str, payload: Payload, *, qos: int = 1, retain: bool = False) -> None:
        """Send ``payload`` to ``topic`` through the impairment: now, later, twice, out of order or never."""
        if self._closed:
            raise BrokerError("ImpairedBroker is closed")
        validate_topic(topic)
        data = payload_bytes(payload)
        impairment, agent, name = self._topic_info(topic)
        n = self._sequence[topic]
        self._sequence[topic] = n + 1
        self._count("published", agent)
        now = asyncio.get_running_loop().time()
        if impairment.zero and topic not in self._held and self._last_due.get(topic, -math.inf) <= now:
            await self._send(_Message(topic, data, qos, retain, now, agent))  # nothing to impair: the inner path as is
            return
        u_loss, u_jitter, u_duplicate, u_copy, u_reorder = self._draws(name, n)
        if u_loss < impairment.loss:
            self._count("lost", agent)
            return
        due = max(now + impairment.latency_s + impairment.jitter_s * u_jitter, self._last_due.get(topic, -math.inf))
        message = _Message(topic, data, qos, retain, due, agent)
        copy = None
        if u_duplicate < impairment.duplicate:
            self._count("duplicated", agent)
            copy = _Message(topic, data, qos, retain, due + impairment.jitter_s * u_copy, agent)
        if u_reorder < impairment.reorder:
            self._count("reordered", agent)
            self._held.setdefault(topic, []).extend([message] if copy is None else [message, copy])
            return
        self._last_due[topic] = due if copy is None else copy.due
        await self._schedule(message, now)
        if copy is not None:
            await self._schedule(copy, now)

    async def subscribe(self, topic_filter: str, *, qos: int = 1, maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        if self._closed:
            raise BrokerError("ImpairedBroker is closed")
        return await self.inner.subscribe(topic_filter, qos=qos, maxsize=maxsize)

    async def _schedule(self, message: _Message, now: float) -> None:
        """Late (past the deadline: kept for the next step), at once, or queued on its topic until due."""
        topic = message.topic
        if self.deadline is not None and message.due > self.deadline:
            self._count("late", message.agent)
            self._late.append(message)
        elif message.due <= now and topic not in self._queues:
            await self._send(message)
        else:
            self._queues.setdefault(topic, deque()).append(message)
            if topic not in self._timers:
                self._timers[topic] = asyncio.get_running_loop().call_at(message.due, self._arrive, topic)

    def _arrive(self, topic: str) -> None:
        """The head of ``topic``'s queue is due: deliver it and whatever is due behind it, in order."""
        del self._timers[topic]
        task = asyncio.get_running_loop().create_task(self._flush(topic))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, topic: str) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queues.get(topic)
        while queue and queue[0].due <= loop.time():
            await self._send_later(queue.popleft())
        if queue:
            if topic not in self._timers:
                self._timers[topic] = loop.call_at(queue[0].due, self._arrive, topic)
        elif self._queues.get(topic) is queue:
            del self._queues[topic]

    async def _send(self, message: _Message) -> None:
        """Hand ``message`` to the inner broker (its BrokerError reaches the publisher, as without the wrapper), then
        release what was held to be overtaken by it."""
        await self.inner.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
        for stats in (self.stats, self.window):
            stats.delivered += 1
        held = self._held.pop(message.topic, None)
        for overtaken in held or ():
            await self._send_later(overtaken)

    async def _send_later(self, message: _Message) -> None:
        """Deliver a delayed message: nobody is there to hear an error, so it is logged and counted (``failed``)."""
        try:
            await self._send(message)
        except BrokerError as exc:
            for stats in (self.stats, self.window):
                stats.failed += 1
            log.warning("impairment: a delayed message on %s could not be delivered: %s", message.topic, exc)

    # -- steps ----------------------------------------------------------------------------------------
    async def begin_step(self) -> None:
        """Open a step: deliver what is still on its way from the last one (late and overtaken messages first
        counted late), then set this step's deadline ``deadline_s`` ahead and reset :attr:`window`."""
        self.end_step()
        loop = asyncio.get_running_loop()
        backlog = [m for queue in self._queues.values() for m in queue] + self._late
        self._drop_queues()
        self._late = []
        self._last_due.clear()
        self.window = ImpairmentStats()
        self.deadline = None
        for message in sorted(backlog, key=lambda m: m.due):  # stable: a topic keeps its order
            await self._send_later(message)
        now = loop.time()
        self.deadline = None if self.deadline_s is None else now + self.deadline_s

    def end_step(self) -> None:
        """Close the step: messages still waiting to be overtaken missed its deadline (counted late now, delivered
        when the next step begins). Without a deadline they keep waiting for their topic's next message."""
        if self.deadline is None:
            return
        for held in self._held.values():
            for message in held:
                self._count("late", message.agent)
                self._late.append(message)
        self._held.clear()

    def _drop_queues(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._queues.clear()

    async def close(self) -> None:
        """Drop what is still on its way (never delivered) and close the inner broker (idempotent)."""
        self._closed = True
        self._drop_queues()
        self._late.clear()
        self._held.clear()
        for task in list(self._tasks):
            task.cancel()
        await self.inner.close()

    async def __aenter__(self) -> ImpairedBroker:
        await self.connect()
        return self
