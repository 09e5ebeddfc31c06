"""The gateway's command inbox: what arrives on ``heron/{site}/{agent_id}/cmd/+``, checked before use.

A command is accepted only when it decodes, its body kind matches the topic, it comes from the
configured upstream, it is addressed to this agent (or broadcast), and it carries an expiry. A
setpoint is applied only while it has not expired: :meth:`CommandInbox.setpoint` drops it (counted
``cmd_expired``) once past. Everything else is rejected and counted (``cmd_rejected_<reason>``);
the agent keeps running.
"""
from __future__ import annotations

import logging
import time
from collections import Counter

from heron_edge.messages import DecodeError, Envelope, SetpointBody, decode, parse_topic

__all__ = ["CommandInbox"]

log = logging.getLogger(__name__)


class CommandInbox:
    """Validates commands for ``agent_id`` and keeps the latest valid setpoint."""

    def __init__(self, agent_id: str, upstream_id: str) -> None:
        self.agent_id = agent_id
        self.upstream_id = upstream_id
        self.stats: Counter[str] = Counter()
        self._setpoint: Envelope | None = None

    def _reject(self, reason: str, topic: str, detail: str) -> None:
        self.stats[f"cmd_rejected_{reason}"] += 1
        log.warning("%s: rejected a command on %s (%s): %s", self.agent_id, topic, reason, detail)

    def handle(self, topic: str, payload: bytes, *, now: float | None = None) -> bool:
        """Check one delivery; True when it was accepted."""
        self.stats["cmd_received"] += 1
        try:
            envelope = decode(payload, now=now)
        except DecodeError as exc:
            self._reject(exc.reason, topic, str(exc))
            return False
        parts = parse_topic(topic)
        if parts is None or not parts.command or parts.agent_id != self.agent_id or parts.kind != envelope.kind:
            self._reject("kind", topic, f"a {envelope.kind} body on {topic}")
            return False
        if envelope.sender != self.upstream_id:
            self._reject("sender", topic, f"from {envelope.sender!r}, not the upstream {self.upstream_id!r}")
            return False
        if envelope.recipient not in (None, self.agent_id):
            self._reject("recipient", topic, f"addressed to {envelope.recipient!r}")
            return False
        if envelope.expires is None:
            self._reject("no_expiry", topic, "commands must carry an expiry")
            return False
        if not isinstance(envelope.body, SetpointBody):
            self._reject("kind", topic, f"{envelope.kind} commands are not handled by a microgrid gateway")
            return False
        self._setpoint = envelope
        self.stats["cmd_accepted"] += 1
        return True

    def setpoint(self, *, now: float | None = None) -> SetpointBody | None:
        """The latest accepted setpoint while it has not expired; None otherwise (an expired one is dropped)."""
        envelope = self._setpoint
        if envelope is None:
            return None
        if envelope.is_expired(time.time() if now is None else now):
            self.stats["cmd_expired"] += 1
            self._setpoint = None
            return None
        assert isinstance(envelope.body, SetpointBody)
        return envelope.body
