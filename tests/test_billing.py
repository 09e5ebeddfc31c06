"""Billing lives in the coordination layer: imports at the price, exports credited at the scenario's ratio."""
from __future__ import annotations

import numpy as np
import pytest

from heron_edge import MultiAgentMicrogrids
from heron_edge.coordination import bill_usd


def test_imports_pay_the_price_and_exports_earn_the_credit() -> None:
    exchange = np.array([0.4, -0.2, 0.0])
    np.testing.assert_allclose(bill_usd(exchange, 50.0, 0.5, 0.25), [0.4 * 50 * 0.25, -0.2 * 25 * 0.25, 0.0])
    np.testing.assert_allclose(bill_usd(exchange, -10.0, 0.5, 1.0), [-4.0, 1.0, 0.0])  # negative prices too


def test_without_protocols_the_energy_cost_is_the_bill_of_the_measured_exchange() -> None:
    env = MultiAgentMicrogrids({"max_episode_steps": 6})
    env.reset(seed=2, options={"start_step": 24 * 180 + 10})  # summer midday: exports happen with PV
    credit = env.plant.scenario.export_price_ratio
    for _ in range(6):
        actions = {a: np.array([1.0, 1.0, 0.0, 0.0], np.float32) for a in env.agents}  # discharge + generate: export
        _, _, _, _, infos = env.step(actions)
        m = env.plant.last
        for i, agent in enumerate(env.possible_agents):
            exchange = m.exchange_mw[i]
            expected = exchange * m.price_usd_per_mwh * (1.0 if exchange > 0 else credit)
            assert infos[agent]["energy_cost_usd"] == pytest.approx(expected)
    assert (m.exchange_mw < 0).any()  # the export branch was exercised
