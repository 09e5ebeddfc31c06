"""Policies: anything with ``act(observation) -> action`` and ``reset()`` (``heron_edge.agents.Policy``).

- ``RulePolicy``, ``RandomPolicy``, ``IdlePolicy`` (``baselines``): numpy only.
- ``OptimalPolicy`` (``optimal``): the perfect-foresight dispatch of each episode, planned with HiGHS (scipy) on the
  simulator; centralized runs only. A reference for costs, not a controller.
- ``OnnxPolicy`` from a policy bundle (``bundle``: ``policy.onnx`` + ``manifest.json``), run by onnxruntime
  (the ``policy`` extra): what ``heron-edge train`` writes and what simulate, SIL and gateways run.

:func:`make_policies` builds one policy per agent of an environment from a name or a bundle directory.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from heron_edge.agents.microgrid import Policy
from heron_edge.errors import ConfigError
from heron_edge.policies.baselines import IdlePolicy, Layout, RandomPolicy, RulePolicy

if TYPE_CHECKING:
    from heron_edge.env import MultiAgentMicrogrids

__all__ = ["BASELINES", "IdlePolicy", "Layout", "Policy", "RandomPolicy", "RulePolicy", "make_policies"]

BASELINES = ("rule", "random", "idle", "optimal")
"""Policy names :func:`make_policies` takes besides a bundle directory."""


def make_policies(spec: str | Path, env: MultiAgentMicrogrids, *, seed: int = 0) -> dict[str, Policy]:
    """One policy per agent of ``env``: ``rule``, ``random`` (seeded per agent from ``seed``), ``idle``, ``optimal``
    (one shared planner; ConfigError on a distributed env or with protocols), or the path of a policy bundle
    (checked against the env's layout, protocols and ratings: ConfigError naming a mismatch)."""
    agents = list(env.possible_agents)
    if str(spec) in BASELINES and not Path(spec).is_dir():
        if spec == "rule":
            if env.config.normalize:
                raise ConfigError("the rule policy reads MW: run it on an environment without normalize")
            layout: Layout = "distributed" if env.layout.kind == "local" else "centralized"
            features = env.coordination.feature_names
            return {a: RulePolicy.from_scenario(env.plant.scenario, i, layout=layout, protocol_features=features)
                    for i, a in enumerate(agents)}
        if spec == "random":
            return {a: RandomPolicy(env.action_space(a).low, env.action_space(a).high, seed=seed * 1000 + i)
                    for i, a in enumerate(agents)}
        if spec == "optimal":
            from heron_edge.policies.optimal import optimal_policies

            planned: dict[str, Policy] = dict(optimal_policies(env))
            return planned
        return {a: IdlePolicy() for a in agents}
    from heron_edge.policies.bundle import check_compatible, load_bundle

    bundle = load_bundle(spec)
    manifest = bundle.manifest
    if env.config.normalize and manifest.normalization.kind != "per_rating":
        raise ConfigError(f"policy bundle {spec} reads unnormalised observations; the environment normalises them")
    check_compatible(manifest, layout=env.layout, protocols=env.coordination.protocols, ratings=env.ratings,
                     where=f"scenario {env.plant.scenario.name}")
    return {a: bundle.policy(env.ratings[a], env.ratings, normalized_input=env.config.normalize) for a in agents}
