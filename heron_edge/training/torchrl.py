"""TorchRL (the ``torchrl`` extra): PPO on ``PettingZooWrapper``, one policy shared by every microgrid.

The environment is TorchRL's ``PettingZooWrapper`` around ``MultiAgentMicrogrids`` (``local`` observations
normalised per rating), every agent in one group (``agents``): one network applied to each agent's row is the
shared policy. The actor is an MLP -> (loc, scale) -> ``TanhNormal`` inside the action bounds; its deterministic
action, ``low + (tanh(loc) + 1) / 2 * (high - low)``, is the bundle's ``tanh`` post-processing of ``loc``.
A compact PPO loop (collector, GAE, clipped loss) in the style of TorchRL's multi-agent tutorial.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl.collectors import Collector
from torchrl.envs.libs.pettingzoo import PettingZooWrapper
from torchrl.envs.utils import MarlGroupMapType
from torchrl.modules import ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import ClipPPOLoss, ValueEstimators

from heron_edge.env import MultiAgentMicrogrids
from heron_edge.policies.bundle import PolicyManifest, TrainingSpec
from heron_edge.training.export import export_bundle
from heron_edge.training.sb3 import eval_config, train_config

__all__ = ["make_env", "train_torchrl"]

GROUP = "agents"


def make_env(config: dict[str, Any]) -> Any:
    """``PettingZooWrapper`` around ``MultiAgentMicrogrids(config)``, every agent in the group ``agents``."""
    return PettingZooWrapper(env=MultiAgentMicrogrids(config), use_mask=False, categorical_actions=False,
                             group_map=MarlGroupMapType.ALL_IN_ONE_GROUP, return_state=False, done_on_any=True)


def _mlp(n_in: int, n_out: int, hidden: Sequence[int]) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for width in hidden:
        layers += [torch.nn.Linear(n_in, width), torch.nn.Tanh()]
        n_in = width
    return torch.nn.Sequential(*layers, torch.nn.Linear(n_in, n_out))


class _Loc(torch.nn.Module):
    """The exported actor: the policy network's ``loc`` (its first half of outputs)."""

    def __init__(self, net: torch.nn.Module, n_act: int) -> None:
        super().__init__()
        self.net = net
        self.n_act = n_act

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(obs)[..., : self.n_act]
        return out


def _check_deterministic(env: Any, policy: Any, net: torch.nn.Module, n_act: int) -> None:
    """The actor's deterministic action must be the bundle's ``tanh`` post-processing of ``loc`` (RunError if not)."""
    from tensordict.nn import InteractionType, set_interaction_type

    from heron_edge.errors import RunError

    data = env.reset()
    with torch.no_grad(), set_interaction_type(InteractionType.DETERMINISTIC):
        action = policy(data.clone()).get((GROUP, "action"))
        loc = net(data.get((GROUP, "observation")))[..., :n_act]
    spec = env.full_action_spec[(GROUP, "action")].space
    expected = spec.low + (torch.tanh(loc) + 1.0) * 0.5 * (spec.high - spec.low)
    error = float((action - expected).abs().max())
    if error > 1e-5:
        raise RunError(f"TorchRL's deterministic action is not the tanh post-processing of loc (off by {error:g})")


def train_torchrl(out: str | Path, *, iterations: int = 1, frames_per_batch: int = 240,
                  scenario: Any = "ieee34_3x13", protocol: Sequence[str] | str | None = None, seed: int = 0,
                  hidden: Sequence[int] = (64, 64), epochs: int = 4, minibatch: int = 60,
                  learning_rate: float = 3e-4) -> PolicyManifest:
    """Train ``iterations`` PPO iterations of ``frames_per_batch`` environment steps and export the shared policy as
    a bundle in ``out``."""
    import torchrl

    torch.manual_seed(seed)
    env = make_env(train_config(scenario, protocol))
    env.set_seed(seed)
    obs_key, act_key = (GROUP, "observation"), (GROUP, "action")
    n_obs = env.observation_spec[obs_key].shape[-1]
    action_spec = env.full_action_spec[act_key]
    n_act = action_spec.shape[-1]
    net = _mlp(n_obs, 2 * n_act, hidden)
    policy = ProbabilisticActor(
        module=TensorDictModule(torch.nn.Sequential(net, NormalParamExtractor()), in_keys=[obs_key],
                                out_keys=[(GROUP, "loc"), (GROUP, "scale")]),
        spec=action_spec, in_keys=[(GROUP, "loc"), (GROUP, "scale")], out_keys=[act_key],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": action_spec.space.low, "high": action_spec.space.high},
        return_log_prob=True, log_prob_key=(GROUP, "sample_log_prob"))
    critic = ValueOperator(module=_mlp(n_obs, 1, hidden), in_keys=[obs_key], out_keys=[(GROUP, "state_value")])
    collector = Collector(env, policy, frames_per_batch=frames_per_batch,
                                  total_frames=frames_per_batch * iterations, device="cpu",
                          auto_register_policy_transforms=False)
    loss = ClipPPOLoss(actor_network=policy, critic_network=critic, clip_epsilon=0.2, entropy_coeff=0.0,
                       normalize_advantage=False)
    loss.set_keys(reward=(GROUP, "reward"), action=act_key, sample_log_prob=(GROUP, "sample_log_prob"),
                  value=(GROUP, "state_value"), done=(GROUP, "done"), terminated=(GROUP, "terminated"))
    loss.make_value_estimator(ValueEstimators.GAE, gamma=0.99, lmbda=0.95)
    optimizer = torch.optim.Adam(loss.parameters(), lr=learning_rate)
    frames = 0
    for batch in collector:
        frames += batch.numel()
        for key in ("done", "terminated"):  # the group's done flags, from the environment's (one episode for all)
            batch.set(("next", GROUP, key), batch.get(("next", key)).unsqueeze(-1).expand(
                batch.get_item_shape(("next", GROUP, "reward"))))
        batch.set(("next", GROUP, "reward"), batch.get(("next", GROUP, "reward")) / 100.0)  # USD / 100
        with torch.no_grad():
            loss.value_estimator(batch, params=loss.critic_network_params, target_params=loss.target_critic_network_params)
        flat = batch.reshape(-1)
        for _ in range(epochs):
            for index in torch.split(torch.randperm(flat.shape[0]), minibatch):
                terms = loss(flat[index])
                total = terms["loss_objective"] + terms["loss_critic"] + terms["loss_entropy"]
                optimizer.zero_grad()
                total.backward()
                torch.nn.utils.clip_grad_norm_(loss.parameters(), 1.0)
                optimizer.step()
    collector.shutdown()
    _check_deterministic(env, policy, net, n_act)
    env.close()
    evaluation = MultiAgentMicrogrids(eval_config(scenario, protocol))
    training = TrainingSpec(library="torchrl", library_version=torchrl.__version__, algorithm="PPO (shared policy)",
                            steps=frames * len(evaluation.possible_agents), seed=seed, notes={"iterations": iterations})
    try:
        return export_bundle(_Loc(net, n_act), evaluation, out, training=training, postprocess="tanh")
    finally:
        evaluation.close()
