"""The batched plant equals K single plants: every measurement, per scenario, with regulators and partial resets."""
from __future__ import annotations

import numpy as np
import pytest

from sim.batch import BatchMeasurements, BatchPlant
from sim.plant import Measurements, Plant, Setpoints

FIELDS = ("exchange_mw", "fuel_cost_usd", "penalty_usd", "soc", "violation_v_pu", "overload_percent", "load_mw",
          "pv_mw", "wind_mw")


def _requests(rng: np.random.Generator, plant: BatchPlant) -> np.ndarray:
    scale = np.array([[m.battery.p_max_mw, m.generator.p_max_mw, 1.0, 1.0] for m in plant.scenario.microgrids])
    return rng.uniform([-1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], (plant.k, plant.n, 4)) * scale


def _assert_equal(batch: BatchMeasurements, singles: list[Measurements]) -> None:
    for name in FIELDS:  # money to 1e-6 USD, power to 1e-6 MW
        np.testing.assert_allclose(getattr(batch, name), np.stack([getattr(m, name) for m in singles]), rtol=0,
                                   atol=1e-6, err_msg=name)
    np.testing.assert_allclose(batch.vm_pu, np.stack([m.vm_pu for m in singles]), rtol=0, atol=1e-8)
    np.testing.assert_allclose(batch.feeder_head_mw, [m.feeder_head_mw for m in singles], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(batch.converged, [m.converged for m in singles])
    np.testing.assert_array_equal(batch.step, [m.step for m in singles])
    np.testing.assert_array_equal(batch.regulator_taps, np.stack([m.regulator_taps for m in singles]))
    np.testing.assert_array_equal(batch.tap_changes, np.stack([m.tap_changes for m in singles]))
    for name in batch.clamped:
        np.testing.assert_array_equal(batch.clamped[name], np.stack([m.clamped[name] for m in singles]))


def _run(batch: BatchPlant, plants: list[Plant], steps: int, seed: int, reset_at: int | None = None) -> int:
    """Step both with the same random requests, resetting some scenarios half way; the tap moves seen."""
    rng = np.random.default_rng(seed)
    k = batch.k
    starts = rng.integers(0, 300, k) * 24
    soc = rng.uniform(0.1, 0.9, (k, batch.n))
    _assert_equal(batch.reset(year=2023, start_steps=starts, soc=soc),
                  [p.reset(year=2023, start_step=int(s), soc=soc[i]) for i, (p, s) in enumerate(zip(plants, starts, strict=True))])
    moves = 0
    for step in range(steps):
        request = _requests(rng, batch)
        result = batch.step(Setpoints(*request.transpose(2, 0, 1)))
        _assert_equal(result, [p.step(Setpoints(*request[i].T)) for i, p in enumerate(plants)])
        moves += int(result.tap_changes.sum())
        if step == reset_at:
            mask = np.arange(k) % 2 == 0
            starts = rng.integers(0, 300, k) * 24
            merged = batch.reset(year=2023, start_steps=starts, mask=mask)
            _assert_equal(merged, [p.reset(year=2023, start_step=int(starts[i])) if mask[i] else p.latest()
                                   for i, p in enumerate(plants)])
    return moves


def test_batch_equals_single_plants_with_regulators_and_partial_resets() -> None:
    batch = BatchPlant("ieee34_3x13", 3)
    plants = [Plant("ieee34_3x13") for _ in range(3)]
    moves = _run(batch, plants, steps=20, seed=3, reset_at=8)
    assert moves > 0  # the regulators moved, so scenarios ran at different taps (the low-rank updates)
    assert batch.stats.networks_built > 1
    assert batch.stats.fallbacks == 0


def test_a_scenario_the_fixed_point_does_not_solve_falls_back_to_newton_and_is_counted() -> None:
    batch = BatchPlant("ieee34_3x13", 1, max_iter=2)  # two iterations: the fixed point converges for no scenario
    _run(batch, [Plant("ieee34_3x13")], steps=3, seed=5)
    assert batch.stats.fallbacks >= 4  # the reset and every step (and every re-solve after a tap move)
    assert batch.stats.diverged == 0


def test_cigre_lines_as_points_of_connection() -> None:
    batch = BatchPlant("cigre_mv_der", 2)
    plants = [Plant("cigre_mv_der") for _ in range(2)]
    _run(batch, plants, steps=4, seed=7)
    assert batch.regulators is None


def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError, match="num_scenarios"):
        BatchPlant("ieee34_3x13", 0)
