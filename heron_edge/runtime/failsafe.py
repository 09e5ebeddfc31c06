"""Failsafe: when the gateway enters its safe local mode, what it then commands, and how it leaves.

The gateway is in failsafe while at least one reason holds:

- ``broker``: the MQTT connection is down (MqttBroker reconnects in the background);
- ``upstream``: no price from the upstream for ``upstream_timeout_s`` (and, with a bus clock, no
  clock message for that long either);
- ``device``: a device read was stale this cycle (the meter, the battery, ...).

In failsafe the policy is not consulted; the devices get (see :func:`safe_setpoints`): the battery
holds at ``battery_mw`` (0: neither charge nor discharge), the generator runs at ``generator_mw``
(the device or the plant raises it to its own minimum and ramp), and PV and wind are curtailed so
that export stays within ``export_limit_mw``: their output may cover the load plus the export limit
minus the generator and the battery's discharge; when the load is unknown (meter stale) they are curtailed fully. The gateway
leaves failsafe at the first cycle where no reason holds any more.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from heron_edge.runtime.config import FailsafeSettings

__all__ = ["FailsafeState", "SafeSetpoints", "safe_setpoints"]


@dataclass(frozen=True)
class SafeSetpoints:
    """What the devices get in failsafe: MW (+ discharge / output) and curtailment fractions."""

    battery_mw: float
    generator_mw: float
    pv_curtailment: float
    wind_curtailment: float


def safe_setpoints(settings: FailsafeSettings, *, load_mw: float | None, pv_available_mw: float | None,
                   wind_available_mw: float | None) -> SafeSetpoints:
    """The failsafe commands; ``load_mw`` etc. are None when unknown (then renewables are curtailed fully)."""
    if load_mw is None or pv_available_mw is None or wind_available_mw is None:
        curtail = 1.0
    else:
        allowed = max(0.0, load_mw + settings.export_limit_mw - settings.generator_mw - settings.battery_mw)
        renewable = pv_available_mw + wind_available_mw
        curtail = 0.0 if renewable <= allowed else 1.0 - allowed / renewable
    return SafeSetpoints(settings.battery_mw, settings.generator_mw, curtail, curtail)


@dataclass
class FailsafeState:
    """The current reasons, when failsafe began, and the transitions (unix time, state, detail)."""

    reasons: dict[str, str] = field(default_factory=dict)
    since: float | None = None
    entries: int = 0
    cycles: int = 0
    transitions: list[tuple[float, str, str]] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return bool(self.reasons)

    @property
    def detail(self) -> str:
        return "; ".join(f"{k}: {v}" for k, v in sorted(self.reasons.items()))

    def update(self, reasons: dict[str, str], now: float | None = None) -> bool:
        """Set this cycle's reasons; returns True when the state changed (entered or left failsafe)."""
        now = time.time() if now is None else now
        was = self.active
        self.reasons = dict(reasons)
        if self.active and not was:
            self.since = now
            self.entries += 1
            self.transitions.append((now, "failsafe", self.detail))
            return True
        if was and not self.active:
            self.since = None
            self.transitions.append((now, "online", ""))
            return True
        return False
