"""The ``heron-edge`` command line: one verb per job, each defined in its own module of ``heron_edge.commands``.

This module builds the parser (the top-level help written for users, ``--version``), dispatches to the verb,
and is the one place that turns errors into the CLI's error style: ``heron-edge VERB: error: ...`` on one
stderr line, exit 2 for a usage or configuration error and 1 for a runtime failure (the conventions are in
``heron_edge.commands``). An unexpected exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import NoReturn

from heron_edge.commands import EXIT_USAGE, fail, version
from heron_edge.errors import HeronError, UsageError


@dataclass(frozen=True)
class Verb:
    """One verb: its module (``add_arguments(parser)``, ``run(args) -> int``), a one-line summary for the
    help, and one example command."""

    name: str
    module: str
    summary: str
    example: str


GROUPS: tuple[tuple[str, tuple[Verb, ...]], ...] = (
    ("On a laptop (simulation)", (
        Verb("simulate", "heron_edge.commands.simulate",
             "run days of a scenario (centralized or distributed): summary, CSV and plot",
             "heron-edge simulate --days 2 --protocol price_signal --out out/"),
        Verb("evaluate", "heron_edge.commands.evaluate",
             "a policy under message loss, latency, jitter, duplication, reordering: impaired vs unimpaired run",
             "heron-edge evaluate --policy rule --impair loss=0.05,latency_s=0.2 --days 2"),
        Verb("scenario", "heron_edge.commands.scenario",
             "write a scenario with N microgrids on the IEEE 34 or IEEE 123 feeder, sized to converge",
             "heron-edge scenario --feeder ieee123 --microgrids 48 --out site.toml"),
        Verb("train", "heron_edge.commands.train",
             "train one policy shared by every microgrid (PPO); write a policy bundle for simulate, sil, gateways",
             "heron-edge train --out policy/ --steps 200000"),
    )),
    ("Software in the loop (SIL: the field's processes on one machine, the plant simulated)", (
        Verb("sil", "heron_edge.commands.sil",
             "Mosquitto, plant, one agent per microgrid, operator; compared with simulate",
             "heron-edge sil --days 1 --protocol setpoint --protocol p2p_trading"),
        Verb("plant", "heron_edge.commands.plant",
             "the simulated microgrids as Modbus devices, stepped on an MQTT clock",
             "heron-edge plant --broker mqtt://127.0.0.1:1883 --endpoints endpoints.json"),
        Verb("emulate", "heron_edge.commands.emulate",
             "one emulated SunSpec battery, PV inverter or meter (legacy or IEEE 1547 models) on a Modbus TCP port",
             "heron-edge emulate --device battery --profile legacy --port 1502"),
    )),
    ("In the field (edge gateways, the site's operator and its broker)", (
        Verb("probe", "heron_edge.commands.probe",
             "commissioning: a device's SunSpec models, the roles it can fill and how, its readings; test a write",
             "heron-edge probe --host 192.168.10.21 --port 502 --write battery_w=-2000"),
        Verb("agent", "heron_edge.commands.agent",
             "one microgrid's agent on its gateway: Modbus devices, MQTT, failsafe, outbox",
             "heron-edge agent --config /etc/heron-edge/gateway.toml"),
        Verb("operator", "heron_edge.commands.operator",
             "the system operator: price, setpoints and market clearing, each step",
             "heron-edge operator --broker mqtts://broker:8883 --clock timer --period-s 3600"),
        Verb("broker-config", "heron_edge.commands.broker_config",
             "the site's Mosquitto config: TLS, a user per process, ACLs, credentials",
             "heron-edge broker-config --site campus --agents mg1,mg2,mg3 --out site/"),
    )),
)

VERBS: dict[str, Verb] = {verb.name: verb for _, verbs in GROUPS for verb in verbs}
SUBCOMMANDS: dict[str, str] = {name: verb.module for name, verb in VERBS.items()}
"""Verb -> the module that defines it."""


def _overview() -> str:
    """The top-level help's body: what the tool is, the verbs grouped by who runs them, an example each."""
    lines = ["heron-edge runs the same microgrid agents in a simulation (centralized, or distributed over a",
             "message broker) and on edge gateways that talk Modbus to real devices and MQTT to each other.", ""]
    for title, verbs in GROUPS:
        lines.append(f"{title}:")
        for verb in verbs:
            lines.append(f"  {verb.name:<14} {verb.summary}")
            lines.append(f"  {'':<14} e.g. {verb.example}")
        lines.append("")
    return "\n".join(lines)


EPILOG = """\
'heron-edge VERB --help' lists a verb's options. Guides: README.md (quick start),
docs/edge.md (gateways, SIL, field deployment), docs/architecture.md (how the parts fit).
Exit status: 0 ok; 1 runtime failure (broker or device unreachable, SIL mismatch);
2 usage or configuration error."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are the CLI's one error line (exit 2) instead of a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, tuple[argparse.ArgumentParser, ModuleType]]]:
    """The parser with every verb's options, and per verb its own parser and module (importing one is light: each
    imports its heavy dependencies inside ``run``). No abbreviated flags: a script's ``--period`` must not silently
    mean ``--period-s`` today and fail as ambiguous when a flag is added."""
    parser = _Parser(prog="heron-edge", allow_abbrev=False, usage="heron-edge [--version] [-h] VERB [options]",
                     description=_overview(), epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"heron-edge {version()}",
                        help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB", help=argparse.SUPPRESS)
    verbs: dict[str, tuple[argparse.ArgumentParser, ModuleType]] = {}
    for name, verb in VERBS.items():
        module = importlib.import_module(verb.module)
        verb_parser = sub.add_parser(name, prog=f"heron-edge {name}", allow_abbrev=False,
                                     description=f"{verb.summary}.\n\nexample: {verb.example}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(verb_parser)
        verbs[name] = (verb_parser, module)
    return parser, verbs


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the verb; its exit status. A HeronError from any verb becomes one line on stderr."""
    parser, verbs = build_parser()
    args, unknown = parser.parse_known_args(argv)
    verb: str = args.command
    verb_parser, module = verbs[verb]
    if unknown:  # said by the verb's parser, so the line names the verb and its --help
        verb_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(module.run(args) or 0)
    except UsageError:  # our own code called something out of order: a bug, keep the traceback
        raise
    except HeronError as exc:  # ConfigError -> 2; BrokerError, DeviceError, any other -> 1
        return fail(verb, exc)
    except ModuleNotFoundError as exc:  # e.g. `simulate` on a gateway installed without the [sim] extra
        if exc.name is None or exc.name.split(".")[0] in ("heron_edge", "firmware_bridge", "sim"):
            raise
        from heron_edge import SIM_EXTRA_HINT

        hint = SIM_EXTRA_HINT
        if exc.name.split(".")[0] in ("torch", "stable_baselines3", "onnx", "onnxscript", "onnxruntime"):
            hint = "install the training extra: pip install 'heron-edge[train]' (torch: its CPU build first)"
        print(f"heron-edge {verb}: error: {exc.name} is not installed; {hint}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C in a verb without its own handler (simulate, sil): no traceback
        print(f"heron-edge {verb}: interrupted", file=sys.stderr)
        return 130


__all__ = ["GROUPS", "SUBCOMMANDS", "VERBS", "Verb", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
