"""What the environment reports about each agent's step: one typed record, the same numeric keys every time.

``reset`` and ``step`` both give each agent a :class:`StepInfo` as a plain ``dict[str, float | bool]``
(PettingZoo's infos are dictionaries): every key is always present, so vectorising wrappers (SuperSuit,
TorchRL) see one schema. A value a step cannot have (no protocol running, nothing settled yet at reset)
is NaN; the clamped devices are 0/1 flags, one per device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

__all__ = ["CLAMPED_FIELDS", "StepInfo"]

NAN: Final = math.nan

CLAMPED_FIELDS: Final = {"battery_mw": "clamped_battery", "generator_mw": "clamped_generator",
                         "pv_curtailment": "clamped_pv", "wind_curtailment": "clamped_wind"}
"""Setpoint field the plant may limit -> the info flag that says it did (1.0) this step."""


@dataclass
class StepInfo:
    """One agent's step: plant, money (USD per step), coordination. NaN where not applicable."""

    step_in_year: int
    converged: bool = True
    price_usd_per_mwh: float = NAN
    """The signalled price (hourly + congestion adder) of the step."""
    congestion_adder_usd_per_mwh: float = NAN
    fuel_cost_usd: float = NAN
    energy_cost_usd: float = NAN
    """Energy bought at the signalled price minus exports credited, with the trades settled."""
    penalty_usd: float = NAN
    violation_v_pu: float = NAN
    overload_percent: float = NAN
    tap_changes: float = 0.0
    """Tap operations of the feeder's voltage regulators during the step, all regulators (the same for every agent)."""
    tap_min: float = NAN
    tap_max: float = NAN
    """Lowest and highest tap position among the feeder's regulators after the step (NaN: the network has none)."""
    exchange_mw: float = NAN
    """Measured exchange with the feeder, MW (+ import)."""
    soc: float = NAN
    clamped_battery: float = 0.0
    clamped_generator: float = 0.0
    clamped_pv: float = 0.0
    clamped_wind: float = 0.0
    setpoint_mw: float = NAN
    """setpoint: the exchange setpoint of the step (MW, + import)."""
    tracking_error_mw: float = NAN
    dispatch_mw: float = NAN
    """consensus: the agreed generator output (MW)."""
    consensus_rounds: float = NAN
    traded_mw: float = NAN
    """p2p_trading: net MW bought through trades (+ bought)."""
    trade_cash_usd: float = NAN
    clearing_price_usd_per_mwh: float = NAN
    trades: float = NAN
    """p2p_trading: how many trades this agent was part of."""
    terminal_value_usd: float = 0.0
    """With ``terminal_energy_value``: at the episode's last step, the value of the change of stored energy added
    to the reward (USD, + stored more than at the start); 0 on every other step."""
    messages_lost: float = NAN
    """With ``impairment``: messages on this agent's topics (what it sent, commands to it) lost in this call's exchange."""
    messages_late: float = NAN
    """With ``impairment``: those that missed the step's decision deadline (delivered, stale, in the next step)."""
    fallback: float = NAN
    """Distributed mode: 1 when the agent decided on fallback values (a price, peers' telemetry or a protocol
    message missed its wait: last values or the protocol's documented fallback), else 0."""

    def as_dict(self) -> dict[str, float | bool]:
        """The info dictionary the environment returns (a copy of the fields; this runs every step)."""
        return dict(vars(self))
