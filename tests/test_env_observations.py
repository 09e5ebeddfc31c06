"""Observation layouts: ``local`` in the centralized loop equals the distributed observation bit for bit, per-rating
normalisation, ``state()``, reset options, the terminal value of stored energy, copies (pickle)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from heron_edge import MultiAgentMicrogrids
from heron_edge import observations as ob
from heron_edge.brokers import InMemoryBroker
from heron_edge.errors import ConfigError
from sim.scenario import load_scenario

COMBINATIONS = [None, "setpoint", "price_signal", "p2p_trading", "consensus", ["setpoint", "p2p_trading"],
                ["setpoint", "consensus"], ["price_signal", "p2p_trading"], ["price_signal", "consensus"]]


def rollout(config: dict, steps: int = 4, seed: int = 3) -> tuple[list, list, list, list]:
    env = MultiAgentMicrogrids(config)
    rng = np.random.default_rng(seed)
    obs, infos = env.reset(seed=seed)
    observations, all_infos, rewards, states = [obs], [infos], [], [env.state()]
    for _ in range(steps):
        actions = {a: rng.uniform(env.action_space(a).low, env.action_space(a).high).astype(np.float32) for a in env.agents}
        obs, reward, _, _, infos = env.step(actions)
        observations.append(obs)
        all_infos.append(infos)
        rewards.append(reward)
        states.append(env.state())
    env.close()
    return observations, all_infos, rewards, states


DISTRIBUTED_ONLY = {"messages_lost", "messages_late", "fallback"}
"""Info keys about the message exchange: NaN in the centralized loop, which exchanges none."""


def same_infos(central: dict, distributed: dict) -> bool:
    """The same infos, the exchange's own keys aside (where the distributed run must report no fallback)."""
    assert all(distributed[agent]["fallback"] == 0.0 for agent in distributed)
    return all(x == y or (np.isnan(x) and np.isnan(y)) for agent in central
               for (key, x), y in zip(central[agent].items(), distributed[agent].values(), strict=True)
               if key not in DISTRIBUTED_ONLY)


@pytest.mark.parametrize("protocol", COMBINATIONS, ids=str)
def test_local_observation_equals_the_distributed_one_bit_for_bit(protocol) -> None:
    """Every protocol combination (consensus too: the centralized loop runs the nodes' iteration in lock step)."""
    normalize = protocol is None or "consensus" in protocol  # both settings, without doubling the test's time
    central = rollout({"observation": "local", "protocol": protocol, "normalize": normalize})
    distributed = rollout({"centralized": False, "message_broker": InMemoryBroker(), "protocol": protocol,
                           "normalize": normalize})
    for step_c, step_d in zip(central[0], distributed[0], strict=True):
        for agent in step_c:
            assert step_c[agent].dtype == step_d[agent].dtype == np.float32
            assert step_c[agent].tobytes() == step_d[agent].tobytes(), (protocol, agent)
    assert central[2] == distributed[2]  # rewards
    assert all(same_infos(a, b) for a, b in zip(central[1], distributed[1], strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(central[3], distributed[3], strict=True))  # state()


def heterogeneous() -> object:
    sc = load_scenario("ieee34_3x13")
    mgs = [m.model_copy(update={"battery": m.battery.model_copy(update={"p_max_mw": p}), "pv_mw": pv})
           for m, p, pv in zip(sc.microgrids, (0.25, 0.5, 1.0), (0.05, 0.1, 0.4))]
    return sc.model_copy(update={"microgrids": mgs})


def test_normalised_local_observations_share_one_space_across_ratings_and_pass_the_api_test() -> None:
    env = MultiAgentMicrogrids({"observation": "local", "normalize": True, "scenario": heterogeneous(),
                                "protocol": ["setpoint", "p2p_trading"]})
    spaces = {id(env.observation_space(a)) for a in env.possible_agents}
    assert len(spaces) == 1  # one policy can be shared
    assert env.layout.kind == "local" and env.layout.version == ob.LAYOUT_VERSION
    assert env.layout.names[-4:] == ("price_rest_max", "setpoint_mw", "traded_mw", "clearing_price")
    assert env.observation_space("mg1").shape == (env.layout.size,)
    obs, _ = env.reset(seed=0, options={"soc": 0.9})
    battery = env.layout.names.index("battery_mw")
    soc = env.layout.names.index("soc")
    for agent in env.agents:
        assert env.observation_space(agent).contains(obs[agent])
        assert obs[agent][soc] == np.float32(0.9)
    obs, *_ = env.step({a: np.array([1.0, 0, 0, 0], np.float32) for a in env.agents})
    for agent in env.agents:  # full discharge is 1.0 of each battery's own rating, whatever its size
        assert obs[agent][battery] == pytest.approx(1.0, abs=1e-6)
    parallel_api_test(env, num_cycles=5)


def test_layout_names_match_every_mode_and_the_rule_of_scales() -> None:
    assert ob.local_layout(("setpoint_mw",)).names == (
        "hour_sin", "hour_cos", "price", *ob.LOCAL_NAMES, "nbr.exchange_mw", "nbr.soc", "nbr.need_mw",
        "site.load_mw", "site.pv_mw", "site.wind_mw", "site.soc", "site.exchange_mw", "price_day_min",
        "price_day_mean", "price_day_max", "price_quantile", "price_rest_min", "price_rest_max", "setpoint_mw")
    assert ob.LAYOUT_VERSION == 2
    local = ob.feature_scales(ob.local_layout(), ob.Ratings(0.5, 1.5))
    named_local = dict(zip(ob.local_layout().names, local.tolist()))
    assert named_local["nbr.exchange_mw"] == named_local["nbr.need_mw"] == named_local["site.load_mw"] == 2.0
    assert named_local["nbr.soc"] == named_local["site.soc"] == named_local["price_day_max"] == 1.0
    layout = ob.global_layout(["a", "b"], ("dispatch_mw",))
    assert layout.size == 3 + 16 + 2 + 2 and layout.names[19:21] == ("is.a", "is.b")
    scales = ob.feature_scales(layout, ob.Ratings(1.0, 1.0), {"a": ob.Ratings(0.5, 0.0), "b": ob.Ratings(2.0, 1.0)})
    named = dict(zip(layout.names, scales.tolist()))
    assert named["a.battery_mw"] == 0.5 and named["a.generator_mw"] == 1.0 and named["a.load_mw"] == 0.5
    assert named["b.load_mw"] == 3.0 and named["b.dispatch_mw"] == 1.0 and named["is.a"] == 1.0 and named["price"] == 1.0
    env = MultiAgentMicrogrids({"protocol": "consensus"})
    obs, _ = env.reset(seed=0)
    assert env.layout.kind == "global" and obs["mg1"].shape == (env.layout.size,) == (33,)
    assert env.state().shape == env.state_space.shape == (env.state_layout.size,) == (3 + 24 + 3,)
    assert env.state_layout.names[-3:] == ("mg1.dispatch_mw", "mg2.dispatch_mw", "mg3.dispatch_mw")
    assert env.state()[-3:].tolist() == pytest.approx([float(o) for o in obs["mg1"][-3:]])
    assert env.render_mode is None
    with pytest.raises(ConfigError, match="observation 'global' needs centralized True"):
        MultiAgentMicrogrids({"centralized": False, "observation": "global"})


def test_reset_soc_option_random_soc_and_terminal_value() -> None:
    env = MultiAgentMicrogrids({"initial_soc": "random", "terminal_energy_value": "mean_price", "max_episode_steps": 3})
    _, infos = env.reset(seed=1)
    socs = env.plant.batteries.soc.copy()
    assert len(set(socs.tolist())) == 3 and ((socs >= 0.1) & (socs <= 0.9)).all()
    env.reset(seed=1)
    np.testing.assert_array_equal(env.plant.batteries.soc, socs)  # seeded
    env.reset(seed=1, options={"soc": {"mg2": 0.3}})
    assert env.plant.batteries.soc.tolist() == [0.5, 0.3, 0.5]
    env.reset(options={"soc": [0.2, 0.4, 0.6]})
    assert env.plant.batteries.soc.tolist() == [0.2, 0.4, 0.6]
    price = np.mean([env.plant.price(env.plant.t + k) for k in range(3)])
    drain = {a: np.array([1.0, 0.0, 0.0, 0.0], np.float32) for a in env.agents}
    total_terminal = np.zeros(3)
    for k in range(3):
        _, rewards, _, truncations, infos = env.step(drain)
        terminal = np.array([infos[a]["terminal_value_usd"] for a in env.possible_agents])
        if k < 2:
            assert not terminal.any()
        total_terminal += terminal
        for a in env.possible_agents:
            i = infos[a]
            assert rewards[a] == pytest.approx(i["terminal_value_usd"] - i["fuel_cost_usd"] - i["energy_cost_usd"] - i["penalty_usd"])
    b = env.plant.batteries
    lost = (np.array([0.2, 0.4, 0.6]) - b.soc) * b.capacity_mwh * b.efficiency
    np.testing.assert_allclose(total_terminal, -price * lost)  # draining costs the energy's value
    assert (total_terminal < 0).all()
    for bad in (1.5, [0.1, 0.2], {"nobody": 0.5}):
        with pytest.raises(ConfigError, match="soc"):
            env.reset(options={"soc": bad})


@pytest.mark.parametrize("centralized", [True, False])
def test_environments_pickle_as_fresh_copies_of_their_config(centralized: bool) -> None:
    env = MultiAgentMicrogrids({"centralized": centralized, "observation": "local", "normalize": True,
                                "max_episode_steps": 2})
    env.reset(seed=5)
    copy = pickle.loads(pickle.dumps(env))
    assert copy.config == env.config.model_copy(update={"message_broker": None}) and copy.layout == env.layout
    a, _ = env.reset()
    b, _ = copy.reset()  # the same generator state: the same day
    assert all(np.array_equal(a[k], b[k]) for k in a)
    copy.close()
    env.close()


def test_an_environment_on_mqtt_refuses_to_pickle() -> None:
    env = MultiAgentMicrogrids.__new__(MultiAgentMicrogrids)
    from heron_edge.brokers import MqttBroker
    from heron_edge.config import parse_config

    env.config = parse_config({"centralized": False, "message_broker": MqttBroker("mqtt://127.0.0.1:1")})
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(env)


def test_the_local_layout_is_the_same_at_any_site_size_and_still_equals_the_distributed_one() -> None:
    """12 microgrids on a configured ring: the same 25 + protocol entries as 3, bit for bit what the agents see."""
    from tests.test_distributed import many_microgrids

    config = {"scenario": many_microgrids(12), "site_graph": "ring", "protocol": "setpoint", "normalize": True,
              "max_episode_steps": 2}
    central = rollout({**config, "observation": "local"}, steps=2)
    distributed = rollout({**config, "centralized": False}, steps=2)
    small = MultiAgentMicrogrids({"observation": "local", "protocol": "setpoint"})
    big = MultiAgentMicrogrids({**config, "observation": "local"})
    assert big.layout == small.layout and big.layout.size == ob.N_LOCAL_BASE + 1
    assert big.site_graph.neighbours["mg1"] == ("mg2", "mg12") and big.site_graph.max_degree == 2
    for step_c, step_d in zip(central[0], distributed[0], strict=True):
        assert len(step_c) == 12
        for agent in step_c:
            assert step_c[agent].tobytes() == step_d[agent].tobytes(), agent
    assert central[2] == distributed[2]


def test_site_graphs_and_the_neighbour_means() -> None:
    from heron_edge.site_graph import site_graph

    agents = ["a", "b", "c", "d"]
    assert site_graph(agents).neighbours == {"a": ("b",), "b": ("a", "c"), "c": ("b", "d"), "d": ("c",)}
    assert site_graph(agents, "ring").neighbours["a"] == ("b", "d")
    configured = site_graph(agents, {"d": ["a"], "b": []})
    assert configured.neighbours == {"a": ("d",), "b": (), "c": (), "d": ("a",)}  # made symmetric
    for bad, message in (("star", "use 'feeder', 'ring'"), ({"x": []}, "not an agent"), ({"a": ["a"]}, "itself")):
        with pytest.raises(ConfigError, match=message):
            site_graph(agents, bad)
    index, valid = site_graph(agents).index_arrays()
    local = np.arange(32, dtype=np.float64).reshape(4, 8)
    means = ob.neighbour_means(local, index, valid)
    # b's neighbours a and c: exchange (column 6), soc (3), load - pv - wind (0 - 1 - 2), averaged
    assert means[1].tolist() == [(6 + 22) / 2, (3 + 19) / 2, ((0 - 1 - 2) + (16 - 17 - 18)) / 2]
    assert ob.neighbour_means(local, *configured.index_arrays())[1].tolist() == [0.0, 0.0, 0.0]  # no neighbours
    prices = np.array([30.0, 10.0, 50.0, 20.0])
    assert ob.price_outlook(prices, 5).tolist() == [10.0, 27.5, 50.0, 0.0, 10.0, 50.0]  # step 5 = hour 1 of its day
    assert ob.price_outlook(prices, 3).tolist() == [10.0, 27.5, 50.0, 0.25, 20.0, 20.0]
