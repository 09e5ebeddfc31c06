"""Software-in-the-loop orchestration: Mosquitto, the plant, one agent process per microgrid and the
operator as real subprocesses; their configs; stopping them by PID; the comparison with a
centralized run of the same policy and days.

Quantisation between the SIL and the in-process runs (why they agree to ~1e-6 MW, not bit for bit):
the meter's float32 MW registers give the agents the very float32 values the environment's
observations hold (load, PV, wind, exchange, violation: exact); SoC comes from SunSpec model 713
(0.1 %) and the battery / generator power from model 701 W (100 W), which the rule policy does not
read; setpoints are written through model 704 WSet at 1 W resolution (WSet_SF = 0 at these
ratings), so each applied power differs by at most 0.5 W from the centralized run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from heron_edge.commands.simulate import Trajectory
    from sim.scenario import Scenario

__all__ = ["COMPARED", "Comparison", "ManagedProcess", "agent_config", "compare", "episode_starts", "load_trajectory"]

COMPARED: dict[str, float] = {
    "battery_mw": 1e-5, "generator_mw": 1e-5, "pv_mw": 1e-5, "wind_mw": 1e-5, "exchange_mw": 1e-5, "soc": 1e-5,
    "vm_min_pu": 1e-6, "vm_max_pu": 1e-6, "cost_usd": 1e-3, "price_usd_per_mwh": 0.0, "load_mw": 1e-9,
}
"""Column -> largest allowed |SIL - centralized| (MW, fraction, p.u., USD): setpoints quantised to 1 W."""


def episode_starts(scenario: Scenario, *, days: int, seed: int, test_year: bool = False) -> list[int]:
    """The first step of the year of each day, exactly as ``MultiAgentMicrogrids.reset`` picks them."""
    from heron_edge.env import MultiAgentMicrogrids

    steps_per_day = int(round(24 * 60 / scenario.step_minutes))
    env = MultiAgentMicrogrids({"centralized": True, "max_episode_steps": steps_per_day, "scenario": scenario,
                                "train": not test_year})
    starts = []
    for day in range(days):
        _, infos = env.reset(seed=seed if day == 0 else None)
        starts.append(int(next(iter(infos.values()))["step_in_year"]))
    env.close()
    return starts


def agent_config(scenario: Scenario, index: int, *, site: str, broker_url: str, endpoints: dict[str, dict[str, Any]],
                 workdir: Path, period_s: float = 0.5, step_timeout_s: float = 0.5,
                 upstream_timeout_s: float = 2.0) -> dict[str, Any]:
    """The gateway config (a TOML-ready dict) of microgrid ``index`` in a SIL run."""
    mg = scenario.microgrids[index]
    gen = mg.generator
    names = [m.name for m in scenario.microgrids]

    def device(role: str) -> dict[str, Any]:
        e = endpoints[mg.name][role]
        return {"host": e["host"], "port": e["port"], "unit_id": e["unit_id"], "timeout_s": 0.5, "retries": 1,
                "backoff_s": 0.02}

    devices = {role: device(role) for role in ("battery", "generator", "pv", "wind", "meter") if role in endpoints[mg.name]}
    return {
        "agent_id": mg.name, "site": site, "upstream_id": "system_operator", "peers": names,
        "battery_p_max_mw": mg.battery.p_max_mw, "generator_p_max_mw": gen.p_max_mw,
        "status_file": str(workdir / f"status-{mg.name}.json"),
        "broker": {"url": broker_url, "reconnect_min_delay_s": 0.1, "reconnect_max_delay_s": 1.0},
        "devices": devices,
        "policy": {"kind": "rule", "round_trip_efficiency": mg.battery.efficiency ** 2,
                   "cost_a_usd_per_mw2h": gen.cost_a_usd_per_mw2h, "cost_b_usd_per_mwh": gen.cost_b_usd_per_mwh,
                   "cost_c_usd_per_h": gen.cost_c_usd_per_h, "window_steps": int(round(24 * 60 / scenario.step_minutes))},
        "cycle": {"clock": "bus", "period_s": period_s, "step_timeout_s": step_timeout_s,
                  "steps_per_day": int(round(24 * 60 / scenario.step_minutes))},
        "failsafe": {"upstream_timeout_s": upstream_timeout_s, "battery_mw": 0.0, "generator_mw": 0.0,
                     "export_limit_mw": 0.0},
        "outbox": {"path": str(workdir / f"outbox-{mg.name}.sqlite"), "max_records": 10_000},
    }


def to_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for the configs above (strings, numbers, booleans, lists of strings, nested tables)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} as TOML")

    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, v in data.items():
        if isinstance(v, dict):
            tables.append((key, v))
        else:
            lines.append(f"{key} = {value(v)}")
    for name, table in tables:
        inner = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if inner or not table:
            lines.append(f"\n[{name}]")
            lines += [f"{k} = {value(v)}" for k, v in inner.items()]
        for k, v in table.items():
            if isinstance(v, dict):
                lines.append(f"\n[{name}.{k}]")
                lines += [f"{kk} = {value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


class ManagedProcess:
    """A child process we started (own session, so signals reach only it); stopped by its PID."""

    def __init__(self, name: str, argv: list[str], *, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM by PID, SIGKILL after ``timeout`` s; the exit code. Idempotent."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        self._log.close()
        return self.proc.returncode

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def cli_argv(*args: str) -> list[str]:
    """``python -m heron_edge.cli ARGS`` with this interpreter."""
    return [sys.executable, "-m", "heron_edge.cli", *args]


def child_env() -> dict[str, str]:
    """The environment for children: one BLAS thread (small matrices, 2 cores), unbuffered output."""
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_for_file(path: Path, *, timeout: float, process: ManagedProcess | None = None) -> None:
    """Until ``path`` exists; RuntimeError after ``timeout`` s or when ``process`` died."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process is not None and not process.alive():
            raise RuntimeError(f"{process.name} exited ({process.proc.returncode}):\n{process.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def load_trajectory(path: Path) -> Trajectory:
    """A trajectory written by ``PlantRuntime.save_trajectory``."""
    from heron_edge.commands.simulate import COLUMNS, Trajectory

    with np.load(path) as data:
        names = [str(n) for n in data["names"]]
        columns = {c: np.asarray(data[c], dtype=np.float64) for c in COLUMNS if c != "microgrid" and c in data}
        step_hours = float(data["step_hours"])
    return Trajectory(names=names, columns=columns, step_hours=step_hours)


@dataclass(frozen=True)
class Comparison:
    """Largest |SIL - centralized| per compared column, and whether every one is within its tolerance."""

    max_abs: dict[str, float]
    tolerances: dict[str, float]
    steps: tuple[int, int]

    @property
    def ok(self) -> bool:
        return self.steps[0] == self.steps[1] and all(self.max_abs[c] <= self.tolerances[c] for c in self.max_abs)

    def report(self) -> str:
        lines = [f"SIL vs centralized ({self.steps[0]} vs {self.steps[1]} steps): {'MATCH' if self.ok else 'MISMATCH'}"]
        for c, v in self.max_abs.items():
            lines.append(f"  {c:<18} max |diff| {v:.3e}  (tolerance {self.tolerances[c]:.0e})"
                         f"{'' if v <= self.tolerances[c] else '  <-- exceeds'}")
        return "\n".join(lines)


def compare(sil: Trajectory, central: Trajectory, tolerances: dict[str, float] | None = None) -> Comparison:
    """Compare two trajectories column by column (only when they have the same number of steps)."""
    tol = dict(COMPARED if tolerances is None else tolerances)
    steps = (sil.n_steps, central.n_steps)
    if steps[0] != steps[1]:
        return Comparison({c: float("inf") for c in tol}, tol, steps)
    return Comparison({c: float(np.max(np.abs(sil.columns[c] - central.columns[c]))) for c in tol}, tol, steps)
