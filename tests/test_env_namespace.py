"""Each environment its own topic namespace: two distributed environments on one Mosquitto, default site, never
hear each other (no rejected, stale or late messages) and each follows its own centralized twin."""
from __future__ import annotations

import re

import numpy as np
import pytest

from heron_edge import MultiAgentMicrogrids
from heron_edge.brokers import InMemoryBroker, MqttBroker
from heron_edge.config import EnvConfig, default_site
from heron_edge.distributed import DistributedRunner
from heron_edge.errors import ConfigError
from heron_edge.runtime.mosquitto import MosquittoProcess

STEPS = 6


def _runner(env: MultiAgentMicrogrids) -> DistributedRunner:
    """The distributed environment's agents, operator and broker."""
    if env._runner is None:
        raise TypeError("not a distributed environment")
    return env._runner


def test_every_environment_gets_its_own_default_site() -> None:
    config = EnvConfig.model_validate({"centralized": False})  # one config object shared by two environments
    first, second = MultiAgentMicrogrids(config), MultiAgentMicrogrids(config)
    try:
        assert config.site is None  # the config says "per environment"; each environment resolved its own
        assert first.config.site != second.config.site
        for env in (first, second):
            assert env.config.site is not None and re.fullmatch(r"sim-[0-9a-f]{8}", env.config.site)
            assert {p.site for p in _runner(env).proxies} == {env.config.site} == {_runner(env).site}
            assert _runner(env).operator.roles.link.site == env.config.site
    finally:
        first.close()
        second.close()
    assert re.fullmatch(r"sim-[0-9a-f]{8}", default_site()) and default_site() != default_site()


def test_a_given_site_is_kept_and_validated() -> None:
    env = MultiAgentMicrogrids({"centralized": False, "site": "plant-a", "message_broker": InMemoryBroker()})
    try:
        assert env.config.site == "plant-a" and _runner(env).proxies[0].site == "plant-a"
    finally:
        env.close()
    with pytest.raises(ConfigError, match="site"):
        MultiAgentMicrogrids({"centralized": False, "site": "a/b"})


def _actions(env: MultiAgentMicrogrids, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {a: rng.uniform(env.action_space(a).low, env.action_space(a).high).astype(np.float32) for a in env.agents}


@pytest.mark.parametrize("same_day", [True, False], ids=["same-day", "other-days"])
@pytest.mark.mqtt
def test_two_environments_on_one_mosquitto_do_not_hear_each_other(mosquitto: MosquittoProcess, same_day: bool) -> None:
    """Interleaved steps of two default-site environments over one broker, each with its own actions: each sees
    through its messages exactly what its centralized twin's state says, and counts nothing rejected, stale or late.
    On the same day a crossing message would carry this very step (accepted, wrong values); on other days, another
    step (stale)."""
    envs = [MultiAgentMicrogrids({"centralized": False, "message_broker": MqttBroker(mosquitto.url),
                                  "max_episode_steps": STEPS, "step_timeout_s": 2.0}) for _ in range(2)]
    twins = [MultiAgentMicrogrids({"centralized": True, "observation": "local", "max_episode_steps": STEPS})
             for _ in range(2)]  # ``local``: exactly what each distributed agent must see
    try:
        assert envs[0].config.site != envs[1].config.site
        days = (3, 3) if same_day else (3, 4)
        for env, twin, seed in zip(envs, twins, days, strict=True):
            env.reset(seed=seed)
            twin.reset(seed=seed)
        assert (envs[0].plant.t == envs[1].plant.t) == same_day
        rngs = [np.random.default_rng(seed) for seed in (10, 11)]  # different actions: different exchanges
        while envs[0].agents:
            for env, twin, rng in zip(envs, twins, rngs, strict=True):  # A, A's twin, B, B's twin: the broker holds both at once
                actions = _actions(env, rng)
                obs, rewards, *_ = env.step(actions)
                twin_obs, twin_rewards, *_ = twin.step(actions)
                assert rewards == twin_rewards
                seen = np.array([[obs[a] for a in env.possible_agents]])
                expected = np.array([[twin_obs[a] for a in twin.possible_agents]])
                np.testing.assert_array_equal(seen, expected, err_msg=env.config.site)  # price, own, neighbours, site
        for env in envs:
            for agent, stats in _runner(env).stats.items():
                assert stats.received >= STEPS * 3, (agent, stats)
                assert stats.rejected.total() == stats.late == stats.stale == 0, (env.config.site, agent, stats)
            operator = _runner(env).operator.stats
            assert operator.late == operator.stale == operator.rejected.total() == 0, operator
    finally:
        for env in (*envs, *twins):
            env.close()
