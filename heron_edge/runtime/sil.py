"""Software-in-the-loop orchestration: Mosquitto, the plant, one agent process per microgrid and the
operator as real subprocesses; their configs; stopping them by PID; the comparison with a
centralized run of the same policy and days.

Quantisation between the SIL and the in-process runs (why they agree to ~1e-6 MW, not bit for bit):
the agents' forecast source is ``mqtt``: the plant publishes every microgrid's exact forecast of each step
(load, PV, wind as float64 JSON numbers: the very values the environment works with, so the setpoints from
the reported needs and the orders' quantities are exact too); the exchange comes from a standard SunSpec
site meter (213: float32 W; 203: int16 W with its scale factor) and the voltage violation from that meter's
voltage at the device bus (the environment sums it over the microgrid's buses); SoC comes from SunSpec model 713
(0.1 %) and the battery / generator power from model 701 W (100 W), which the rule policy does not
read; setpoints are written through model 704 WSet at 1 W resolution (WSet_SF = 0 at these
ratings), so each applied power differs by at most 0.5 W from the centralized run; PV and wind are
curtailed to 0 % or not at all (704 WMaxLimPct), exactly. With legacy devices (``--device-profile
legacy`` / ``mixed``) batteries and generators take 0.01 % steps of their rating (124, 123): see
:func:`profile_tolerances`.

Coordination: the operator process writes a ledger (what it signalled and cleared per step) and
each agent a journal (its setpoint, consensus dispatch, clearing); :func:`settle` turns the plant's
record into ``simulate``'s columns with the environment's own settlement.

End of a run: the plant writes its result once the last step ran and keeps its devices up; the
agents are stopped first (all at once), then the operator, the plant, Mosquitto (:func:`stop_in_order`).
What the processes append after the last step (:class:`FileMarks`) or enter after it (failsafe
transitions later than :attr:`PlantResult.finished_at`) is shutdown, never counted: :func:`run_health`
turns the rest into typed records whose :meth:`RunHealth.report` names the degraded steps per agent.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heron_edge.counters import RejectSource
from heron_edge.errors import ConfigError, RunError

if TYPE_CHECKING:
    from heron_edge.trajectory import Trajectory
    from sim.scenario import Scenario

__all__ = ["COMPARED", "CONSENSUS_COMPARED", "LEGACY_STEP", "PROTOCOL_COMPARED", "AgentCounters", "AgentHealth", "Comparison",
           "Deviation", "FileMarks", "ManagedProcess", "OperatorHealth", "RunHealth", "SilFiles", "agent_config",
           "agent_every_steps",
           "compare", "coordination_settings", "episode_starts", "load_trajectory", "profile_tolerances",
           "run_health", "settle", "stop_in_order", "tolerances"]

COMPARED: dict[str, float] = {
    "battery_mw": 1e-5, "generator_mw": 1e-5, "pv_mw": 1e-5, "wind_mw": 1e-5, "exchange_mw": 1e-5, "soc": 1e-5,
    "vm_min_pu": 1e-6, "vm_max_pu": 1e-6, "cost_usd": 1e-3, "price_usd_per_mwh": 0.0, "load_mw": 1e-9,
}
"""Column -> largest allowed |SIL - centralized| (MW, fraction, p.u., USD): setpoints quantised to 1 W."""

PROTOCOL_COMPARED: dict[str, dict[str, float]] = {
    "price_signal": {"congestion_adder_usd_per_mwh": 1e-3, "price_usd_per_mwh": 1e-3},
    "setpoint": {"setpoint_mw": 0.0},
    "p2p_trading": {"traded_mw": 0.0, "trade_cash_usd": 0.0, "clearing_price_usd_per_mwh": 0.0},
    "consensus": {},
}
"""Per protocol, further columns and their tolerances: setpoints and trades exactly (the environment tests' rule).
With price_signal the congestion adder follows the feeder-head flow the SIL plant measured, which carries the
1 W setpoint quantisation (~1e-6 MW); at the default options the adder moves 100 USD/MWh per MW of it, so price
and adder match to 1e-3 USD/MWh. (On the same plant state the operator's price equals the centralized form
exactly: tests/runtime/test_protocols.py.)"""

CONSENSUS_COMPARED: dict[str, float] = {
    "battery_mw": 2e-2, "generator_mw": 2e-2, "pv_mw": 1e-5, "wind_mw": 1e-5, "exchange_mw": 2e-2, "soc": 1e-3,
    "vm_min_pu": 1e-3, "vm_max_pu": 1e-3, "cost_usd": 2.0,
}
"""With consensus the agreed dispatch is an iterate, not the closed form: it is within 1 % of the total dispatch
(checked separately, per step); each generator follows it, so powers may differ by that much (MW) and the
costs, voltages and SoC by what it implies over a day."""


LEARNED_COMPARED: dict[str, float] = {
    "battery_mw": 2e-2, "generator_mw": 2e-2, "pv_mw": 1e-3, "wind_mw": 1e-3, "exchange_mw": 2e-2, "soc": 1e-3,
    "vm_min_pu": 1e-3, "vm_max_pu": 1e-3, "cost_usd": 2.0,
}
"""A policy bundle reads what the rule does not: the state of charge (SunSpec model 713, 0.1 %) and the battery and
generator power of the last step (model 701, 100 W); a network's actions follow those readings smoothly, so they
differ from the centralized run's by its sensitivity times the quantisation (measured: up to ~4e-3 MW), and the
states drift by what that implies over a day. Whether each gateway ran the bundle itself is checked exactly
elsewhere: every journal row holds the observation the gateway read and the action it took, and the bundle gives
that action for that observation (tests/runtime/test_sil_policy.py)."""


def episode_starts(scenario: Scenario, *, days: int, seed: int, test_year: bool = False) -> list[int]:
    """The first step of the year of each day, exactly as ``MultiAgentMicrogrids.reset`` picks them."""
    from heron_edge.env import MultiAgentMicrogrids

    steps_per_day = scenario.steps_per_day
    env = MultiAgentMicrogrids({"centralized": True, "max_episode_steps": steps_per_day, "scenario": scenario,
                                "train": not test_year})
    starts = []
    for day in range(days):
        _, infos = env.reset(seed=seed if day == 0 else None)
        starts.append(int(next(iter(infos.values()))["step_in_year"]))
    env.close()
    return starts


def coordination_settings(scenario: Scenario, protocols: list[str] | None,
                          options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The gateway's ``coordination`` table for ``scenario``: protocols, options and the site data they read."""
    return {
        "protocols": list(protocols or []), "options": dict(options or {}), "step_minutes": scenario.step_minutes,
        "export_price_ratio": scenario.export_price_ratio, "feeder_head_rating_mva": scenario.feeder_head_rating_mva,
        "microgrids": [{"name": m.name, "battery": {"p_max_mw": m.battery.p_max_mw},
                        "generator": {"p_min_mw": m.generator.p_min_mw, "p_max_mw": m.generator.p_max_mw,
                                      "cost_a_usd_per_mw2h": m.generator.cost_a_usd_per_mw2h,
                                      "cost_b_usd_per_mwh": m.generator.cost_b_usd_per_mwh}}
                       for m in scenario.microgrids],
    }


UPSTREAM_TIMEOUT_S = 2.0
"""The SIL gateways' failsafe.upstream_timeout_s (the operator is told it, and waits at most half of it)."""


def agent_config(scenario: Scenario, index: int, *, site: str, broker_url: str, endpoints: dict[str, dict[str, Any]],
                 workdir: Path, period_s: float = 0.5, step_timeout_s: float = 0.5,
                 upstream_timeout_s: float = UPSTREAM_TIMEOUT_S, protocols: list[str] | None = None,
                 protocol_options: dict[str, dict[str, Any]] | None = None, max_step: int | None = None,
                 policy: str | Path | None = None, every_steps: int = 1) -> dict[str, Any]:
    """The gateway config (a TOML-ready dict) of microgrid ``index`` in a SIL run (``protocols``: as in simulate;
    ``every_steps``: a slower agent's cycle, in plant steps (real time, :func:`agent_every_steps`);
    ``max_step``: the profile year's last step, past which a clock announcement is refused; ``policy``: a policy
    bundle directory, else the rule with the scenario's costs)."""
    mg = scenario.microgrids[index]
    gen = mg.generator
    names = [m.name for m in scenario.microgrids]

    def device(role: str) -> dict[str, Any]:
        e = endpoints[mg.name][role]
        table = {"host": e["host"], "port": e["port"], "unit_id": e["unit_id"], "timeout_s": 0.5, "retries": 1,
                 "backoff_s": 0.02}
        if role in ("pv", "wind"):  # full curtailment is a 0 % limit, as the centralized run curtails to 0 MW
            table["min_limit_pct"] = 0.0
        return table

    devices: dict[str, Any] = {role: device(role) for role in ("battery", "generator", "pv", "wind", "meter")
                               if role in endpoints[mg.name]}
    v_nom_v = endpoints[mg.name]["meter"].get("v_nom_v")
    if v_nom_v is not None:  # the meter's voltage against the scenario's band: the local violation feature
        devices.update(meter_v_nom_v=v_nom_v, v_min_pu=scenario.penalties.v_min_pu,
                       v_max_pu=scenario.penalties.v_max_pu)
    return {
        "agent_id": mg.name, "site": site, "upstream_id": "system_operator", "peers": names,
        "battery_p_max_mw": mg.battery.p_max_mw, "generator_p_max_mw": gen.p_max_mw,
        "status_file": str(workdir / f"status-{mg.name}.json"),
        "broker": {"url": broker_url, "reconnect_min_delay_s": 0.1, "reconnect_max_delay_s": 1.0},
        "devices": devices,
        "policy": {"kind": "onnx", "path": str(Path(policy).resolve())} if policy is not None else
                  {"kind": "rule", "round_trip_efficiency": mg.battery.efficiency ** 2,
                   "cost_a_usd_per_mw2h": gen.cost_a_usd_per_mw2h, "cost_b_usd_per_mwh": gen.cost_b_usd_per_mwh,
                   "cost_c_usd_per_h": gen.cost_c_usd_per_h, "window_steps": scenario.steps_per_day},
        "cycle": {"clock": "bus", "period_s": period_s, "step_timeout_s": step_timeout_s,
                  "steps_per_day": scenario.steps_per_day, "time_zone": scenario.time_zone, **({} if max_step is None else {"max_step": max_step}),
                  **({} if every_steps == 1 else {"every_steps": every_steps})},
        "failsafe": {"upstream_timeout_s": upstream_timeout_s, "battery_mw": 0.0, "generator_mw": 0.0,
                     "export_limit_mw": 0.0},
        "forecast": {"kind": "mqtt", "sender": "plant"},  # the plant's exact forecast: SIL equals the centralized run
        "outbox": {"path": str(workdir / f"outbox-{mg.name}.sqlite"), "max_records": 10_000},
        "journal_file": str(workdir / f"journal-{mg.name}.jsonl"),
        "coordination": coordination_settings(scenario, protocols, protocol_options),
    }


def agent_every_steps(every: Mapping[str, int], *, names: Sequence[str]) -> dict[str, int]:
    """Each agent's cycle in plant steps for a real-time SIL run (``every``: agent -> N, a cycle on every N-th step, its
    period N times the plant's; those not named: every step). ConfigError naming an unknown agent or an N below 1.
    (A slower agent's failsafe is checked in its own cycles, after it heard that step's price.)"""
    unknown = sorted(set(every) - set(names))
    if unknown:
        raise ConfigError(f"--agent-every names unknown agents {unknown}; the agents are {', '.join(names)}")
    small = sorted(name for name, n in every.items() if n < 1)
    if small:
        raise ConfigError(f"--agent-every {small[0]}={every[small[0]]}: N must be at least 1")
    return {name: every.get(name, 1) for name in names}


def to_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for the configs above: strings, numbers, booleans, lists of scalars, nested tables
    and lists of tables (``[[a.b]]``); None values are left out."""
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

    def is_table_list(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    lines: list[str] = []

    def table(prefix: str, body: dict[str, Any], header: str | None) -> None:
        if header is not None:
            lines.append(f"\n{header}")
        lines.extend(f"{k} = {value(v)}" for k, v in body.items()
                     if v is not None and not isinstance(v, dict) and not is_table_list(v))
        for k, v in body.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                table(name, v, f"[{name}]")
            elif is_table_list(v):
                for item in v:
                    table(name, item, f"[[{name}]]")

    table("", data, None)
    return "\n".join(lines).lstrip("\n") + "\n"


class ManagedProcess:
    """A child process we started (own session, so signals reach only it); stopped by its PID."""

    def __init__(self, name: str, argv: list[str], *, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - the child's output for its lifetime, closed by wait()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM by PID (when still running); returns at once, :meth:`wait` collects it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # exited since the poll
                os.kill(self.proc.pid, signal.SIGTERM)

    def wait(self, timeout: float = 5.0) -> int | None:
        """Wait for the exit, SIGKILL by PID after ``timeout`` s; the exit code. Closes the log. Idempotent."""
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        self._log.close()
        return self.proc.returncode

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM by PID, SIGKILL after ``timeout`` s; the exit code. Idempotent."""
        self.terminate()
        return self.wait(timeout)

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def stop_in_order(groups: Iterable[Sequence[ManagedProcess]], timeout: float = 5.0) -> None:
    """Stop group after group: SIGTERM to every process of a group at once, then wait for each (SIGKILL after
    ``timeout``). SIL passes the agents, then the operator, then the plant: no agent outlives its devices."""
    for group in groups:
        for process in group:
            process.terminate()
        for process in group:
            process.wait(timeout)


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
            raise RunError(f"{process.name} exited ({process.proc.returncode}):\n{process.tail()}")
        if time.monotonic() > deadline:
            raise RunError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


@dataclass(frozen=True)
class SilFiles:
    """Where a SIL run keeps its files (all in ``workdir``)."""

    workdir: Path

    @property
    def endpoints(self) -> Path:
        return self.workdir / "endpoints.json"

    @property
    def trajectory(self) -> Path:
        return self.workdir / "trajectory.npz"

    @property
    def plant_result(self) -> Path:
        """Written by the plant once the last step ran (its appearance ends the run)."""
        return self.workdir / "plant-result.json"

    @property
    def ledger(self) -> Path:
        return self.workdir / "ledger.jsonl"

    def log(self, process: str) -> Path:
        """``plant``, ``operator`` or ``agent-<microgrid>``."""
        return self.workdir / f"{process}.log"

    def journal(self, microgrid: str) -> Path:
        return self.workdir / f"journal-{microgrid}.jsonl"

    def status(self, microgrid: str) -> Path:
        return self.workdir / f"status-{microgrid}.json"

    def journals(self, microgrids: Iterable[str]) -> dict[str, Path]:
        return {name: self.journal(name) for name in microgrids}

    def appended(self, microgrids: Iterable[str]) -> list[Path]:
        """The files the processes append to while they run: ledger, journals, logs of the operator and agents."""
        names = list(microgrids)
        return [self.ledger, self.log("operator"), *(self.journal(n) for n in names),
                *(self.log(f"agent-{n}") for n in names)]


@dataclass(frozen=True)
class FileMarks:
    """How much of each append-only file existed when the last step was complete (bytes); what came later is
    shutdown and is never read. A file not marked is read whole."""

    sizes: Mapping[Path, int] = field(default_factory=dict)

    @classmethod
    def take(cls, paths: Iterable[Path]) -> FileMarks:
        """The sizes now (0 for a file that does not exist yet)."""
        return cls({path: path.stat().st_size if path.exists() else 0 for path in paths})

    def read_text(self, path: Path) -> str:
        """``path`` up to its mark, whole lines only (a line being written at the mark is left out)."""
        size = self.sizes.get(path)
        if size is None:
            return path.read_text(errors="replace")
        with open(path, "rb") as f:
            data = f.read(size)
        return data[: data.rfind(b"\n") + 1].decode(errors="replace")


def load_trajectory(path: Path) -> Trajectory:
    """A trajectory written by ``PlantRuntime.save_trajectory``."""
    from heron_edge.trajectory import COLUMNS, Trajectory

    with np.load(path) as data:
        names = [str(n) for n in data["names"]]
        columns = {c: np.asarray(data[c], dtype=np.float64) for c in COLUMNS if c != "microgrid" and c in data}
        step_hours = float(data["step_hours"])
    return Trajectory(names=names, columns=columns, step_hours=step_hours)


@dataclass(frozen=True)
class Deviation:
    """One cell beyond its tolerance: the column, the step of the year, the microgrid and |SIL - centralized|."""

    column: str
    step: int
    microgrid: str
    diff: float


_DEVIATIONS_SHOWN = 3
"""Cells named per exceeding column in the report (the first ones in run order)."""


@dataclass(frozen=True)
class Comparison:
    """Largest |SIL - centralized| per compared column, whether every one is within its tolerance, and the first
    cells beyond it (which microgrid at which step)."""

    max_abs: dict[str, float]
    tolerances: dict[str, float]
    steps: tuple[int, int]
    deviations: tuple[Deviation, ...] = ()

    @property
    def ok(self) -> bool:
        return self.steps[0] == self.steps[1] and all(self.max_abs[c] <= self.tolerances[c] for c in self.max_abs)

    def report(self) -> str:
        """First line ``SIL vs centralized (N vs M steps): MATCH`` or ``MISMATCH`` (for scripts), then one line
        per column; an exceeding column names its first cells beyond the tolerance."""
        lines = [f"SIL vs centralized ({self.steps[0]} vs {self.steps[1]} steps): {'MATCH' if self.ok else 'MISMATCH'}"]
        for c, v in self.max_abs.items():
            line = f"  {c:<18} max |diff| {v:.3e}  (tolerance {self.tolerances[c]:.0e})"
            if v > self.tolerances[c]:
                cells = [d for d in self.deviations if d.column == c]
                line += "  <-- exceeds" + (": " if cells else "") + ", ".join(
                    f"{d.microgrid} at step {d.step} ({d.diff:.2e})" for d in cells)
            lines.append(line)
        return "\n".join(lines)


def tolerances(protocols: list[str] | tuple[str, ...] | None, *, learned: bool = False) -> dict[str, float]:
    """The compared columns and tolerances for a run of ``protocols`` (COMPARED, loosened by consensus, plus
    each protocol's exact columns; ``learned``: a policy bundle, loosened by :data:`LEARNED_COMPARED`)."""
    tol = dict(COMPARED)
    for name in protocols or ():
        tol.update(PROTOCOL_COMPARED[name])
        if name == "consensus":
            tol.update(CONSENSUS_COMPARED)
    if learned:
        tol.update({k: max(v, tol.get(k, 0.0)) for k, v in LEARNED_COMPARED.items()})
    if protocols and "price_signal" in protocols and "p2p_trading" in protocols:
        # the order limits are the (measured-flow) price: the midpoint clearing price and the cash inherit its tolerance
        tol.update({"clearing_price_usd_per_mwh": 1e-3, "trade_cash_usd": 1e-3})
    return tol


LEGACY_STEP = 1e-4
"""The resolution of a legacy (1xx) command as a share of the device's rating: 124 ``InWRte`` / ``OutWRte`` (% of
``WChaMax``) and 123 ``WMaxLimPct`` (% of ``WMax``) are 16-bit percentages whose scale factor must still reach
100 %, i.e. at best 0.01 % (``*_SF`` = -2): 50 W steps for a 0.5 MW battery, 66 W for a 0.66 MW generator."""
VOLTAGE_SENSITIVITY_PU_PER_MW = 0.1
"""A bound on how much a microgrid's bus voltages move per MW injected (the IEEE 13 feeders: ~0.04 p.u./MW)."""


def profile_tolerances(tol: Mapping[str, float], scenario: Scenario, device_profile: str, *, max_price_usd_per_mwh: float,
                       max_exchange_mw: float = 0.0, protocols: Sequence[str] = ()) -> dict[str, float]:
    """``tol`` loosened by what a device profile's command resolution implies (``ieee1547``: unchanged, 704 WSet
    resolves 1 W). With legacy devices (``legacy``, ``mixed``) each battery and generator command is rounded to
    :data:`LEGACY_STEP` of its rating, at most half a step ``q`` per device and step. Worst cases, added to ``tol``:

    - state of charge: every step's rounding in the same direction over an episode, ``steps * q * dt / (cap eff)``;
    - battery power: its own ``q``, and at a state-of-charge limit the plant clamps it to the room left, which
      carries that accumulated energy: ``q * (1 + steps / eff**2)``; generator power: its ``q``;
    - exchange: battery and generator together; voltages: :data:`VOLTAGE_SENSITIVITY_PU_PER_MW` times that;
    - cost: the exchange at the run's highest price plus the generator's at its highest marginal fuel cost;
    - with price_signal, the congestion adder (100 USD/MWh per MW of feeder-head flow, the default option) of
      every microgrid's exchange together, and through it the cost of the largest exchange (``max_exchange_mw``).

    A wiring or sign error moves these columns by tenths of a MW; the resolution of 1xx percentages by tens of W."""
    out = dict(tol)
    if device_profile == "ieee1547":
        return out
    mgs = scenario.microgrids
    steps = scenario.steps_per_day
    eff = min(m.battery.efficiency for m in mgs)
    q_bat = 0.5 * LEGACY_STEP * max(m.battery.p_max_mw for m in mgs)
    q_gen = 0.5 * LEGACY_STEP * max(m.generator.p_max_mw for m in mgs)
    dt_h = scenario.step_minutes / 60.0
    q_soc = steps * q_bat * dt_h / min(m.battery.capacity_mwh * eff for m in mgs)
    q_battery = q_bat * (1.0 + steps / eff**2)
    marginal = max(m.generator.cost_b_usd_per_mwh + 2 * m.generator.cost_a_usd_per_mw2h * m.generator.p_max_mw
                   for m in mgs)
    q_exchange = q_battery + q_gen
    loosen = {"battery_mw": q_battery, "generator_mw": q_gen, "exchange_mw": q_exchange, "soc": q_soc,
              "vm_min_pu": VOLTAGE_SENSITIVITY_PU_PER_MW * q_exchange, "vm_max_pu": VOLTAGE_SENSITIVITY_PU_PER_MW * q_exchange,
              "cost_usd": (q_exchange * abs(max_price_usd_per_mwh) + q_gen * marginal) * dt_h}
    if "price_signal" in protocols:
        adder = 100.0 * len(mgs) * q_exchange
        loosen.update(congestion_adder_usd_per_mwh=adder, price_usd_per_mwh=adder,
                      cost_usd=loosen["cost_usd"] + adder * dt_h * abs(max_exchange_mw))
        if out.get("clearing_price_usd_per_mwh"):  # orders limited by the (measured-flow) price
            loosen.update(clearing_price_usd_per_mwh=adder, trade_cash_usd=adder * dt_h * abs(max_exchange_mw))
    for column, extra in loosen.items():
        if out.get(column, 0.0) > 0.0:  # a column compared exactly (setpoints, trades) stays exact
            out[column] += extra
    return out


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| per cell, where nan == nan (a protocol column empty in both at once) and nan vs a number is inf."""
    both = np.isnan(a) & np.isnan(b)
    diff = np.where(both, 0.0, np.abs(a - b))
    return np.where(np.isnan(diff), np.inf, diff)


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| (see :func:`_abs_diff`)."""
    diff = _abs_diff(a, b)
    return float(np.max(diff)) if diff.size else 0.0


def _deviations(column: str, excess: np.ndarray, diff: np.ndarray, steps: np.ndarray, names: Sequence[str]) -> list[Deviation]:
    """The first cells (run order) where ``excess`` > 0."""
    cells = np.argwhere(excess > 0)[:_DEVIATIONS_SHOWN]
    return [Deviation(column, int(steps[k]), names[i], float(diff[k, i])) for k, i in cells]


def compare(sil: Trajectory, central: Trajectory, tolerances: dict[str, float] | None = None) -> Comparison:
    """Compare two trajectories column by column (only when they have the same number of steps); with
    consensus, the dispatch is also checked per step: within 1 % of the step's total centralized dispatch.
    Cells beyond a tolerance are kept as :class:`Deviation` (the first few per column)."""
    tol = dict(COMPARED if tolerances is None else tolerances)
    steps = (sil.n_steps, central.n_steps)
    if "consensus" in central.protocols:
        tol["dispatch_within_1pct"] = 0.0
    if steps[0] != steps[1]:
        return Comparison({c: float("inf") for c in tol}, tol, steps)
    year_steps = (central.columns["step_in_year"][:, 0].astype(int) if "step_in_year" in central.columns
                  else np.arange(central.n_steps))
    out: dict[str, float] = {}
    deviations: list[Deviation] = []
    for c in tol:
        if c == "dispatch_within_1pct":
            continue
        diff = _abs_diff(sil.columns[c], central.columns[c])
        out[c] = float(np.max(diff)) if diff.size else 0.0
        if out[c] > tol[c]:
            deviations += _deviations(c, diff - tol[c], diff, year_steps, central.names)
    if "dispatch_within_1pct" in tol:
        total = np.maximum(np.abs(central.columns["dispatch_mw"]).sum(axis=1, keepdims=True), 1e-3)
        diff = _abs_diff(sil.columns["dispatch_mw"], central.columns["dispatch_mw"])
        excess = diff - 0.01 * total
        out["dispatch_within_1pct"] = float(max(excess.max(), 0.0)) if excess.size else 0.0
        deviations += _deviations("dispatch_within_1pct", excess, diff, year_steps, central.names)
    return Comparison(out, tol, steps, tuple(deviations))


def _steps_in_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in run order, a step run twice in a row (a retry) kept once: its last record."""
    out: list[dict[str, Any]] = []
    for row in rows:
        if out and out[-1]["step"] == row["step"]:
            out[-1] = row
        else:
            out.append(row)
    return out


def _read_jsonl(path: Path, marks: FileMarks | None = None) -> list[dict[str, Any]]:
    """The rows of a ledger or journal in run order (up to its mark: what was written by the last step)."""
    if not path.exists():
        raise RunError(f"{path} is missing")
    text = (marks or FileMarks()).read_text(path)
    return _steps_in_order([json.loads(line) for line in text.splitlines() if line.strip()])


def settle(sil: Trajectory, scenario: Scenario, protocols: list[str] | None, options: dict[str, dict[str, Any]] | None,
           ledger: Path, journals: dict[str, Path], *, marks: FileMarks | None = None) -> Trajectory:
    """The SIL trajectory with the operator's signals and the step's settlement, as ``simulate`` records them.

    ``marks``: read the ledger and journals only up to there (rows appended after the last step are shutdown).

    The plant records what it measured (physics, no money); here each step is
    settled with ``Coordination.settle_exchange`` from the plant's exchange and what the operator signalled and
    cleared (its ledger): the price with its congestion adder, the trades, the export credit. The protocol
    columns come from the ledger (setpoints, clearing) and the agents' journals (consensus dispatch, rounds).
    """
    from heron_edge.coordination import Coordination, Signals
    from heron_edge.protocols import Clearing, PriceSignal
    from heron_edge.protocols.auction import Trade
    from heron_edge.trajectory import Trajectory

    coordination = Coordination(scenario, protocols, dict(options or {}))
    names, c = sil.names, {k: v.copy() for k, v in sil.columns.items()}
    n_steps, n = sil.n_steps, len(names)
    rows = _read_jsonl(ledger, marks)
    steps = c["step_in_year"][:, 0].astype(int).tolist()
    if [r["step"] for r in rows] != steps:
        raise RunError(f"the operator's ledger ({len(rows)} steps) does not cover the plant's {n_steps} steps")
    agent_rows = {name: _read_jsonl(journals[name], marks) for name in names}
    for name, journal in agent_rows.items():
        if [r["step"] for r in journal] != steps:
            raise RunError(f"{name}'s journal ({len(journal)} steps) does not cover the plant's {n_steps} steps")
    for col in ("energy_cost_usd", "cost_usd", "congestion_adder_usd_per_mwh", "setpoint_mw", "tracking_error_mw",
                "dispatch_mw", "consensus_rounds",
                "traded_mw", "trade_cash_usd", "clearing_price_usd_per_mwh"):
        c[col] = np.full((n_steps, n), np.nan)
    for k, row in enumerate(rows):
        price = PriceSignal(row["price_usd_per_mwh"], row["congestion_adder_usd_per_mwh"])
        setpoints = None if row["setpoint_mw"] is None else np.array(row["setpoint_mw"])
        clearing = None
        if row["clearing"] is not None:
            cl = row["clearing"]
            clearing = Clearing(cl["price_usd_per_mwh"], tuple(Trade(*t) for t in cl["trades"]), cl["fee_usd_per_mwh"],
                                tuple(cl["excluded"]))
        dispatch = None
        if coordination.consensus is not None:
            dispatch = np.array([np.nan if agent_rows[a][k]["dispatch_mw"] is None else agent_rows[a][k]["dispatch_mw"]
                                 for a in names])
        rounds = max(agent_rows[a][k]["consensus_rounds"] or 0 for a in names)
        signals = Signals(price=price, setpoint_mw=setpoints, dispatch_mw=dispatch, consensus_rounds=rounds)
        settlement = coordination.settle_exchange(c["exchange_mw"][k], signals, clearing)
        c["price_usd_per_mwh"][k] = price.total_usd_per_mwh
        c["congestion_adder_usd_per_mwh"][k] = price.congestion_adder_usd_per_mwh
        c["energy_cost_usd"][k] = settlement.energy_cost_usd
        c["cost_usd"][k] = c["fuel_cost_usd"][k] + settlement.energy_cost_usd
        if setpoints is not None:
            c["setpoint_mw"][k] = setpoints
            c["tracking_error_mw"][k] = c["exchange_mw"][k] - setpoints
        if dispatch is not None:
            c["dispatch_mw"][k] = dispatch
            c["consensus_rounds"][k] = rounds
        if coordination.p2p is not None:
            c["traded_mw"][k] = settlement.traded_mw
            c["trade_cash_usd"][k] = settlement.trade_cash_usd
            c["clearing_price_usd_per_mwh"][k] = (np.nan if clearing is None or clearing.price_usd_per_mwh is None
                                                  else clearing.price_usd_per_mwh)
    return Trajectory(names=names, columns=c, step_hours=sil.step_hours, protocols=coordination.protocols, mode="sil")


# ---------------------------------------------------------------------------------------------- run health
RejectionSource = RejectSource


@dataclass(frozen=True)
class Rejection:
    """Messages an agent rejected: where (``message``: price / telemetry, ``clock``, ``command``, ``protocol``:
    setpoint / market / consensus), why, how many."""

    source: RejectionSource
    reason: str
    count: int


@dataclass(frozen=True)
class AgentCounters:
    """The gateway status counters the SIL report names, typed."""

    late: int = 0
    """Steps whose price or peers' telemetry came too late (the last values were used)."""
    stale: int = 0
    protocol_timeouts: int = 0
    """Protocol waits (setpoint, consensus round, clearing) that ran out."""
    failsafe_entries: int = 0
    cmd_accepted: int = 0
    rejections: tuple[Rejection, ...] = ()

    @property
    def rejected(self) -> int:
        return sum(r.count for r in self.rejections)

    @property
    def cmd_rejected(self) -> int:
        return sum(r.count for r in self.rejections if r.source == "command")

    @classmethod
    def from_status(cls, counters: Mapping[str, int],
                    rejected: Mapping[RejectSource, Mapping[str, int]]) -> AgentCounters:
        """From a status file's counters and its rejections by source and reason."""
        rejections = tuple(Rejection(source, reason, int(count)) for source, reasons in sorted(rejected.items())
                           for reason, count in sorted(reasons.items()) if count)
        return cls(late=int(counters.get("late", 0)), stale=int(counters.get("stale", 0)),
                   protocol_timeouts=int(counters.get("protocol_timeouts", 0)),
                   failsafe_entries=int(counters.get("failsafe_entries", 0)),
                   cmd_accepted=int(counters.get("cmd_accepted", 0)), rejections=rejections)


@dataclass(frozen=True)
class AgentHealth:
    """How one agent's run went, from its journal (steps), its status file (counters) and its log (late steps);
    nothing after the last step. Steps are steps of the year, as in the journals and ``step_in_year``."""

    name: str
    failsafe_steps: tuple[int, ...] = ()
    """Steps its journal records as run in failsafe (no decision: the safe setpoints)."""
    late_steps: tuple[int, ...] = ()
    """Steps whose price or peers' telemetry did not arrive within the step timeout (last values used)."""
    missing_steps: tuple[int, ...] = ()
    """Plant steps with no journal row (the agent never ran them: the plant forced the step)."""
    excluded_steps: tuple[int, ...] = ()
    """Steps whose order missed the market (the operator's ledger)."""
    failsafe_reasons: tuple[str, ...] = ()
    """Why it entered failsafe, as its status recorded each entry."""
    counters: AgentCounters = field(default_factory=AgentCounters)

    @property
    def degraded(self) -> bool:
        c = self.counters
        return bool(self.failsafe_steps or self.late_steps or self.missing_steps or self.excluded_steps
                    or c.late or c.protocol_timeouts or c.failsafe_entries or c.rejected)

    def describe(self) -> str:
        """One line: what degraded at which steps."""
        c = self.counters
        parts = []
        if self.failsafe_steps:
            parts.append(f"failsafe at steps {_steps_text(self.failsafe_steps)}")
        if c.failsafe_entries:
            reasons = f" ({'; '.join(self.failsafe_reasons)})" if self.failsafe_reasons else ""
            parts.append(f"entered failsafe {c.failsafe_entries}x{reasons}")
        if self.late_steps:
            parts.append(f"late at steps {_steps_text(self.late_steps)}")
        elif c.late:  # counted, but no log line says which steps
            parts.append(f"{c.late} late step(s)")
        if c.protocol_timeouts:
            parts.append(f"{c.protocol_timeouts} protocol wait(s) timed out")
        if self.missing_steps:
            parts.append(f"did not run steps {_steps_text(self.missing_steps)}")
        if self.excluded_steps:
            parts.append(f"order missed the market at steps {_steps_text(self.excluded_steps)}")
        if c.rejections:
            parts.append(f"rejected {c.rejected} message(s): " + ", ".join(f"{r.source} {r.reason} {r.count}"
                                                                          for r in c.rejections))
        if c.stale and parts:
            parts.append(f"{c.stale} stale")
        return f"{self.name}: " + ("; ".join(parts) if parts else "ok")


@dataclass(frozen=True)
class LateTelemetry:
    """A step the operator ran without some microgrids' telemetry (it used their last values)."""

    step: int
    microgrids: tuple[str, ...]


@dataclass(frozen=True)
class OperatorHealth:
    """How the operator's run went, from its log: late telemetry, a missing feeder-head reading, failed steps."""

    late_telemetry: tuple[LateTelemetry, ...] = ()
    meter_late_steps: tuple[int, ...] = ()
    failed_steps: tuple[int, ...] = ()

    @property
    def degraded(self) -> bool:
        return bool(self.late_telemetry or self.meter_late_steps or self.failed_steps)

    def describe(self) -> str:
        parts = []
        if self.late_telemetry:
            parts.append(f"telemetry late {len(self.late_telemetry)}x: " + ", ".join(
                f"step {late.step} ({', '.join(late.microgrids)})" for late in self.late_telemetry))
        if self.meter_late_steps:
            parts.append(f"no feeder-head reading at steps {_steps_text(self.meter_late_steps)}")
        if self.failed_steps:
            parts.append(f"steps not completed {_steps_text(self.failed_steps)}")
        return "operator: " + ("; ".join(parts) if parts else "ok")


@dataclass(frozen=True)
class RunHealth:
    """Every participant's degraded steps in a SIL run (shutdown excluded)."""

    agents: tuple[AgentHealth, ...]
    operator: OperatorHealth = field(default_factory=OperatorHealth)
    forced_steps: int = 0
    """Steps the plant advanced without every done (after its ``max_wait_s``)."""

    @property
    def degraded(self) -> bool:
        return self.forced_steps > 0 or self.operator.degraded or any(a.degraded for a in self.agents)

    def agent(self, name: str) -> AgentHealth:
        return next(a for a in self.agents if a.name == name)

    def report(self) -> str:
        """``degraded steps: none``, or one line per degraded participant (steps of the year)."""
        if not self.degraded:
            return "degraded steps: none"
        lines = ["degraded steps (steps of the year, as in the journals):"]
        lines += [f"  {a.describe()}" for a in self.agents if a.degraded]
        if self.operator.degraded:
            lines.append(f"  {self.operator.describe()}")
        if self.forced_steps:
            lines.append(f"  plant: {self.forced_steps} step(s) forced without every done")
        return "\n".join(lines)


def _steps_text(steps: Sequence[int]) -> str:
    """``4003-4005, 4010``."""
    runs: list[list[int]] = []
    for step in sorted(set(steps)):
        if runs and step == runs[-1][-1] + 1:
            runs[-1].append(step)
        else:
            runs.append([step])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


_AGENT_LATE = re.compile(r": step (\d+) incomplete after ")
_OPERATOR_LATE = re.compile(r": telemetry of step (\d+) missing from \[([^\]]*)\]")
_METER_LATE = re.compile(r"no feeder-head reading for step (\d+)")
_OPERATOR_FAILED = re.compile(r"operator: step (\d+) not completed")
"""The WARNING lines the proxy and the operator log for a late step (their only per-step record of it)."""


def _log_matches(text: str, pattern: re.Pattern[str], steps: set[int]) -> list[re.Match[str]]:
    return [m for m in map(pattern.search, text.splitlines()) if m is not None and int(m.group(1)) in steps]


def _load_status(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_health(files: SilFiles, names: Sequence[str], steps: Sequence[int], *, finished_at: float | None = None,
               marks: FileMarks | None = None, forced_steps: int = 0) -> RunHealth:
    """Each agent's and the operator's degraded steps among the plant's ``steps``.

    Journals, ledger and logs are read up to ``marks``; a failsafe entered after ``finished_at`` (unix time the
    plant completed its last step) is shutdown and not counted. Missing files count as nothing known.
    """
    marks = marks or FileMarks()
    run_steps = set(steps)

    def text(path: Path) -> str:
        return marks.read_text(path) if path.exists() else ""

    excluded: dict[str, list[int]] = {name: [] for name in names}
    if files.ledger.exists():
        for row in _read_jsonl(files.ledger, marks):
            clearing = row.get("clearing")
            if row["step"] in run_steps and clearing:
                for name in clearing.get("excluded", ()):
                    excluded.setdefault(name, []).append(int(row["step"]))
    agents = []
    for name in names:
        journal = _read_jsonl(files.journal(name), marks) if files.journal(name).exists() else []
        journal = [row for row in journal if row["step"] in run_steps]
        ran = {int(row["step"]) for row in journal}
        late = {int(row["step"]) for row in journal if row.get("late")}  # when the journal records it
        late |= {int(m.group(1)) for m in _log_matches(text(files.log(f"agent-{name}")), _AGENT_LATE, run_steps)}
        status = _load_status(files.status(name))
        counters = AgentCounters.from_status(status.get("counters", {}), status.get("rejected", {}))
        reasons: list[str] = []
        after = 0
        for t, state, detail in status.get("transitions", []):
            if state != "failsafe":
                continue
            if finished_at is not None and t > finished_at:
                after += 1  # entered while shutting down
            elif detail not in reasons:
                reasons.append(detail)
        if after:
            counters = replace(counters, failsafe_entries=max(counters.failsafe_entries - after, 0))
        agents.append(AgentHealth(
            name=name, failsafe_steps=tuple(sorted({int(r["step"]) for r in journal if r.get("failsafe")})),
            late_steps=tuple(sorted(late)),
            missing_steps=tuple(s for s in steps if s not in ran) if files.journal(name).exists() else (),
            excluded_steps=tuple(sorted(excluded.get(name, []))), failsafe_reasons=tuple(reasons), counters=counters))
    operator_log = text(files.log("operator"))
    operator = OperatorHealth(
        late_telemetry=tuple(LateTelemetry(int(m.group(1)), tuple(re.findall(r"'([^']*)'", m.group(2))))
                             for m in _log_matches(operator_log, _OPERATOR_LATE, run_steps)),
        meter_late_steps=tuple(int(m.group(1)) for m in _log_matches(operator_log, _METER_LATE, run_steps)),
        failed_steps=tuple(int(m.group(1)) for m in _log_matches(operator_log, _OPERATOR_FAILED, run_steps)))
    return RunHealth(agents=tuple(agents), operator=operator, forced_steps=forced_steps)
