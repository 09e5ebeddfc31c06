"""Distributed mode: local observations plus messages, over InMemoryBroker and a real Mosquitto."""
from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from heron_edge import MultiAgentMicrogrids
from heron_edge.brokers import InMemoryBroker, MqttBroker
from heron_edge.messages import PriceBody, TelemetryBody, agent_topic, encode, make_envelope

STEPS = 24


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


def distributed_view(central: np.ndarray) -> np.ndarray:
    """What each agent's distributed observation must hold, taken from the centralized observations:
    the context, its own 8 local features and its peers' exchange_mw (the layout in heron_edge.observations)."""
    steps, n, _ = central.shape
    out = np.empty((steps, n, 3 + 8 + n - 1), dtype=central.dtype)
    for i in range(n):
        out[:, i, :11] = np.concatenate([central[:, i, :3], central[:, i, 3 + 8 * i : 11 + 8 * i]], axis=1)
        out[:, i, 11:] = np.stack([central[:, i, 3 + 8 * p + 6] for p in range(n) if p != i], axis=1)  # 6: exchange_mw
    return out


def test_distributed_in_memory_api_and_layout() -> None:
    env = MultiAgentMicrogrids({"centralized": False, "message_broker": InMemoryBroker(), "max_episode_steps": STEPS})
    parallel_api_test(env, num_cycles=10)
    obs, _ = env.reset(seed=0)
    price = env.plant.price()
    for i, agent in enumerate(env.possible_agents):
        o = obs[agent]
        assert o.shape == (3 + 8 + 2,)
        assert o[2] == pytest.approx(price / 100.0)  # the price as received from the operator
        local = env._runner._loop.run_until_complete(env._runner.proxies[i].actual_agent.observe_local())
        np.testing.assert_allclose(o[3:11], local, rtol=1e-6)
        peers = [p for p in env.possible_agents if p != agent]
        expected = [env.plant.last.exchange_mw[env.possible_agents.index(p)] for p in peers]
        np.testing.assert_allclose(o[11:], expected, rtol=1e-5)  # peers' telemetry
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
    central, central_obs = trajectory(MultiAgentMicrogrids({"centralized": True, "max_episode_steps": STEPS}))
    memory_env = MultiAgentMicrogrids({"centralized": False, "message_broker": InMemoryBroker(), "max_episode_steps": STEPS})
    memory, memory_obs = trajectory(memory_env)
    mqtt_env = MultiAgentMicrogrids({"centralized": False, "message_broker": MqttBroker(mosquitto.url),
                                     "max_episode_steps": STEPS})
    mqtt, mqtt_obs = trajectory(mqtt_env)
    for key in central:
        np.testing.assert_array_equal(central[key], memory[key], err_msg=key)
        np.testing.assert_array_equal(central[key], mqtt[key], err_msg=key)
    # and every agent saw, through messages, exactly what the centralized state says (price, own, peers)
    np.testing.assert_array_equal(memory_obs, distributed_view(central_obs))
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
    from heron_edge.agents.proxy import _DECODED_BYTES, _DecodeOnce

    cache = _DecodeOnce()
    topic = agent_topic("s", "mg2", "telemetry")
    for i in range(400):  # 400 distinct ~10 kB telemetries: more than the cache may hold
        values = {f"k{j}_{i}": float(j) for j in range(500)}
        cache(topic, encode(make_envelope("mg2", TelemetryBody(values=values), step=i)))
        assert cache.bytes <= _DECODED_BYTES
    assert cache.bytes > 0 and len(cache._envelopes) < 400
