"""CommandGuard and MACs: only the upstream, correctly signed, never twice, never an older step."""
from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heron_edge.errors import ConfigError
from heron_edge.messages import (
    ActionBody,
    Envelope,
    PriceBody,
    SetpointBody,
    command_topic,
    decode,
    encode,
    make_envelope,
)
from heron_edge.security import CommandGuard, CommandRejected, CommandSigner, new_key, parse_key, sign, verify
from heron_edge.security.auth import MAC_CONTEXT, REJECT_REASONS, compute_mac

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def command(step: int = 1, *, sender: str = "op", recipient: str | None = "mg1", p_mw: float = 0.5,
            ttl_s: float | None = 60.0) -> Envelope:
    return make_envelope(sender, SetpointBody(p_mw=p_mw), step=step, recipient=recipient, ttl_s=ttl_s)


def rejection(guard: CommandGuard, envelope: Envelope, **kw: str) -> str:
    with pytest.raises(CommandRejected) as info:
        guard.check(envelope, **kw)
    return info.value.reason


def test_unsigned_envelopes_encode_exactly_as_before() -> None:
    env = command()
    wire = json.loads(encode(env))
    assert "mac" not in wire and list(wire) == ["id", "sender", "recipient", "step", "ts", "expires", "body"]
    signed = sign(env, KEY)
    assert json.loads(encode(signed))["mac"] == signed.mac and len(signed.mac or "") == 64
    assert decode(encode(signed)) == signed
    # the MAC is over the unsigned encoding, with a context prefix
    assert signed.mac == hmac.new(KEY, MAC_CONTEXT + encode(env), hashlib.sha256).hexdigest()


@settings(max_examples=200, deadline=None)
@given(
    step=st.integers(0, 2**40),
    p_mw=st.floats(-1e5, 1e5),  # the wire's power bound (messages.LIMITS)
    q_mvar=st.none() | st.floats(-1e5, 1e5),
    sender=st.text(min_size=1, max_size=12),
)
def test_a_signature_survives_the_wire(step: int, p_mw: float, q_mvar: float | None, sender: str) -> None:
    env = sign(make_envelope(sender, SetpointBody(p_mw=p_mw, q_mvar=q_mvar), step=step, recipient="mg1"), KEY)
    received = decode(encode(env))
    assert verify(received, KEY)
    assert not verify(received, OTHER_KEY)
    assert not verify(received.model_copy(update={"step": step + 1}), KEY)


def test_the_upstream_signed_command_is_accepted_once() -> None:
    guard = CommandGuard("mg1", "op", key=KEY)
    env = sign(command(step=3), KEY)
    guard.check(env, topic=command_topic("s", "mg1", "setpoint"))
    assert guard.newest_step == 3
    assert rejection(guard, env) == "replay_id"
    guard.check(sign(command(step=3), KEY))  # another command for the same step is fine
    guard.check(sign(command(step=4), KEY))
    assert rejection(guard, sign(command(step=3), KEY)) == "replay_step"
    assert guard.stats.accepted == 3 and guard.stats.rejected == {"replay_id": 1, "replay_step": 1}
    assert guard.rejected == 2


@pytest.mark.parametrize(
    ("envelope", "topic", "reason"),
    [
        (sign(command(sender="mg2"), KEY), None, "sender"),
        (sign(command(recipient="mg2"), KEY), None, "recipient"),
        (sign(command(recipient=None), KEY), None, "recipient"),
        (command(), None, "unsigned"),
        (sign(command(), OTHER_KEY), None, "bad_mac"),
        (sign(command(), KEY).model_copy(update={"body": SetpointBody(p_mw=50.0)}), None, "bad_mac"),
        (sign(command(ttl_s=-1.0), KEY), None, "expired"),
        (sign(make_envelope("op", PriceBody(price_usd_per_mwh=1.0), step=1, recipient="mg1"), KEY), None, "kind"),
        (sign(command(), KEY), command_topic("s", "mg2", "setpoint"), "topic"),
        (sign(command(), KEY), command_topic("s", "mg1", "action"), "topic"),
        (sign(command(), KEY), "heron/s/mg1/telemetry", "topic"),
    ],
)
def test_forged_or_misdirected_commands_are_rejected_and_counted(envelope: Envelope, topic: str | None,
                                                                 reason: str) -> None:
    guard = CommandGuard("mg1", "op", key=KEY)
    kw = {} if topic is None else {"topic": topic}
    assert rejection(guard, envelope, **kw) == reason
    assert reason in REJECT_REASONS
    assert guard.stats.accepted == 0 and guard.stats.rejected == {reason: 1}
    assert guard.newest_step == -1  # nothing remembered from a rejected message


def test_a_forged_message_does_not_poison_the_replay_memory() -> None:
    guard = CommandGuard("mg1", "op", key=KEY)
    genuine = sign(command(step=2), KEY)
    forged = sign(genuine.model_copy(update={"step": 10**9}), OTHER_KEY)  # same id, far-future step, bad MAC
    assert rejection(guard, forged) == "bad_mac"
    guard.check(genuine)  # neither its id nor its step was recorded


def test_without_a_key_sender_and_replay_are_still_checked() -> None:
    guard = CommandGuard("mg1", "op")
    assert not guard.signed
    env = command()
    guard.check(env)
    guard.check(sign(command(), OTHER_KEY))  # a MAC is not checked without a key
    assert rejection(guard, env) == "replay_id"
    assert rejection(guard, command(sender="intruder")) == "sender"


def test_check_payload_counts_decode_failures_too() -> None:
    guard = CommandGuard("mg1", "op", key=KEY)
    for payload, reason in [(b"\xff\x00", "not_json"), (b"{}", "schema"), (b'[1,2]', "schema")]:
        with pytest.raises(CommandRejected) as info:
            guard.check_payload(payload)
        assert info.value.reason == reason
    good = sign(command(), KEY)
    assert guard.check_payload(encode(good)) == good
    tampered = encode(good).replace(b'"p_mw":0.5', b'"p_mw":5.0')
    with pytest.raises(CommandRejected, match="bad_mac"):
        guard.check_payload(tampered)
    assert guard.stats.accepted == 1 and guard.stats.rejected == {"not_json": 1, "schema": 2, "bad_mac": 1}


def test_seen_ids_are_bounded() -> None:
    guard = CommandGuard("mg1", "op", max_seen_ids=8)
    first = command(step=5)
    guard.check(first)
    for _ in range(20):
        guard.check(command(step=5))
    assert len(guard._seen) == 8
    # an id evicted from memory is still refused when its step is older than the newest one
    guard.check(command(step=6))
    assert rejection(guard, first) == "replay_step"


def test_signer_uses_the_recipients_key_and_keys_are_validated() -> None:
    keys = {"mg1": new_key(), "mg2": new_key()}
    signer = CommandSigner(keys)
    env = signer.sign(command(recipient="mg2"))
    assert verify(env, keys["mg2"]) and not verify(env, keys["mg1"])
    assert CommandGuard("mg2", "op", key=keys["mg2"]).check(env) is None
    with pytest.raises(ConfigError, match="no command key"):
        signer.sign(command(recipient="mg9"))
    assert parse_key(keys["mg1"].hex()) == keys["mg1"]
    for bad in ["zz", "00" * 8, ""]:
        with pytest.raises(ConfigError):
            parse_key(bad)
    with pytest.raises(ConfigError):
        CommandGuard("mg1", "op", key=b"short")
    with pytest.raises(ConfigError):
        CommandGuard("mg1", "", key=KEY)
    assert compute_mac(env, keys["mg2"]) == env.mac


def test_action_commands_are_commands_too() -> None:
    guard = CommandGuard("mg1", "op", key=KEY)
    env = sign(make_envelope("op", ActionBody(values=[0.1, 0.2]), step=1, recipient="mg1"), KEY)
    guard.check(env, topic=command_topic("s", "mg1", "action"))
    assert guard.stats.accepted == 1


def test_expiry_can_be_required_and_broadcast_accepted() -> None:
    strict = CommandGuard("mg1", "op", require_expiry=True)
    assert rejection(strict, command(ttl_s=None)) == "no_expiry"
    strict.check(command(ttl_s=5.0))
    assert rejection(strict, command(recipient=None)) == "recipient"
    lenient = CommandGuard("mg1", "op", accept_broadcast=True)
    lenient.check(command(recipient=None))
    assert rejection(lenient, command(recipient="mg2")) == "recipient"
    clock = [1000.0]
    timed = CommandGuard("mg1", "op", clock=lambda: clock[0])
    env = make_envelope("op", SetpointBody(p_mw=1.0), step=1, recipient="mg1").model_copy(update={"expires": 1001.0})
    clock[0] = 1002.0
    assert rejection(timed, env) == "expired"


def test_a_far_future_step_never_becomes_the_replay_mark() -> None:
    """One unsigned setpoint stamped 10**9 once made the next genuine setpoints look like replays."""
    guard = CommandGuard("mg1", "op", require_expiry=True)
    guard.current_step = 5
    with pytest.raises(CommandRejected) as info:
        guard.check(command(step=10**9))
    assert info.value.reason == "bounds" and guard.newest_step == -1
    for step in range(5, 21):  # the agent moves on; every genuine command is accepted
        guard.current_step = step
        guard.check(command(step=step))
    assert guard.stats.accepted == 16 and guard.stats.rejected == {"bounds": 1}
    guard.current_step = 20
    guard.check(command(step=20 + guard.step_window))  # the window's edge is still accepted
