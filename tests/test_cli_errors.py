"""A user's mistake, with every verb, as a real ``heron-edge`` process: one line ``heron-edge VERB: error: ...``,
exit 2 for a usage or configuration error and 1 for a runtime failure (broker unreachable), never a traceback.

Each case runs ``python -m heron_edge.cli`` as a subprocess, as a user or a systemd unit does: in-process calls
would not see what reaches the terminal (a traceback, argparse's usage dump, log lines before the error)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from heron_edge.runtime.sil import to_toml

ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    """A loopback port nobody listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1", **(env or {})}
    environment.pop("HERON_BROKER_PASSWORD", None)
    environment.pop("HERON_COMMAND_KEYS", None)
    return subprocess.run([sys.executable, "-m", "heron_edge.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=environment, stdin=subprocess.DEVNULL)


def _assert_one_error(result: subprocess.CompletedProcess[str], verb: str, code: int, *fragments: str) -> str:
    """Exit ``code``; no traceback; exactly one ``heron-edge VERB: error:`` line, the last of stderr and, for a
    usage or configuration error (2), the only one (nothing is logged before the options are checked)."""
    prefix = f"heron-edge {verb}: error: " if verb else "heron-edge: error: "
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    errors = [line for line in lines if line.startswith(prefix)]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    if code == 2:
        assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def _a_file(tmp_path: Path) -> str:
    path = tmp_path / "a-file"
    path.write_text("not a directory\n")
    return str(path)


def _binary(tmp_path: Path) -> str:
    path = tmp_path / "scenario.toml"
    path.write_bytes(b"\xff\xfe\x00binary")
    return str(path)


def _agent_config(tmp_path: Path, **broker: Any) -> str:
    """A gateway config whose devices are unreachable (the agent would run in failsafe) with ``broker`` settings."""
    device = {"host": "127.0.0.1", "port": _closed_port(), "timeout_s": 0.2, "retries": 0}
    data = {"agent_id": "mg1", "site": "t", "peers": ["mg1"], "battery_p_max_mw": 0.5,
            "broker": {"url": f"mqtt://127.0.0.1:{_closed_port()}", **broker},
            "devices": {"battery": device, "meter": device},
            "policy": {"cost_a_usd_per_mw2h": 0.0, "cost_b_usd_per_mwh": 100.0},
            "cycle": {"clock": "timer", "period_s": 1.0, "step_timeout_s": 0.1},
            "outbox": {"path": str(tmp_path / "outbox.sqlite")}}
    path = tmp_path / "gateway.toml"
    path.write_text(to_toml(data))
    return str(path)


Case = tuple[str, Callable[[Path], list[str]], int, tuple[str, ...]]
CASES: list[Case] = [
    # verb, argv after the verb (built in tmp_path), exit code, what the error line must name
    ("simulate", lambda t: ["--days", "1", "--out", _a_file(t)], 2, ("--out", "a-file", "not a directory")),
    ("simulate", lambda t: ["--scenario", "no_such_grid"], 2, ("no_such_grid", "ieee34_3x13")),
    ("simulate", lambda t: ["--scenario", _binary(t)], 2, ("not UTF-8",)),
    ("simulate", lambda t: ["--days", "-1"], 2, ("--days",)),
    ("simulate", lambda t: ["--seed", "-3"], 2, ("--seed",)),
    ("simulate", lambda t: ["--days", "x"], 2, ("--days", "'x'")),
    ("simulate", lambda t: ["--days", "1", "--out", str(t), "--broker", "127.0.0.1:1883"], 2, ("mqtt://",)),
    ("simulate", lambda t: ["--days", "1", "--out", str(t), "--broker", f"mqtt://127.0.0.1:{_closed_port()}"], 1,
     ("cannot connect",)),
    ("simulate", lambda t: ["--bogus"], 2, ("--bogus",)),
    ("sil", lambda t: ["--days", "0"], 2, ("--days",)),
    ("sil", lambda t: ["--workdir", _a_file(t)], 2, ("--workdir", "not a directory")),
    ("sil", lambda t: ["--workdir", str(t), "--broker", f"mqtt://127.0.0.1:{_closed_port()}"], 1, ("cannot connect",)),
    ("sil", lambda t: ["--workdir", str(t), "--broker", "tcp://127.0.0.1:1883"], 2, ("mqtt://",)),
    ("sil", lambda t: ["--secure", "--broker", "mqtt://127.0.0.1:1883"], 2, ("--secure",)),
    ("sil", lambda t: ["--period", "2"], 2, ("unrecognized arguments: --period",)),  # renamed --period-s
    ("sil", lambda t: ["--timeout-s", "-1"], 2, ("--timeout-s",)),
    ("plant", lambda t: ["--broker", f"mqtt://127.0.0.1:{_closed_port()}", "--start-steps", "0"], 1,
     ("cannot connect",)),
    ("plant", lambda t: ["--broker", "mqtt://127.0.0.1:1883", "--start-steps", "a,b"], 2, ("--start-steps",)),
    ("plant", lambda t: ["--broker", "mqtt://127.0.0.1:1883", "--start-steps", "99999999"], 2,
     ("--start-steps", "past the last step")),
    ("plant", lambda t: ["--broker", "mqtt://127.0.0.1:1883", "--trajectory", str(t)], 2,
     ("--trajectory", "is a directory")),
    ("operator", lambda t: ["--broker", f"mqtt://127.0.0.1:{_closed_port()}"], 1, ("cannot connect",)),
    ("operator", lambda t: ["--broker", "127.0.0.1:1883"], 2, ("mqtt://",)),
    ("operator", lambda t: ["--broker", "mqtt://127.0.0.1:1883", "--scenario", "no_such_grid"], 2, ("no_such_grid",)),
    ("operator", lambda t: ["--broker", "mqtt://127.0.0.1:1883", "--protocol-options", "{bad"], 2,
     ("--protocol-options", "not valid JSON")),
    ("operator", lambda t: ["--broker", "mqtt://127.0.0.1:1883", "--protocol", "setpoint",
                            "--protocol-options", '{"setpoint": 3}'], 2, ("--protocol-options", "setpoint")),
    ("operator", lambda t: ["--broker", "mqtt://127.0.0.1:1883", "--protocol", "setpoint",
                            "--protocol-options", '{"setpoint": {"no_such_option": 1}}'], 2,
     ("--protocol-options", "no_such_option")),
    ("operator", lambda t: ["--broker", "mqtt://127.0.0.1:1883", "--year", "1999"], 2, ("--year",)),
    ("operator", lambda t: ["--broker", "mqtt://127.0.0.1:1883", "--period-s", "-5"], 2, ("--period-s",)),
    ("operator", lambda t: ["--broker", "mqtts://127.0.0.1:8883", "--ca-file", str(t / "missing-ca.crt")], 2,
     ("--ca-file", "missing-ca.crt", "no such file")),
    ("operator", lambda t: ["--broker", "mqtts://127.0.0.1:8883", "--ca-file", _a_file(t)], 2, ("--ca-file",)),
    ("operator", lambda t: ["--broker", "mqtt://127.0.0.1:1883", "--ca-file", _a_file(t)], 2, ("mqtts://",)),
    ("operator", lambda t: ["--broker", "mqtt://127.0.0.1:1883", "--ledger", str(t / "no" / "dir" / "l.jsonl")], 2,
     ("--ledger", "does not exist")),
    ("operator", lambda t: ["--broker", "mqtt://127.0.0.1:1883", "--username", "u"], 2, ("HERON_BROKER_PASSWORD",)),
    ("agent", lambda t: ["--config", str(t / "missing.toml")], 2, ("missing.toml",)),
    ("agent", lambda t: ["--config", _agent_config(t, url="127.0.0.1:1883")], 2, ("gateway.toml", "mqtt://")),
    ("agent", lambda t: ["--config", _agent_config(t, url="mqtts://127.0.0.1:8883",
                                                   tls={"ca_file": str(t / "missing-ca.crt")})], 2,
     ("broker.tls.ca_file", "missing-ca.crt", "no such file")),
    ("agent", lambda t: ["--check-config", "--config", _agent_config(t, url="mqtts://127.0.0.1:8883",
                                                                     tls={"ca_file": str(t / "missing-ca.crt")})], 2,
     ("broker.tls.ca_file", "missing-ca.crt")),
    ("emulate", lambda t: ["--device", "battery", "--port", "70000"], 2, ("--port",)),
    ("emulate", lambda t: ["--device", "toaster", "--port", "0"], 2, ("--device",)),
    ("broker-config", lambda t: ["--site", "s", "--agents", "mg1", "--out", _a_file(t)], 2,
     ("--out", "not a directory")),
    ("broker-config", lambda t: ["--site", "bad/site", "--agents", "mg1", "--out", str(t / "site")], 2, ("site",)),
    ("", lambda t: [], 2, ("VERB",)),
    ("", lambda t: ["--no-such-option"], 2, ("VERB",)),
]


@pytest.mark.parametrize(("verb", "argv", "code", "fragments"), CASES,
                         ids=[f"{c[0] or 'top'}-{i}" for i, c in enumerate(CASES)])
def test_a_mistake_is_one_error_line(tmp_path: Path, verb: str, argv: Callable[[Path], list[str]], code: int,
                                     fragments: tuple[str, ...]) -> None:
    result = _cli(*([verb] if verb else []), *argv(tmp_path))
    _assert_one_error(result, verb, code, *fragments)


def test_a_validation_error_is_summarized_not_dumped(tmp_path: Path) -> None:
    """pydantic's own text spans lines and ends in a URL; the line says the field and the problem only."""
    result = _cli("operator", "--broker", "mqtt://127.0.0.1:1883", "--protocol", "setpoint",
                  "--protocol-options", '{"setpoint": {"no_such_option": 1}}')
    line = _assert_one_error(result, "operator", 2)
    assert "pydantic.dev" not in line and "validation error for" not in line, line


def test_sil_checks_its_numbers_and_its_workdir(tmp_path: Path) -> None:
    result = _cli("sil", "--timeout-s", "-1")
    _assert_one_error(result, "sil", 2, "--timeout-s")
    result = _cli("sil", "--workdir", _a_file(tmp_path), "--timeout-s", "5")
    _assert_one_error(result, "sil", 2, "--workdir")
