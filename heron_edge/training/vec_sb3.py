"""stable-baselines3's VecEnv over :class:`~heron_edge.vector.VectorMicrogrids`: one row per (environment, agent).

Every agent of every environment is one slot of the VecEnv (parameter sharing: one policy for all), in the
order env 0's agents, env 1's agents, ... An environment's episode ends for all its agents at once; it is
reset in the same step (the vector environment's autoreset) and the slot's ``terminal_observation`` is in
its info, as SB3 expects; a time limit is flagged ``TimeLimit.truncated`` (bootstrapped) unless a terminal energy
value closes the episode (:func:`heron_edge.training.sb3.bootstrapped`). Rewards are divided by ``reward_scale_usd``. The same seeds as
:class:`heron_edge.training.sb3.AgentVecEnv` (environment k gets ``seed + k``), so both give the same episodes.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from heron_edge.errors import ConfigError, UsageError
from heron_edge.training.sb3 import bootstrapped
from heron_edge.training.slots import AgentSlotsVecEnv
from heron_edge.vector import VectorMicrogrids

__all__ = ["VectorAgentVecEnv"]


class VectorAgentVecEnv(AgentSlotsVecEnv):
    """A :class:`VectorMicrogrids` as one SB3 VecEnv with a slot per (environment, agent)."""

    def __init__(self, vector: VectorMicrogrids, *, reward_scale_usd: float = 1.0, seed: int = 0) -> None:
        self.vector = vector
        agents = vector.possible_agents
        space = vector.observation_space(agents[0])
        if any(vector.observation_space(a) != space for a in agents):
            raise ConfigError("parameter sharing needs one observation space for every agent: normalise per rating")
        self.action_low = vector.action_space(agents[0]).low
        self.action_high = vector.action_space(agents[0]).high
        self.reward_scale = reward_scale_usd
        self._base_seed = seed
        self._actions: np.ndarray | None = None
        self._shape = (vector.num_envs, vector.n_agents)
        self._bootstrap = bootstrapped(vector.config)
        super().__init__(vector.num_envs * vector.n_agents, space, vector.action_space(agents[0]))

    def reset(self) -> np.ndarray:
        obs, _ = self.vector.reset(seed=self._base_seed)
        return obs.reshape(self.num_envs, -1)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        if self._actions is None:
            raise UsageError("step_wait() without step_async(actions)")
        actions = np.clip(self._actions.reshape(*self._shape, -1), self.action_low, self.action_high)
        self._actions = None
        obs, reward, terminated, truncated, infos = self.vector.step(actions)
        done = (terminated | truncated).ravel()
        items: list[dict[str, Any]] = [{"TimeLimit.truncated": bool(t) and not bool(d) and self._bootstrap}
                                       for t, d in zip(truncated.ravel(), terminated.ravel(), strict=True)]
        if infos.final_observation is not None:
            final = infos.final_observation.reshape(self.num_envs, -1)
            for slot in np.flatnonzero(done):
                items[slot]["terminal_observation"] = final[slot]
        rewards = (reward.ravel() / self.reward_scale).astype(np.float32)
        return obs.reshape(self.num_envs, -1), rewards, done, items

    def close(self) -> None:
        self.vector.close()

    @property
    def _attribute_owner(self) -> Any:
        return self.vector
