"""The default recipe of ``heron-edge train``: stable-baselines3 PPO, one policy shared by every agent.

Environment: ``MultiAgentMicrogrids`` with ``local`` observations normalised per rating (so the policy is the
one a gateway runs, and one network fits every microgrid), episodes of two days of 2023 (``Recipe.episode_steps``)
with a random initial state of charge. An episode's end is a time limit, not the end of the task: PPO bootstraps
it with the critic's value of the state reached (SB3's ``TimeLimit.truncated``), so the charge left in a battery
is worth what the policy will make of it next, as in a continuous run, and draining is not free. With a
``Recipe.terminal_energy_value`` the stored energy is instead valued at that price at the end and the episode is
not bootstrapped (either values the charge left, never both: :func:`bootstrapped`). The earlier recipe did both on
one-day episodes: the critic's value of the charge came on top of the day's mean price, the policy learned to end
every day full, and on the continuous year it kept the batteries full through the evening peak. :class:`AgentVecEnv` turns ``n_envs`` copies of it into one SB3 VecEnv with one
slot per agent (parameter sharing: every agent's experience trains the same network). Rewards are divided by
``reward_scale_usd``.

Every ``eval_every`` steps the deterministic policy runs on held-out 2024 days (``heron_edge.training.evaluation``)
and is compared with the rule on the same days; the best evaluated policy is exported as the bundle (with both
costs in its manifest's notes). A tqdm bar shows the progress and the last evaluation.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from heron_edge.errors import ConfigError
from heron_edge.policies import make_policies
from heron_edge.policies.bundle import PolicyManifest, TrainingSpec
from heron_edge.training.evaluation import DayCosts, daily_costs, held_out_days
from heron_edge.training.export import export_bundle
from heron_edge.training.slots import AgentSlotsVecEnv

__all__ = ["AgentVecEnv", "Recipe", "TrainResult", "train_config", "train_sb3"]


def train_config(scenario: Any = "ieee34_3x13", protocol: Sequence[str] | str | None = None, *,
                 max_episode_steps: int = 24,
                 terminal_energy_value: float | Literal["mean_price"] | None = "mean_price") -> dict[str, Any]:
    """The training environment's config: local normalised observations, random days of 2023, random initial SoC,
    stored energy valued at the day's mean price at the end of the episode (``terminal_energy_value``)."""
    return {"observation": "local", "normalize": True, "train": True, "initial_soc": "random",
            "terminal_energy_value": terminal_energy_value, "max_episode_steps": max_episode_steps,
            "scenario": scenario, "protocol": protocol}


def eval_config(scenario: Any = "ieee34_3x13", protocol: Sequence[str] | str | None = None, *,
                normalize: bool = True, max_episode_steps: int = 24) -> dict[str, Any]:
    """The evaluation environment's config: days of 2024 from the scenario's initial SoC, the stored energy's change
    valued at the day's mean price (``heron_edge.training.evaluation``)."""
    return {"observation": "local", "normalize": normalize, "train": False, "max_episode_steps": max_episode_steps,
            "scenario": scenario, "protocol": protocol, "terminal_energy_value": "mean_price"}


@dataclass(frozen=True)
class Recipe:
    """PPO's settings (stable-baselines3 names) and the run's layout; the defaults are the benchmarked recipe."""

    n_envs: int = 4
    n_steps: int = 96
    """Steps per slot per rollout (4 days)."""
    batch_size: int = 384
    n_epochs: int = 5
    learning_rate: float = 3e-4
    learning_rate_end: float | None = 0.0
    """Linear decay of the learning rate to this value over the run (None: constant)."""
    gamma: float = 0.995
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    net_arch: tuple[int, ...] = (64, 64)
    log_std_init: float = -0.5
    reward_scale_usd: float = 100.0
    eval_every: int = 50_000
    """Agent steps between evaluations (and at the end)."""
    eval_days: int = 12
    eval_window_days: int = 1
    """Days of each evaluation episode (continuous, from the scenario's state of charge; scored per day)."""
    episode_steps: int = 48
    """Steps of a training episode (two days): its end is bootstrapped unless ``terminal_energy_value`` is set."""
    terminal_energy_value: float | Literal["mean_price"] | None = None
    """The stored energy's value at a training episode's end (USD/MWh or the episode's mean price; None: the
    critic's value of the state reached instead)."""
    vectorized: bool = True
    """Step the ``n_envs`` environments as one ``VectorMicrogrids`` (a batched plant, ``VectorAgentVecEnv``) instead
    of ``n_envs`` single environments (``AgentVecEnv``): the same episodes; about as fast at 4 environments, faster
    from about 8 (``benchmarks/bench_vector.py``)."""


@dataclass
class TrainResult:
    """What a training run did: its budget, evaluations (steps, learned and rule mean daily cost in USD), the
    manifest written."""

    steps: int
    seconds: float
    evaluations: list[tuple[int, float]] = field(default_factory=list)
    rule_usd: float = math.nan
    best_usd: float = math.nan
    manifest: PolicyManifest | None = None


def bootstrapped(config: Any) -> bool:
    """Whether an episode's time limit is bootstrapped with the critic's value (SB3's ``TimeLimit.truncated``): not
    when the environment values the stored energy at the end (``terminal_energy_value``), which then stands for
    the rest of the run: counting both would value the charge left twice."""
    return getattr(config, "terminal_energy_value", None) is None


class AgentVecEnv(AgentSlotsVecEnv):
    """``n`` MultiAgentMicrogrids as one stable-baselines3 VecEnv with a slot per agent (all agents share the
    policy). Every environment's episode ends for all its agents at once; it is then reset (SB3's auto-reset,
    ``terminal_observation`` in the infos); its time limit is bootstrapped unless a terminal energy value closes
    it (:func:`bootstrapped`)."""

    def __init__(self, envs: Sequence[Any], *, reward_scale_usd: float = 1.0, seed: int = 0) -> None:
        self.envs = list(envs)
        self.agents = [list(env.possible_agents) for env in self.envs]
        first = self.envs[0]
        space = first.observation_space(first.possible_agents[0])
        for env in self.envs:
            if any(env.observation_space(a) is not space and env.observation_space(a) != space for a in env.possible_agents):
                raise ConfigError("parameter sharing needs one observation space for every agent: normalise per rating")
        self.reward_scale = reward_scale_usd
        self._base_seed = seed
        self._actions: np.ndarray | None = None
        super().__init__(sum(len(a) for a in self.agents), space, first.action_space(first.possible_agents[0]))

    def reset(self) -> np.ndarray:
        rows = []
        for k, env in enumerate(self.envs):
            obs, _ = env.reset(seed=self._base_seed + k)
            rows += [obs[a] for a in self.agents[k]]
        return np.stack(rows)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        assert self._actions is not None
        obs_rows, rewards, dones, infos = [], [], [], []
        slot = 0
        for k, env in enumerate(self.envs):
            agents = self.agents[k]
            low, high = env.action_space(agents[0]).low, env.action_space(agents[0]).high
            actions = {a: np.clip(self._actions[slot + i], low, high) for i, a in enumerate(agents)}
            obs, reward, _, truncated, _ = env.step(actions)
            done = not env.agents
            if done:
                final = obs
                obs, _ = env.reset()
            for a in agents:
                obs_rows.append(obs[a])
                rewards.append(reward[a] / self.reward_scale)
                dones.append(done)
                item: dict[str, Any] = {"TimeLimit.truncated": bool(truncated[a]) and done
                                        and bootstrapped(env.config)}
                if done:
                    item["terminal_observation"] = final[a]
                infos.append(item)
            slot += len(agents)
        return np.stack(obs_rows), np.array(rewards, dtype=np.float32), np.array(dones), infos

    def close(self) -> None:
        for env in self.envs:
            env.close()

    @property
    def _attribute_owner(self) -> Any:
        return self.envs[0]


def _schedule(start: float, end: float | None) -> float | Callable[[float], float]:
    """SB3's learning rate: constant, or linear from ``start`` to ``end`` (SB3 passes the progress left, 1 -> 0)."""
    if end is None:
        return start
    return lambda left: end + (start - end) * left


def sb3_actor(model: Any) -> Any:
    """The deterministic actor of an SB3 PPO MlpPolicy: observation -> the Gaussian's mean (before clipping)."""
    import torch

    policy = model.policy
    return torch.nn.Sequential(*policy.mlp_extractor.policy_net, policy.action_net)


def train_sb3(out: str | Path, *, steps: int = 1_000_000, scenario: Any = "ieee34_3x13",
              protocol: Sequence[str] | str | None = None, seed: int = 0, recipe: Recipe | None = None,
              progress: bool = True, log: Callable[[str], None] = print) -> TrainResult:
    """Train the default recipe for ``steps`` agent steps (environment steps times agents) and write the bundle of
    the best evaluated policy to ``out``; returns the run's evaluations."""
    import stable_baselines3
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger
    from tqdm import tqdm

    from heron_edge.env import MultiAgentMicrogrids

    plan = recipe if recipe is not None else Recipe()
    torch.set_num_threads(1)
    t0 = time.monotonic()
    vec: VecEnv
    config = train_config(scenario, protocol, max_episode_steps=plan.episode_steps,
                          terminal_energy_value=plan.terminal_energy_value)
    if plan.vectorized:
        from heron_edge.training.vec_sb3 import VectorAgentVecEnv
        from heron_edge.vector import VectorMicrogrids

        vec = VectorAgentVecEnv(VectorMicrogrids(config, num_envs=plan.n_envs),
                                reward_scale_usd=plan.reward_scale_usd, seed=seed)
    else:
        envs = [MultiAgentMicrogrids(config) for _ in range(plan.n_envs)]
        vec = AgentVecEnv(envs, reward_scale_usd=plan.reward_scale_usd, seed=seed)
    per_day = MultiAgentMicrogrids(eval_config(scenario, protocol)).plant.scenario.steps_per_day
    window = plan.eval_window_days * per_day
    evaluation_env = MultiAgentMicrogrids(eval_config(scenario, protocol, max_episode_steps=window))
    rule_env = MultiAgentMicrogrids(eval_config(scenario, protocol, normalize=False, max_episode_steps=window))
    days = held_out_days(plan.eval_days, steps_per_day=per_day, window_days=plan.eval_window_days)
    rule = daily_costs(rule_env, make_policies("rule", rule_env), days)
    rule_env.close()
    result = TrainResult(steps=steps, seconds=0.0, rule_usd=rule.mean_usd)
    model = PPO("MlpPolicy", vec, n_steps=plan.n_steps, batch_size=plan.batch_size, n_epochs=plan.n_epochs,
                learning_rate=_schedule(plan.learning_rate, plan.learning_rate_end), gamma=plan.gamma, gae_lambda=plan.gae_lambda,
                clip_range=plan.clip_range, ent_coef=plan.ent_coef, seed=seed, device="cpu", verbose=0,
                policy_kwargs={"net_arch": {"pi": list(plan.net_arch), "vf": list(plan.net_arch)},
                               "activation_fn": torch.nn.Tanh, "log_std_init": plan.log_std_init})
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default logger makes a /tmp/SB3-* dir per run
    workdir = Path(tempfile.mkdtemp(prefix="heron-train-"))
    best_path = workdir / "best.pt"

    def evaluate() -> DayCosts:
        def decide(obs: Any) -> dict[str, np.ndarray]:
            agents = list(obs)
            actions, _ = model.predict(np.stack([obs[a] for a in agents]), deterministic=True)
            return dict(zip(agents, actions, strict=True))

        return daily_costs(evaluation_env, decide, days)

    bar = tqdm(total=steps, unit="step", desc="train ppo", disable=not progress, smoothing=0.05)

    class Progress(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.next_eval = min(plan.eval_every, steps)

        def _on_step(self) -> bool:
            bar.update(self.training_env.num_envs)
            if self.num_timesteps >= self.next_eval:
                self.next_eval += plan.eval_every
                self._evaluate()
            return True

        def _evaluate(self) -> None:
            costs = evaluate()
            result.evaluations.append((int(self.num_timesteps), costs.mean_usd))
            if not costs.mean_usd >= result.best_usd:  # nan at first
                result.best_usd = costs.mean_usd
                torch.save(model.policy.state_dict(), best_path)
            bar.set_postfix_str(f"held-out day {costs.mean_usd:.0f} USD (rule {rule.mean_usd:.0f}, best "
                                f"{result.best_usd:.0f})")

    callback = Progress()
    try:
        model.learn(total_timesteps=steps, callback=callback)
        if not result.evaluations or result.evaluations[-1][0] < model.num_timesteps:
            callback._evaluate()
    finally:
        bar.close()
        vec.close()
    model.policy.load_state_dict(torch.load(best_path))
    shutil.rmtree(workdir, ignore_errors=True)
    notes: dict[str, str | float | int | bool | None] = {
        "held_out_days": len(days), "held_out_mean_daily_cost_usd": round(result.best_usd, 2),
        "rule_mean_daily_cost_usd": round(rule.mean_usd, 2),
        **{f"ppo.{k}": (",".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in asdict(plan).items()}}
    training = TrainingSpec(library="stable-baselines3", library_version=stable_baselines3.__version__,
                            algorithm="PPO (shared policy)", steps=int(model.num_timesteps), seed=seed, notes=notes)
    obs, _ = evaluation_env.reset(options={"start_step": days[0]})
    result.manifest = export_bundle(sb3_actor(model), evaluation_env, out, training=training, postprocess="clip",
                                    check=np.stack(list(obs.values())))
    evaluation_env.close()
    result.seconds = time.monotonic() - t0
    log(f"held-out 2024 days ({len(days)}): learned {result.best_usd:.2f} USD/day, rule {rule.mean_usd:.2f} USD/day")
    return result
