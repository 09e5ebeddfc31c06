"""What every one-slot-per-agent stable-baselines3 VecEnv here answers the same way: its slots are agents of a few
environments, not separate environments, so attributes and methods of "the env at index i" are the shared ones."""
from __future__ import annotations

from typing import Any

from stable_baselines3.common.vec_env import VecEnv

__all__ = ["AgentSlotsVecEnv"]


class AgentSlotsVecEnv(VecEnv):
    """The VecEnv plumbing shared by :class:`heron_edge.training.sb3.AgentVecEnv` and
    :class:`heron_edge.training.vec_sb3.VectorAgentVecEnv`; ``_attribute_owner`` is the object slots read from."""

    @property
    def _attribute_owner(self) -> Any:
        raise NotImplementedError

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(self._attribute_owner, attr_name, None) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        return

    def env_method(self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any) -> list[Any]:
        return [None for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: Any, indices: Any = None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def _indices(self, indices: Any) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)
