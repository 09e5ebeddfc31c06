"""Smoke trainings, seconds each: stable-baselines3 (the default recipe), RLlib (ParallelPettingZooEnv, centralized
critic on state()) and TorchRL (PettingZooWrapper) each write the same bundle format, which runs on the env."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from heron_edge import MultiAgentMicrogrids
from heron_edge.policies import make_policies
from heron_edge.policies.bundle import load_bundle

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def runs_on_the_env(directory: Path) -> None:
    """The bundle drives a day's first steps of the distributed env (local layout) from raw observations."""
    env = MultiAgentMicrogrids({"centralized": False, "max_episode_steps": 3})
    policies = make_policies(directory, env)
    obs, _ = env.reset(seed=0)
    while env.agents:
        actions = {a: policies[a].act(obs[a]) for a in env.agents}
        assert all(env.action_space(a).contains(x) for a, x in actions.items())
        obs, *_ = env.step(actions)
    env.close()


def test_sb3_default_recipe_smoke(tmp_path: Path) -> None:
    from heron_edge.training.sb3 import Recipe, train_sb3

    recipe = Recipe(n_envs=1, n_steps=48, batch_size=72, n_epochs=2, eval_every=144, eval_days=2)
    result = train_sb3(tmp_path, steps=288, recipe=recipe, progress=False, log=lambda _: None)
    assert [s for s, _ in result.evaluations] == [144, 288] and np.isfinite(result.rule_usd)
    manifest = load_bundle(tmp_path).manifest
    assert manifest.training.library == "stable-baselines3" and manifest.training.steps == 288
    assert manifest.action.postprocess == "clip" and manifest.normalization.kind == "per_rating"
    assert manifest.training.notes["rule_mean_daily_cost_usd"] == round(result.rule_usd, 2)
    runs_on_the_env(tmp_path)


@pytest.mark.slow
def test_rllib_smoke_with_a_centralized_critic(tmp_path: Path) -> None:
    pytest.importorskip("ray.rllib")
    from heron_edge.training.rllib import StateObservations, train_rllib

    env = StateObservations({"observation": "local", "normalize": True, "protocol": "p2p_trading"})
    obs, _ = env.reset(seed=0)
    assert obs["mg1"]["state"].shape == env.env.state_space.shape and env.observation_space("mg1").contains(obs["mg1"])
    env.close()
    manifest = train_rllib(tmp_path, iterations=1, train_batch_size=144, minibatch_size=72, num_epochs=1)
    assert manifest.training.library == "ray[rllib]" and manifest.action.postprocess == "rescale_clip"
    assert "centralized critic" in manifest.training.algorithm and manifest.training.steps >= 144 * 3
    runs_on_the_env(tmp_path)


@pytest.mark.slow
def test_torchrl_smoke(tmp_path: Path) -> None:
    pytest.importorskip("torchrl")
    from heron_edge.training.torchrl import train_torchrl

    manifest = train_torchrl(tmp_path, iterations=1, frames_per_batch=48, epochs=1, minibatch=48)
    assert manifest.training.library == "torchrl" and manifest.action.postprocess == "tanh"
    assert manifest.training.steps == 48 * 3
    runs_on_the_env(tmp_path)
