"""The tap controller on its own: band and deadband, time delay, operations per step, cascade, limits, batches."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sim.regulators import RegulatorSettings, TapController, relay_voltage_v

VOLTS_PER_TAP = 0.00625 * 120.0  # one 0.625 % tap on a 120 V relay (band centre 120 V)


def _settings(name: str = "r", delay_s: float = 30.0, **kw: Any) -> RegulatorSettings:
    return RegulatorSettings(name=name, band_center_v=120.0, bandwidth_v=2.0, time_delay_s=delay_s, pt_ratio=120.0,
                             ct_primary_a=100.0, **kw)


class LinearFeeder:
    """A stand-in network: each relay sees its base voltage plus one tap's volts per tap of itself and of every
    regulator upstream of it (regulator i is upstream of i+1), like cascaded regulators on one feeder."""

    def __init__(self, base_v: np.ndarray) -> None:
        self.base_v = np.asarray(base_v, dtype=np.float64)
        self.solves = 0

    def __call__(self, taps: np.ndarray) -> np.ndarray:
        self.solves += 1
        return self.base_v + VOLTS_PER_TAP * np.cumsum(taps, axis=-1)


def test_inside_the_band_nothing_moves() -> None:
    ctl = TapController([_settings()], [0])
    feeder = LinearFeeder(np.array([120.9]))  # 0.9 V above the centre: inside the +-1 V band
    ctl.settle(feeder(ctl.taps), feeder, dt_s=3600.0)
    assert ctl.taps.tolist() == [0] and ctl.changes.tolist() == [0] and ctl.waited_s.tolist() == [0.0]


def test_outside_the_band_moves_just_inside_it() -> None:
    ctl = TapController([_settings()], [0])
    feeder = LinearFeeder(np.array([117.0]))  # 3 V low: 2 V beyond the band edge -> 3 taps of 0.75 V
    v = ctl.settle(feeder(ctl.taps), feeder, dt_s=3600.0)
    assert ctl.taps.tolist() == [3] and ctl.changes.tolist() == [3]
    assert 119.0 <= v[0] <= 121.0 and ctl.waited_s.tolist() == [0.0]
    high = TapController([_settings()], [0])
    feeder = LinearFeeder(np.array([121.5]))  # 0.5 V beyond the upper edge: one tap down
    high.settle(feeder(high.taps), feeder, dt_s=3600.0)
    assert high.taps.tolist() == [-1]


def test_time_delay_then_one_operation_per_interval() -> None:
    ctl = TapController([_settings(delay_s=30.0, tap_interval_s=2.0)], [0])
    feeder = LinearFeeder(np.array([110.2]))  # 9.8 V low: needs 12 taps
    ctl.settle(feeder(ctl.taps), feeder, dt_s=15.0)
    assert ctl.taps.tolist() == [0] and ctl.waited_s.tolist() == [15.0]  # still waiting out the delay
    ctl.settle(feeder(ctl.taps), feeder, dt_s=15.0)
    assert ctl.taps.tolist() == [1] and ctl.waited_s.tolist() == [30.0]  # the delay ran out: the first operation
    ctl.settle(feeder(ctl.taps), feeder, dt_s=15.0)
    assert ctl.taps.tolist() == [8] and ctl.changes.tolist() == [7]  # at 32, 34, ..., 44 s: seven more
    ctl.settle(feeder(ctl.taps), feeder, dt_s=15.0)
    assert ctl.taps.tolist() == [12] and ctl.waited_s.tolist() == [0.0]  # back in the band: the timer clears
    back = LinearFeeder(np.array([120.5]))
    ctl.settle(back(ctl.taps), back, dt_s=15.0)  # the voltage rose by 9 V: out of band again, the delay restarts
    assert ctl.taps.tolist() == [12] and ctl.waited_s.tolist() == [15.0]


def test_cascade_the_upstream_regulator_acts_first() -> None:
    ctl = TapController([_settings("up", delay_s=30.0), _settings("down", delay_s=45.0)], [0, 0])
    feeder = LinearFeeder(np.array([117.0, 117.0]))  # both 3 V low; raising the upstream one fixes both
    ctl.settle(feeder(ctl.taps), feeder, dt_s=3600.0)
    assert ctl.taps.tolist() == [3, 0]
    same = TapController([_settings("up", delay_s=30.0), _settings("down", delay_s=30.0)], [0, 0])
    feeder = LinearFeeder(np.array([117.0, 117.0]))  # equal delays: both act on what they saw, the second
    same.settle(feeder(same.taps), feeder, dt_s=3600.0)  # overshoots and comes back: one operation wasted
    assert same.taps.tolist() == [3, 2] and same.changes.tolist() == [3, 4]


def test_tap_limits_hold_and_the_timer_keeps_running() -> None:
    ctl = TapController([_settings(tap_max=4)], [2])
    feeder = LinearFeeder(np.array([110.0]))
    v = ctl.settle(feeder(ctl.taps), feeder, dt_s=3600.0)
    assert ctl.taps.tolist() == [4] and ctl.changes.tolist() == [2] and v[0] < 119.0
    ctl.settle(feeder(ctl.taps), feeder, dt_s=3600.0)
    assert ctl.taps.tolist() == [4] and ctl.waited_s.tolist() == [7200.0]


def test_batched_rows_are_independent_plants() -> None:
    settings = [_settings("up", delay_s=30.0), _settings("down", delay_s=45.0)]
    base = np.array([[117.0, 117.0], [122.0, 119.5], [120.0, 125.0]])
    batch = TapController(settings, np.zeros((3, 2), dtype=np.int64))
    feeder = LinearFeeder(base)
    batch.settle(feeder(batch.taps), feeder, dt_s=3600.0)
    for k in range(3):
        one = TapController(settings, [0, 0])
        row = LinearFeeder(base[k])
        one.settle(row(one.taps), row, dt_s=3600.0)
        np.testing.assert_array_equal(batch.taps[k], one.taps)
        np.testing.assert_array_equal(batch.changes[k], one.changes)


def test_a_failed_solve_stops_the_regulators() -> None:
    ctl = TapController([_settings()], [0])
    v = ctl.settle(np.array([110.0]), lambda taps: np.full(1, np.nan), dt_s=3600.0)
    assert np.isnan(v).all() and ctl.changes.tolist() == [ctl.taps[0]] and ctl.waited_s.tolist() == [0.0]


def test_relay_voltage_with_line_drop_compensation() -> None:
    kw = {"pt_ratio": np.array([120.0]), "ct_primary_a": np.array([100.0])}
    v_kv = np.array([24.9])
    no_ldc = relay_voltage_v(v_kv, np.array([1.0]), np.array([0.5]), r_v=np.zeros(1), x_v=np.zeros(1), **kw)
    np.testing.assert_allclose(no_ldc, 24.9e3 / np.sqrt(3) / 120.0)
    # 100 A in phase with the voltage (the CT's rated current) drops exactly R volts
    p_mw = 3 * 100.0 * 24.9e3 / np.sqrt(3) / 1e6
    ldc = relay_voltage_v(v_kv, np.array([p_mw]), np.zeros(1), r_v=np.array([2.7]), x_v=np.array([1.6]), **kw)
    np.testing.assert_allclose(ldc, np.abs(no_ldc - 2.7 - 1.6j))
    ctl = TapController([_settings(r_v=2.7, x_v=1.6)], [0])
    np.testing.assert_allclose(ctl.relay_v(v_kv, np.array([p_mw]), np.zeros(1)), ldc)


def test_settings_and_taps_are_checked() -> None:
    with pytest.raises(ValueError, match="positive"):
        _settings(step_percent=0.0)
    with pytest.raises(ValueError, match="outside"):
        TapController([_settings()], [17])
    with pytest.raises(ValueError, match="shape"):
        TapController([_settings()], [0, 0])
