"""Typed counters: what a component did with its messages, and how a status reports them.

Components count into dataclasses with one field per event (never string keys built at run time) and
count rejected messages in a :class:`Rejections` keyed by reason. A status flattens the integer fields
with :func:`int_fields` and carries the rejections as ``{source: {reason: count}}``
(:data:`RejectSource`), so a reader never parses a counter's name.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Literal

__all__ = ["RejectSource", "Rejections", "int_fields"]

RejectSource = Literal["message", "command", "clock", "protocol", "meter", "forecast"]
"""Where a rejection happened: the agent's per-step stream (price, peers' telemetry) or the operator's
telemetry, the command guard, the clock, a protocol's link (setpoint, market, consensus), the feeder meter, a
gateway's mqtt forecast source."""


class Rejections(Counter[str]):
    """Rejected messages by reason (a decode reason such as ``schema`` or ``bounds``, or a guard reason)."""

    def record(self, reason: str, logger: logging.Logger, who: str, topic: str, detail: object) -> None:
        """Count one rejected message and log it, as every receiver does: ``who: rejected a message on topic``."""
        self[reason] += 1
        logger.warning("%s: rejected a message on %s (%s): %s", who, topic, reason, detail)

    def as_dict(self) -> dict[str, int]:
        """The non-zero counts, for a status."""
        return {reason: int(n) for reason, n in sorted(self.items()) if n}


def int_fields(record: object, prefix: str = "") -> dict[str, int]:
    """The integer fields of a counters dataclass as ``{prefix + name: value}`` (what a status shows)."""
    if not dataclasses.is_dataclass(record) or isinstance(record, type):
        raise TypeError(f"a counters dataclass instance expected, not {type(record).__name__}")
    return {prefix + f.name: int(value) for f in dataclasses.fields(record)
            if isinstance(value := getattr(record, f.name), int) and not isinstance(value, bool)}
