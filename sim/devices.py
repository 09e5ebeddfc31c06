"""Device models, vectorised over microgrids: limits, dynamics and cost of batteries and generators.

Each fleet holds one array per parameter (one entry per microgrid) so a plant step is a few numpy
operations, not a Python loop. A fleet of one is a single device (the emulators use that).
Sign conventions: power in MW; battery p > 0 discharges (injects), p < 0 charges.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sim.scenario import BatteryConfig, GeneratorConfig

FloatArray = npt.NDArray[np.float64]
"""One float64 entry per microgrid."""


@dataclass
class BatteryFleet:
    """Batteries: ±p_max, state of charge within [soc_min, soc_max], efficiency on each way."""

    capacity_mwh: FloatArray
    p_max_mw: FloatArray
    soc_min: FloatArray
    soc_max: FloatArray
    soc_init: FloatArray
    efficiency: FloatArray
    soc: FloatArray

    @classmethod
    def from_configs(cls, configs: list[BatteryConfig]) -> BatteryFleet:
        def arr(field: str) -> FloatArray:
            return np.array([getattr(c, field) for c in configs], dtype=np.float64)

        soc_init = arr("soc_init")
        return cls(arr("capacity_mwh"), arr("p_max_mw"), arr("soc_min"), arr("soc_max"), soc_init, arr("efficiency"),
                   soc_init.copy())

    def reset(self, soc: FloatArray | None = None) -> None:
        self.soc[:] = self.soc_init if soc is None else np.clip(soc, self.soc_min, self.soc_max)

    def limits(self, dt_h: float) -> tuple[FloatArray, FloatArray]:
        """(lowest, highest) feasible power this step: charging headroom and energy left to discharge."""
        max_discharge = (self.soc - self.soc_min) * self.capacity_mwh * self.efficiency / dt_h
        max_charge = (self.soc_max - self.soc) * self.capacity_mwh / (self.efficiency * dt_h)
        return -np.minimum(self.p_max_mw, np.maximum(max_charge, 0.0)), np.minimum(self.p_max_mw, np.maximum(max_discharge, 0.0))

    def advance(self, p_mw: FloatArray, dt_h: float) -> None:
        """Integrate the state of charge over one step at the (already limited) power ``p_mw``."""
        charge = np.minimum(p_mw, 0.0)
        discharge = np.maximum(p_mw, 0.0)
        self.soc -= (charge * self.efficiency + discharge / self.efficiency) * dt_h / self.capacity_mwh
        np.clip(self.soc, self.soc_min, self.soc_max, out=self.soc)  # rounding only; limits() keeps it inside


@dataclass
class GeneratorFleet:
    """Dispatchable (diesel) generators: box and ramp limits, quadratic fuel cost."""

    p_min_mw: FloatArray
    p_max_mw: FloatArray
    ramp_mw_per_h: FloatArray
    cost_a: FloatArray
    cost_b: FloatArray
    cost_c: FloatArray
    p_mw: FloatArray  # output in the last step, the reference for the ramp limit

    @classmethod
    def from_configs(cls, configs: list[GeneratorConfig]) -> GeneratorFleet:
        def arr(field: str) -> FloatArray:
            return np.array([getattr(c, field) for c in configs], dtype=np.float64)

        return cls(arr("p_min_mw"), arr("p_max_mw"), arr("ramp_mw_per_h"), arr("cost_a_usd_per_mw2h"),
                   arr("cost_b_usd_per_mwh"), arr("cost_c_usd_per_h"), np.zeros(len(configs)))

    def reset(self) -> None:
        self.p_mw[:] = 0.0

    def limits(self, dt_h: float) -> tuple[FloatArray, FloatArray]:
        """(lowest, highest) output this step, from the box and the ramp from the last output."""
        step = self.ramp_mw_per_h * dt_h
        low = np.maximum(self.p_min_mw, self.p_mw - step)
        return low, np.maximum(low, np.minimum(self.p_max_mw, self.p_mw + step))

    def fuel_cost_usd(self, p_mw: FloatArray, dt_h: float) -> FloatArray:
        running = p_mw > 1e-9
        return (self.cost_a * p_mw * p_mw + self.cost_b * p_mw + self.cost_c * running) * dt_h
