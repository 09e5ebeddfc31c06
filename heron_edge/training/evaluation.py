"""Evaluation on held-out days: a policy's mean daily cost against the rule's, the same days, the same start.

Training episodes are days of 2023; evaluation days are days of 2024 (``"train": False``), never seen in
training. Each day starts from the scenario's state of charge and is scored by its cost (fuel + energy bought
net of sales and trades + penalties, USD, summed over the microgrids) minus the value of the energy it left in
the batteries beyond what it started with (``terminal_value_usd``, when the evaluation environment has a
``terminal_energy_value``): a day that drains the batteries pays for the energy it took, as a continuous run
would, instead of getting it free from the next day's reset. An evaluation episode may span several days
(``max_episode_steps``; ``held_out_days(window_days=)``): they run as one continuous stretch, the batteries
carrying their charge from day to day as in the year, and its cost is reported per day. That credit favours a
policy that ends its episode full, which a continuous year pays only if the policy later uses that charge well:
longer windows dilute it.
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
    """Cost per evaluated day (USD, all microgrids; an episode of several days: its mean day) and the episodes'
    first steps of the year."""

    starts: tuple[int, ...]
    costs_usd: tuple[float, ...]

    @property
    def mean_usd(self) -> float:
        return float(np.mean(self.costs_usd)) if self.costs_usd else float("nan")


def held_out_days(n_days: int, *, steps_per_day: int = 24, days_in_year: int = 366, window_days: int = 1) -> list[int]:
    """``n_days`` days spread evenly over 2024 (first step of each), from 1 January; each followed by at least
    ``window_days - 1`` more days of the year (an evaluation episode of ``window_days`` days fits)."""
    days = np.linspace(0, days_in_year - 1 - window_days, num=max(n_days, 1)).round().astype(int)
    return [int(d) * steps_per_day for d in sorted(set(days.tolist()))]


def daily_costs(env: Any, decide: Decide | Mapping[str, Policy], starts: Sequence[int]) -> DayCosts:
    """Run one episode per start step on ``env`` (an evaluation environment: ``train`` False, scenario SoC) with
    ``decide`` (a function of all observations, or one policy per agent: they keep their state from day to day, as
    in a continuous run) and total each episode's cost, per day (an episode of ``max_episode_steps`` longer than a
    day is run as one continuous stretch, its batteries carrying their charge from day to day as in the year)."""
    costs = []
    if isinstance(decide, Mapping):
        policies = decide

        def decide_all(obs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
            return {a: policies[a].act(o) for a, o in obs.items()}

        act: Decide = decide_all
    else:
        act = decide
    days = env.config.max_episode_steps / env.plant.scenario.steps_per_day
    for start in starts:
        obs, _ = env.reset(options={"start_step": int(start)})
        total = 0.0
        while env.agents:
            obs, _, _, _, infos = env.step(dict(act(obs)))
            total += sum(i["fuel_cost_usd"] + i["energy_cost_usd"] + i["penalty_usd"] - i["terminal_value_usd"]
                         for i in infos.values())
        costs.append(float(total) / days)
    return DayCosts(tuple(int(s) for s in starts), tuple(costs))
