"""RLlib (the ``rllib`` extra): PPO with one policy shared by every microgrid and a centralized critic on ``state()``.

The environment is RLlib's ``ParallelPettingZooEnv`` around :class:`StateObservations`, which gives each agent a
``Dict`` observation: ``obs``, its ``local`` observation normalised per rating (what a gateway sees), and
``state``, ``env.state()`` (every microgrid's features: the critic's view, MAPPO style).
:class:`CentralCriticModule` reads ``obs`` in its policy network and ``obs`` + ``state`` in its value network, so
the policy exported to the bundle needs nothing a gateway does not have. RLlib normalises actions (the network's
mean in [-1, 1] is rescaled to the bounds and clipped), hence the bundle's ``rescale_clip`` post-processing.

Scale-out: ``ray.init(address=...)`` (or ``RAY_ADDRESS``) connects to a Ray cluster, and ``num_env_runners`` spreads
the environment copies over its workers; nothing else changes (docs/policies.md).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import gymnasium
import numpy as np
import torch
from pettingzoo import ParallelEnv
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule

from heron_edge.env import MultiAgentMicrogrids
from heron_edge.policies.bundle import PolicyManifest, TrainingSpec
from heron_edge.training.export import export_bundle
from heron_edge.training.sb3 import eval_config, train_config

__all__ = ["CentralCriticModule", "StateObservations", "ppo_config", "train_rllib"]

ENV_NAME = "heron_microgrids"
POLICY_ID = "shared"


class StateObservations(ParallelEnv):  # type: ignore[misc]  # pettingzoo ships no type information
    """A ParallelEnv view of ``MultiAgentMicrogrids`` whose observations are ``{"obs": local, "state": state()}``."""

    metadata: ClassVar[dict[str, Any]] = {"name": "heron_microgrids_state_v0", "render_modes": [], "is_parallelizable": True}
    render_mode = None

    def __init__(self, config: dict[str, Any]) -> None:
        self.env = MultiAgentMicrogrids(config)
        self.possible_agents = list(self.env.possible_agents)
        self.agents: list[str] = []
        self._spaces = {a: gymnasium.spaces.Dict({"obs": self.env.observation_space(a), "state": self.env.state_space})
                        for a in self.possible_agents}

    def observation_space(self, agent: str) -> gymnasium.spaces.Dict:
        return self._spaces[agent]

    def action_space(self, agent: str) -> gymnasium.spaces.Box:
        return self.env.action_space(agent)

    def _with_state(self, obs: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        state = self.env.state()
        return {a: {"obs": o, "state": state} for a, o in obs.items()}

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        obs, infos = self.env.reset(seed=seed, options=options)
        self.agents = list(self.env.agents)
        return self._with_state(obs), infos

    def step(self, actions: dict[str, Any]) -> tuple[dict[str, Any], ...]:
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        self.agents = list(self.env.agents)
        return self._with_state(obs), rewards, terminations, truncations, infos

    def close(self) -> None:
        self.env.close()


class CentralCriticModule(TorchRLModule, ValueFunctionAPI):
    """Policy: MLP on ``obs`` -> Gaussian mean and log-std; value: MLP on ``obs`` + ``state`` (model_config
    ``hidden``: the layer widths, default (64, 64))."""

    def setup(self) -> None:
        space: Any = self.observation_space
        action_space: Any = self.action_space
        model_config: Any = self.model_config or {}
        n_obs, n_state = space["obs"].shape[0], space["state"].shape[0]
        n_act = action_space.shape[0]
        hidden = tuple(model_config.get("hidden", (64, 64)))

        def mlp(n_in: int, n_out: int) -> torch.nn.Sequential:
            layers: list[torch.nn.Module] = []
            for width in hidden:
                layers += [torch.nn.Linear(n_in, width), torch.nn.Tanh()]
                n_in = width
            return torch.nn.Sequential(*layers, torch.nn.Linear(n_in, n_out))

        self.pi = mlp(n_obs, 2 * n_act)
        self.vf = mlp(n_obs + n_state, 1)
        self.action_dist_cls = TorchDiagGaussian

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self.pi(batch[Columns.OBS]["obs"])}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> Any:
        obs = batch[Columns.OBS]
        return self.vf(torch.cat([obs["obs"], obs["state"]], dim=-1)).squeeze(-1)


class _Mean(torch.nn.Module):
    """The exported actor: the policy network's Gaussian mean (its first half of outputs)."""

    def __init__(self, pi: torch.nn.Module, n_act: int) -> None:
        super().__init__()
        self.pi = pi
        self.n_act = n_act

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.pi(obs)[..., : self.n_act]
        return out


def ppo_config(scenario: Any = "ieee34_3x13", protocol: Sequence[str] | str | None = None, *,
               num_env_runners: int = 0, train_batch_size: int = 2304, minibatch_size: int = 288,
               num_epochs: int = 10, learning_rate: float = 3e-4, hidden: Sequence[int] = (64, 64)) -> Any:
    """RLlib's PPOConfig for the shared policy with the centralized critic on the training environment."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv
    from ray.tune.registry import register_env

    register_env(ENV_NAME, lambda config: ParallelPettingZooEnv(StateObservations(dict(config))))  # type: ignore[no-untyped-call]
    return (PPOConfig()  # type: ignore[no-untyped-call]
            .environment(ENV_NAME, env_config=train_config(scenario, protocol))
            .framework("torch")
            .env_runners(num_env_runners=num_env_runners, rollout_fragment_length="auto")
            .multi_agent(policies={POLICY_ID}, policy_mapping_fn=lambda agent_id, *args, **kwargs: POLICY_ID)
            .rl_module(rl_module_spec=MultiRLModuleSpec(rl_module_specs={
                POLICY_ID: RLModuleSpec(module_class=CentralCriticModule, model_config={"hidden": tuple(hidden)})}))
            .training(train_batch_size_per_learner=train_batch_size, minibatch_size=minibatch_size,
                      num_epochs=num_epochs, lr=learning_rate, gamma=0.99, lambda_=0.95)
            .debugging(log_level="ERROR"))


def train_rllib(out: str | Path, *, iterations: int = 1, scenario: Any = "ieee34_3x13",
                protocol: Sequence[str] | str | None = None, seed: int = 0, address: str | None = None,
                num_env_runners: int = 0, **ppo: Any) -> PolicyManifest:
    """Train ``iterations`` PPO iterations and export the shared policy as a bundle in ``out``. ``address``: a Ray
    cluster to join (default: ``RAY_ADDRESS``, else a local Ray on this machine)."""
    import ray

    started = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(2, num_env_runners + 1), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        started = True
    try:
        config = ppo_config(scenario, protocol, num_env_runners=num_env_runners, **ppo).debugging(seed=seed)
        algo = config.build_algo()
        steps = 0
        for _ in range(iterations):
            result = algo.train()
            steps = int(result.get("num_env_steps_sampled_lifetime", 0) or 0)  # environment steps
        module = algo.get_module(POLICY_ID)
        actor = _Mean(module.pi, module.action_space.shape[0])
        algo.stop()
    finally:
        if started:
            ray.shutdown()
    env = MultiAgentMicrogrids(eval_config(scenario, protocol))
    training = TrainingSpec(library="ray[rllib]", library_version=ray.__version__, algorithm="PPO (shared policy, "
                            "centralized critic on state())", steps=steps * len(env.possible_agents), seed=seed,
                            notes={"iterations": iterations})
    try:
        return export_bundle(actor, env, out, training=training, postprocess="rescale_clip")
    finally:
        env.close()
