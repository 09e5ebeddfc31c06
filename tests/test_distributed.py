"""Distributed mode: local observations plus messages, over InMemoryBroker and a real Mosquitto."""
from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from heron_edge import MultiAgentMicrogrids
from heron_edge import observations as ob
from heron_edge.brokers import InMemoryBroker, MqttBroker
from heron_edge.brokers.base import Subscription
from heron_edge.messages import PriceBody, TelemetryBody, agent_topic, decode, encode, make_envelope
from sim.scenario import Scenario, load_scenario

STEPS = 24
_FEEDER_BUSES = ("806", "808", "812", "814", "816", "824", "828", "830", "854", "832", "858", "834", "842", "844",
                 "846", "848", "860", "836", "840", "862", "838", "818", "820", "822")


def many_microgrids(n: int) -> Scenario:
    """``n`` IEEE 13 microgrids along the IEEE 34 feeder (the shipped three, repeated), their loads and ratings
    scaled by 3 / n so the feeder carries what it carries with three (the power flow converges)."""
    sc = load_scenario("ieee34_3x13")
    share = 3 / n
    mgs = []
    for i in range(n):
        base = sc.microgrids[i % 3]
        mgs.append(base.model_copy(update={
            "name": f"mg{i + 1}", "pv_mw": base.pv_mw * share, "wind_mw": base.wind_mw * share,
            "battery": base.battery.model_copy(update={"p_max_mw": base.battery.p_max_mw * share,
                                                       "capacity_mwh": base.battery.capacity_mwh * share})}))
    network = sc.network.model_copy(update={"attach_buses": {m.name: bus for m, bus in zip(mgs, _FEEDER_BUSES, strict=False)},
                                            "load_scale": sc.network.load_scale * share})
    return sc.model_copy(update={"microgrids": mgs, "network": network})


def trajectory(env: MultiAgentMicrogrids, seed: int = 5) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Run one seeded episode with seeded actions; the plant's trajectory and the observations (steps x agents x n)."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    soc, exchange, vm, rewards, seen = [], [], [], [], [[obs[a] for a in env.possible_agents]]
    while env.agents:
        actions = {a: rng.uniform(env.action_space(a).low, env.action_space(a).high).astype(np.float32) for a in env.agents}
        obs, reward, _, _, infos = env.step(actions)
        last = env.plant.last
        soc.append(last.soc.copy())
        exchange.append(last.exchange_mw.copy())
        vm.append(last.vm_pu.copy())
        rewards.append([reward[a] for a in env.possible_agents])
        seen.append([obs[a] for a in env.possible_agents])
    plant = {"soc": np.array(soc), "exchange": np.array(exchange), "vm": np.array(vm), "reward": np.array(rewards)}
    return plant, np.array(seen)


def test_distributed_in_memory_api_and_layout() -> None:
    env = MultiAgentMicrogrids({"centralized": False, "message_broker": InMemoryBroker(), "max_episode_steps": STEPS})
    parallel_api_test(env, num_cycles=10)
    obs, _ = env.reset(seed=0)
    price = env.plant.price()
    for i, agent in enumerate(env.possible_agents):
        o = obs[agent]
        assert o.shape == (ob.N_LOCAL_BASE,) == (3 + 8 + 3 + 11,)
        assert o[2] == pytest.approx(price / 100.0)  # the price as received from the operator
        local = env._runner._loop.run_until_complete(env._runner.proxies[i].actual_agent.observe_local())
        np.testing.assert_allclose(o[3:11], local, rtol=1e-6)
        neighbours = env.site_graph.neighbours[agent]  # the feeder's order: mg1 - mg2 - mg3
        assert neighbours == {"mg1": ("mg2",), "mg2": ("mg1", "mg3"), "mg3": ("mg2",)}[agent]
        expected = np.mean([env.plant.last.exchange_mw[env.possible_agents.index(p)] for p in neighbours])
        assert o[11] == pytest.approx(expected, rel=1e-5)  # the neighbours' telemetry, aggregated
        named = dict(zip(env.layout.names, o.tolist(), strict=True))
        assert named["site.exchange_mw"] == pytest.approx(env.plant.last.exchange_mw.mean(), rel=1e-5)
        day = [env.plant.price(env.plant.t - env.plant.t % 24 + k) for k in range(24)]
        assert named["price_day_max"] == pytest.approx(max(day) / 100, rel=1e-6)
        assert named["price_quantile"] == pytest.approx(sum(p < price for p in day) / 24)
    env.close()
    env.close()  # closing twice is harmless


def test_default_broker_is_in_memory() -> None:
    env = MultiAgentMicrogrids({"centralized": False, "max_episode_steps": 2})
    assert isinstance(env._runner.broker, InMemoryBroker)
    env.reset(seed=0)
    env.step({a: env.action_space(a).sample() for a in env.agents})
    env.close()


@pytest.mark.mqtt
def test_modes_give_the_same_plant_trajectory(mosquitto) -> None:
    central, central_obs = trajectory(MultiAgentMicrogrids({"centralized": True, "observation": "local",
                                                            "max_episode_steps": STEPS}))
    memory_env = MultiAgentMicrogrids({"centralized": False, "message_broker": InMemoryBroker(), "max_episode_steps": STEPS})
    memory, memory_obs = trajectory(memory_env)
    mqtt_env = MultiAgentMicrogrids({"centralized": False, "message_broker": MqttBroker(mosquitto.url),
                                     "max_episode_steps": STEPS})
    mqtt, mqtt_obs = trajectory(mqtt_env)
    for key in central:
        np.testing.assert_array_equal(central[key], memory[key], err_msg=key)
        np.testing.assert_array_equal(central[key], mqtt[key], err_msg=key)
    # and every agent saw, through messages, exactly what the centralized loop's local observation says
    np.testing.assert_array_equal(memory_obs, central_obs)
    np.testing.assert_array_equal(mqtt_obs, memory_obs)
    # distributed agents really heard each other over Mosquitto, nothing was late
    for stats in mqtt_env._runner.stats.values():
        assert stats.received >= STEPS * 3 and stats.late == 0
    memory_env.close()
    mqtt_env.close()


def _inject_garbage(env: MultiAgentMicrogrids) -> None:
    """Publish one of each kind of bad message onto topics the agents listen to."""
    broker, site = env._runner.broker, env.config.site
    step = env.plant.t
    price = agent_topic(site, "system_operator", "price")
    bad = [
        (price, b"not json at all"),
        (price, b'{"id": "x", "sender": "system_operator"}'),  # schema
        (price, b'{"id":"x","sender":"system_operator","recipient":null,"step":1,"ts":1.0,'
                                   b'"expires":null,"body":{"kind":"teleport"}}'),  # unknown kind
        (price, encode(make_envelope("system_operator", PriceBody(price_usd_per_mwh=9e3), step=step,
                                     ttl_s=-1.0))),  # expired
        (price, encode(make_envelope("mg2", PriceBody(price_usd_per_mwh=9e3), step=step))),  # not upstream
        (agent_topic(site, "mg2", "telemetry"), encode(make_envelope("mg3", TelemetryBody(values={"exchange_mw": 9.0}),
                                                                     step=step))),  # forged sender
    ]

    async def publish() -> None:
        for topic, payload in bad:
            await broker.publish(topic, payload)

    env._runner._loop.run_until_complete(publish())


@pytest.mark.parametrize("transport", ["memory", pytest.param("mqtt", marks=pytest.mark.mqtt)])
def test_bad_messages_are_rejected_counted_and_the_agents_keep_stepping(transport: str, request,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    broker = InMemoryBroker() if transport == "memory" else MqttBroker(request.getfixturevalue("mosquitto").url)
    env = MultiAgentMicrogrids({"centralized": False, "message_broker": broker, "max_episode_steps": 6})
    env.reset(seed=0)
    with caplog.at_level(logging.WARNING, logger="heron_edge.agents.proxy"):
        _inject_garbage(env)
        for _ in range(6):
            obs, *_ = env.step({a: np.zeros(4, np.float32) for a in env.possible_agents})
    for agent in env.possible_agents:  # each rejection was logged, by the agent that rejected it
        logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{agent}: rejected a message")]
        for reason in ("not_json", "schema", "unknown_kind", "expired"):
            assert sum(f": {reason}:" in m for m in logged) == 1, (agent, reason, logged)
    for agent, stats in env._runner.stats.items():
        for reason in ("not_json", "schema", "unknown_kind", "expired"):
            assert stats.rejected[reason] == 1, (agent, reason, stats)
        assert stats.rejected["sender"] >= 1
    price = env.plant.price()  # the forged 9000 USD/MWh price never reached an observation
    assert all(abs(o[2] * 100 - price) < 1e-3 for o in obs.values())
    assert all(abs(o[-1]) < 5 and abs(o[-2]) < 5 for o in obs.values())
    env.close()


def test_a_silent_upstream_means_late_not_hang() -> None:
    env = MultiAgentMicrogrids({"centralized": False, "max_episode_steps": 3, "step_timeout_s": 0.05})
    env.reset(seed=0)
    runner = env._runner

    async def silent(topic, body, *, recipient=None, ttl_s=None):  # the operator's messages are lost
        return None

    runner.operator.roles.link.send = silent
    before = runner._observations[0][2]
    obs, *_ = env.step({a: np.zeros(4, np.float32) for a in env.possible_agents})
    assert all(s.late == 1 for s in runner.stats.values())
    assert obs["mg1"][2] == before  # last price kept
    env.close()


def test_seed_document_proxy_example_runs() -> None:
    """The user's ProxyAgent snippet, with grid_agent taken from a distributed environment."""
    from heron_edge.agents import ProxyAgent

    env = MultiAgentMicrogrids({"centralized": False, "max_episode_steps": 2})
    env.reset(seed=0)
    grid_agent = env._runner.proxies[0].actual_agent
    grid_agent.policy = type("Idle", (), {"act": staticmethod(lambda obs: np.zeros(4))})()
    broker = InMemoryBroker()
    proxy = ProxyAgent(agent_id="mg1_proxy", actual_agent=grid_agent, broker=broker, upstream_id="system_operator")
    proxy.step_timeout_s = 0.05
    action = asyncio.run(proxy.step_distributed())
    np.testing.assert_array_equal(action, np.zeros(4))
    assert proxy.next_step == 1
    env.close()


def test_messages_from_another_step_never_count_as_fresh() -> None:
    """An episode restarting on an earlier day must wait for this step's messages, not reuse old ones."""
    env = MultiAgentMicrogrids({"centralized": False, "max_episode_steps": 2, "step_timeout_s": 0.05})
    env.reset(seed=0, options={"start_step": 5000})
    env.step({a: np.zeros(4, np.float32) for a in env.possible_agents})
    runner = env._runner

    async def publish_future_price() -> None:  # a leftover from a later step of the year
        await runner.broker.publish(agent_topic(env.config.site, "system_operator", "price"),
                                    make_envelope("system_operator", PriceBody(price_usd_per_mwh=777.0), step=9000))

    runner._loop.run_until_complete(publish_future_price())
    obs, _ = env.reset(options={"start_step": 100})
    assert all(abs(o[2] * 100 - env.plant.price()) < 1e-3 for o in obs.values())
    assert all(s.stale >= 1 and s.late == 0 for s in runner.stats.values())
    env.close()


def test_an_unreachable_broker_fails_the_constructor_and_leaves_nothing_open() -> None:
    import gc
    import socket
    import warnings

    from heron_edge.errors import BrokerError

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(BrokerError, match="cannot connect"):
            MultiAgentMicrogrids({"centralized": False, "message_broker": MqttBroker(f"mqtt://127.0.0.1:{port}")})
        gc.collect()
    assert not [w for w in caught if "unclosed event loop" in str(w.message)]


def test_close_after_the_broker_is_gone_still_closes_everything() -> None:
    env = MultiAgentMicrogrids({"centralized": False, "max_episode_steps": 2})
    env.reset(seed=0)
    runner = env._runner
    runner._loop.run_until_complete(runner.broker.close())  # the broker went away under the agents
    env.close()  # no BrokerError for the lost "offline" status; the loop is closed
    assert runner._loop.is_closed()


def test_the_shared_decode_cache_is_bounded_in_bytes() -> None:
    from heron_edge.messages import _DECODED_BYTES, _DecodeOnce

    cache = _DecodeOnce()
    for i in range(400):  # 400 distinct ~10 kB telemetries: more than the cache may hold
        values = {f"k{j}_{i}": float(j) for j in range(500)}
        cache(agent_topic("s", "mg2", "telemetry"), encode(make_envelope("mg2", TelemetryBody(values=values), step=i)), None)
        assert cache.bytes <= _DECODED_BYTES
    assert cache.bytes > 0 and len(cache._envelopes) < 400


def deliveries_per_agent_per_step(env: MultiAgentMicrogrids, steps: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """Every delivery to any of an agent's subscriptions (its ProxyAgent's streams and its protocols' Link), counted
    by the broker's queue over ``steps`` steps, per step."""
    counts: dict[int, int] = {}
    put = Subscription._put

    def counting_put(sub: Subscription, delivery) -> None:
        counts[id(sub)] = counts.get(id(sub), 0) + 1
        put(sub, delivery)

    env.reset(seed=0)
    monkeypatch.setattr(Subscription, "_put", counting_put)
    for _ in range(steps):
        env.step({a: np.zeros(4, np.float32) for a in env.agents})
    monkeypatch.undo()
    out = {}
    for proxy in env._runner.proxies:
        subs = [*proxy._streams, *(box.sub for box in proxy.roles.link._boxes.values())]
        out[proxy.agent_id] = sum(counts.get(id(sub), 0) for sub in subs) / steps
    return out


@pytest.mark.parametrize("protocol", [None, ["setpoint", "p2p_trading"]], ids=str)
def test_what_an_agent_receives_per_step_does_not_grow_with_the_site(protocol, monkeypatch: pytest.MonkeyPatch) -> None:
    """Subscriptions by need: the price, the operator's aggregates, the site-graph neighbours' telemetry and the
    protocols' own messages (a setpoint, the one clearing): the same at N = 3 and N = 12."""
    per_agent = {}
    for n in (3, 12):
        scenario = load_scenario("ieee34_3x13") if n == 3 else many_microgrids(n)
        env = MultiAgentMicrogrids({"centralized": False, "scenario": scenario, "protocol": protocol,
                                    "max_episode_steps": 4})
        per_agent[n] = deliveries_per_agent_per_step(env, 3, monkeypatch)
        assert all(s.late == 0 for s in env._runner.stats.values())
        env.close()
    expected = 2 + 2 + (2 if protocol else 0)  # price, aggregates, two neighbours (+ setpoint, clearing)
    assert max(per_agent[3].values()) == max(per_agent[12].values()) == expected
    assert per_agent[12]["mg1"] == per_agent[3]["mg1"] == expected - 1  # the feeder's first microgrid: one neighbour


def test_the_operator_aggregates_what_came_and_says_how_many() -> None:
    """A microgrid whose telemetry does not come: the operator's aggregates keep its last values, count the others
    (``reporting``), and every agent still gets them, once per step."""
    env = MultiAgentMicrogrids({"centralized": False, "max_episode_steps": 3, "step_timeout_s": 0.1})
    env.reset(seed=0)
    runner = env._runner
    seen: list = []
    publish = runner.broker.publish

    async def spying_publish(topic, payload, *, qos=1, retain=False):
        if topic == agent_topic(env.config.site, "mg3", "telemetry"):
            return None  # mg3's reports are lost
        if topic.endswith("/aggregates"):
            seen.append(decode(payload) if isinstance(payload, bytes) else payload)  # an Envelope from a Link
        return await publish(topic, payload, qos=qos, retain=retain)

    runner.broker.publish = spying_publish
    env.step({a: np.zeros(4, np.float32) for a in env.possible_agents})
    assert [e.body.reporting for e in seen] == [2]
    assert runner.operator.stats.late_by_agent == {"mg3": 1}
    body, rows = seen[0].body, runner.operator._rows
    assert body.mean_soc == pytest.approx(rows[:, 3].mean()) and rows[2, 3] == pytest.approx(0.5)  # mg3's last soc
    assert all(p._aggregates_step == env.plant.t for p in runner.proxies)
    env.close()
