"""Application-level command authentication: who may command an agent, signed, never replayed.

The broker's ACL already stops a gateway from publishing on another agent's command topic; this
is the second line, checked by the agent itself before it applies a command:

1. the command comes from the agent's configured upstream (``sender``) and is addressed to it
   (``recipient``), with a command kind (setpoint, action) that matches its topic;
2. with a shared key configured, it carries a valid MAC: HMAC-SHA256 over
   ``MAC_CONTEXT + encode(envelope without mac)``, hex, in the envelope's optional ``mac`` field
   (unsigned envelopes encode exactly as before, so old peers keep working where no key is set);
3. it is not a replay: its id was not seen before, and its step is not older than the newest
   step already accepted (bounded memory: at most ``max_seen_ids`` ids are remembered; ids of
   older steps need no memory, the step rule rejects them);
4. its step lies at most ``step_window`` steps ahead of the agent's current step (``current_step``,
   set by the agent each cycle), so a far-future step is refused (``bounds``) and never becomes the
   replay high-water mark that would make the genuine commands after it look like replays.

The canonical encoding is :func:`heron_edge.messages.encode`: pydantic normalises every field on
validation (floats stay floats, dict order is kept), so decode-then-encode gives back the bytes
the sender signed. Keys are per agent (the operator holds all of them, an agent only its own), so
a gateway that leaks its key cannot sign commands for another one.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from heron_edge.counters import Rejections
from heron_edge.errors import ConfigError, MessageError
from heron_edge.messages import DecodeError, DecodeReason, Envelope, decode, encode, parse_topic

__all__ = [
    "COMMAND_KINDS",
    "MAC_CONTEXT",
    "MIN_KEY_BYTES",
    "REJECT_REASONS",
    "CommandGuard",
    "CommandRejected",
    "CommandSigner",
    "GuardStats",
    "RejectReason",
    "compute_mac",
    "new_key",
    "parse_key",
    "sign",
    "verify",
]

MAC_CONTEXT: Final = b"heron-edge/command-mac/v1\n"
"""Prefix of every MAC input (domain separation: a key used elsewhere cannot forge commands)."""
MIN_KEY_BYTES: Final = 16
COMMAND_KINDS: Final = frozenset({"setpoint", "action"})

GuardReason = Literal[
    "kind", "topic", "sender", "recipient", "unsigned", "bad_mac", "no_expiry", "replay_id", "replay_step"
]
RejectReason = Literal[GuardReason, DecodeReason]
REJECT_REASONS: Final[tuple[str, ...]] = (*get_args(GuardReason), *get_args(DecodeReason))


class CommandRejected(MessageError):
    """A command was refused; ``reason`` is one of :data:`REJECT_REASONS` (counted as ``rejected_<reason>``)."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: RejectReason = reason


# --------------------------------------------------------------------------------------------
# keys and MACs
# --------------------------------------------------------------------------------------------


def new_key() -> bytes:
    """A fresh random 32-byte key."""
    return secrets.token_bytes(32)


def parse_key(text: str) -> bytes:
    """A key from its hex form (e.g. an environment variable); at least 16 bytes."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigError("command key must be hex (e.g. 64 hex digits for 32 bytes)") from None
    return _checked(key)


def _checked(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"command key must be at least {MIN_KEY_BYTES} bytes")
    return bytes(key)


def compute_mac(envelope: Envelope, key: bytes) -> str:
    """HMAC-SHA256 (hex) of ``MAC_CONTEXT + encode(envelope without its mac)``."""
    unsigned = envelope if envelope.mac is None else envelope.model_copy(update={"mac": None})
    return hmac.new(key, MAC_CONTEXT + encode(unsigned), hashlib.sha256).hexdigest()


def sign(envelope: Envelope, key: bytes) -> Envelope:
    """A copy of ``envelope`` carrying its MAC under ``key`` (an existing MAC is replaced)."""
    return envelope.model_copy(update={"mac": compute_mac(envelope, _checked(key))})


def verify(envelope: Envelope, key: bytes) -> bool:
    """True when ``envelope`` carries a MAC and it is the right one for ``key`` (constant-time compare)."""
    return envelope.mac is not None and hmac.compare_digest(envelope.mac, compute_mac(envelope, key))


class CommandSigner:
    """The upstream's side: signs each command with the key of its recipient."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        self._keys = {agent: _checked(key) for agent, key in keys.items()}

    def sign(self, envelope: Envelope) -> Envelope:
        """``envelope`` signed with the recipient's key; ConfigError when there is none."""
        key = self._keys.get(envelope.recipient or "")
        if key is None:
            raise ConfigError(f"no command key for recipient {envelope.recipient!r}")
        return sign(envelope, key)


# --------------------------------------------------------------------------------------------
# the guard
# --------------------------------------------------------------------------------------------


@dataclass
class GuardStats:
    """A CommandGuard's decisions: commands accepted, and rejected by reason (:data:`REJECT_REASONS`)."""

    accepted: int = 0
    rejected: Rejections = field(default_factory=Rejections)


class CommandGuard:
    """Decides whether ``agent_id`` may apply a command; counts every decision in :attr:`stats`.

    ``stats`` counts the ``accepted`` commands and the ``rejected`` ones by reason. With ``key=None`` no MAC is
    required (a MAC present is then ignored); with a key, unsigned and wrongly signed commands are
    refused. ``require_expiry`` refuses commands without ``expires``; ``accept_broadcast`` also
    accepts ``recipient=None`` (default: a command must name this agent). ``clock`` gives unix
    seconds (for expiry checks). ``step_window``: see rule 4 (checked once ``current_step`` is set).
    """

    def __init__(
        self,
        agent_id: str,
        upstream_id: str,
        *,
        key: bytes | None = None,
        kinds: Collection[str] = COMMAND_KINDS,
        max_seen_ids: int = 4096,
        require_expiry: bool = False,
        accept_broadcast: bool = False,
        clock: Callable[[], float] = time.time,
        step_window: int = 8,
    ) -> None:
        if not agent_id or not upstream_id:
            raise ConfigError("agent_id and upstream_id must be non-empty")
        if max_seen_ids < 1:
            raise ConfigError("max_seen_ids must be at least 1")
        self.agent_id = agent_id
        self.upstream_id = upstream_id
        self.kinds = frozenset(kinds)
        self.max_seen_ids = max_seen_ids
        self.require_expiry = require_expiry
        self._recipients = (agent_id, None) if accept_broadcast else (agent_id,)
        self._key = None if key is None else _checked(key)
        self._clock = clock
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.newest_step: int = -1
        self.current_step: int | None = None  # unknown: no window (an agent sets it each cycle)
        self.step_window: int = step_window
        self.stats = GuardStats()

    @property
    def signed(self) -> bool:
        """True when a key is configured (every command must carry a valid MAC)."""
        return self._key is not None

    @property
    def rejected(self) -> int:
        """Total rejections, all reasons."""
        return self.stats.rejected.total()

    def check_payload(self, payload: bytes | bytearray | memoryview | str, *, topic: str | None = None) -> Envelope:
        """Decode a wire payload and :meth:`check` it; returns the envelope to apply.

        Decode failures are rejections too (``rejected_not_json``, ``rejected_schema``, ...), so
        every payload ends in exactly one counter.
        """
        try:
            envelope = decode(payload, now=self._clock())
        except DecodeError as exc:
            self.stats.rejected[exc.reason] += 1
            raise CommandRejected(exc.reason, str(exc)) from None
        self.check(envelope, topic=topic)
        return envelope

    def check(self, envelope: Envelope, *, topic: str | None = None) -> None:
        """Accept ``envelope`` (and remember it) or raise :class:`CommandRejected`.

        With ``topic``, it must be this agent's command topic for the envelope's kind
        (``heron/{site}/{agent_id}/cmd/{kind}``).
        """
        try:
            self._check(envelope, topic)
        except CommandRejected as exc:
            self.stats.rejected[exc.reason] += 1
            raise
        self._remember(envelope)
        self.stats.accepted += 1

    def _check(self, envelope: Envelope, topic: str | None) -> None:
        what = f"{envelope.kind} {envelope.id} from {envelope.sender!r}"
        if envelope.kind not in self.kinds:
            raise CommandRejected("kind", f"{what}: {envelope.kind!r} is not a command kind")
        if topic is not None:
            parts = parse_topic(topic)
            if parts is None or not parts.command or parts.agent_id != self.agent_id or parts.kind != envelope.kind:
                raise CommandRejected("topic", f"{what} arrived on {topic!r}, "
                                      f"not {self.agent_id}'s cmd/{envelope.kind}")
        if envelope.sender != self.upstream_id:
            raise CommandRejected("sender", f"{what}: only the upstream {self.upstream_id!r} "
                                  f"may command {self.agent_id!r}")
        if envelope.recipient not in self._recipients:
            raise CommandRejected("recipient", f"{what} is addressed to {envelope.recipient!r}, not {self.agent_id!r}")
        if self._key is not None:
            if envelope.mac is None:
                raise CommandRejected("unsigned", f"{what} carries no MAC")
            if not verify(envelope, self._key):
                raise CommandRejected("bad_mac", f"{what}: MAC does not verify")
        if envelope.expires is None and self.require_expiry:
            raise CommandRejected("no_expiry", f"{what} carries no expiry")
        if envelope.is_expired(self._clock()):
            raise CommandRejected("expired", f"{what} expired at {envelope.expires}")
        if self.current_step is not None and envelope.step > self.current_step + self.step_window:
            raise CommandRejected("bounds", f"{what}: step {envelope.step} is more than {self.step_window} "
                                  f"ahead of the current step {self.current_step}")
        if envelope.id in self._seen:
            raise CommandRejected("replay_id", f"{what}: message id already seen")
        if envelope.step < self.newest_step:
            raise CommandRejected("replay_step", f"{what}: step {envelope.step} is older than {self.newest_step}")

    def _remember(self, envelope: Envelope) -> None:
        self._seen[envelope.id] = None
        if len(self._seen) > self.max_seen_ids:
            self._seen.popitem(last=False)
        self.newest_step = max(self.newest_step, envelope.step)
