"""Step-voltage regulators with automatic tap control, over numpy arrays (one plant or K of them at once).

A line regulator's relay watches the load-side voltage through a PT (120 V base), minus a line-drop
compensator's drop (R + jX volts at the CT's rated primary current), and keeps it inside
``band_center_v ± bandwidth_v / 2``: once it has been outside the band for ``time_delay_s`` it moves one
tap, then one more every ``tap_interval_s`` while it stays outside. Plants advance in steps of
minutes to hours, so :meth:`TapController.settle` plays a whole step at once: the regulators act on
the step's power flow (re-solved after each move), the one with the shortest delay first (the usual
coordination of cascaded regulators), as many operations as fit in the step's time.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RegulatorSettings", "TapController", "relay_voltage_v"]


@dataclass(frozen=True)
class RegulatorSettings:
    """One regulator's relay settings (volts on the PT's 120 V secondary) and tap range.

    step_percent: voltage change per tap (+ raises the load side); r_v, x_v: the line-drop compensator's
    settings in volts at ``ct_primary_a``; tap_interval_s: time between successive operations.
    """

    name: str
    band_center_v: float
    bandwidth_v: float
    time_delay_s: float
    pt_ratio: float
    ct_primary_a: float
    r_v: float = 0.0
    x_v: float = 0.0
    step_percent: float = 0.625
    tap_min: int = -16
    tap_max: int = 16
    tap_interval_s: float = 2.0

    def __post_init__(self) -> None:
        if not (self.bandwidth_v > 0 and self.pt_ratio > 0 and self.ct_primary_a > 0 and self.step_percent > 0):
            raise ValueError(f"regulator {self.name!r}: bandwidth, PT ratio, CT rating and tap step must be positive")
        if self.time_delay_s < 0 or self.tap_interval_s <= 0:
            raise ValueError(f"regulator {self.name!r}: time delay must be >= 0 and the tap interval > 0")
        if not self.tap_min <= 0 <= self.tap_max:
            raise ValueError(f"regulator {self.name!r}: need tap_min <= 0 <= tap_max")


def relay_voltage_v(v_kv: np.ndarray, p_mw: np.ndarray, q_mvar: np.ndarray, *, pt_ratio: np.ndarray,
                    ct_primary_a: np.ndarray, r_v: np.ndarray, x_v: np.ndarray) -> np.ndarray:
    """What each relay sees (V, 120 V base): the load-side line-to-neutral voltage over the PT ratio minus
    the compensator's drop, for a balanced three-phase flow ``p_mw + j q_mvar`` towards the load at ``v_kv``
    (line-to-line). Works on any array shape (broadcasting)."""
    v_ln = np.asarray(v_kv) * (1e3 / np.sqrt(3.0))
    current_a = (np.asarray(p_mw) - 1j * np.asarray(q_mvar)) * (1e6 / 3.0) / v_ln  # phasor, bus voltage angle = 0
    relay: np.ndarray = np.abs(v_ln / pt_ratio - (r_v + 1j * x_v) * current_a / ct_primary_a)
    return relay


def _operations(waited_s: np.ndarray, delay_s: np.ndarray, interval_s: np.ndarray) -> np.ndarray:
    """Operations a relay makes in its first ``waited_s`` seconds outside the band (at delay, then every interval)."""
    return np.where(waited_s >= delay_s, np.floor((waited_s - delay_s) / interval_s) + 1.0, 0.0)


class TapController:
    """Tap positions and band timers of R regulators, or of K plants' R regulators (arrays of shape (K, R)).

    ``taps`` are integer positions (0 = neutral); ``waited_s`` is how long each relay has been outside its
    band at the end of the last step; ``changes`` counts the operations of the last :meth:`settle`.
    """

    def __init__(self, settings: Sequence[RegulatorSettings], taps: np.ndarray | Sequence[int]) -> None:
        if not settings:
            raise ValueError("a tap controller needs at least one regulator")
        self.settings = tuple(settings)
        s = self.settings
        self.center_v = np.array([r.band_center_v for r in s])
        self.half_band_v = np.array([r.bandwidth_v / 2 for r in s])
        self.delay_s = np.array([r.time_delay_s for r in s])
        self.interval_s = np.array([r.tap_interval_s for r in s])
        self.volts_per_tap = np.array([r.step_percent / 100 * r.band_center_v for r in s])
        self.tap_min = np.array([r.tap_min for r in s])
        self.tap_max = np.array([r.tap_max for r in s])
        self.pt_ratio = np.array([r.pt_ratio for r in s])
        self.ct_primary_a = np.array([r.ct_primary_a for r in s])
        self.r_v = np.array([r.r_v for r in s])
        self.x_v = np.array([r.x_v for r in s])
        self._inv_pt = 1.0 / self.pt_ratio
        self._z_per_a = (self.r_v + 1j * self.x_v) / self.ct_primary_a
        self.taps = np.zeros(0, dtype=np.int64)
        self.waited_s = np.zeros(0)
        self.changes = np.zeros(0, dtype=np.int64)
        self.reset(taps)

    def reset(self, taps: np.ndarray | Sequence[int]) -> None:
        """Put the regulators at ``taps`` (shape (R,) or (K, R)) with every band timer cleared."""
        arr = np.asarray(taps, dtype=np.int64)
        if arr.shape[-1:] != self.center_v.shape:
            raise ValueError(f"taps of shape {arr.shape} for {len(self.settings)} regulators")
        if ((arr < self.tap_min) | (arr > self.tap_max)).any():
            raise ValueError(f"taps {arr.tolist()} outside the regulators' ranges")
        self.taps = arr.copy()
        self.waited_s = np.zeros(arr.shape)
        self.changes = np.zeros(arr.shape, dtype=np.int64)

    def relay_v(self, v_kv: np.ndarray, p_mw: np.ndarray, q_mvar: np.ndarray) -> np.ndarray:
        """:func:`relay_voltage_v` with these regulators' PT, CT and compensator settings (the same arithmetic,
        constants folded: this runs once per solve)."""
        v_ln = v_kv * (1e3 / np.sqrt(3.0))
        relay: np.ndarray = np.abs(v_ln * self._inv_pt - self._z_per_a * ((p_mw - 1j * q_mvar) * (1e6 / 3.0) / v_ln))
        return relay

    def settle(self, relay_v: np.ndarray, solve: Callable[[np.ndarray], np.ndarray], dt_s: float) -> np.ndarray:
        """Play one step of ``dt_s`` seconds: ``relay_v`` is what the relays see at the current taps; ``solve(taps)``
        applies new taps to the network and returns what the relays then see (NaN where it did not solve).

        In each round the out-of-band regulators with the shortest delay that still have operations left this
        step move by the taps their voltage error needs (one tap moves the relay by about step_percent of the
        band centre), within their range; then the network is solved again. Returns the final relay voltages;
        ``taps``, ``changes`` and ``waited_s`` are updated.
        """
        waited = self.waited_s
        v = np.asarray(relay_v, dtype=np.float64)
        changes = np.zeros(self.taps.shape, dtype=np.int64)
        if not (np.abs(v - self.center_v) > self.half_band_v).any():  # the usual step: every relay in its band
            self.waited_s = np.zeros(self.taps.shape)
            self.changes = changes
            return v
        budget = _operations(waited + dt_s, self.delay_s, self.interval_s) - _operations(waited, self.delay_s,
                                                                                          self.interval_s)
        for _ in range(int(np.max(self.tap_max - self.tap_min)) + 1):
            error = v - self.center_v
            low, high = error < -self.half_band_v, error > self.half_band_v  # False where v is NaN
            movable = (low & (self.taps < self.tap_max)) | (high & (self.taps > self.tap_min))
            active = movable & (budget >= 1)
            if not active.any():
                break
            first_delay = np.min(np.where(active, self.delay_s, np.inf), axis=-1, keepdims=True)
            moving = active & (self.delay_s == first_delay)
            needed = np.ceil((np.abs(error) - self.half_band_v) / self.volts_per_tap - 1e-9)
            n = np.minimum(np.maximum(needed, 1.0), budget)
            target = np.clip(self.taps + np.where(low, n, -n).astype(np.int64), self.tap_min, self.tap_max)
            moved = np.where(moving, target, self.taps)
            step_changes = np.abs(moved - self.taps)
            budget = budget - step_changes
            changes += step_changes
            self.taps = moved
            v = np.asarray(solve(self.taps.copy()), dtype=np.float64)
        outside = np.abs(v - self.center_v) > self.half_band_v
        self.waited_s = np.where(outside, waited + dt_s, 0.0)
        self.changes = changes
        return v
