"""MultiAgentMicrogrids: the ParallelEnv contract, determinism, episodes, bad input."""
from __future__ import annotations

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from heron_edge import MultiAgentMicrogrids
from heron_edge.errors import ActionError, ConfigError


@pytest.fixture(scope="module")
def env() -> MultiAgentMicrogrids:
    return MultiAgentMicrogrids({"centralized": True, "max_episode_steps": 24})


def test_parallel_api(env: MultiAgentMicrogrids) -> None:
    parallel_api_test(env, num_cycles=30)


def rollout(env: MultiAgentMicrogrids, seed: int, n_steps: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    trajectory = [obs]
    for _ in range(n_steps):
        actions = {a: rng.uniform(env.action_space(a).low, env.action_space(a).high).astype(np.float32) for a in env.agents}
        obs, rewards, _, _, infos = env.step(actions)
        trajectory.append((obs, rewards, [i["soc"] for i in infos.values()]))
    return trajectory


def test_same_seed_same_trajectory(env: MultiAgentMicrogrids) -> None:
    first, second = rollout(env, 3, 20), rollout(env, 3, 20)
    other = rollout(env, 4, 20)
    for a, b in zip(first[1:], second[1:]):
        for agent in a[0]:
            np.testing.assert_array_equal(a[0][agent], b[0][agent])
        assert a[1] == b[1] and a[2] == b[2]
    assert any(x[1] != y[1] for x, y in zip(first[1:], other[1:]))


def test_observation_is_global_in_centralized_mode(env: MultiAgentMicrogrids) -> None:
    obs, _ = env.reset(seed=0)
    a, b = obs["mg1"], obs["mg2"]
    np.testing.assert_array_equal(a[:-3], b[:-3])  # the same global state
    np.testing.assert_array_equal(a[-3:], [1, 0, 0])
    np.testing.assert_array_equal(b[-3:], [0, 1, 0])
    assert env.observation_space("mg1") is env.observation_space("mg1")


def test_episode_truncates_and_rewards_are_costs(env: MultiAgentMicrogrids) -> None:
    env.reset(seed=1)
    idle = {a: np.zeros(4, np.float32) for a in env.agents}
    for k in range(24):
        obs, rewards, terms, truncs, infos = env.step(idle)
        assert not any(terms.values())
        assert all(truncs.values()) == (k == 23)
        for agent, info in infos.items():
            expected = -(info["fuel_cost_usd"] + info["energy_cost_usd"] + info["penalty_usd"])
            assert rewards[agent] == pytest.approx(expected)
            assert info["fuel_cost_usd"] == 0.0 and info["exchange_mw"] > 0  # idle devices: all imported
    assert env.agents == []
    with pytest.raises(RuntimeError, match="reset"):
        env.step(idle)


def test_train_starts_on_random_2023_days_and_test_walks_2024() -> None:
    train = MultiAgentMicrogrids({"max_episode_steps": 24, "train": True})
    starts = {train.reset(seed=s)[1]["mg1"]["step_in_year"] for s in range(6)}
    assert len(starts) > 3 and all(s % 24 == 0 for s in starts)
    test = MultiAgentMicrogrids({"max_episode_steps": 24, "train": False})
    days = [test.reset(seed=0 if k == 0 else None)[1]["mg1"]["step_in_year"] for k in range(3)]
    assert days == [0, 24, 48] and test.plant.year == 2024


def test_shared_reward() -> None:
    env = MultiAgentMicrogrids({"max_episode_steps": 4, "share_reward": True})
    env.reset(seed=0)
    _, rewards, *_ = env.step({a: env.action_space(a).sample() for a in env.agents})
    assert len(set(rewards.values())) == 1


@pytest.mark.parametrize(
    ("actions", "message"),
    [
        ({"mg1": np.zeros(3)}, "shape"),
        ({"mg1": np.array([0, np.nan, 0, 0])}, "non-finite generator"),
        ({"mg1": np.array([1.5, 0, 0, 0])}, "battery = 1.5 is outside"),
        ({"mg1": np.array([0, -0.2, 0, 0])}, "generator = -0.2 is outside"),
    ],
)
def test_bad_actions_are_named(env: MultiAgentMicrogrids, actions: dict, message: str) -> None:
    env.reset(seed=0)
    full = {a: np.zeros(4, np.float32) for a in env.agents} | actions
    with pytest.raises(ActionError, match=message):
        env.step(full)
    with pytest.raises(ActionError, match="missing"):
        env.step({"mg1": np.zeros(4)})
    with pytest.raises(ActionError, match="unknown"):
        env.step({a: np.zeros(4) for a in env.agents} | {"mg9": np.zeros(4)})


def test_bad_config_is_named() -> None:
    with pytest.raises(ConfigError, match="centralised: unknown key"):
        MultiAgentMicrogrids({"centralised": True})
    with pytest.raises(ConfigError, match="max_episode_steps"):
        MultiAgentMicrogrids({"max_episode_steps": 0})
    with pytest.raises(ConfigError, match="only used when centralized is False"):
        MultiAgentMicrogrids({"centralized": True, "message_broker": object()})


@pytest.mark.parametrize("protocols", [None, ["setpoint", "p2p_trading"], ["price_signal", "consensus"]])
def test_infos_have_the_same_numeric_keys_at_reset_and_every_step(protocols: list[str] | None) -> None:
    env = MultiAgentMicrogrids({"max_episode_steps": 3, "protocol": protocols})
    _, infos = env.reset(seed=0)
    keys = {a: set(info) for a, info in infos.items()}
    while env.agents:
        _, _, _, _, infos = env.step({a: env.action_spaces[a].sample() for a in env.agents})
        for a, info in infos.items():
            assert set(info) == keys[a]
            assert all(isinstance(v, (int, float, bool)) for v in info.values()), info
    env.close()
