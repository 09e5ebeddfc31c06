"""Observation vectors: what each microgrid knows about itself, and the layouts of both modes.

Local features of microgrid i (8 values, MW unless said):
  0 load_mw       load of the step about to be dispatched (perfect forecast)
  1 pv_mw         PV power available in that step
  2 wind_mw       wind power available in that step
  3 soc           battery state of charge, fraction of capacity
  4 generator_mw  generator output in the last step (the ramp reference)
  5 battery_mw    battery power in the last step (+ discharge)
  6 exchange_mw   import at the point of connection in the last step (+ import)
  7 violation_pu  p.u. outside the voltage band summed over the microgrid's buses, last step
Context (3 values): sin and cos of the hour of day of the step about to be dispatched, price / 100
(USD/MWh / 100) of that step.

Centralized observation (every agent the same global state, plus who it is):
  context (3) | local features of every microgrid (8 n) | one-hot agent index (n)
Distributed observation (local state plus messages):
  context (3, the price as received from the upstream) | own local features (8)
  | peers' last reported exchange_mw (n - 1, in agent order, from their telemetry messages)
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the simulator is an extra: a gateway imports the layouts without it
    from sim.plant import Forecast, Measurements

N_LOCAL = 8
N_CONTEXT = 3
LOCAL_NAMES = ("load_mw", "pv_mw", "wind_mw", "soc", "generator_mw", "battery_mw", "exchange_mw", "violation_pu")
PRICE_SCALE = 100.0


@dataclass(frozen=True)
class LocalTelemetry:
    """A microgrid's telemetry as its peers and the operator read it (MW; ``soc`` a fraction, ``violation_pu``
    p.u.): the wire carries it as ``TelemetryBody.values`` named by :data:`LOCAL_NAMES`; a name the sender
    left out is None here (the reader keeps its last value or its default)."""

    load_mw: float | None = None
    pv_mw: float | None = None
    wind_mw: float | None = None
    soc: float | None = None
    generator_mw: float | None = None
    battery_mw: float | None = None
    exchange_mw: float | None = None
    violation_pu: float | None = None

    @classmethod
    def from_values(cls, values: Mapping[str, float]) -> LocalTelemetry:
        """From a telemetry body's values (other names are ignored)."""
        return cls(**{name: values[name] for name in LOCAL_NAMES if name in values})

    @staticmethod
    def values_of(local: np.ndarray) -> dict[str, float]:
        """The wire values of a local feature row (``local_features`` layout)."""
        return dict(zip(LOCAL_NAMES, local.tolist(), strict=True))


def local_features(last: Measurements, forecast: Forecast, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (n x 8) with every microgrid's local features and return it."""
    out[:, 0] = forecast.load_mw
    out[:, 1] = forecast.pv_mw
    out[:, 2] = forecast.wind_mw
    out[:, 3] = last.soc
    out[:, 4] = last.applied.generator_mw
    out[:, 5] = last.applied.battery_mw
    out[:, 6] = last.exchange_mw
    out[:, 7] = last.violation_v_pu
    return out


def context(step_in_year: int, steps_per_day: int, price_usd_per_mwh: float, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (3,) with the hour-of-day encoding and the scaled price."""
    angle = 2.0 * math.pi * (step_in_year % steps_per_day) / steps_per_day
    out[0] = math.sin(angle)  # math, not numpy: scalars, on every agent's every step
    out[1] = math.cos(angle)
    out[2] = price_usd_per_mwh / PRICE_SCALE
    return out


def local_bounds(p_max_battery: float, p_max_generator: float, pv_mw: float, wind_mw: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of one microgrid's local features."""
    inf = np.inf
    low = np.array([0.0, 0.0, 0.0, 0.0, 0.0, -p_max_battery, -inf, 0.0])
    high = np.array([inf, pv_mw, wind_mw, 1.0, p_max_generator, p_max_battery, inf, inf])
    return low, high


CONTEXT_LOW = np.array([-1.0, -1.0, -np.inf])
CONTEXT_HIGH = np.array([1.0, 1.0, np.inf])
