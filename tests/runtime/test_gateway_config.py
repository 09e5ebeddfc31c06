"""Bad gateway configs: each kind refused with one clear line naming the field (exit 2 from the CLI, never a
traceback), nothing out of range silently clamped, the files the gateway writes checked at start;
``--check-config`` says ok or the error."""
from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from heron_edge.errors import ConfigError
from heron_edge.runtime.config import MAX_FILE_BYTES, load_gateway_config
from tests.runtime.test_gateway_stop import _config, _toml

ROOT = Path(__file__).resolve().parents[2]


def _valid(tmp_path: Path) -> dict[str, Any]:
    return _config("mqtt://127.0.0.1:1", tmp_path)


def _with(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of ``data`` with ``dotted`` (e.g. ``failsafe.battery_mw``) set to ``value``."""
    out = copy.deepcopy(data)
    *tables, key = dotted.split(".")
    node = out
    for t in tables:
        node = node.setdefault(t, {})
    node[key] = value
    return out


def _write(tmp_path: Path, data: dict[str, Any], name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(_toml(data))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "heron_edge.cli", "agent", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})


# ---------------------------------------------------------------------------------------------- the CLI
def _nan_battery(tmp_path: Path) -> Path:
    return _write(tmp_path, _with(_valid(tmp_path), "failsafe.battery_mw", math.nan))


def _inf_period(tmp_path: Path) -> Path:
    return _write(tmp_path, _with(_valid(tmp_path), "cycle.period_s", math.inf))


def _outbox_is_a_directory(tmp_path: Path) -> Path:
    (tmp_path / "box").mkdir()
    return _write(tmp_path, _with(_valid(tmp_path), "outbox.path", str(tmp_path / "box")))


def _status_dir_not_creatable(tmp_path: Path) -> Path:
    (tmp_path / "plain-file").write_text("")
    return _write(tmp_path, _with(_valid(tmp_path), "status_file", str(tmp_path / "plain-file" / "run" / "s.json")))


def _deeply_nested(tmp_path: Path) -> Path:
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    return path


def _not_utf8(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.toml"
    path.write_bytes(_toml(_valid(tmp_path)).replace('site = "stop"', 'site = "st\xf6p"').encode("latin-1"))
    return path


@pytest.mark.parametrize(("make", "expected"), [
    (_nan_battery, "failsafe.battery_mw"),
    (_inf_period, "cycle.period_s"),
    (_outbox_is_a_directory, "outbox.path"),
    (_status_dir_not_creatable, "status_file"),
    (_deeply_nested, "nested too deeply"),
    (_not_utf8, "not UTF-8"),
], ids=["nan-failsafe", "inf-period", "outbox-dir", "status-dir", "deep-toml", "not-utf8"])
@pytest.mark.parametrize("check", [False, True], ids=["run", "check-config"])
def test_cli_refuses_a_bad_config_in_one_line(tmp_path: Path, make: Any, expected: str, check: bool) -> None:
    path = make(tmp_path)
    result = _cli("--config", str(path), *(["--check-config"] if check else []))
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("heron-edge agent: error: "), result.stderr
    assert expected in lines[0]


def test_check_config_ok_creates_the_directories(tmp_path: Path) -> None:
    data = _valid(tmp_path)
    path = _write(tmp_path, data)
    result = _cli("--config", str(path), "--check-config")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: ok (agent mg1, site stop, 2 devices)"
    for directory in ("run", "log", "var"):  # status_file, journal_file, outbox.path
        assert (tmp_path / directory).is_dir()
    assert not (tmp_path / "var" / "outbox.sqlite").exists()  # checked, not created


# ---------------------------------------------------------------------------------------------- values
@pytest.mark.parametrize(("field", "value", "named"), [
    ("failsafe.battery_mw", math.inf, "failsafe.battery_mw"),
    ("failsafe.battery_mw", -math.inf, "failsafe.battery_mw"),
    ("failsafe.battery_mw", -1e6, "failsafe.battery_mw"),
    ("failsafe.battery_mw", 1e300, "failsafe.battery_mw"),
    ("failsafe.battery_mw", 0.6, "failsafe.battery_mw"),  # beyond battery_p_max_mw = 0.5
    ("failsafe.generator_mw", 0.1, "failsafe.generator_mw"),  # no generator (generator_p_max_mw = 0)
    ("failsafe.export_limit_mw", 1e300, "failsafe.export_limit_mw"),
    ("failsafe.upstream_timeout_s", math.nan, "failsafe.upstream_timeout_s"),
    ("cycle.period_s", 1e300, "cycle.period_s"),
    ("cycle.period_s", 86_401.0, "cycle.period_s"),
    ("cycle.period_s", "inf", "cycle.period_s"),  # a string the float parser would take
    ("cycle.step_timeout_s", 1e300, "cycle.step_timeout_s"),
    ("battery_p_max_mw", 1e300, "battery_p_max_mw"),
    ("battery_p_max_mw", -1e6, "battery_p_max_mw"),
    ("broker.reconnect_max_delay_s", math.inf, "broker.reconnect_max_delay_s"),
    ("broker.keepalive_s", 10**9, "broker.keepalive_s"),
    ("devices.battery.timeout_s", math.nan, "devices.battery.timeout_s"),
    ("policy.cost_b_usd_per_mwh", math.inf, "policy.cost_b_usd_per_mwh"),
    ("outbox.max_records", 10**12, "outbox.max_records"),
], ids=lambda v: str(v))
def test_non_finite_and_out_of_range_values_are_refused(tmp_path: Path, field: str, value: Any, named: str) -> None:
    path = _write(tmp_path, _with(_valid(tmp_path), field, value))
    with pytest.raises(ConfigError) as err:
        load_gateway_config(path)
    message = str(err.value)
    assert named in message and "\n" not in message, message


@pytest.mark.parametrize(("field", "value", "named"), [
    ("agent_id", 5, "agent_id"),
    ("broker", "mqtt://127.0.0.1:1", "broker"),
    ("peers", "mg1", "peers"),
    ("cycle.clock", 3, "cycle.clock"),
    ("devices.battery.port", "502x", "devices.battery.port"),
    ("outbox.path", "", "outbox.path"),
], ids=lambda v: str(v))
def test_wrong_types_are_refused(tmp_path: Path, field: str, value: Any, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_gateway_config(_write(tmp_path, _with(_valid(tmp_path), field, value)))


# ---------------------------------------------------------------------------------------------- paths
def test_missing_directories_are_created_at_load(tmp_path: Path) -> None:
    path = _write(tmp_path, _valid(tmp_path))
    load_gateway_config(path)
    assert not (tmp_path / "log").exists()  # without check_paths, loading has no side effect
    config = load_gateway_config(path, check_paths=True)
    assert config.journal_file is not None and Path(config.journal_file).parent.is_dir()
    assert (tmp_path / "run").is_dir() and (tmp_path / "var").is_dir()


def _journal_is_a_directory(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "j").mkdir()
    return _with(_valid(tmp_path), "journal_file", str(tmp_path / "j"))


def _journal_under_a_file(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "f").write_text("")
    return _with(_valid(tmp_path), "journal_file", str(tmp_path / "f" / "journal.jsonl"))


def _outbox_not_sqlite(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "box.sqlite").write_text("not a database\n")
    return _with(_valid(tmp_path), "outbox.path", str(tmp_path / "box.sqlite"))


def _status_is_the_journal(tmp_path: Path) -> dict[str, Any]:
    data = _valid(tmp_path)
    return _with(data, "status_file", data["journal_file"])


def _status_not_writable(tmp_path: Path) -> dict[str, Any]:
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return _with(_valid(tmp_path), "status_file", str(locked / "status.json"))


@pytest.mark.parametrize(("make", "named"), [
    (_journal_is_a_directory, "journal_file"),
    (_journal_under_a_file, "journal_file"),
    (_outbox_not_sqlite, "outbox.path"),
    (_status_is_the_journal, "same file"),
    (_status_not_writable, "status_file"),
], ids=["journal-dir", "journal-under-file", "outbox-not-sqlite", "same-file", "not-writable"])
def test_bad_paths_are_refused_naming_the_field(tmp_path: Path, make: Any, named: str) -> None:
    path = _write(tmp_path, make(tmp_path))
    with pytest.raises(ConfigError, match=named) as err:
        load_gateway_config(path, check_paths=True)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- files
def _missing(tmp_path: Path) -> Path:
    return tmp_path / "nope.toml"


def _a_directory(tmp_path: Path) -> Path:
    return tmp_path


def _too_large(tmp_path: Path) -> Path:
    path = tmp_path / "big.toml"
    path.write_text("# " + "x" * MAX_FILE_BYTES + "\n")
    return path


def _deep_tables(tmp_path: Path) -> Path:
    path = tmp_path / "deep-tables.toml"
    path.write_text("x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n")
    return path


def _nested_40(tmp_path: Path) -> Path:  # deep enough to refuse, not enough for a RecursionError
    path = tmp_path / "nested.toml"
    path.write_text(_toml(_valid(tmp_path)).replace("[broker]", "junk = " + "[" * 40 + "]" * 40 + "\n[broker]"))
    return path


def _syntax(tmp_path: Path) -> Path:
    path = tmp_path / "syntax.toml"
    path.write_text("agent_id = [\n")
    return path


def _yaml_bad(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text("agent_id: [mg1\nsite: {\n")
    return path


def _yaml_list(tmp_path: Path) -> Path:
    path = tmp_path / "list.yml"
    path.write_text("- agent_id\n- site\n")
    return path


try:
    import yaml  # noqa: F401

    _YAML = "YAML|top level"
except ImportError:
    _YAML = "PyYAML"


@pytest.mark.parametrize(("make", "expected"), [
    (_missing, "cannot read"),
    (_a_directory, "cannot read"),
    (_too_large, "larger than"),
    (_not_utf8, "not UTF-8"),
    (_deeply_nested, "nested too deeply"),
    (_deep_tables, "nested too deeply"),
    (_nested_40, "junk"),
    (_syntax, "not valid TOML"),
    (_yaml_bad, _YAML),
    (_yaml_list, _YAML),
], ids=["missing", "directory", "too-large", "not-utf8", "deep-arrays", "deep-tables", "nested-40", "syntax",
        "yaml-syntax", "yaml-list"])
def test_bad_files_are_one_config_error(tmp_path: Path, make: Any, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as err:
        load_gateway_config(make(tmp_path), check_paths=True)
    assert "\n" not in str(err.value)


def test_valid_configs_and_examples_still_load(tmp_path: Path) -> None:
    config = load_gateway_config(_write(tmp_path, _valid(tmp_path)), check_paths=True)
    assert config.cycle.period_s == 0.3 and config.failsafe.battery_mw == 0.0
    ok = load_gateway_config(_write(tmp_path, _with(_valid(tmp_path), "failsafe.battery_mw", -0.5), "edge.toml"))
    assert ok.failsafe.battery_mw == -0.5  # exactly the rating: accepted as given
    for example in ("gateway-rpi.toml", "gateway-secure.toml"):
        load_gateway_config(ROOT / "examples" / example)
