"""The ``heron-edge`` command line: one subcommand per job, each defined in its own module."""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> module with ``add_arguments(parser)`` and ``run(args) -> int``
SUBCOMMANDS: dict[str, str] = {
    "simulate": "heron_edge.commands.simulate",
    "emulate": "heron_edge.commands.emulate",
    "agent": "heron_edge.commands.agent",
    "plant": "heron_edge.commands.plant",
    "operator": "heron_edge.commands.operator",
    "sil": "heron_edge.commands.sil",
    "broker-config": "heron_edge.commands.broker_config",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heron-edge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=module.__doc__, description=module.__doc__))
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)
    except ModuleNotFoundError as exc:  # e.g. `simulate` on a gateway installed without the [sim] extra
        if exc.name is None or exc.name.split(".")[0] in ("heron_edge", "firmware_bridge", "sim"):
            raise
        from heron_edge import SIM_EXTRA_HINT

        print(f"heron-edge {args.command}: error: {exc.name} is not installed; {SIM_EXTRA_HINT}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
