"""DeviceIO: how an agent reads and commands its own devices, whatever is behind them.

Two adapters share this port: ``PlantDeviceIO`` over the in-process simulator (centralized and
in-process distributed runs) and, on a gateway, a Modbus adapter over ``firmware_bridge``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # the simulator is an extra: a gateway imports this port without it
    from sim.plant import Plant, Setpoints


class DeviceIO(Protocol):
    """Read the local features (see ``heron_edge.observations``) and write device setpoints.

    Async because a field adapter waits on Modbus; ``read`` raises ``heron_edge.errors.DeviceError``
    when a value could not be read fresh (the runtime's failsafe reacts to that).
    """

    async def read(self) -> np.ndarray:
        """The microgrid's 8 local features, in ``observations.LOCAL_NAMES`` order."""
        ...

    async def write(self, battery_mw: float, generator_mw: float, pv_curtailment: float, wind_curtailment: float) -> None:
        """Command the devices (MW, + discharge; curtailment fractions); the device side clamps to its limits."""
        ...


class PlantDeviceIO:
    """One microgrid's devices inside an in-process Plant: reads its row, writes into the shared request."""

    def __init__(self, plant: Plant, index: int, request: Setpoints) -> None:
        self._plant = plant
        self._index = index
        self._request = request

    async def read(self) -> np.ndarray:
        last = self._plant.last
        if last is None:
            raise RuntimeError("the plant has not been reset")
        i, forecast = self._index, self._plant.forecast()
        # its own row only, layout of ``observations.LOCAL_NAMES``: every agent reads every step
        return np.array((forecast.load_mw[i], forecast.pv_mw[i], forecast.wind_mw[i], last.soc[i],
                         last.applied.generator_mw[i], last.applied.battery_mw[i], last.exchange_mw[i],
                         last.violation_v_pu[i]))

    async def write(self, battery_mw: float, generator_mw: float, pv_curtailment: float, wind_curtailment: float) -> None:
        i = self._index
        self._request.battery_mw[i] = battery_mw
        self._request.generator_mw[i] = generator_mw
        self._request.pv_curtailment[i] = pv_curtailment
        self._request.wind_curtailment[i] = wind_curtailment
