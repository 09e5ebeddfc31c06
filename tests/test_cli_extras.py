"""The CLI around the verbs: ``--version``, the top-level help, one flag spelling and metavar style in every verb,
the INFO lines of the agent and the operator; and, on a gateway install (no [sim] extra), the simulator entry
points say what to install, not a traceback. Bad input, verb by verb: ``tests/test_cli_errors.py``."""
from __future__ import annotations

import argparse
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from heron_edge.cli import GROUPS, build_parser
from heron_edge.runtime.mosquitto import MosquittoProcess
from heron_edge.runtime.sil import to_toml

HIDE_SIM = "import sys\nfor m in ('gymnasium', 'pettingzoo', 'pandapower', 'tqdm'): sys.modules[m] = None\n"


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", HIDE_SIM + code], capture_output=True, text=True, timeout=60)


def test_simulate_without_the_sim_extra_names_the_extra(tmp_path) -> None:
    done = run(f"from heron_edge.cli import main\nsys.exit(main(['simulate', '--days', '1', '--out', {str(tmp_path)!r}]))")
    assert done.returncode == 2
    assert "pip install 'heron-edge[sim]'" in done.stderr and "Traceback" not in done.stderr


def test_environment_import_without_the_sim_extra_names_the_extra() -> None:
    done = run("from heron_edge import MultiAgentMicrogrids")
    assert done.returncode == 1 and "pip install 'heron-edge[sim]'" in done.stderr


# ---------------------------------------------------------------------------------------------- the CLI itself
ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "heron_edge.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_version_comes_from_the_installed_distribution() -> None:
    done = cli("--version")
    assert done.returncode == 0 and done.stdout == f"heron-edge {version('heron-edge')}\n", done


def test_help_says_what_the_tool_is_and_groups_the_verbs_by_who_runs_them() -> None:
    done = cli("--help")
    assert done.returncode == 0
    text = done.stdout
    assert "microgrid" in text and "README.md" in text and "docs/edge.md" in text
    titles = [title for title, _ in GROUPS]
    assert [t.split(" (")[0] for t in titles] == ["On a laptop", "Software in the loop", "In the field"]
    sections = {title: text.split(f"{title}:")[1] for title in titles}
    for (title, verbs), after in zip(GROUPS, [*titles[1:], None], strict=True):
        section = sections[title].split(f"{after}:")[0] if after else sections[title]
        for verb in verbs:
            assert f"\n  {verb.name} " in section and f"e.g. heron-edge {verb.name} " in section, (title, verb.name)
    assert {v.name for _, verbs in GROUPS for v in verbs} == {"simulate", "evaluate", "scenario", "train", "sil", "plant", "emulate", "probe",
                                                              "agent", "operator", "broker-config"}
    assert [v.name for v in GROUPS[0][1]] == ["simulate", "evaluate", "scenario", "train"]
    assert {v.name for v in GROUPS[1][1]} == {"sil", "plant", "emulate"}
    assert {v.name for v in GROUPS[2][1]} == {"probe", "agent", "operator", "broker-config"}


def test_each_verb_help_is_short_and_starts_with_its_summary_and_an_example() -> None:
    done = cli("operator", "--help")
    assert done.returncode == 0
    description = done.stdout.split("\n\n")[1:3]
    assert description[0].startswith("the system operator") and description[1].startswith("example: heron-edge operator")


def test_one_flag_spelling_and_metavar_style_in_every_verb() -> None:
    """Durations end in ``-s`` with metavar ``S``; every value has an upper-case metavar or a set of choices; the
    operator's id is ``--operator-id`` everywhere; the old spellings kept are exactly the ones scripts use."""
    _, verbs = build_parser()
    hidden: dict[str, set[str]] = {}
    for name, (parser, _module) in verbs.items():
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0:
                continue
            flag = action.option_strings[0]
            if action.help == argparse.SUPPRESS:
                hidden.setdefault(name, set()).add(flag)
                continue
            if action.choices is None:
                assert isinstance(action.metavar, str) and action.metavar == action.metavar.upper(), (name, flag)
            assert (action.metavar == "S") == flag.endswith("-s"), (name, flag)  # seconds, and only seconds
            assert flag not in ("--id", "--operator"), (name, flag)
    assert hidden == {}  # no hidden spellings: a renamed flag is renamed everywhere
    from typing import get_args

    from heron_edge.commands import PROTOCOLS
    from heron_edge.coordination import ProtocolName

    assert get_args(ProtocolName) == PROTOCOLS  # --protocol offers exactly what the coordination runs


class _Lines:
    """A process's stderr, line by line, read on a thread so that the test can wait for a line with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        assert process.stderr is not None
        stream = process.stderr
        threading.Thread(target=lambda: [self._queue.put(line) for line in stream], daemon=True).start()

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} within {timeout} s:\n{''.join(self.lines)}")


def _start(*args: str) -> tuple[subprocess.Popen[str], _Lines]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "heron_edge.cli", *args], cwd=ROOT, env=env, text=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return process, _Lines(process)


def _stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.mqtt
def test_operator_says_at_info_what_it_runs_each_episode_and_its_stop(mosquitto: MosquittoProcess) -> None:
    """The default log level is INFO: start-up (id, site, clock, protocols), online, the first episode, stop."""
    process, lines = _start("operator", "--broker", mosquitto.url, "--site", "info", "--operator-id", "op1",
                            "--clock", "timer", "--period-s", "0.2", "--protocol", "setpoint")
    try:
        start = lines.wait_for("heron-edge ")
        assert " INFO " in start and "operator op1" in start and "site info" in start, start
        assert "timer clock every 0.2 s" in start and "protocols: setpoint" in start and mosquitto.url in start
        assert "online" in lines.wait_for("operator op1: online")
        lines.wait_for("operator op1: episode starts at step")
    finally:
        code = _stop(process)
    assert code == 0
    lines.wait_for("operator op1: stopped", timeout=5)


@pytest.mark.mqtt
def test_agent_says_at_info_its_start_connect_and_stop(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    """Start-up (agent id, site, broker URL, clock, devices), the connection, and the stop, at the default level."""
    with socket.socket() as s:  # the devices are unreachable: the agent runs in failsafe, which is logged too
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    device = {"host": "127.0.0.1", "port": port, "timeout_s": 0.2, "retries": 0}
    config = {"agent_id": "mg7", "site": "info", "peers": ["mg7"], "battery_p_max_mw": 0.5,
              "broker": {"url": mosquitto.url, "reconnect_min_delay_s": 0.05, "reconnect_max_delay_s": 0.2},
              "devices": {"battery": device, "meter": device},
              "policy": {"cost_a_usd_per_mw2h": 0.0, "cost_b_usd_per_mwh": 100.0},
              "cycle": {"clock": "timer", "period_s": 0.3, "step_timeout_s": 0.1},
              "failsafe": {"upstream_timeout_s": 1.0},
              "outbox": {"path": str(tmp_path / "outbox.sqlite")}}
    path = tmp_path / "gateway.toml"
    path.write_text(to_toml(config))
    process, lines = _start("agent", "--config", str(path))
    try:
        assert "agent mg7" in lines.wait_for("heron-edge ")
        start = lines.wait_for("mg7: starting")
        assert "site info" in start and mosquitto.url in start and "timer clock every 0.3 s" in start, start
        assert f"battery 127.0.0.1:{port} unit 1" in start and f"meter 127.0.0.1:{port}" in start, start
        assert " INFO " in lines.wait_for(f"mg7: connected to {mosquitto.url}")
        lines.wait_for("failsafe")  # the devices do not answer (WARNING, as before)
    finally:
        code = _stop(process)
    assert code == 0
    lines.wait_for("mg7: stopped at step", timeout=5)
