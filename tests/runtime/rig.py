"""An in-process SIL rig for tests: the plant (real emulated Modbus devices on loopback), the operator
and one Gateway per microgrid, all on one asyncio loop, talking through a real Mosquitto; optionally
with coordination protocols (the operator's ledger and the agents' journals in the workdir).

``clock="bus"``: lock-step, the plant announces every step. ``clock="timer"``: the field set-up, the
gateways and the operator each on the wall-clock timer, the plant advancing in real time."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from heron_edge.agents import SystemOperator
from heron_edge.agents.operator import TELEMETRY_WAIT_SHARE
from heron_edge.brokers import MqttBroker
from heron_edge.coordination import Coordination
from heron_edge.runtime.config import parse_gateway_config
from heron_edge.runtime.gateway import Gateway
from heron_edge.runtime.operator import CoordinationService, FeederMeter, OperatorRuntime
from heron_edge.runtime.sil import agent_config
from heron_edge.runtime.sil_plant import PLANT_ID, PlantRuntime
from heron_edge.runtime.wallclock import hour_of_year_index, zone
from sim.plant import Plant

SITE = "t"
OPERATOR = "system_operator"


class Rig:
    """``async with Rig(url, tmp_path) as rig:`` everything runs; ``rig.done`` completes when the plant finished."""

    def __init__(self, url: str, workdir: Path, *, steps: int = 24, start_step: int = 4000, period_s: float = 0.3,
                 step_timeout_s: float = 0.3, upstream_timeout_s: float = 1.0, protocols: list[str] | None = None,
                 protocol_options: dict[str, dict[str, Any]] | None = None, repeat_s: float = 0.3,
                 plant_runtime: type[PlantRuntime] = PlantRuntime, clock: str = "bus",
                 device_overrides: dict[str, Any] | None = None, device_profile: str = "ieee1547",
                 **overrides: Any) -> None:
        self.url = url
        self.workdir = workdir
        self.plant = Plant("ieee34_3x13")
        self.plant_broker = MqttBroker(url, client_id=f"{SITE}-plant", reconnect_min_delay_s=0.05, reconnect_max_delay_s=0.2)
        self.runtime = plant_runtime(self.plant, self.plant_broker, site=SITE, participants=[*self.plant.names, OPERATOR],
                                     start_steps=[start_step], steps_per_episode=steps, year=2023, repeat_s=repeat_s,
                                     max_wait_s=30.0, ready_timeout_s=10.0,
                                     mode="lockstep" if clock == "bus" else "realtime", period_s=period_s,
                                     device_profile=device_profile)  # type: ignore[arg-type]
        self.op_broker = MqttBroker(url, client_id=f"{SITE}-operator", reconnect_min_delay_s=0.05, reconnect_max_delay_s=0.2)
        self.protocols = protocols
        self.protocol_options = protocol_options or {}
        self.coordination = Coordination(self.plant.scenario, protocols, dict(self.protocol_options))
        # as `heron-edge operator` does: on the timer clock the telemetry wait (aggregates, setpoints) ends within the period
        self.operator = SystemOperator(OPERATOR, self.op_broker, self.coordination, site=SITE, step_timeout_s=1.0,
                                       telemetry_wait_s=TELEMETRY_WAIT_SHARE * period_s if clock == "timer" else None)
        self.ledger = workdir / "ledger.jsonl"
        self.clock = clock
        price_of = self.plant.price if clock == "bus" else self.wall_price
        service = CoordinationService(self.operator, price_of, ledger=self.ledger,
                                      meter=FeederMeter(self.op_broker, site=SITE, meter_id=PLANT_ID, timeout_s=1.0))
        self.op_runtime = OperatorRuntime(self.op_broker, site=SITE, operator_id=OPERATOR, services=[service],
                                          clock_sender=PLANT_ID, clock=clock, period_s=period_s)  # type: ignore[arg-type]
        self.gateways: dict[str, Gateway] = {}
        self._timing = {"period_s": period_s, "step_timeout_s": step_timeout_s, "upstream_timeout_s": upstream_timeout_s}
        self._overrides = overrides
        self._device_overrides = device_overrides or {}  # merged into every SunSpec device's table
        self._tasks: list[asyncio.Task[None]] = []
        self.done: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Rig:
        await self.runtime.start()
        endpoints = {mg: {role: {"host": e.host, "port": e.port, "unit_id": e.unit_id} for role, e in roles.items()}
                     for mg, roles in self.runtime.endpoints().items()}
        for i, name in enumerate(self.plant.names):
            data = agent_config(self.plant.scenario, i, site=SITE, broker_url=self.url, endpoints=endpoints,
                                workdir=self.workdir, protocols=self.protocols, protocol_options=self.protocol_options,
                                **self._timing)
            data["broker"]["reconnect_max_delay_s"] = 0.5
            data["cycle"]["clock"] = self.clock
            if self.clock == "timer":  # the field set-up: no forecaster stamps the gateways' wall-clock steps
                data["forecast"] = {"kind": "persistence"}
            for role in ("battery", "generator", "pv", "wind"):
                if role in data["devices"]:
                    data["devices"][role].update(self._device_overrides)
            data.update(self._overrides)
            self.gateways[name] = Gateway(parse_gateway_config(data))
        self._tasks = [asyncio.ensure_future(self.op_runtime.run()),
                       *(asyncio.ensure_future(g.run()) for g in self.gateways.values())]
        self.done = asyncio.ensure_future(self.runtime.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.done is not None and not self.done.done():
            self.done.cancel()
        self.op_runtime.stop()
        for g in self.gateways.values():
            g.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.done is not None:
            await asyncio.gather(self.done, return_exceptions=True)
        for g in self.gateways.values():
            await g.close()
        await self.runtime.stop()
        await self.operator.close()
        await self.op_broker.close()
        await self.plant_broker.close()
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    def wall_price(self, step: int) -> float:
        """The timer clock's price: the profile's at the same time of year as the step's wall-clock start."""
        period_s = self._timing["period_s"]
        return self.plant.price(hour_of_year_index(step * period_s, self.plant.dt_h, self.plant.n_steps_in_year,
                                                   zone(self.plant.scenario.time_zone)))

    @property
    def steps_done(self) -> int:
        return len(self.runtime.records)


async def wait_for(condition: Callable[[], bool], timeout: float, what: str = "condition") -> float:
    """Poll ``condition`` every 10 ms; the time it took; AssertionError after ``timeout`` s."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start
