"""Fuzzing: thousands of hypothesis-made payloads on every topic an agent listens to.

Random bytes, random JSON, envelope-shaped JSON and mutated valid envelopes go through an
InMemoryBroker into a real ProxyAgent (its observation inputs: the upstream's price and aggregates, its
neighbours' telemetry; every other topic must never reach it) and into a
CommandGuard (its commands: ``heron/{site}/{agent}/cmd/+``). Neither may crash, and every bad
payload must end in exactly one rejection counter: the sum of those counters grows by the
number of bad payloads sent, no more, no less.

Which payloads are bad is decided here from the wire contract, not by asking the agent: a payload
is bad when :func:`heron_edge.messages.decode` refuses it, or (for the proxy) when it is a price
not sent by the upstream or telemetry not sent by the neighbour whose topic it is on, or a power beyond
the site's bound; for the guard,
everything but the one genuine command of each batch (signed with the agent's key, newer step).
The proxy's own telemetry topic is left out: the proxy ignores its echo by design.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heron_edge import MultiAgentMicrogrids
from heron_edge.agents import ProxyAgent
from heron_edge.brokers import InMemoryBroker, Subscription
from heron_edge.messages import (
    LIMITS,
    AggregatesBody,
    ClockBody,
    ConsensusBody,
    DecodeError,
    Envelope,
    OrderBody,
    PriceBody,
    SetpointBody,
    StatusBody,
    TelemetryBody,
    agent_topic,
    command_filter,
    command_topic,
    decode_on,
    encode,
    make_envelope,
)
from heron_edge.security import CommandGuard, CommandRejected, sign

SITE = "fuzz"
AGENT = "mg1"
PEERS = ("mg2", "mg3")
UPSTREAM = "system_operator"
KEY = bytes(range(100, 132))
STEP = 7
FAR_FUTURE = 4.0e9  # unix seconds (year 2096): commands in the fuzz never expire during the run
EXAMPLES = 200  # x 8 to 40 payloads, per test: several thousand payloads per test and run

PRICE_TOPIC = agent_topic(SITE, UPSTREAM, "price")
AGGREGATES_TOPIC = agent_topic(SITE, UPSTREAM, "aggregates")
HEARD = frozenset({PRICE_TOPIC, AGGREGATES_TOPIC, agent_topic(SITE, "mg2", "telemetry")})
"""What the proxy subscribes to: mg1's one site-graph neighbour on the feeder (mg1 - mg2 - mg3) is mg2."""
REPORT_TOPICS = [agent_topic(SITE, who, kind) for who in (*PEERS, UPSTREAM, "plant", "stranger")
                 for kind in ("price", "market", "clearing", "consensus", "clock", "done", "telemetry", "status", "action",
                              "aggregates")]
COMMAND_TOPICS = [command_topic(SITE, AGENT, kind) for kind in ("setpoint", "action", "other")]


@dataclass
class Rig:
    loop: asyncio.AbstractEventLoop
    broker: InMemoryBroker
    proxy: ProxyAgent
    commands: Subscription


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    """A real ProxyAgent (its MicrogridAgent taken from a distributed environment) and a CommandGuard."""
    env = MultiAgentMicrogrids({"centralized": False, "message_broker": InMemoryBroker(), "max_episode_steps": 2})
    env.reset(seed=0)
    grid_agent = env._runner.proxies[0].actual_agent
    loop = asyncio.new_event_loop()
    broker = InMemoryBroker()
    proxy = ProxyAgent(agent_id=AGENT, actual_agent=grid_agent, broker=broker, upstream_id=UPSTREAM, site=SITE,
                       peers=(AGENT, *PEERS), step_timeout_s=0.0)  # no waiting: collect() drains what is queued
    loop.run_until_complete(proxy.start())
    commands = loop.run_until_complete(broker.subscribe(command_filter(SITE, AGENT), maxsize=10_000))
    loop.run_until_complete(proxy.collect(STEP))  # consume our own "online" status
    try:
        yield Rig(loop, broker, proxy, commands)
    finally:
        loop.run_until_complete(proxy.close())
        loop.run_until_complete(broker.close())
        loop.close()
        env.close()


# ---------------------------------------------------------------------------------------- payloads

def valid_reports(step: int) -> list[tuple[str, bytes]]:
    """Well-formed messages on the report topics: the seeds that mutations start from."""
    now_ttl = 3600.0
    return [
        (PRICE_TOPIC, encode(make_envelope(UPSTREAM, PriceBody(price_usd_per_mwh=42.0), step=step, ttl_s=now_ttl))),
        (agent_topic(SITE, "mg2", "telemetry"), encode(make_envelope("mg2", TelemetryBody(values={"exchange_mw": 0.3}),
                                                                     step=step))),
        (agent_topic(SITE, "mg3", "status"), encode(make_envelope("mg3", StatusBody(state="online"), step=step))),
        (AGGREGATES_TOPIC, encode(make_envelope(UPSTREAM, AggregatesBody(
            reporting=3, mean_load_mw=0.4, mean_pv_mw=0.02, mean_wind_mw=0.05, mean_soc=0.6, mean_exchange_mw=0.3,
            price_day_min_usd_per_mwh=20.8, price_day_mean_usd_per_mwh=48.7, price_day_max_usd_per_mwh=74.8,
            price_quantile=0.42, price_rest_min_usd_per_mwh=30.0, price_rest_max_usd_per_mwh=74.8), step=step))),
        (agent_topic(SITE, "mg2", "market"), encode(make_envelope("mg2", OrderBody(side="bid", quantity_mw=1.0,
                                                                                   limit_price_usd_per_mwh=30.0), step=step))),
        (agent_topic(SITE, "mg3", "consensus"), encode(make_envelope("mg3", ConsensusBody(round=0, values=[1.0]),
                                                                     step=step))),
        (agent_topic(SITE, "plant", "clock"), encode(make_envelope("plant", ClockBody(step=step), step=step))),
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
FIELDS = ["id", "sender", "recipient", "step", "ts", "expires", "body", "mac", "kind", "extra"]


@st.composite
def mutation(draw: st.DrawFn, seed: bytes) -> bytes:
    """One mutated copy of a valid payload: byte-level or JSON-level."""
    how = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "field", "drop", "body_field", "sender",
                                "sender", "expired"]))
    data = bytearray(seed)
    if how in ("flip", "insert", "delete", "truncate"):
        i = draw(st.integers(0, len(data) - 1))
        if how == "flip":
            data[i] = draw(st.integers(0, 255))
        elif how == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        else:
            del data[i:]
        return bytes(data)
    doc: dict[str, Any] = json.loads(seed)
    if how == "field":
        doc[draw(st.sampled_from(FIELDS))] = draw(json_values)
    elif how == "drop":
        doc.pop(draw(st.sampled_from(sorted(doc))), None)
    elif how == "body_field":
        doc["body"][draw(st.sampled_from([*sorted(doc["body"]), "kind", "extra"]))] = draw(json_values)
    elif how == "expired":
        doc["expires"] = draw(st.floats(0.0, 1.0e9))  # long past
    else:
        doc["sender"] = draw(st.sampled_from([UPSTREAM, AGENT, *PEERS, "stranger", ""]))
    return json.dumps(doc, allow_nan=True).encode()


@st.composite
def fuzz_payload(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "envelope_shaped", "mutated", "mutated", "mutated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "envelope_shaped":
        doc = draw(st.fixed_dictionaries(dict.fromkeys(("id", "sender", "step", "ts", "body"), json_values),
                                         optional=dict.fromkeys(("recipient", "expires", "mac"), json_values)))
        return json.dumps(doc).encode()
    return draw(mutation(draw(st.sampled_from(seeds))))


def is_bad_report(topic: str, payload: bytes) -> bool:
    """The wire contract: undecodable on its topic (a sender other than the topic's, a body that does not
    belong there, a value out of bounds), telemetry not from a peer, or an exchange beyond the power bound."""
    try:
        envelope = decode_on(topic, payload)
    except DecodeError:
        return True
    if isinstance(envelope.body, TelemetryBody):
        powers = [envelope.body.values.get(k, 0.0) for k in ("load_mw", "pv_mw", "wind_mw", "exchange_mw")]
        return topic not in HEARD or any(abs(p) > LIMITS.power_mw for p in powers)
    return False





# ---------------------------------------------------------------------------------------- tests

SEEDS = valid_reports(STEP)
report_seeds = [payload for _, payload in SEEDS]


@st.composite
def seed_mutated_on_its_topic(draw: st.DrawFn) -> tuple[str, bytes]:
    """A mutation of a valid report on the topic it belongs to (reaches the sender checks more often)."""
    topic, seed = draw(st.sampled_from(SEEDS))
    return topic, draw(mutation(seed))


report_item = st.tuples(st.sampled_from(REPORT_TOPICS), fuzz_payload(report_seeds)) | seed_mutated_on_its_topic()
report_batch = st.lists(report_item, min_size=8, max_size=40)
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ_SETTINGS
@given(batch=report_batch)
def test_proxy_agent_survives_and_counts_every_bad_report(rig: Rig, batch: list[tuple[str, bytes]]) -> None:
    proxy = rig.proxy
    before = (proxy.stats.received, proxy.stats.rejected.total())

    async def deliver() -> np.ndarray:
        for topic, payload in batch:
            await rig.broker.publish(topic, payload)
        return await proxy.collect(STEP)

    obs = rig.loop.run_until_complete(deliver())
    assert obs.shape == (proxy.observation_size,)
    assert np.isfinite(obs).all()
    after = (proxy.stats.received, proxy.stats.rejected.total())
    # the agent subscribes to the price, the aggregates and its neighbour's telemetry only: nothing else reaches it
    heard = [(t, p) for t, p in batch if t in HEARD]
    assert after[0] - before[0] == len(heard)
    assert after[1] - before[1] == sum(is_bad_report(t, p) for t, p in heard)


@st.composite
def command_batch(draw: st.DrawFn) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A genuine signed command, then fuzz derived from it (all of which must be refused)."""
    body = draw(st.sampled_from([SetpointBody(p_mw=0.25), SetpointBody(p_mw=-1.0, q_mvar=0.1)]))
    # drawn, not random: hypothesis replays a batch from its choices, so the seed must be the same each time
    envelope = Envelope(id=draw(st.uuids()).hex, sender=UPSTREAM, recipient=AGENT, step=draw(st.integers(0, 10**6)),
                        ts=FAR_FUTURE - 7200.0, expires=FAR_FUTURE, body=body)
    genuine = encode(sign(envelope, KEY))
    unsigned = encode(envelope)
    fuzz = draw(st.lists(st.tuples(st.sampled_from(COMMAND_TOPICS), fuzz_payload([genuine, genuine, unsigned])),
                         min_size=8, max_size=40))
    return genuine, fuzz


@FUZZ_SETTINGS
@given(batch=command_batch())
def test_command_guard_accepts_only_the_genuine_command(rig: Rig, batch: tuple[bytes, list[tuple[str, bytes]]]) -> None:
    genuine, fuzz = batch
    guard = CommandGuard(AGENT, UPSTREAM, key=KEY)  # fresh per batch: the fuzz is derived from this genuine command

    async def deliver() -> list[bytes]:
        await rig.broker.publish(command_topic(SITE, AGENT, "setpoint"), genuine)
        for topic, payload in fuzz:
            await rig.broker.publish(topic, payload)
        applied = []
        for delivery in rig.commands.drain():
            try:
                applied.append(encode(guard.check_payload(delivery.payload, topic=delivery.topic)))
            except CommandRejected:
                pass
        return applied

    applied = rig.loop.run_until_complete(deliver())
    assert applied == [genuine]
    assert guard.stats.accepted == 1
    assert guard.stats.rejected.total() == len(fuzz)
    assert rig.commands.dropped == 0
