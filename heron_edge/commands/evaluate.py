"""Evaluate a policy under communication impairments: the same days distributed, unimpaired and impaired, side by side.

Both runs are the environment's distributed mode over an in-memory broker on simulated time (a message's latency
and a receiver's timeout cost no wall-clock time, and the result does not depend on the machine's load); the
impaired one sends every message through :class:`heron_edge.brokers.impaired.ImpairedBroker`. The table gives
cost (fuel + energy, USD), penalties, voltage-violation and overload steps, and the steps in which an agent
decided on fallback values (a price, peers' telemetry or a protocol message missed its wait: the last values or
the protocol's documented fallback, what a gateway's failsafe covers in the field), with the messages lost and late.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from heron_edge.commands import add_protocol, add_scenario, non_negative_int, positive_int
from heron_edge.errors import ConfigError, ScenarioError

if TYPE_CHECKING:
    from heron_edge.brokers.impaired import ImpairmentConfig
    from sim.scenario import Scenario

__all__ = ["Figures", "add_arguments", "evaluate", "figures_table", "impairment_arg", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``heron-edge evaluate``."""
    from heron_edge.commands.simulate import policy_spec

    add_scenario(parser)
    parser.add_argument("--policy", type=policy_spec, default="rule", metavar="POLICY",
                        help="what simulate --policy takes but optimal (centralized only): rule, random, idle or a "
                             "policy bundle directory (default: %(default)s)")
    parser.add_argument("--impair", type=impairment_arg, required=True, metavar="SPEC",
                        help="comma-separated KEY=VALUE: loss, duplicate, reorder (probabilities), latency_s, jitter_s "
                             "(seconds), seed, deadline_s (the step's decision deadline; default: the step timeout), "
                             "KIND.KEY for one topic kind (e.g. consensus.loss=0.2); e.g. loss=0.05,latency_s=0.2")
    parser.add_argument("--days", type=positive_int, default=1, metavar="N", help="one-day episodes (default: %(default)s)")
    parser.add_argument("--seed", type=non_negative_int, default=0, metavar="N",
                        help="picks the days and seeds the random policy, as in simulate (default: %(default)s)")
    parser.add_argument("--test-year", action="store_true", help="walk 2024 day by day instead of random days of 2023")
    add_protocol(parser)


def impairment_arg(text: str) -> ImpairmentConfig:
    """argparse type of ``--impair``: a malformed spec is one usage line (exit 2)."""
    from heron_edge.brokers.impaired import parse_impairment

    try:
        return parse_impairment(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True)
class Figures:
    """One run's totals over every microgrid and step."""

    cost_usd: float
    """Fuel plus energy bought at the signalled price net of sales and trades, USD."""
    penalty_usd: float
    v_violation_steps: int
    """Microgrid-steps with a bus outside 0.95-1.05 p.u."""
    overload_steps: int
    fallback_steps: int
    """Agent-steps decided on fallback values (a message missed its wait)."""
    messages_lost: int
    messages_late: int
    """Messages past the step's decision deadline (they arrive, stale, in the next step)."""


def evaluate(scenario: Scenario, *, days: int, policy: str, seed: int, impairment: ImpairmentConfig | None,
             test_year: bool = False, protocol: list[str] | None = None) -> Figures:
    """Run ``days`` one-day episodes of ``policy`` distributed over an in-memory broker (impaired when
    ``impairment`` is given) and total them. Messages lost and late count every sender, the operator included."""
    import numpy as np

    from heron_edge.brokers import InMemoryBroker
    from heron_edge.env import MultiAgentMicrogrids
    from heron_edge.policies import BASELINES, make_policies

    if policy == "optimal":
        raise ConfigError("the optimal policy plans each day on the simulator with perfect foresight, centralized: no "
                          "message reaches it to impair; compare it with simulate --policy optimal")
    observation = None
    if policy not in BASELINES:
        from heron_edge.policies.bundle import load_manifest

        observation = load_manifest(policy).layout.kind
        if observation == "global":
            raise ConfigError(f"policy bundle {policy} reads global observations: it cannot run distributed")
    try:
        env = MultiAgentMicrogrids({"centralized": False, "message_broker": InMemoryBroker(), "scenario": scenario,
                                    "max_episode_steps": scenario.steps_per_day, "train": not test_year,
                                    "protocol": protocol, "observation": observation, "impairment": impairment})
    except ConfigError as exc:
        raise ScenarioError(str(exc)) from exc
    quiet = [logging.getLogger(name) for name in ("heron_edge.agents", "heron_edge.protocols")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)  # each fallback is logged as a warning: here they are counted instead
    try:
        policies = make_policies(policy, env, seed=seed)
        totals = np.zeros(4)
        fallback = 0.0
        for day in range(days):
            obs, _ = env.reset(seed=seed if day == 0 else None)
            while env.agents:
                obs, _, _, _, infos = env.step({a: policies[a].act(obs[a]) for a in env.agents})
                for info in infos.values():
                    totals += (info["fuel_cost_usd"] + info["energy_cost_usd"], info["penalty_usd"],
                               info["violation_v_pu"] > 0, info["overload_percent"] > 0)
                    fallback += info["fallback"]
        runner = env._runner
        stats = runner.impaired.stats if runner is not None and runner.impaired is not None else None
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
        env.close()
    return Figures(cost_usd=float(totals[0]), penalty_usd=float(totals[1]), v_violation_steps=int(totals[2]),
                   overload_steps=int(totals[3]), fallback_steps=int(fallback),
                   messages_lost=stats.lost if stats else 0, messages_late=stats.late if stats else 0)


def figures_table(unimpaired: Figures, impaired: Figures) -> str:
    """The two runs side by side with the change, one row per figure."""
    rows = [("", "unimpaired", "impaired", "change")]
    for f in fields(Figures):
        a, b = getattr(unimpaired, f.name), getattr(impaired, f.name)
        if isinstance(a, float):
            rows.append((f.name, f"{a:.2f}", f"{b:.2f}", f"{b - a:+.2f}"))
        else:
            rows.append((f.name, str(a), str(b), f"{b - a:+d}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(f"{r[0]:<{widths[0]}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(r[1:], widths[1:], strict=True))
                     for r in rows)


def run(args: argparse.Namespace) -> int:
    """Both runs, then the table; 0. A bad scenario or bundle is a ScenarioError / ConfigError (exit 2)."""
    from heron_edge.commands.simulate import _load_scenario
    from heron_edge.coordination import parse_protocols

    scenario = _load_scenario(args.scenario)
    parse_protocols(args.protocol)
    impairment: ImpairmentConfig = args.impair
    unimpaired, impaired = (evaluate(scenario, days=args.days, policy=args.policy, seed=args.seed, impairment=which,
                                     test_year=args.test_year, protocol=args.protocol) for which in (None, impairment))
    spec = ", ".join(f"{k}={v}" for k, v in impairment.model_dump(exclude_defaults=True).items())
    print(f"{args.policy} policy, {args.days} day(s) of {scenario.name}, distributed in memory (simulated time); "
          f"protocols: {', '.join(args.protocol or []) or 'none'}")
    print(f"impairment: {spec or 'none'}")
    print(figures_table(unimpaired, impaired))
    return 0
