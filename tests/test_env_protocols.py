"""Coordination protocols inside the environment: both modes agree, settlement balances, bad config is named."""
from __future__ import annotations

import numpy as np
import pytest

from heron_edge import MultiAgentMicrogrids
from heron_edge.brokers import InMemoryBroker, MqttBroker
from heron_edge.errors import ConfigError

STEPS = 12
PROTOCOLS = ["setpoint", "price_signal", "p2p_trading", "consensus", ["setpoint", "p2p_trading"], ["price_signal", "consensus"]]


def run(env: MultiAgentMicrogrids, seed: int = 3) -> tuple[np.ndarray, list[dict], dict]:
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    rewards, infos = [], []
    while env.agents:
        actions = {a: rng.uniform(env.action_space(a).low, env.action_space(a).high).astype(np.float32) for a in env.agents}
        obs, reward, _, _, info = env.step(actions)
        rewards.append([reward[a] for a in env.possible_agents])
        infos.append(info)
    env.close()
    return np.array(rewards), infos, obs


def compare(central: tuple, distributed: tuple, protocol) -> None:
    r_c, i_c, o_c = central
    r_d, i_d, o_d = distributed
    exact = ("price_usd_per_mwh", "setpoint_mw", "traded_mw", "trade_cash_usd", "clearing_price_usd_per_mwh", "trades",
             "energy_cost_usd")
    for step_c, step_d in zip(i_c, i_d):
        for agent in step_c:
            for key in exact:  # NaN where a protocol does not run, in both forms
                c, d = step_c[agent][key], step_d[agent][key]
                assert c == d or (np.isnan(c) and np.isnan(d)), (protocol, agent, key)
            if not np.isnan(step_c[agent]["dispatch_mw"]):
                total = sum(step_c[a]["dispatch_mw"] for a in step_c)
                assert abs(step_c[agent]["dispatch_mw"] - step_d[agent]["dispatch_mw"]) <= 0.01 * max(total, 1e-3)
    if "consensus" not in str(protocol):
        np.testing.assert_array_equal(r_c, r_d)


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=str)
def test_centralized_and_in_memory_forms_agree(protocol) -> None:
    config = {"max_episode_steps": STEPS, "protocol": protocol}
    central = run(MultiAgentMicrogrids({**config, "centralized": True}))
    distributed = run(MultiAgentMicrogrids({**config, "centralized": False, "message_broker": InMemoryBroker()}))
    compare(central, distributed, protocol)


@pytest.mark.mqtt
@pytest.mark.parametrize("protocol", ["setpoint", "p2p_trading", "consensus"])
def test_centralized_and_mosquitto_forms_agree(protocol, mosquitto) -> None:
    config = {"max_episode_steps": 6, "protocol": protocol}
    central = run(MultiAgentMicrogrids({**config, "centralized": True}))
    distributed = run(MultiAgentMicrogrids({**config, "centralized": False, "message_broker": MqttBroker(mosquitto.url)}))
    compare(central, distributed, protocol)


def test_trades_settle_in_costs_and_balance() -> None:
    env = MultiAgentMicrogrids({"max_episode_steps": 24, "protocol": "p2p_trading"})
    rewards, infos, _ = run(env, seed=4)
    fee = env.coordination.p2p.config.fee_usd_per_mwh
    traded_steps = 0
    for info in infos:
        traded = sum(i["traded_mw"] for i in info.values())
        assert abs(traded) < 1e-9  # energy balances: every MW bought was sold
        volume = sum(max(i["traded_mw"], 0.0) for i in info.values())
        cash = sum(i["trade_cash_usd"] for i in info.values())
        assert cash == pytest.approx(-fee * volume)  # money balances: buyers pay sellers plus the fee
        traded_steps += volume > 0
        price = info["mg1"]["clearing_price_usd_per_mwh"]
        if not np.isnan(price):  # no trade above the import price nor below the export credit
            grid = info["mg1"]["price_usd_per_mwh"]
            assert 0.5 * grid - 1e-9 <= price <= grid + 1e-9
    assert traded_steps >= 6


def test_setpoints_share_the_import_limit_and_report_tracking() -> None:
    env = MultiAgentMicrogrids({"max_episode_steps": 8, "protocol": "setpoint",
                                "protocol_options": {"setpoint": {"import_limit_mw": 0.6}}})
    _, infos, obs = run(env)
    for info in infos:
        setpoints = np.array([i["setpoint_mw"] for i in info.values()])
        assert setpoints[setpoints > 0].sum() <= 0.6 + 1e-9
        for i in info.values():
            assert i["tracking_error_mw"] == pytest.approx(i["exchange_mw"] - i["setpoint_mw"])
    assert obs["mg1"].shape == (3 + 8 * 3 + 3 + 3,)


def test_price_signal_adds_congestion_and_bills_it() -> None:
    plain = run(MultiAgentMicrogrids({"max_episode_steps": 12}), seed=5)
    signal = run(MultiAgentMicrogrids({"max_episode_steps": 12, "protocol": "price_signal",
                                       "protocol_options": {"price_signal": {"congestion_threshold_pu": 0.2,
                                                                             "congestion_adder_usd_per_mwh": 100.0}}}), seed=5)
    adders = [i["mg1"]["congestion_adder_usd_per_mwh"] for i in signal[1]]
    assert sum(a > 0 for a in adders) >= 6
    for p_info, s_info, adder in zip(plain[1], signal[1], adders):
        assert s_info["mg1"]["price_usd_per_mwh"] == pytest.approx(p_info["mg1"]["price_usd_per_mwh"] + adder)


@pytest.mark.parametrize("centralized", [True, False])
def test_state_carries_the_price_the_agents_see(centralized: bool) -> None:
    env = MultiAgentMicrogrids({"centralized": centralized, "max_episode_steps": 12, "protocol": "price_signal",
                                "protocol_options": {"price_signal": {"congestion_threshold_pu": 0.0,
                                                                      "congestion_adder_usd_per_mwh": 100.0}}})
    obs, _ = env.reset(seed=5)
    for _ in range(4):
        obs, *_ = env.step({a: np.zeros(4, np.float32) for a in env.agents})
        state = env.state()
        assert state[2] != np.float32(env.plant.price() / 100.0)  # an adder runs: the raw hourly price is not it
        assert all(state[2] == o[2] for o in obs.values())
        np.testing.assert_array_equal(state[3:11], obs["mg1"][3:11])
    env.close()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"protocol": "gossip"}, "protocol"),
        ({"protocol": ["setpoint", "price_signal"]}, "at most one vertical"),
        ({"protocol": "setpoint", "protocol_options": {"consensus": {}}}, "do not run"),
        ({"protocol": "setpoint", "protocol_options": {"setpoint": {"import_limit_mw": -1}}}, "import_limit_mw"),
    ],
)
def test_bad_protocol_config_is_named(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MultiAgentMicrogrids(config)
