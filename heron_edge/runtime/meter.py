"""The site meter: a standard meter at the point of connection (a SunSpec 201-204 / 211-214 meter, or a
register-map device such as ``eastron-sdm630``), read like any other device in the ``meter`` role.

It gives two local features: ``exchange_mw``, the import at the point of connection in the last step
(+ import, the meter's total active power), and ``violation_pu``, how far its voltage lies outside the band
[v_min_pu, v_max_pu] of its nominal voltage (0 without a nominal voltage configured). A single meter sees one
bus: where the simulator sums the violation over a microgrid's buses, a gateway sees its point of connection.
The next step's load, PV and wind are not a meter's business: ``heron_edge.runtime.forecast``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from firmware_bridge import Telemetry
from heron_edge.errors import DeviceError

__all__ = ["MeterReading", "meter_reading", "violation_pu"]

_W_PER_MW = 1e6


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One reading of the site meter: exchange (MW, + import), voltage (p.u., None when unknown), violation (p.u.)."""

    exchange_mw: float
    v_pu: float | None
    violation_pu: float


def violation_pu(v_pu: float | None, v_min_pu: float, v_max_pu: float) -> float:
    """p.u. outside [v_min_pu, v_max_pu] (0 inside the band or when the voltage is unknown)."""
    if v_pu is None:
        return 0.0
    return max(0.0, v_min_pu - v_pu) + max(0.0, v_pu - v_max_pu)


def meter_reading(telemetry: Telemetry, *, v_nom_v: float | None, v_min_pu: float, v_max_pu: float) -> MeterReading:
    """The site meter's reading from its telemetry; DeviceError when the power is missing or not finite."""
    if telemetry.p_w is None or not math.isfinite(telemetry.p_w):
        raise DeviceError(f"meter: no active power ({telemetry.error or 'not implemented'})")
    v_pu = None
    if v_nom_v is not None and telemetry.v_v is not None and math.isfinite(telemetry.v_v):
        v_pu = telemetry.v_v / v_nom_v
    return MeterReading(telemetry.p_w / _W_PER_MW, v_pu, violation_pu(v_pu, v_min_pu, v_max_pu))
