"""Subcommands of the heron-edge CLI (kept import-light: heavy imports happen inside run()).

Each verb is a module with ``add_arguments(parser)`` and ``run(args) -> int``; ``heron_edge.cli`` dispatches
to them and turns what they raise into one line. The conventions every verb follows, and the helpers that
keep each of them one rule instead of seven copies:

- durations are seconds and their flags end in ``-s`` (``--period-s``, ``--timeout-s``, ``--step-timeout-s``),
  like the gateway config's ``*_s`` fields; the operator's agent id is ``--operator-id`` wherever a verb needs
  it; flags are never abbreviated (``heron_edge.cli``);
- a value's metavar is an upper-case noun: ``N`` (a count, a seed), ``S`` (seconds), ``FILE``, ``DIR``,
  ``URL``, ``NAME``, ``VAR`` (an environment variable), ``PORT``, ``HOST``, ``JSON``; an option with a fixed
  set of values shows the set (``{bus,timer}``); a default is said as ``(default: X)``;
- errors: one line ``heron-edge VERB: error: ...`` on stderr (:func:`fail`); exit 2 for a usage or
  configuration error (``ConfigError``), 1 for a runtime failure (broker or device unreachable: any other
  ``HeronError``). A verb raises; ``heron_edge.cli`` prints.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from heron_edge.errors import ConfigError

EXIT_RUNTIME = 1
"""Exit status of a runtime failure: the broker or a device cannot be reached, a SIL run failed."""
EXIT_USAGE = 2
"""Exit status of a usage or configuration error: the user can fix the command line or the file."""
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PROTOCOLS = ("setpoint", "price_signal", "p2p_trading", "consensus")
"""The coordination protocols a verb can run (``heron_edge.coordination``): setpoint and price_signal are
vertical (operator -> microgrids), p2p_trading and consensus horizontal (between microgrids)."""
MAX_DURATION_S = 366 * 86_400.0
"""The longest duration any ``-s`` flag accepts (a year): beyond it a value is a typo, not a plan."""


def version() -> str:
    """The installed distribution's version (``importlib.metadata``); ``unknown`` when run from a source tree
    that was never installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("heron-edge")
    except PackageNotFoundError:
        return "unknown (not installed)"


# ---------------------------------------------------------------------------------------------- errors
def validation_summary(exc: Any) -> str:
    """A pydantic ValidationError as ``field: problem; field: problem`` (its default text spans many lines
    and ends in a URL)."""
    problems = [f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}"
                for err in exc.errors(include_url=False)]
    return "; ".join(problems)


def describe(exc: BaseException) -> str:
    """``exc``'s message on one line: whitespace collapsed, an embedded pydantic ValidationError summarized."""
    text = str(exc)
    inner = exc.__cause__ or exc.__context__
    if inner is not None:
        from pydantic import ValidationError

        for _ in range(5):  # a ConfigError re-raised with a prefix keeps the ValidationError further down
            if inner is None:
                break
            if isinstance(inner, ValidationError) and str(inner) in text:
                text = text.replace(str(inner), validation_summary(inner))
                break
            inner = inner.__cause__ or inner.__context__
    return " ".join(text.split()) or type(exc).__name__


def exit_code(exc: BaseException) -> int:
    """2 for a ConfigError (the user's input), 1 for anything else (a runtime failure)."""
    return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_RUNTIME


def fail(verb: str, exc: BaseException, *, code: int | None = None) -> int:
    """Print ``heron-edge VERB: error: MESSAGE`` on one stderr line; the exit status (``code``, else
    :func:`exit_code`)."""
    print(f"heron-edge {verb}: error: {describe(exc)}", file=sys.stderr)
    return exit_code(exc) if code is None else code


def output_dir(flag: str, path: Path) -> Path:
    """Make the output directory ``path`` (and its parents) before a verb's work, so a mistake costs nothing;
    ConfigError naming ``flag`` when it is a file, cannot be made or cannot be written."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot create the directory: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: the directory is not writable")
    return path


def output_file(flag: str, path: Path) -> Path:
    """Check a file a verb will write later (its directory exists and is writable; it is not a directory), so
    the mistake is said at start, not after the run; ConfigError naming ``flag``."""
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory, not a file")
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{flag} {path}: not writable")
    return path


# ---------------------------------------------------------------------------------------------- argument types
def integer(text: str) -> int:
    """``text`` as an integer, or the argparse error that says so (argparse's own names the Python type)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an integer expected, not {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type of a count (``--days N``): an integer of at least 1."""
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type of a random seed (``--seed N``): an integer of 0 or more (numpy refuses negative seeds)."""
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def seconds(*, zero: bool = False, below: float = MAX_DURATION_S) -> Callable[[str], float]:
    """argparse type of a duration flag (``-s``): finite seconds, above 0 (``zero``: 0 or more), below ``below``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"a number of seconds expected, not {text!r}") from None
        low_ok = value >= 0 if zero else value > 0
        if not (math.isfinite(value) and low_ok and value < below):
            low = "0 or more" if zero else "more than 0"
            raise argparse.ArgumentTypeError(f"must be {low} and less than {_span(below)}, not {text}")
        return value

    return parse


def _span(limit_s: float) -> str:
    """A duration limit as a person says it: ``3600 s``, ``1 day``, ``366 days``."""
    days = limit_s / 86_400.0
    if days < 1 or days != int(days):
        return f"{limit_s:g} s"
    return "1 day" if days == 1 else f"{days:g} days"


def tcp_port(text: str) -> int:
    """argparse type of a TCP port: 0 (any free port) to 65535."""
    value = integer(text)
    if not 0 <= value <= 65_535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, not {value}")
    return value


# ---------------------------------------------------------------------------------------------- options
def add_scenario(parser: argparse.ArgumentParser, what: str = "") -> None:
    """``--scenario NAME_OR_TOML``, the same in every verb that needs one; ``what`` says what the verb takes from it."""
    parser.add_argument("--scenario", default="ieee34_3x13", metavar="NAME_OR_TOML",
                        help=f"a shipped scenario (ieee34_3x13, cigre_mv_der) or a scenario TOML file{what} "
                             "(default: %(default)s)")


def add_protocol(parser: argparse.ArgumentParser) -> None:
    """``--protocol``, repeatable, the same in every verb that coordinates."""
    parser.add_argument("--protocol", action="append", choices=PROTOCOLS, default=None,
                        help="coordination protocol; give it twice for one vertical (setpoint, price_signal) plus one "
                             "horizontal (p2p_trading, consensus) (default: none, the price only)")


def add_log_level(parser: argparse.ArgumentParser, default: str = "INFO") -> None:
    """``--log-level``, the same choices in every verb that logs."""
    parser.add_argument("--log-level", default=default, choices=LOG_LEVELS, help="(default: %(default)s)")


def setup_logging(level: str) -> None:
    """Log lines on stderr, each with its time, level and logger, the same in every verb."""
    import logging

    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
