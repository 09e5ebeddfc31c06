"""What every distributed protocol role uses: a :class:`Link` (one agent's endpoint on a broker).

A role coroutine (operator, microgrid, market, participant, consensus node) takes a Link. The Link
keeps, across steps, the agent's subscriptions, messages that arrived early (for a later step or
round), the last values a role falls back on, and counters. Rules every role follows through it:

- every wait is bounded by a deadline (``timeout_s``); a missing message yields ``None``, never a hang;
- a payload that does not decode (not JSON, bad schema, unknown kind, expired, a value out of bounds,
  a sender other than the one its topic names) is rejected, logged and counted in
  ``stats.rejected[reason]``; the role keeps going;
- a message from an older step is ignored (``stats.stale``); one from a later step is kept for then,
  if it lies within ``step_window`` steps of the current one (further ahead: rejected as ``bounds``,
  so a forged far-future step can neither fill the stash nor be waited for);
- a duplicate (same envelope id) is ignored (``stats.duplicates``).

Subscribe before the peers publish: call the protocol's ``prepare(link, role)`` once per Link
(e.g. at ``reset``), or a first-step message may be missed (and then handled as lost).
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from heron_edge.brokers import Broker, Delivery, Subscription
from heron_edge.brokers.base import get_any
from heron_edge.counters import Rejections
from heron_edge.errors import ConfigError
from heron_edge.messages import AnyBody, DecodeError, Envelope, decode_on, make_envelope

__all__ = ["STEP_WINDOW", "Link", "LinkStats", "ProtocolConfig", "load_config"]

log = logging.getLogger(__name__)

_STASH_MAX: Final = 4096
_SEEN_MAX: Final = 8192
STEP_WINDOW: Final = 8
"""How many steps ahead of the current one a message may be stamped and still be kept for later."""


class ProtocolConfig(BaseModel):
    """Parameters shared by every protocol (keyword-only, validated, immutable)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ttl_s: float = Field(default=30.0, gt=0.0, description="Expiry of every protocol message, seconds.")


C = TypeVar("C", bound=ProtocolConfig)


def load_config(model: type[C], config: C | Mapping[str, Any] | None) -> C:
    """``config`` as a validated ``model`` (a mapping is validated; None = defaults); raises ConfigError."""
    if isinstance(config, model):
        return config
    try:
        return model.model_validate({} if config is None else config)
    except ValidationError as exc:
        raise ConfigError(f"invalid {model.__name__}: {exc}") from None


@dataclass
class LinkStats:
    """Counters of one Link: messages ``sent``, ``received`` (accepted), ``rejected`` by reason (a
    decode reason, or ``shape`` for a consensus vector of the wrong length), ``stale`` (older step), ``ignored`` (valid but not for this role), ``duplicates``,
    ``overflow`` (early messages dropped when the stash was full) and ``timeouts`` (waits that ended
    without the expected message)."""

    sent: int = 0
    received: int = 0
    rejected: Rejections = field(default_factory=Rejections)
    stale: int = 0
    ignored: int = 0
    duplicates: int = 0
    overflow: int = 0
    timeouts: int = 0


@dataclass
class _Mailbox:
    sub: Subscription
    stash: deque[Envelope] = field(default_factory=deque)


class Link:
    """One agent's endpoint for the protocols: broker, site, agent id, current step, timeout.

    ``step`` is set by the caller before each step (or use :meth:`at`, which returns a view sharing
    subscriptions, memory and counters). ``memory`` holds what roles fall back on (last price, last
    setpoint). Steps must increase on a given (broker, site); start a new site for a new run.
    """

    def __init__(self, broker: Broker, *, site: str, agent_id: str, step: int = 0, timeout_s: float = 1.0,
                 step_window: int = STEP_WINDOW) -> None:
        if not timeout_s > 0.0:
            raise ConfigError(f"timeout_s must be > 0 seconds, got {timeout_s!r}")
        if step < 0:
            raise ConfigError(f"step must be >= 0, got {step!r}")
        self.broker: Broker = broker
        self.site: str = site
        self.agent_id: str = agent_id
        self.step: int = step
        self.timeout_s: float = timeout_s
        self.step_window: int = step_window
        self.stats: LinkStats = LinkStats()
        self.memory: dict[str, Any] = {}
        self._boxes: dict[str, _Mailbox] = {}
        self._seen: deque[str] = deque()
        self._seen_set: set[str] = set()

    def __repr__(self) -> str:
        return f"<Link {self.site}/{self.agent_id} step={self.step} filters={list(self._boxes)}>"

    def at(self, step: int) -> Link:
        """A view of this Link at ``step`` that shares its subscriptions, memory and counters."""
        view = object.__new__(Link)
        view.__dict__.update(self.__dict__)
        view.step = step
        return view

    # -- subscriptions --------------------------------------------------------------------------
    async def subscribe(self, topic_filter: str) -> None:
        """Subscribe to ``topic_filter`` once (idempotent); deliveries are kept until received."""
        if topic_filter not in self._boxes:
            sub = await self.broker.subscribe(topic_filter, qos=1)
            self._boxes.setdefault(topic_filter, _Mailbox(sub))

    def reset(self, step: int = 0) -> None:
        """Start a new run at ``step`` (e.g. an episode reset): drop queued and early messages and
        the remembered last values; subscriptions and counters stay."""
        for box in self._boxes.values():
            box.sub.drain()
            box.stash.clear()
        self.memory.clear()
        self.step = step

    async def close(self) -> None:
        """Unsubscribe everything this Link subscribed (idempotent; views made by :meth:`at` included)."""
        boxes = list(self._boxes.values())
        self._boxes.clear()
        for box in boxes:
            await self.broker.unsubscribe(box.sub)

    # -- sending ----------------------------------------------------------------------------------
    async def send(self, topic: str, body: AnyBody, *, recipient: str | None = None,
                   ttl_s: float | None = None) -> Envelope:
        """Publish ``body`` in an envelope stamped with this agent and step (QoS 1)."""
        env = make_envelope(self.agent_id, body, step=self.step, recipient=recipient, ttl_s=ttl_s)
        await self.broker.publish(topic, env, qos=1)
        self.stats.sent += 1
        return env

    # -- receiving --------------------------------------------------------------------------------
    def deadline(self, timeout_s: float | None = None) -> float:
        """Event-loop time ``timeout_s`` (default: the Link's) from now."""
        return asyncio.get_running_loop().time() + (self.timeout_s if timeout_s is None else timeout_s)

    def _fresh(self, env: Envelope) -> bool:
        if env.id in self._seen_set:
            self.stats.duplicates += 1
            return False
        self._seen.append(env.id)
        self._seen_set.add(env.id)
        if len(self._seen) > _SEEN_MAX:
            self._seen_set.discard(self._seen.popleft())
        return True

    def reject(self, reason: str, topic: str, detail: object) -> None:
        """Count and log one rejected message (every role's rejections go through here)."""
        self.stats.rejected.record(reason, log, self.agent_id, topic, detail)

    def _accept(self, delivery: Delivery) -> Envelope | None:
        """The delivery's envelope if it decodes on its topic, is new and lies within the step window;
        None otherwise (rejected, duplicate or stale, counted)."""
        try:
            env = decode_on(delivery.topic, delivery.payload)
        except DecodeError as exc:
            self.reject(exc.reason, delivery.topic, exc)
            return None
        if env.step > self.step + self.step_window:
            self.reject("bounds", delivery.topic, f"step {env.step} is more than {self.step_window} ahead of {self.step}")
            return None
        if not self._fresh(env):
            return None
        if env.step < self.step:
            self.stats.stale += 1
            return None
        return env

    async def receive(self, topics: str | Sequence[str], body_type: type[BaseModel], *, deadline: float,
                      senders: Collection[str] | None = None,
                      accept: Callable[[Envelope], bool] | None = None) -> Envelope | None:
        """The next envelope of this step on ``topics`` (one filter or several) whose body is ``body_type``,
        from one of ``senders`` (None: anyone), for which ``accept`` holds; None once ``deadline``
        (event-loop time) passes. Other bodies and senders are ignored; messages of the right body and
        sender that ``accept`` refuses now (e.g. a later round) or that belong to a later step are kept."""
        filters = (topics,) if isinstance(topics, str) else tuple(topics)
        for topic_filter in filters:
            await self.subscribe(topic_filter)
        boxes = [self._boxes[f] for f in filters]

        def wanted(env: Envelope) -> bool:
            return (env.step == self.step and isinstance(env.body, body_type)
                    and (senders is None or env.sender in senders) and (accept is None or accept(env)))

        for box in boxes:
            kept = [env for env in box.stash if env.step >= self.step]
            self.stats.stale += len(box.stash) - len(kept)
            box.stash = deque(kept)
            for env in box.stash:
                if wanted(env):
                    box.stash.remove(env)
                    self.stats.received += 1
                    return env
        subs = [box.sub for box in boxes]
        loop = asyncio.get_running_loop()
        while True:
            found = next(((i, d) for i, sub in enumerate(subs) if (d := sub.get_nowait()) is not None), None)
            if found is not None:
                index, delivery = found
            else:
                remaining = deadline - loop.time()
                if remaining <= 0.0:
                    return None
                try:
                    index, delivery = await get_any(subs, remaining)
                except TimeoutError:
                    return None
            accepted = self._accept(delivery)
            if accepted is None:
                continue
            if not isinstance(accepted.body, body_type) or (senders is not None and accepted.sender not in senders):
                self.stats.ignored += 1  # valid, but for another role on this topic
                continue
            if wanted(accepted):
                self.stats.received += 1
                return accepted
            box = boxes[index]
            if len(box.stash) >= _STASH_MAX:
                box.stash.popleft()
                self.stats.overflow += 1
            box.stash.append(accepted)
