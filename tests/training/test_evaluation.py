"""Held-out evaluation: episodes of several days run as one continuous stretch and are scored per day."""
from __future__ import annotations

from heron_edge import MultiAgentMicrogrids
from heron_edge.policies import make_policies
from heron_edge.training.evaluation import daily_costs, held_out_days
from heron_edge.training.sb3 import eval_config


def test_held_out_windows_fit_in_the_year() -> None:
    assert held_out_days(12) == held_out_days(12, window_days=1)  # one-day episodes: the days as before
    starts = held_out_days(5, window_days=3)
    assert starts[0] == 0 and starts[-1] == (366 - 1 - 3) * 24


def test_a_two_day_episode_is_scored_per_day() -> None:
    """The mean day of a 48-step episode: its total (cost less the stored energy gained) over two days."""
    env = MultiAgentMicrogrids(eval_config(normalize=False, max_episode_steps=48))
    policies = make_policies("rule", env)
    costs = daily_costs(env, policies, [24 * 100])
    for policy in policies.values():
        policy.reset()
    obs, _ = env.reset(options={"start_step": 24 * 100})
    total = 0.0
    while env.agents:
        obs, _, _, _, infos = env.step({a: policies[a].act(o) for a, o in obs.items()})
        total += sum(i["fuel_cost_usd"] + i["energy_cost_usd"] + i["penalty_usd"] - i["terminal_value_usd"]
                     for i in infos.values())
    assert costs.costs_usd == (total / 2,)
