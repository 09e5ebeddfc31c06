"""MicrogridAgent: one microgrid's controller, the same object in every mode.

It owns its devices (a DeviceIO) and a policy; it turns a normalised action (the environment's
action space) into device setpoints. It knows nothing of messages: ProxyAgent adds those.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from heron_edge.deviceio import DeviceIO
from heron_edge.errors import UsageError
from heron_edge.observations import Ratings

__all__ = ["ExternalPolicy", "MicrogridAgent", "Policy", "Ratings"]


class Policy(Protocol):
    """Anything that maps an observation vector to a normalised action (Box(4), see the env).

    ``reset`` forgets what the policy carried between steps (a rule's price history); a stateless policy (a
    bundle) does nothing. Rule, random and ONNX bundle policies: ``heron_edge.policies``."""

    def act(self, observation: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


class ExternalPolicy:
    """A policy whose next action is set from outside (the environment's ``step(actions)``)."""

    def __init__(self) -> None:
        self.next_action: np.ndarray | None = None

    def reset(self) -> None:
        """Drop an action set but not taken."""
        self.next_action = None

    def act(self, observation: np.ndarray) -> np.ndarray:
        if self.next_action is None:
            raise UsageError("no action was set for this step: set next_action before act()")
        action, self.next_action = self.next_action, None
        return action


class MicrogridAgent:
    """A microgrid controller: observe local devices, decide with its policy, command its devices."""

    def __init__(self, agent_id: str, devices: DeviceIO, policy: Policy, ratings: Ratings) -> None:
        self.agent_id = agent_id
        self.devices = devices
        self.policy = policy
        self.ratings = ratings

    async def observe_local(self) -> np.ndarray:
        """The 8 local features from the devices."""
        return await self.devices.read()

    def act(self, observation: np.ndarray) -> np.ndarray:
        return np.asarray(self.policy.act(observation), dtype=np.float64)

    async def apply(self, action: np.ndarray) -> None:
        """Write a normalised action ([-1,1], [0,1], [0,1], [0,1]) to the devices as setpoints."""
        battery, generator, pv, wind = np.asarray(action, dtype=np.float64).tolist()  # scalars: every agent, every step
        await self.devices.write(min(max(battery, -1.0), 1.0) * self.ratings.battery_p_max_mw,
                                 min(max(generator, 0.0), 1.0) * self.ratings.generator_p_max_mw,
                                 min(max(pv, 0.0), 1.0), min(max(wind, 0.0), 1.0))
