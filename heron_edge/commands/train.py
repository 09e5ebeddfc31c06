"""Train one policy shared by every microgrid (stable-baselines3 PPO on ``local`` observations normalised per rating)
and write it as a policy bundle (``policy.onnx`` + ``manifest.json``) that simulate, sil and gateways run."""
from __future__ import annotations

import argparse
from pathlib import Path

from heron_edge.commands import add_protocol, add_scenario, non_negative_int, output_dir, positive_int

DEFAULT_STEPS = 1_000_000
"""The default budget in agent steps (environment steps times microgrids): about 6 minutes on 2 cores."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``heron-edge train``."""
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="the policy bundle's directory (policy.onnx, manifest.json), made if missing")
    parser.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS, metavar="N",
                        help="training budget in agent steps (environment steps times microgrids) (default: %(default)s)")
    add_scenario(parser)
    add_protocol(parser)
    parser.add_argument("--seed", type=non_negative_int, default=0, metavar="N", help="(default: %(default)s)")
    parser.add_argument("--envs", type=positive_int, default=4, metavar="N",
                        help="environments stepped together as one batched VectorMicrogrids (PPO's rollout grows with "
                             "them; from about 8 a step costs less per environment than one environment's) "
                             "(default: %(default)s)")
    parser.add_argument("--eval-every", type=positive_int, default=50_000, metavar="N",
                        help="agent steps between evaluations on held-out 2024 days against the rule "
                             "(default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Check the scenario and protocols, train, write the bundle, print the held-out comparison; 0 on success.
    Without the ``train`` extra the CLI says which package is missing (exit 2)."""
    from heron_edge.commands.simulate import _load_scenario
    from heron_edge.coordination import parse_protocols

    scenario = _load_scenario(args.scenario)
    parse_protocols(args.protocol)
    out = output_dir("--out", Path(args.out))
    from heron_edge.training.sb3 import Recipe, train_sb3

    result = train_sb3(out, steps=args.steps, scenario=scenario, protocol=args.protocol, seed=args.seed,
                       recipe=Recipe(eval_every=args.eval_every, n_envs=args.envs))
    print(f"policy bundle: {out} ({result.seconds:.0f} s, {result.manifest.training.steps if result.manifest else 0} "
          "agent steps)")
    return 0
