"""The gateway's command inbox: what arrives on ``heron/{site}/{agent_id}/cmd/+``, checked before use.

Every payload goes through ``heron_edge.security.CommandGuard`` (decodes; right topic and kind; sent
by the configured upstream; addressed to this agent or broadcast; carrying an expiry and not past
it; not a replay; signed when a key is configured). Rejections are counted by reason in the guard's
stats and logged; the agent keeps running. A microgrid gateway applies ``setpoint`` commands and ``action``
commands: an external policy service (publishing as the upstream) may send the action for a step on
``heron/{site}/{agent}/cmd/action``: the envelope's ``step`` names the step, its expiry is required, and the body's
``values`` are the environment's normalised action (battery, generator, PV and wind curtailment). The gateway
applies it when it is fresh (:meth:`CommandInbox.action`: for this very step, not expired, four finite values)
and otherwise decides with its own policy. A setpoint is applied only
while it has not expired: :meth:`CommandInbox.setpoint` drops it (counted ``expired``) once past. With the setpoint protocol, setpoints reach the protocol's Link
through a :class:`GuardedBroker`: the same guard, before the protocol sees them.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np

from heron_edge.brokers.base import (
    DEFAULT_GET_TIMEOUT_S,
    DEFAULT_MAXSIZE,
    Broker,
    BrokerWrapper,
    Delivery,
    Subscription,
)
from heron_edge.counters import Rejections
from heron_edge.messages import ActionBody, Envelope, SetpointBody, command_filter
from heron_edge.security import CommandGuard
from heron_edge.security.auth import CommandRejected

__all__ = ["CommandInbox", "GuardedBroker", "InboxStats"]

log = logging.getLogger(__name__)


@dataclass
class InboxStats:
    """What the command inbox did: commands received, accepted (by the guard), setpoints expired before use;
    ``action`` commands accepted, and those not applied (``action_stale``: expired or for another step;
    ``action_invalid``: not four values)."""

    received: int = 0
    accepted: int = 0
    expired: int = 0
    actions: int = 0
    action_stale: int = 0
    action_invalid: int = 0


class CommandInbox:
    """Validates commands for ``agent_id`` (through a CommandGuard) and keeps the latest valid setpoint."""

    def __init__(self, agent_id: str, upstream_id: str, *, key: bytes | None = None) -> None:
        self.agent_id = agent_id
        self.upstream_id = upstream_id
        self.guard = CommandGuard(agent_id, upstream_id, key=key, require_expiry=True, accept_broadcast=True)
        self.stats = InboxStats()
        self._setpoint: Envelope | None = None
        self._action: Envelope | None = None

    @property
    def rejected(self) -> Rejections:
        """Commands refused by the guard, by reason."""
        return self.guard.stats.rejected

    def handle(self, topic: str, payload: bytes) -> bool:
        """Check one delivery; True when it was accepted."""
        self.stats.received += 1
        try:
            envelope = self.guard.check_payload(payload, topic=topic)
        except CommandRejected as exc:
            log.warning("%s: rejected a command on %s: %s", self.agent_id, topic, exc)
            return False
        self.stats.accepted += 1
        if isinstance(envelope.body, SetpointBody):
            self._setpoint = envelope
        elif isinstance(envelope.body, ActionBody):
            self.stats.actions += 1
            if self._action is not None:  # replaced before it was used
                self.stats.action_stale += 1
            self._action = envelope
        return True

    def new_episode(self) -> None:
        """The clock restarted at an earlier step (a new SIL episode): older steps are legitimate again.
        Seen message ids are still refused, and expiry still applies."""
        self.guard.newest_step = -1
        self._setpoint = None
        self._action = None

    def action(self, step: int, *, now: float | None = None) -> np.ndarray | None:
        """The external action for ``step`` (float64, 4 values) when the latest accepted one is for that step and
        has not expired; None otherwise. It is used once: taken (or found stale or invalid: counted) it is dropped."""
        envelope, self._action = self._action, None
        if envelope is None:
            return None
        assert isinstance(envelope.body, ActionBody)
        values = envelope.body.values
        if envelope.step != step or envelope.is_expired(time.time() if now is None else now):
            if envelope.step > step:  # early: keep it for its step
                self._action = envelope
                return None
            self.stats.action_stale += 1
            return None
        if len(values) != 4:
            self.stats.action_invalid += 1
            log.warning("%s: an action command with %d values (4 expected) ignored", self.agent_id, len(values))
            return None
        return np.array(values, dtype=np.float64)

    def setpoint(self, *, now: float | None = None) -> SetpointBody | None:
        """The latest accepted setpoint while it has not expired; None otherwise (an expired one is dropped)."""
        envelope = self._setpoint
        if envelope is None:
            return None
        if envelope.is_expired(time.time() if now is None else now):
            self.stats.expired += 1
            self._setpoint = None
            return None
        assert isinstance(envelope.body, SetpointBody)
        return envelope.body


class _GuardedSubscription(Subscription):
    """A command subscription seen through a CommandInbox: only accepted commands come out (the rest is counted)."""

    __slots__ = ("_inbox", "inner")

    def __init__(self, inner: Subscription, inbox: CommandInbox) -> None:
        super().__init__(inner.topic_filter, qos=inner.qos, maxsize=inner.maxsize)
        self.inner = inner
        self._inbox = inbox

    def __len__(self) -> int:
        return len(self.inner)

    def get_nowait(self) -> Delivery | None:
        while (delivery := self.inner.get_nowait()) is not None:
            if self._inbox.handle(delivery.topic, delivery.payload):
                return delivery
        return None

    def drain(self) -> list[Delivery]:
        return [d for d in self.inner.drain() if self._inbox.handle(d.topic, d.payload)]

    async def get(self, timeout: float | None = DEFAULT_GET_TIMEOUT_S) -> Delivery:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            delivery = await self.inner.get(None if deadline is None else max(0.0, deadline - loop.time()))
            if self._inbox.handle(delivery.topic, delivery.payload):
                return delivery


class GuardedBroker(BrokerWrapper):
    """A Broker wrapper for the protocols' Link: subscriptions on ``agent_id``'s command topics pass every
    delivery through ``inbox`` (CommandGuard: upstream only, signed when keyed, not expired, no replay) before
    the protocol sees it. Everything else passes through unchanged."""

    def __init__(self, inner: Broker, inbox: CommandInbox, *, site: str) -> None:
        super().__init__(inner)
        self.inbox = inbox
        self._prefix = command_filter(site, inbox.agent_id)[:-1]  # heron/{site}/{agent}/cmd/



    async def subscribe(self, topic_filter: str, *, qos: int = 1, maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        sub = await self.inner.subscribe(topic_filter, qos=qos, maxsize=maxsize)
        return _GuardedSubscription(sub, self.inbox) if topic_filter.startswith(self._prefix) else sub

    async def unsubscribe(self, subscription: Subscription) -> None:
        await self.inner.unsubscribe(subscription.inner if isinstance(subscription, _GuardedSubscription) else subscription)



