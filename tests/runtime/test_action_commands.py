"""``cmd/action``: the inbox keeps the latest accepted action and hands it out only for its own step, unexpired, with
four values; everything else is counted."""
from __future__ import annotations

import time

import numpy as np

from heron_edge.messages import ActionBody, command_topic, encode, make_envelope
from heron_edge.runtime.commands import CommandInbox

TOPIC = command_topic("t", "mg1", "action")


def send(inbox: CommandInbox, values: list[float], *, step: int, ttl_s: float = 30.0, sender: str = "system_operator") -> bool:
    return inbox.handle(TOPIC, encode(make_envelope(sender, ActionBody(values=values), step=step, recipient="mg1",
                                                    ttl_s=ttl_s)))


def test_a_fresh_action_is_used_once_for_its_step_and_the_rest_is_counted() -> None:
    inbox = CommandInbox("mg1", "system_operator")
    inbox.guard.current_step = 5
    assert inbox.action(5) is None  # nothing sent
    assert send(inbox, [0.5, 0.25, 0.0, 1.0], step=5)
    np.testing.assert_array_equal(inbox.action(5), [0.5, 0.25, 0.0, 1.0])
    assert inbox.action(5) is None  # used once
    assert not send(inbox, [0.1, 0.0, 0.0, 0.0], step=4)  # older than the newest step seen: the guard refuses it
    assert send(inbox, [0.1, 0.0, 0.0, 0.0], step=6)  # early: kept for its step
    assert inbox.action(5) is None and inbox.action(6) is not None
    assert send(inbox, [0.1, 0.0, 0.0, 0.0], step=6)  # the cycle of step 6 ran without it: stale at step 7
    assert inbox.action(7) is None and inbox.stats.action_stale == 1
    assert send(inbox, [0.1, 0.0, 0.0, 0.0], step=7, ttl_s=0.01)
    time.sleep(0.02)
    assert inbox.action(7) is None and inbox.stats.action_stale == 2  # expired before use
    assert send(inbox, [0.1, 0.0], step=8)
    assert inbox.action(8) is None and inbox.stats.action_invalid == 1
    assert not send(inbox, [0.1, 0.0, 0.0, 0.0], step=9, sender="mg2")  # only the upstream commands
    assert inbox.stats.actions == 5
