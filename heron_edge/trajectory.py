"""A run's records: one row per step and microgrid (``Trajectory``), what simulate writes and SIL compares."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["COLUMNS", "Trajectory", "tap_columns"]

COLUMNS = (
    "step", "day", "step_in_year", "hour", "microgrid", "price_usd_per_mwh", "load_mw", "pv_available_mw", "pv_mw",
    "wind_available_mw", "wind_mw", "battery_mw", "generator_mw", "soc", "exchange_mw", "fuel_cost_usd",
    "energy_cost_usd", "cost_usd", "penalty_usd", "violation_v_pu", "overload_percent", "vm_min_pu", "vm_max_pu",
    "converged", "tap_changes", "tap_min", "tap_max", "congestion_adder_usd_per_mwh", "setpoint_mw", "tracking_error_mw",
    "dispatch_mw", "consensus_rounds", "traded_mw", "trade_cash_usd", "clearing_price_usd_per_mwh",
)
"""Recorded columns (``Trajectory.columns``, plus the microgrid's name), one row per step and microgrid: MW, USD,
p.u.; battery + discharge, exchange + import; price = the signalled price (hourly price + congestion adder);
cost = fuel + energy (bought - sold, net of trades, trade cash included); vm_min/max over the microgrid's buses
(nan when the power flow did not converge); tap_changes: the feeder's regulators' tap operations in the step, tap_min /
tap_max: their lowest and highest position after it (the same in every microgrid's row; nan without regulators);
step counts from 0 over the run, step_in_year indexes the profile year.
Protocol columns are empty (nan) when their protocol does not run."""


def tap_columns(regulator_taps: np.ndarray, tap_changes: np.ndarray) -> dict[str, float]:
    """A step's ``tap_changes``, ``tap_min`` and ``tap_max`` from the plant's per-regulator taps and operations."""
    if not len(regulator_taps):
        return {"tap_changes": 0.0, "tap_min": float("nan"), "tap_max": float("nan")}
    return {"tap_changes": float(np.sum(tap_changes)), "tap_min": float(np.min(regulator_taps)),
            "tap_max": float(np.max(regulator_taps))}

@dataclass
class Trajectory:
    """Per-step, per-microgrid records of a run: ``columns[name]`` is an array of (steps x microgrids) values."""

    names: list[str]
    columns: dict[str, np.ndarray]
    step_hours: float
    protocols: tuple[str, ...] = ()
    mode: str = "centralized"
    messages: int = 0  # published over the broker (distributed runs)
    year: int | None = None  # the profile year step_in_year counts in (None: unknown, no timestamps)

    @property
    def n_steps(self) -> int:
        return int(self.columns["price_usd_per_mwh"].shape[0])
