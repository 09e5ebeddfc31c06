"""Wire messages: every body round-trips; every decode failure has its reason; the topic scheme."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from heron_edge.brokers import topic_matches
from heron_edge.errors import ConfigError, MessageError
from heron_edge.messages import (
    BODY_TYPES,
    DECODE_REASONS,
    TOPICS,
    ActionBody,
    AggregatesBody,
    ClearingBody,
    ClockBody,
    ConsensusBody,
    DecodeError,
    Envelope,
    ForecastBody,
    ForecastValues,
    OrderBody,
    PriceBody,
    SetpointBody,
    StatusBody,
    TelemetryBody,
    Trade,
    agent_filter,
    agent_topic,
    check_topic,
    command_filter,
    command_topic,
    decode,
    decode_on,
    encode,
    make_envelope,
    offline_will,
    parse_topic,
    topics_markdown,
)

SAMPLES: dict[str, BaseModel] = {
    "setpoint": SetpointBody(p_mw=-0.25, q_mvar=0.1),
    "price": PriceBody(price_usd_per_mwh=35.2, congestion_adder_usd_per_mwh=1.5),
    "order": OrderBody(side="ask", quantity_mw=0.4, limit_price_usd_per_mwh=20.0),
    "clearing": ClearingBody(
        clearing_price_usd_per_mwh=25.0,
        trades=[Trade(buyer="mg1", seller="mg2", quantity_mw=0.3, price_usd_per_mwh=25.0)],
        fee_usd_per_mwh=0.5,
    ),
    "consensus": ConsensusBody(round=3, values=[1.0, 2.5], converged=True),
    "telemetry": TelemetryBody(values={"load_mw": 1.2, "soc": 0.55}),
    "action": ActionBody(values=[0.1, -0.9]),
    "forecast": ForecastBody(microgrids={"mg1": ForecastValues(load_mw=0.9, pv_mw=0.05, wind_mw=0.0)}),
    "status": StatusBody(state="failsafe", detail="upstream silent", counters={"rejected": 2}, cycle_ms=3.5),
    "clock": ClockBody(step=12, done=True),
    "aggregates": AggregatesBody(reporting=3, mean_load_mw=0.4, mean_pv_mw=0.02, mean_wind_mw=0.05, mean_soc=0.6,
                                 mean_exchange_mw=0.3, price_day_min_usd_per_mwh=20.8, price_day_mean_usd_per_mwh=48.7,
                                 price_day_max_usd_per_mwh=74.8, price_quantile=0.42, price_rest_min_usd_per_mwh=30.0,
                                 price_rest_max_usd_per_mwh=74.8),
}


def test_samples_cover_every_kind() -> None:
    assert set(SAMPLES) == set(BODY_TYPES)
    for kind, body in SAMPLES.items():
        assert isinstance(body, BODY_TYPES[kind])


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_body_kind_round_trips(kind: str) -> None:
    env = make_envelope("mg1", SAMPLES[kind], step=5, recipient="ess1", ttl_s=30.0)
    wire = encode(env)
    assert b" " not in wire.replace(b"upstream silent", b"")  # compact JSON
    back = decode(wire)
    assert back == env and back.kind == kind and type(back.body) is BODY_TYPES[kind]
    assert back.expires is not None and back.expires == pytest.approx(back.ts + 30.0)


def test_envelope_defaults_and_immutability() -> None:
    env = make_envelope("op", PriceBody(price_usd_per_mwh=1.0), step=0)
    assert len(env.id) == 32 and env.recipient is None and env.expires is None
    assert abs(env.ts - time.time()) < 5
    assert make_envelope("op", PriceBody(price_usd_per_mwh=1.0), step=0).id != env.id
    with pytest.raises(ValidationError):
        env.step = 3  # type: ignore[misc]
    assert not env.is_expired()


def test_bodies_reject_extra_fields_and_non_finite_numbers() -> None:
    with pytest.raises(ValidationError):
        SetpointBody(p_mw=1.0, extra=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        SetpointBody(p_mw=float("nan"))
    with pytest.raises(ValidationError):
        TelemetryBody(values={"soc": float("inf")})
    with pytest.raises(ValidationError):
        OrderBody(side="bid", quantity_mw=-1.0, limit_price_usd_per_mwh=1.0)
    with pytest.raises(ValidationError):
        OrderBody(side="hold", quantity_mw=1.0, limit_price_usd_per_mwh=1.0)  # type: ignore[arg-type]


def _wire(**overrides: object) -> bytes:
    doc: dict[str, object] = {"sender": "a", "step": 1, "ts": 1.0, "body": {"kind": "price", "price_usd_per_mwh": 3.0}}
    doc.update(overrides)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x00\xff garbage", "not_json"),
        (b"", "not_json"),
        (b'{"sender": "a", ', "not_json"),
        (b"[1, 2]", "schema"),
        (_wire(step=-1), "bounds"),
        (_wire(body={"kind": "price"}), "schema"),
        (_wire(body={"kind": "setpoint", "p_mw": 1.0, "volts": 3}), "schema"),
        (_wire(body={"price_usd_per_mwh": 3.0}), "schema"),
        (_wire(surprise=True), "schema"),
        (_wire(body={"kind": "teleport", "x": 1}), "unknown_kind"),
        (_wire(expires=10.0), "expired"),
        (_wire(step=2**43), "bounds"),
        (_wire(body={"kind": "setpoint", "p_mw": 1e308}), "bounds"),
        (_wire(body={"kind": "price", "price_usd_per_mwh": -1e300}), "bounds"),
        (_wire(body={"kind": "order", "side": "bid", "quantity_mw": 1.7e308, "limit_price_usd_per_mwh": 1.0}), "bounds"),
        (_wire(body={"kind": "telemetry", "values": {"load_mw": 1e308}}), "bounds"),
        (_wire(body={"kind": "consensus", "round": 0, "values": [1.0] * 2000}), "bounds"),
        (_wire(body={"kind": "clock", "step": 10**30}), "bounds"),
        (_wire(sender="x" * 1000), "bounds"),
    ],
)
def test_decode_failures_have_a_reason(payload: bytes, reason: str) -> None:
    assert reason in DECODE_REASONS
    with pytest.raises(DecodeError) as info:
        decode(payload, now=100.0)
    assert info.value.reason == reason
    assert isinstance(info.value, MessageError)


def test_expiry_is_checked_against_now() -> None:
    env = make_envelope("mg", SetpointBody(p_mw=1.0), step=1, ttl_s=5.0)
    assert decode(encode(env), now=env.ts + 4.9) == env
    with pytest.raises(DecodeError) as info:
        decode(encode(env), now=env.ts + 5.1)
    assert info.value.reason == "expired"
    assert decode(_wire(expires=10.0), now=9.0).expires == 10.0


def test_topic_scheme() -> None:
    assert agent_topic("s1", "ess1", "status") == "heron/s1/ess1/status"
    assert command_topic("s1", "ess1", "setpoint") == "heron/s1/ess1/cmd/setpoint"
    assert agent_topic("s1", "system_operator", "price") == "heron/s1/system_operator/price"
    assert topic_matches(agent_filter("s1", "status"), agent_topic("s1", "pv2", "status"))
    assert topic_matches(command_filter("s1", "ess1"), command_topic("s1", "ess1", "setpoint"))
    assert not topic_matches(command_filter("s1", "ess1"), command_topic("s1", "ess2", "setpoint"))
    assert parse_topic("heron/s1/ess1/cmd/setpoint") == ("s1", "ess1", "setpoint", True)
    assert parse_topic("heron/s1/plant/clock") == ("s1", "plant", "clock", False)
    assert parse_topic("heron/s1/cmd/clock") is None and parse_topic("heron/s1//clock") is None
    assert parse_topic("heron/s1/ess1/status") == ("s1", "ess1", "status", False)
    assert parse_topic("other/s1/ess1/status") is None
    for bad in ["", "a/b", "a+", "#"]:
        with pytest.raises(ConfigError):
            agent_topic("s1", bad, "status")
    with pytest.raises(ConfigError):
        agent_topic("s1", "cmd", "status")


@pytest.mark.parametrize(
    ("topic", "envelope", "reason"),
    [
        ("heron/s/plant/clock", make_envelope("mg1", ClockBody(step=1), step=1), "sender"),
        ("heron/s/mg1/done", make_envelope("mg2", ClockBody(step=1, done=True), step=1), "sender"),
        ("heron/s/mg1/done", make_envelope("mg1", ClockBody(step=1), step=1), "topic"),
        ("heron/s/plant/clock", make_envelope("plant", ClockBody(step=1, done=True), step=1), "topic"),
        ("heron/s/plant/clock", make_envelope("plant", ClockBody(step=8760), step=1), "schema"),
        ("heron/s/op/price", make_envelope("op", SetpointBody(p_mw=1.0), step=1), "topic"),
        ("heron/s/mg1/cmd/setpoint", make_envelope("op", SetpointBody(p_mw=1.0), step=1, recipient="mg2"), "sender"),
        ("heron/s/mg1/teleport", make_envelope("mg1", SetpointBody(p_mw=1.0), step=1), "topic"),
        ("not/a/heron/topic", make_envelope("mg1", SetpointBody(p_mw=1.0), step=1), "topic"),
    ],
)
def test_a_topic_binds_its_sender_and_its_kind(topic: str, envelope: Envelope, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_on(topic, encode(envelope))
    assert info.value.reason == reason


def test_a_well_addressed_message_passes_the_topic_check() -> None:
    env = make_envelope("op", SetpointBody(p_mw=1.0), step=1, recipient="mg1")
    assert check_topic("heron/s/mg1/cmd/setpoint", env) is env
    clock = make_envelope("plant", ClockBody(step=3), step=3)
    assert decode_on("heron/s/plant/clock", encode(clock)) == clock


def test_topic_table_is_consistent() -> None:
    for spec in TOPICS:
        concrete = spec.pattern.format(site="s", agent="a", id="a", operator="a", plant="a", forecaster="a")
        parts = parse_topic(concrete)
        assert parts is not None, spec.pattern
        assert set(spec.body_kinds) <= set(BODY_TYPES)
        assert spec.qos in (0, 1, 2)
    status = [s for s in TOPICS if s.pattern.endswith("/status")]
    assert len(status) == 1 and status[0].retained
    table = topics_markdown()
    assert table.count("\n") == len(TOPICS) + 2 and "`heron/{site}/{plant}/clock`" in table


def test_offline_will_is_a_valid_status() -> None:
    topic, payload = offline_will("s1", "ess1")
    env = decode(payload)
    assert topic == "heron/s1/ess1/status"
    assert isinstance(env.body, StatusBody) and env.body.state == "offline" and env.sender == "ess1"


def test_decode_is_single_pass_fast() -> None:
    wire = encode(make_envelope("mg1", SAMPLES["telemetry"], step=1))
    start = time.perf_counter()
    for _ in range(2000):
        decode(wire)
    per_call_us = (time.perf_counter() - start) / 2000 * 1e6
    assert per_call_us < 100, per_call_us  # ~5 us here; generous for slow CI machines
    assert isinstance(decode(wire), Envelope)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_message_ids_stay_unique_in_a_forked_child() -> None:
    """Ids are a per-process random prefix and a counter: a forked child must not repeat its parent's."""
    ids = {make_envelope("op", PriceBody(price_usd_per_mwh=1.0), step=0).id for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send two ids and leave without running the parent's cleanup
        os.write(write, " ".join(make_envelope("op", PriceBody(price_usd_per_mwh=1.0), step=0).id
                                 for _ in range(2)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 200).decode().split()
    os.close(read)
    os.waitpid(pid, 0)
    parent = [make_envelope("op", PriceBody(price_usd_per_mwh=1.0), step=0).id for _ in range(2)]
    assert len(child) == 2 and not set(child) & (set(parent) | ids)
    assert child[0][:16] != parent[0][:16]  # a fresh prefix, not the parent's


def test_the_readme_lists_the_topic_table_of_the_code() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert topics_markdown() in readme
