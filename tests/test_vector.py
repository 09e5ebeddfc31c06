"""VectorMicrogrids equals K MultiAgentMicrogrids: observations, rewards, infos and autoreset, for both layouts and
with protocols; its SB3 adapter trains."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from heron_edge.env import MultiAgentMicrogrids
from heron_edge.errors import ActionError, ConfigError, UsageError
from heron_edge.vector import VectorMicrogrids

EPISODE = 5


def _replay(config: dict[str, Any], vector: VectorMicrogrids, seeds: list[int], steps: int) -> None:
    """Step ``vector`` with random actions, then replay each environment's actions on one MultiAgentMicrogrids reset
    with its seed (and reset without one when its episode ends): everything must agree."""
    rng = np.random.default_rng(0)
    k, n, agents = vector.num_envs, vector.n_agents, vector.possible_agents
    obs0, _ = vector.reset(seed=seeds)
    record = []
    for _ in range(steps):
        actions = rng.uniform([-1, 0, 0, 0], [1, 1, 1, 1], (k, n, 4)).astype(np.float32)
        record.append((actions, *vector.step(actions)))
    env = MultiAgentMicrogrids(config)
    for i, seed in enumerate(seeds):
        obs, _ = env.reset(seed=seed)
        np.testing.assert_array_equal(obs0[i], np.stack([obs[a] for a in agents]))
        for actions, v_obs, v_rew, v_term, v_trunc, v_infos in record:
            obs, rew, term, trunc, infos = env.step({a: actions[i, j] for j, a in enumerate(agents)})
            expected = np.stack([obs[a] for a in agents])
            np.testing.assert_allclose(v_rew[i], [rew[a] for a in agents], rtol=1e-6, atol=1e-5)  # USD
            np.testing.assert_array_equal(v_trunc[i], [trunc[a] for a in agents])
            np.testing.assert_array_equal(v_term[i], [term[a] for a in agents])
            for name, values in v_infos.values.items():
                np.testing.assert_allclose(values[i], [infos[a][name] for a in agents], rtol=1e-6, atol=1e-5,
                                           err_msg=name)
            if not env.agents:  # autoreset: the last observation in the infos, the next episode's first returned
                assert v_infos.done[i]
                np.testing.assert_allclose(v_infos.final_observation[i], expected, rtol=1e-6, atol=1e-6)
                obs, _ = env.reset()
                expected = np.stack([obs[a] for a in agents])
            np.testing.assert_allclose(v_obs[i], expected, rtol=1e-6, atol=1e-6)
    env.close()


CONFIGS = [
    pytest.param({"max_episode_steps": EPISODE}, id="global"),
    pytest.param({"max_episode_steps": EPISODE, "observation": "local", "normalize": True, "initial_soc": "random",
                  "terminal_energy_value": "mean_price", "train": False}, id="local-normalised-test-year"),
    pytest.param({"max_episode_steps": EPISODE, "protocol": ["setpoint", "p2p_trading"], "share_reward": True},
                 id="setpoint-p2p"),
    pytest.param({"max_episode_steps": EPISODE, "observation": "local", "protocol": ["price_signal", "consensus"]},
                 id="local-price-consensus"),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_vector_equals_single_environments(config: dict[str, Any]) -> None:
    vector = VectorMicrogrids(config, num_envs=2)
    _replay(config, vector, seeds=[11, 4], steps=EPISODE + 3)  # across an autoreset


def test_an_int_seed_gives_environment_k_the_seed_plus_k() -> None:
    config = {"max_episode_steps": 3, "initial_soc": "random"}
    vector = VectorMicrogrids(config, num_envs=2)
    by_int, infos = vector.reset(seed=7)
    by_list, _ = vector.reset(seed=[7, 8])
    np.testing.assert_array_equal(by_int, by_list)
    env = MultiAgentMicrogrids(config)
    obs, info = env.reset(seed=8)
    np.testing.assert_array_equal(by_int[1], np.stack([obs[a] for a in env.possible_agents]))
    assert infos["step_in_year"][1, 0] == info[env.possible_agents[0]]["step_in_year"]
    with pytest.raises(ConfigError, match="one seed per environment"):
        vector.reset(seed=[1, 2, 3])


def test_misuse_is_refused_with_clear_errors() -> None:
    with pytest.raises(ConfigError, match="centralized form only"):
        VectorMicrogrids({"centralized": False}, num_envs=2)
    vector = VectorMicrogrids({"max_episode_steps": 3}, num_envs=2)
    with pytest.raises(UsageError, match="reset"):
        vector.step(np.zeros((2, 3, 4)))
    vector.reset(seed=0)
    with pytest.raises(ActionError, match="shape"):
        vector.step(np.zeros((2, 4)))
    bad = np.zeros((2, 3, 4))
    bad[1, 2, 0] = 2.0
    with pytest.raises(ActionError, match="env 1"):
        vector.step(bad)
    with pytest.raises(ConfigError, match="start_step only"):
        vector.reset(options={"soc": 0.5})


def test_sb3_adapter_trains_a_few_hundred_steps() -> None:
    from stable_baselines3 import PPO

    from heron_edge.training.sb3 import train_config
    from heron_edge.training.vec_sb3 import VectorAgentVecEnv

    vec = VectorAgentVecEnv(VectorMicrogrids(train_config(max_episode_steps=8), num_envs=2), reward_scale_usd=100.0)
    assert vec.num_envs == 6  # (env, agent) slots
    model = PPO("MlpPolicy", vec, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu", verbose=0)
    model.learn(total_timesteps=384)
    assert model.num_timesteps >= 384
    obs = vec.reset()
    actions, _ = model.predict(obs, deterministic=True)
    _, rewards, dones, infos = vec.step(actions)
    assert rewards.shape == (6,) and np.isfinite(rewards).all() and not dones.any()
    vec.close()


@pytest.mark.parametrize("vectorized", [True, False])
def test_sb3_vec_envs_bootstrap_a_time_limit_only_without_a_terminal_energy_value(vectorized: bool) -> None:
    """A terminal energy value stands for the rest of the run: the VecEnv must not also flag the episode's end as a
    time limit (SB3 would add the critic's value of the charge left on top of it, valuing it twice). Without one,
    the end is a time limit, bootstrapped, as in a continuous run."""
    from heron_edge.training.sb3 import AgentVecEnv, train_config
    from heron_edge.training.vec_sb3 import VectorAgentVecEnv

    for value, flagged in (("mean_price", False), (None, True)):
        config = train_config(max_episode_steps=2, terminal_energy_value=value)
        vec = (VectorAgentVecEnv(VectorMicrogrids(config, num_envs=2)) if vectorized
               else AgentVecEnv([MultiAgentMicrogrids(config) for _ in range(2)]))
        vec.reset()
        actions = np.zeros((vec.num_envs, 4), dtype=np.float32)
        _, _, dones, infos = vec.step(actions)
        assert not dones.any() and not any(i["TimeLimit.truncated"] for i in infos)
        _, _, dones, infos = vec.step(actions)
        assert dones.all() and all("terminal_observation" in i for i in infos)
        assert [i["TimeLimit.truncated"] for i in infos] == [flagged] * vec.num_envs, value
        vec.close()
