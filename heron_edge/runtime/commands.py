"""The gateway's command inbox: what arrives on ``heron/{site}/{agent_id}/cmd/+``, checked before use.

Every payload goes through ``heron_edge.security.CommandGuard`` (decodes; right topic and kind; sent
by the configured upstream; addressed to this agent or broadcast; carrying an expiry and not past
it; not a replay; signed when a key is configured). Rejections are counted as
``cmd_rejected_<reason>`` and logged; the agent keeps running. A microgrid gateway applies
``setpoint`` commands; an accepted ``action`` command is counted (``cmd_ignored_action``), not
applied. A setpoint is applied only while it has not expired: :meth:`CommandInbox.setpoint` drops
it (counted ``cmd_expired``) once past.
"""
from __future__ import annotations

import logging
import time
from collections import Counter

from heron_edge.messages import Envelope, SetpointBody
from heron_edge.security import CommandGuard
from heron_edge.security.auth import CommandRejected

__all__ = ["CommandInbox"]

log = logging.getLogger(__name__)


class CommandInbox:
    """Validates commands for ``agent_id`` (through a CommandGuard) and keeps the latest valid setpoint."""

    def __init__(self, agent_id: str, upstream_id: str, *, key: bytes | None = None) -> None:
        self.agent_id = agent_id
        self.guard = CommandGuard(agent_id, upstream_id, key=key, require_expiry=True, accept_broadcast=True)
        self._own: Counter[str] = Counter()
        self._setpoint: Envelope | None = None

    @property
    def stats(self) -> Counter[str]:
        """``cmd_received``, ``cmd_accepted``, ``cmd_rejected_<reason>``, ``cmd_expired``, ``cmd_ignored_action``."""
        out: Counter[str] = Counter({f"cmd_{k}": v for k, v in self.guard.stats.items()})
        out.update(self._own)
        return out

    def handle(self, topic: str, payload: bytes) -> bool:
        """Check one delivery; True when it was accepted."""
        self._own["cmd_received"] += 1
        try:
            envelope = self.guard.check_payload(payload, topic=topic)
        except CommandRejected as exc:
            log.warning("%s: rejected a command on %s: %s", self.agent_id, topic, exc)
            return False
        if isinstance(envelope.body, SetpointBody):
            self._setpoint = envelope
        else:
            self._own[f"cmd_ignored_{envelope.kind}"] += 1
        return True

    def setpoint(self, *, now: float | None = None) -> SetpointBody | None:
        """The latest accepted setpoint while it has not expired; None otherwise (an expired one is dropped)."""
        envelope = self._setpoint
        if envelope is None:
            return None
        if envelope.is_expired(time.time() if now is None else now):
            self._own["cmd_expired"] += 1
            self._setpoint = None
            return None
        assert isinstance(envelope.body, SetpointBody)
        return envelope.body
