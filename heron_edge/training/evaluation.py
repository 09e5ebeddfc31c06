"""Evaluation on held-out days: a policy's mean daily cost against the rule's, the same days, the same start.

Training episodes are days of 2023; evaluation days are days of 2024 (``"train": False``), never seen in
training. Each day starts from the scenario's state of charge and is scored by its cost (fuel + energy bought
net of sales and trades + penalties, USD, summed over the microgrids) minus the value of the energy it left in
the batteries beyond what it started with (``terminal_value_usd``, when the evaluation environment has a
``terminal_energy_value``): a day that drains the batteries pays for the energy it took, as a continuous run
would, instead of getting it free from the next day's reset.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from heron_edge.agents.microgrid import Policy

__all__ = ["DayCosts", "daily_costs", "held_out_days"]

Decide = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
"""Every live agent's observation -> every live agent's action (one step)."""


@dataclass(frozen=True)
class DayCosts:
    """Cost per evaluated day (USD, all microgrids) and the days (first step of the year)."""

    starts: tuple[int, ...]
    costs_usd: tuple[float, ...]

    @property
    def mean_usd(self) -> float:
        return float(np.mean(self.costs_usd)) if self.costs_usd else float("nan")


def held_out_days(n_days: int, *, steps_per_day: int = 24, days_in_year: int = 366) -> list[int]:
    """``n_days`` days spread evenly over 2024 (first step of each), from 1 January."""
    days = np.linspace(0, days_in_year - 2, num=max(n_days, 1)).round().astype(int)
    return [int(d) * steps_per_day for d in sorted(set(days.tolist()))]


def daily_costs(env: Any, decide: Decide | Mapping[str, Policy], starts: Sequence[int]) -> DayCosts:
    """Run one episode per start step on ``env`` (an evaluation environment: ``train`` False, scenario SoC, no
    terminal value) with ``decide`` (a function of all observations, or one policy per agent: they keep their state
    from day to day, as in a continuous run) and total each day's cost."""
    costs = []
    if isinstance(decide, Mapping):
        policies = decide

        def decide_all(obs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
            return {a: policies[a].act(o) for a, o in obs.items()}

        act: Decide = decide_all
    else:
        act = decide
    for start in starts:
        obs, _ = env.reset(options={"start_step": int(start)})
        total = 0.0
        while env.agents:
            obs, _, _, _, infos = env.step(dict(act(obs)))
            total += sum(i["fuel_cost_usd"] + i["energy_cost_usd"] + i["penalty_usd"] - i["terminal_value_usd"]
                         for i in infos.values())
        costs.append(float(total))
    return DayCosts(tuple(int(s) for s in starts), tuple(costs))
