"""ImpairedBroker: each impairment observable and counted, reproducible from its seed, over memory and Mosquitto."""
from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from heron_edge.brokers import Broker, InMemoryBroker, MqttBroker, Subscription
from heron_edge.brokers.impaired import ImpairedBroker, ImpairmentConfig, parse_impairment
from heron_edge.errors import BrokerError, ConfigError
from heron_edge.messages import agent_topic
from heron_edge.runtime.mosquitto import MosquittoProcess
from heron_edge.simtime import SimulatedTimeLoop

T = TypeVar("T")
SITE = "imp"
TELEMETRY = agent_topic(SITE, "mg1", "telemetry")
PRICE = agent_topic(SITE, "system_operator", "price")


def simulated(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on simulated time: delays cost no wall-clock time, timings are exact."""
    loop = SimulatedTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def received(sub: Subscription) -> list[int]:
    return [int(d.payload) for d in sub.drain()]


async def publish_numbers(broker: Broker, topic: str, n: int) -> None:
    for i in range(n):
        await broker.publish(topic, str(i).encode())


async def impaired_memory(impairment: dict[str, Any], topic: str = TELEMETRY, n: int = 400
                          ) -> tuple[ImpairedBroker, list[int]]:
    """Publish 0..n-1 on ``topic`` through an impaired in-memory broker, let every delay pass, close the step."""
    broker = ImpairedBroker(InMemoryBroker(), impairment)
    await broker.connect()
    sub = await broker.subscribe(topic)
    await publish_numbers(broker, topic, n)
    await asyncio.sleep(3600)  # simulated: every delay has passed
    broker.end_step()
    await broker.begin_step()  # what is still held (reordering, late) arrives now
    return broker, received(sub)


def test_loss_is_counted_and_what_arrives_is_what_was_not_lost() -> None:
    broker, got = simulated(impaired_memory({"loss": 0.3, "seed": 7}))
    assert broker.stats.published == 400
    assert broker.stats.lost + len(got) == 400
    assert 80 < broker.stats.lost < 160  # ~120 expected; the draw is fixed by the seed
    assert broker.stats.lost_by_agent == {"mg1": broker.stats.lost}
    assert got == sorted(got) and len(set(got)) == len(got)  # loss alone neither reorders nor repeats


def test_latency_and_jitter_delay_each_message_and_keep_the_topic_in_order() -> None:
    async def scenario() -> tuple[list[float], list[int]]:
        loop = asyncio.get_running_loop()
        broker = ImpairedBroker(InMemoryBroker(), {"latency_s": 0.2, "jitter_s": 0.1, "seed": 3})
        await broker.connect()
        sub = await broker.subscribe(TELEMETRY)
        delays = []
        for i in range(20):  # one at a time: each message's own delay
            sent = loop.time()
            await broker.publish(TELEMETRY, str(i).encode())
            assert len(sub) == 0  # nothing arrives at once
            await sub.get(timeout=1.0)
            delays.append(loop.time() - sent)
        await publish_numbers(broker, TELEMETRY, 50)  # a burst: jitter never reorders one topic
        order = [int((await sub.get(timeout=1.0)).payload) for _ in range(50)]
        await broker.close()
        return delays, order

    delays, order = simulated(scenario())
    assert all(0.2 <= d < 0.3 + 1e-9 for d in delays)
    assert max(delays) - min(delays) > 0.05  # the jitter spreads them
    assert order == list(range(50))  # as over one TCP connection


def test_duplicates_arrive_twice_and_are_counted() -> None:
    broker, got = simulated(impaired_memory({"duplicate": 0.25, "seed": 1}))
    assert 60 < broker.stats.duplicated < 140
    assert len(got) == 400 + broker.stats.duplicated
    assert sorted(set(got)) == list(range(400))
    assert broker.stats.delivered == len(got)


def test_reordered_messages_are_overtaken_by_the_next_one_on_their_topic() -> None:
    broker, got = simulated(impaired_memory({"reorder": 0.2, "seed": 5, "deadline_s": 10.0}))
    assert sorted(got) == list(range(400))  # nothing lost, nothing repeated
    overtaken = sum(1 for a, b in itertools.pairwise(got) if a > b)
    assert broker.stats.reordered > 40 and overtaken > 0
    assert got != sorted(got)


def test_a_message_due_after_the_deadline_is_late_counted_and_delivered_when_the_next_step_begins() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        broker = ImpairedBroker(InMemoryBroker(), {"latency_s": 1.5, "kinds": {"price": {"latency_s": 0.1}}},
                                deadline_s=1.0)
        await broker.connect()
        telemetry, price = await broker.subscribe(TELEMETRY), await broker.subscribe(PRICE)
        await broker.begin_step()
        await broker.publish(TELEMETRY, b"t")
        await broker.publish(PRICE, b"p")
        assert (await price.get(timeout=1.0)).payload == b"p"  # 0.1 s: within the deadline
        with pytest.raises(TimeoutError):
            await telemetry.get(timeout=5.0)  # 1.5 s > the deadline: not in this step, however long one waits
        assert broker.window.late == 1 and broker.window.late_by_agent == {"mg1": 1}
        assert broker.stats.late == 1 and loop.time() > 5.0
        broker.end_step()
        await broker.begin_step()
        assert [d.payload for d in telemetry.drain()] == [b"t"]  # the next step begins: now it arrives (stale)
        assert broker.window.late == 0 and broker.stats.late == 1  # a new window; the total stays
        await broker.close()

    simulated(scenario())


def test_per_kind_impairment_overrides_the_defaults() -> None:
    async def scenario() -> tuple[ImpairedBroker, list[int], list[int]]:
        broker = ImpairedBroker(InMemoryBroker(), {"loss": 0.0, "kinds": {"price": {"loss": 1.0}}})
        await broker.connect()
        telemetry, price = await broker.subscribe(TELEMETRY), await broker.subscribe(PRICE)
        await publish_numbers(broker, TELEMETRY, 10)
        await publish_numbers(broker, PRICE, 10)
        return broker, received(telemetry), received(price)

    broker, telemetry, price = simulated(scenario())
    assert telemetry == list(range(10)) and price == []
    assert broker.stats.lost_by_agent == {"system_operator": 10}


def test_the_same_seed_gives_the_same_fates_whatever_the_interleaving_of_topics() -> None:
    impairment = {"loss": 0.2, "duplicate": 0.1, "reorder": 0.1, "latency_s": 0.05, "jitter_s": 0.05, "seed": 11,
                  "deadline_s": 100.0}

    async def run(interleaved: bool, seed: int = 11) -> dict[str, list[int]]:
        broker = ImpairedBroker(InMemoryBroker(), dict(impairment, seed=seed))
        await broker.connect()
        subs = {t: await broker.subscribe(t) for t in (TELEMETRY, PRICE)}
        await broker.begin_step()
        if interleaved:
            for i in range(200):
                await broker.publish(TELEMETRY, str(i).encode())
                await broker.publish(PRICE, str(i).encode())
        else:
            await publish_numbers(broker, PRICE, 200)
            await asyncio.sleep(1.0)
            await publish_numbers(broker, TELEMETRY, 200)
        await asyncio.sleep(10.0)
        await broker.begin_step()
        return {t: received(s) for t, s in subs.items()}

    first, again, other_order = simulated(run(True)), simulated(run(True)), simulated(run(False))
    assert first == again == other_order
    assert simulated(run(True, seed=12)) != first


def test_zero_impairment_passes_every_message_at_once() -> None:
    async def scenario() -> tuple[ImpairedBroker, list[int]]:
        broker = ImpairedBroker(InMemoryBroker(), {})
        await broker.connect()
        sub = await broker.subscribe(TELEMETRY)
        await publish_numbers(broker, TELEMETRY, 5)
        return broker, received(sub)  # no await in between: delivered before publish returned

    broker, got = simulated(scenario())
    assert got == [0, 1, 2, 3, 4] and broker.stats.delivered == 5 and broker.stats.lost == 0


def test_closed_broker_refuses_use() -> None:
    async def scenario() -> None:
        broker = ImpairedBroker(InMemoryBroker(), {"latency_s": 1.0})
        await broker.connect()
        await broker.publish(TELEMETRY, b"in flight")  # dropped by close, never delivered
        await broker.close()
        await broker.close()
        with pytest.raises(BrokerError):
            await broker.publish(TELEMETRY, b"x")

    simulated(scenario())


def test_an_undeliverable_delayed_message_is_counted_and_an_immediate_one_raises() -> None:
    async def scenario() -> ImpairedBroker:
        inner = InMemoryBroker()
        broker = ImpairedBroker(inner, {"kinds": {"telemetry": {"latency_s": 1.0}}})
        await broker.connect()
        await broker.publish(TELEMETRY, b"delayed")
        await inner.close()  # the connection is gone before the message is due
        await asyncio.sleep(2.0)
        assert broker.stats.failed == 1 and broker.stats.delivered == 0  # logged and counted, nobody to raise to
        with pytest.raises(BrokerError):
            await broker.publish(PRICE, b"now")  # unimpaired: the publisher hears the error, as without the wrapper
        return broker

    simulated(scenario())


@pytest.mark.parametrize(("text", "check"), [
    ("loss=0.05,latency_s=0.2", lambda c: c.loss == 0.05 and c.latency_s == 0.2 and c.seed == 0),
    ("loss=0.1, seed=4, consensus.loss=0.5, deadline_s=2",
     lambda c: c.for_kind("consensus").loss == 0.5 and c.for_kind("price").loss == 0.1 and c.deadline_s == 2.0),
])
def test_parse_impairment(text: str, check: Callable[[ImpairmentConfig], bool]) -> None:
    assert check(parse_impairment(text))


@pytest.mark.parametrize(("text", "says"), [
    ("", "empty impairment"),
    ("loss", "not KEY=VALUE"),
    ("loss=2", "less than or equal to 1"),
    ("los=0.1", "unknown key"),
    ("latency_s=-1", "greater than or equal to 0"),
    ("loss=abc", "loss"),
    ("nokind.loss=0.1", "unknown topic kinds"),
    ("loss=nan", "loss"),
])
def test_parse_impairment_says_what_is_wrong_in_one_line(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        parse_impairment(text)
    assert "\n" not in str(info.value)


@pytest.mark.mqtt
def test_over_mosquitto_the_fates_are_those_of_the_in_memory_run(mosquitto: MosquittoProcess, arun: Any) -> None:
    impairment = {"loss": 0.3, "duplicate": 0.2, "latency_s": 0.02, "jitter_s": 0.02, "seed": 9}
    _, in_memory = simulated(impaired_memory(impairment, n=60))

    async def over_mqtt() -> tuple[ImpairedBroker, list[int]]:
        async with MqttBroker(mosquitto.url) as listener:
            sub = await listener.subscribe(TELEMETRY)
            broker = ImpairedBroker(MqttBroker(mosquitto.url), impairment)
            async with broker:
                await publish_numbers(broker, TELEMETRY, 60)
                expected = 60 - broker.stats.lost + broker.stats.duplicated
                got = [int((await sub.get(timeout=10.0)).payload) for _ in range(expected)]
                return broker, got

    broker, got = arun(over_mqtt())
    assert got == in_memory
    assert broker.stats.lost > 0 and broker.stats.duplicated > 0  # (delivered counts a PUBACK, which may come later)


# -- the environment's distributed mode ------------------------------------------------------------------------------


def day(impairment: dict[str, Any] | None, protocol: list[str] | None = None
        ) -> tuple[list[dict[str, Any]], list[dict[str, dict[str, Any]]], dict[str, int]]:
    """Half a test-year day of the rule policy, distributed in memory: each step's rewards and observations, the infos,
    and the impairment's totals."""
    import logging

    from heron_edge import MultiAgentMicrogrids
    from heron_edge.policies import make_policies

    config: dict[str, Any] = {"centralized": False, "train": False, "protocol": protocol, "max_episode_steps": 12}
    if impairment is not None:
        config["impairment"] = impairment
    env = MultiAgentMicrogrids(config)
    logging.getLogger("heron_edge.agents").setLevel(logging.ERROR)  # every fallback is logged: counted below instead
    try:
        policies = make_policies("rule", env)
        obs, info = env.reset(seed=0)
        steps: list[dict[str, Any]] = [{"obs": obs}]
        infos = [info]
        while env.agents:
            obs, rewards, _, _, info = env.step({a: policies[a].act(obs[a]) for a in env.agents})
            steps.append({"obs": obs, "rewards": rewards})
            infos.append(info)
        runner = env._runner
        assert runner is not None
        totals = {} if runner.impaired is None else {"lost": runner.impaired.stats.lost, "late": runner.impaired.stats.late}
    finally:
        logging.getLogger("heron_edge.agents").setLevel(logging.NOTSET)
        env.close()
    return steps, infos, totals


def same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Bit for bit: the same rewards and observations at every step."""
    import numpy as np

    return len(a) == len(b) and all(
        x.get("rewards") == y.get("rewards") and all(np.array_equal(x["obs"][k], y["obs"][k]) for k in x["obs"])
        for x, y in zip(a, b, strict=True))


PROTOCOLS = ["setpoint", "consensus"]


def test_env_zero_impairment_and_latency_within_the_deadline_reproduce_the_unimpaired_trajectory() -> None:
    unimpaired, infos, _ = day(None, PROTOCOLS)
    zero, zero_infos, totals = day({}, PROTOCOLS)
    delayed, _, delayed_totals = day({"latency_s": 0.05, "jitter_s": 0.05, "seed": 3}, PROTOCOLS)
    assert same(unimpaired, zero) and same(unimpaired, delayed)
    assert totals == delayed_totals == {"lost": 0, "late": 0}
    assert all(i["messages_lost"] == 0.0 and i["messages_late"] == 0.0 and i["fallback"] == 0.0
               for step in zero_infos for i in step.values())
    assert all(i["messages_lost"] != i["messages_lost"] for step in infos for i in step.values())  # NaN: no impairment
    assert [set(i) for i in infos[0].values()] == [set(i) for i in infos[-1].values()]  # the same keys at reset and step


def test_env_seeded_impairment_reproduces_itself_and_counts_what_it_did() -> None:
    impairment = {"loss": 0.2, "latency_s": 0.3, "jitter_s": 0.5, "duplicate": 0.1, "reorder": 0.1, "seed": 4}
    first, infos, totals = day(impairment, PROTOCOLS)
    again, infos_again, totals_again = day(impairment, PROTOCOLS)
    unimpaired, _, _ = day(None, PROTOCOLS)
    assert same(first, again) and infos == infos_again and totals == totals_again
    assert not same(first, unimpaired)
    lost = sum(i["messages_lost"] for step in infos for i in step.values())
    assert 0 < lost <= totals["lost"]  # the operator's own messages count in the totals, not in an agent's info
    assert sum(i["fallback"] for step in infos for i in step.values()) > 0
    other_seed, _, _ = day(dict(impairment, seed=5), PROTOCOLS)
    assert not same(first, other_seed)


def test_env_refuses_an_impairment_when_centralized_or_malformed() -> None:
    from heron_edge import MultiAgentMicrogrids

    with pytest.raises(ConfigError, match="impairment acts on messages"):
        MultiAgentMicrogrids({"impairment": {"loss": 0.1}})
    with pytest.raises(ConfigError, match="impairment.loss"):
        MultiAgentMicrogrids({"centralized": False, "impairment": {"loss": 1.5}})
