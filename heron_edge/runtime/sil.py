"""Software-in-the-loop orchestration: Mosquitto, the plant, one agent process per microgrid and the
operator as real subprocesses; their configs; stopping them by PID; the comparison with a
centralized run of the same policy and days.

Quantisation between the SIL and the in-process runs (why they agree to ~1e-6 MW, not bit for bit):
the meter's float64 MW registers give the agents the very values the environment works with (load,
PV, wind: exact, so the setpoints from the reported needs and the orders' quantities are exact too;
exchange and violation: what the plant measured); SoC comes from SunSpec model 713
(0.1 %) and the battery / generator power from model 701 W (100 W), which the rule policy does not
read; setpoints are written through model 704 WSet at 1 W resolution (WSet_SF = 0 at these
ratings), so each applied power differs by at most 0.5 W from the centralized run.

Coordination: the operator process writes a ledger (what it signalled and cleared per step) and
each agent a journal (its setpoint, consensus dispatch, clearing); :func:`settle` turns the plant's
record into ``simulate``'s columns with the environment's own settlement.
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

__all__ = ["COMPARED", "CONSENSUS_COMPARED", "PROTOCOL_COMPARED", "Comparison", "ManagedProcess", "agent_config",
           "compare", "coordination_settings", "episode_starts", "load_trajectory", "settle", "tolerances"]

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


def agent_config(scenario: Scenario, index: int, *, site: str, broker_url: str, endpoints: dict[str, dict[str, Any]],
                 workdir: Path, period_s: float = 0.5, step_timeout_s: float = 0.5,
                 upstream_timeout_s: float = 2.0, protocols: list[str] | None = None,
                 protocol_options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The gateway config (a TOML-ready dict) of microgrid ``index`` in a SIL run (``protocols``: as in simulate)."""
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
                   "cost_c_usd_per_h": gen.cost_c_usd_per_h, "window_steps": scenario.steps_per_day},
        "cycle": {"clock": "bus", "period_s": period_s, "step_timeout_s": step_timeout_s,
                  "steps_per_day": scenario.steps_per_day},
        "failsafe": {"upstream_timeout_s": upstream_timeout_s, "battery_mw": 0.0, "generator_mw": 0.0,
                     "export_limit_mw": 0.0},
        "outbox": {"path": str(workdir / f"outbox-{mg.name}.sqlite"), "max_records": 10_000},
        "journal_file": str(workdir / f"journal-{mg.name}.jsonl"),
        "coordination": coordination_settings(scenario, protocols, protocol_options),
    }


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


def tolerances(protocols: list[str] | tuple[str, ...] | None) -> dict[str, float]:
    """The compared columns and tolerances for a run of ``protocols`` (COMPARED, loosened by consensus, plus
    each protocol's exact columns)."""
    tol = dict(COMPARED)
    for name in protocols or ():
        tol.update(PROTOCOL_COMPARED[name])
        if name == "consensus":
            tol.update(CONSENSUS_COMPARED)
    if protocols and "price_signal" in protocols and "p2p_trading" in protocols:
        # the order limits are the (measured-flow) price: the midpoint clearing price and the cash inherit its tolerance
        tol.update({"clearing_price_usd_per_mwh": 1e-3, "trade_cash_usd": 1e-3})
    return tol


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b|, where nan == nan (a protocol column empty in both at once) and nan vs a number is inf."""
    both = np.isnan(a) & np.isnan(b)
    diff = np.where(both, 0.0, np.abs(a - b))
    return float(np.max(np.where(np.isnan(diff), np.inf, diff))) if diff.size else 0.0


def compare(sil: Trajectory, central: Trajectory, tolerances: dict[str, float] | None = None) -> Comparison:
    """Compare two trajectories column by column (only when they have the same number of steps); with
    consensus, the dispatch is also checked per step: within 1 % of the step's total centralized dispatch."""
    tol = dict(COMPARED if tolerances is None else tolerances)
    steps = (sil.n_steps, central.n_steps)
    if "consensus" in central.protocols:
        tol["dispatch_within_1pct"] = 0.0
    if steps[0] != steps[1]:
        return Comparison({c: float("inf") for c in tol}, tol, steps)
    out = {c: _max_abs(sil.columns[c], central.columns[c]) for c in tol if c != "dispatch_within_1pct"}
    if "dispatch_within_1pct" in tol:
        total = np.maximum(np.abs(central.columns["dispatch_mw"]).sum(axis=1, keepdims=True), 1e-3)
        excess = np.abs(sil.columns["dispatch_mw"] - central.columns["dispatch_mw"]) - 0.01 * total
        out["dispatch_within_1pct"] = float(max(np.nan_to_num(excess, nan=np.inf).max(), 0.0))
    return Comparison(out, tol, steps)


def _steps_in_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in run order, a step run twice in a row (a retry) kept once: its last record."""
    out: list[dict[str, Any]] = []
    for row in rows:
        if out and out[-1]["step"] == row["step"]:
            out[-1] = row
        else:
            out.append(row)
    return out


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise RuntimeError(f"{path} is missing")
    return _steps_in_order([json.loads(line) for line in path.read_text().splitlines() if line.strip()])


def settle(sil: Trajectory, scenario: Scenario, protocols: list[str] | None, options: dict[str, dict[str, Any]] | None,
           ledger: Path, journals: dict[str, Path]) -> Trajectory:
    """The SIL trajectory with the operator's signals and the step's settlement, as ``simulate`` records them.

    The plant records what it measured (physics, no money); here each step is
    settled with ``Coordination.settle_exchange`` from the plant's exchange and what the operator signalled and
    cleared (its ledger): the price with its congestion adder, the trades, the export credit. The protocol
    columns come from the ledger (setpoints, clearing) and the agents' journals (consensus dispatch, rounds).
    """
    from heron_edge.commands.simulate import Trajectory
    from heron_edge.coordination import Coordination, Signals
    from heron_edge.protocols import Clearing, PriceSignal
    from heron_edge.protocols.auction import Trade

    coordination = Coordination(scenario, protocols, dict(options or {}))
    names, c = sil.names, {k: v.copy() for k, v in sil.columns.items()}
    n_steps, n = sil.n_steps, len(names)
    rows = _read_jsonl(ledger)
    steps = c["step_in_year"][:, 0].astype(int).tolist()
    if [r["step"] for r in rows] != steps:
        raise RuntimeError(f"the operator's ledger ({len(rows)} steps) does not cover the plant's {n_steps} steps")
    agent_rows = {name: _read_jsonl(journals[name]) for name in names}
    for name, journal in agent_rows.items():
        if [r["step"] for r in journal] != steps:
            raise RuntimeError(f"{name}'s journal ({len(journal)} steps) does not cover the plant's {n_steps} steps")
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
