"""The SIL plant: one simulated Plant served as emulated Modbus devices, advanced on a clock over MQTT.

Per microgrid it serves, on 127.0.0.1 (one TCP port each, unit id 1): a SunSpec battery, a SunSpec
generator, a SunSpec PV and a wind inverter (when rated above 0) and the site meter (a standard SunSpec
meter over the exchange at the point of connection). The SunSpec
models are those of a **device profile** (``firmware_bridge.sunspec_device.PROFILE_MODELS``): ``ieee1547``
(7xx), ``legacy`` (1xx as SMA, Fronius, SolarEdge ship them), or ``mixed`` (the microgrids alternate,
legacy first: each gateway resolves what its own devices have). The clock is ``heron/{site}/plant/clock`` (ClockBody), answered on each participant's
``heron/{site}/{id}/done``:

- lock-step: the plant sends its feeder-head reading stamped N (``heron/{site}/plant/meter``, the
  substation meter the operator's congestion rule reads), every microgrid's exact forecast of N
  (``heron/{site}/plant/forecast``, what gateways with ``[forecast] kind = "mqtt"`` read) and announces
  step N (sender ``plant``);
  the operator publishes the price (and setpoints) for N, waits for the agents' orders when trading
  runs, clears and says ``done``; each agent runs its cycle for N (setpoint, consensus, decision,
  order and clearing) and says ``done`` after it; when every expected
  participant said done for N, the plant applies the setpoints its devices hold (clamped by the
  plant), advances, and announces N+1. While it waits it repeats the announcement every
  ``repeat_s`` (a done lost to a broker restart is then sent again); after ``max_wait_s`` it
  advances anyway and counts a forced step.
- real time: the plant sends the forecast and announces a step every ``period_s`` and advances at the end
  of the period whatever was said.

Before the first step it waits until every participant's retained status says online.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from firmware_bridge import PROFILES, Emulator, Profile
from heron_edge.brokers import Broker, Subscription
from heron_edge.counters import int_fields
from heron_edge.errors import BrokerError
from heron_edge.messages import (
    ClockBody,
    DecodeError,
    StatusBody,
    TelemetryBody,
    agent_filter,
    agent_topic,
    decode_on,
    make_envelope,
)
from heron_edge.runtime.sil_devices import PlantDevices
from heron_edge.trajectory import tap_columns
from sim.plant import Measurements, Plant

__all__ = ["DEVICE_PROFILES", "PLANT_ID", "ClockMode", "DeviceEndpoint", "DeviceProfile", "PlantResult", "PlantRuntime",
           "endpoint_dict", "measurement_row", "microgrid_profiles"]

log = logging.getLogger(__name__)

PLANT_ID = "plant"
ClockMode = Literal["lockstep", "realtime"]
DeviceProfile = Literal["ieee1547", "legacy", "mixed"]
DEVICE_PROFILES: tuple[DeviceProfile, ...] = ("ieee1547", "legacy", "mixed")


def microgrid_profiles(profile: DeviceProfile, n: int) -> list[Profile]:
    """The SunSpec profile of each of ``n`` microgrids' devices: one for all, or (``mixed``) alternating, legacy first."""
    if profile == "mixed":
        order: tuple[Profile, ...] = ("legacy", "ieee1547")
        return [order[i % len(order)] for i in range(n)]
    if profile not in PROFILES:
        raise ValueError(f"unknown device profile {profile!r}; expected one of {', '.join(DEVICE_PROFILES)}")
    return [profile] * n


@dataclass(frozen=True)
class DeviceEndpoint:
    """Where one emulated device listens (a meter: with its nominal line-to-line voltage, V)."""

    host: str
    port: int
    unit_id: int = 1
    v_nom_v: float | None = None


@dataclass
class _Microgrid:
    emulators: dict[str, Emulator] = field(default_factory=dict)


def endpoint_dict(e: DeviceEndpoint) -> dict[str, object]:
    """An endpoint as the endpoints file and :func:`heron_edge.runtime.sil.agent_config` hold it."""
    out: dict[str, object] = {"host": e.host, "port": e.port, "unit_id": e.unit_id}
    if e.v_nom_v is not None:
        out["v_nom_v"] = e.v_nom_v
    return out


def measurement_row(m: Measurements, zones: list[np.ndarray], steps_per_day: int, step_hours: float) -> dict[str, object]:
    """One step's record in ``heron_edge.commands.simulate.COLUMNS`` (without step / day / microgrid, and without
    the money columns, which ``heron_edge.runtime.sil.settle`` adds from the operator's ledger)."""
    return {
        "step_in_year": m.step, "hour": (m.step % steps_per_day) * step_hours,
        "price_usd_per_mwh": m.price_usd_per_mwh, "load_mw": m.load_mw, "pv_available_mw": m.pv_available_mw,
        "pv_mw": m.pv_mw, "wind_available_mw": m.wind_available_mw, "wind_mw": m.wind_mw,
        "battery_mw": m.applied.battery_mw, "generator_mw": m.applied.generator_mw, "soc": m.soc,
        "exchange_mw": m.exchange_mw, "fuel_cost_usd": m.fuel_cost_usd, "penalty_usd": m.penalty_usd, "violation_v_pu": m.violation_v_pu,
        "overload_percent": m.overload_percent,
        "vm_min_pu": [m.vm_pu[b].min() for b in zones], "vm_max_pu": [m.vm_pu[b].max() for b in zones],
        "converged": float(m.converged), **tap_columns(m.regulator_taps, m.tap_changes),
    }


class PlantRuntime:
    """Serve a plant's devices and drive its clock. ``start()``, ``await run()``, ``stop()``."""

    def __init__(self, plant: Plant, broker: Broker, *, site: str, participants: list[str], start_steps: list[int],
                 steps_per_episode: int, year: int, mode: ClockMode = "lockstep", period_s: float = 1.0,
                 repeat_s: float = 1.0, max_wait_s: float = 60.0, ready_timeout_s: float = 60.0,
                 host: str = "127.0.0.1", device_profile: DeviceProfile = "ieee1547") -> None:
        if not start_steps:
            raise ValueError("start_steps must name at least one episode")
        self.plant = plant
        self.broker = broker
        self.site = site
        self.participants = list(participants)
        self.start_steps = list(start_steps)
        self.steps_per_episode = steps_per_episode
        self.year = year
        self.mode = mode
        self.period_s = period_s
        self.repeat_s = repeat_s
        self.max_wait_s = max_wait_s
        self.ready_timeout_s = ready_timeout_s
        self.host = host
        self.profiles = microgrid_profiles(device_profile, plant.n)
        self.devices = PlantDevices(plant)
        self.microgrids: dict[str, _Microgrid] = {}
        self.records: list[dict[str, object]] = []
        self.stats = PlantStats()
        self.step_times: list[float] = []
        self._clock_topic = agent_topic(site, PLANT_ID, "clock")
        self._meter_topic = agent_topic(site, PLANT_ID, "meter")
        self._forecast_topic = agent_topic(site, PLANT_ID, "forecast")
        self._zones = [np.asarray(z.buses) for z in plant.built.zones]
        self._stopping = False
        self.finished_at: float | None = None
        """Unix time the last step of the last episode ran (None until then): the end of the run."""

    # ------------------------------------------------------------------ devices
    async def start(self) -> None:
        """Reset the plant to the first episode and start every device server."""
        self.plant.reset(year=self.year, start_step=self.start_steps[0])
        d = self.devices
        for i, name in enumerate(self.plant.names):
            mg = _Microgrid()
            profile = self.profiles[i]
            mg.emulators["battery"] = Emulator(d.battery(i), host=self.host, profile=profile)
            mg.emulators["generator"] = Emulator(d.generator(i), host=self.host, profile=profile)
            if self.plant.pv_rating[i] > 0:
                mg.emulators["pv"] = Emulator(d.renewable(i, "pv"), host=self.host, profile=profile)
            if self.plant.wind_rating[i] > 0:
                mg.emulators["wind"] = Emulator(d.renewable(i, "wind"), host=self.host, profile=profile)
            mg.emulators["meter"] = Emulator(d.site_meter(i), host=self.host, profile=profile)
            for emulator in mg.emulators.values():
                await emulator.start()
            self.microgrids[name] = mg

    def endpoints(self) -> dict[str, dict[str, DeviceEndpoint]]:
        """microgrid -> role (battery, generator, pv, wind, meter) -> endpoint."""
        out: dict[str, dict[str, DeviceEndpoint]] = {}
        for i, (name, mg) in enumerate(self.microgrids.items()):
            out[name] = {role: DeviceEndpoint(self.host, e.port, e.unit_id,
                                              self.devices.v_nom_v(i) if role == "meter" else None)
                         for role, e in mg.emulators.items()}
        return out

    def write_endpoints(self, path: Path) -> None:
        """The endpoints as JSON (written atomically: its appearance means the devices are listening)."""
        data = {mg: {role: endpoint_dict(e) for role, e in roles.items()} for mg, roles in self.endpoints().items()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)

    async def stop(self) -> None:
        """Stop every device server (twice is harmless)."""
        self._stopping = True
        for mg in self.microgrids.values():
            for emulator in mg.emulators.values():
                await emulator.stop()

    # ------------------------------------------------------------------ clock
    async def _wait_ready(self) -> None:
        """Until every participant's (retained) status says online, or the timeout (then start anyway, logged)."""
        sub = await self.broker.subscribe(agent_filter(self.site, "status"))
        online: set[str] = set()
        deadline = time.monotonic() + self.ready_timeout_s
        try:
            while not set(self.participants) <= online:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("plant: starting without %s", sorted(set(self.participants) - online))
                    return
                try:
                    delivery = await sub.get(timeout=remaining)
                except TimeoutError:
                    continue
                try:
                    env = decode_on(delivery.topic, delivery.payload)
                except DecodeError:
                    continue
                if isinstance(env.body, StatusBody):
                    (online.add if env.body.state != "offline" else online.discard)(env.sender)
        finally:
            await self.broker.unsubscribe(sub)

    async def _announce(self, step: int) -> None:
        try:
            await self.broker.publish(self._clock_topic, make_envelope(PLANT_ID, ClockBody(step=step), step=step))
            self.stats.announcements += 1
        except BrokerError as exc:
            self.stats.announce_failed += 1
            log.info("plant: cannot announce step %d: %s", step, exc)

    async def _publish_meter(self, step: int) -> None:
        """The feeder-head import of the last step (MW), stamped ``step`` (omitted when unknown)."""
        last = self.plant.last
        head = float(last.feeder_head_mw) if last is not None else float("nan")
        body = TelemetryBody(values={"feeder_head_mw": head} if np.isfinite(head) else {})
        try:
            await self.broker.publish(self._meter_topic, make_envelope(PLANT_ID, body, step=step))
        except BrokerError as exc:
            self.stats.meter_failed += 1
            log.info("plant: cannot send the meter reading of step %d: %s", step, exc)

    async def _publish_forecast(self, step: int) -> None:
        """Every microgrid's exact forecast of ``step`` (the plant's profiles), stamped ``step``."""
        try:
            await self.broker.publish(self._forecast_topic, make_envelope(PLANT_ID, self.devices.forecast(), step=step))
        except BrokerError as exc:
            self.stats.forecast_failed += 1
            log.info("plant: cannot send the forecast of step %d: %s", step, exc)

    async def _lockstep_wait(self, sub: Subscription, step: int) -> None:
        waiting = set(self.participants)
        start = time.monotonic()
        await self._announce(step)
        next_repeat = start + self.repeat_s
        while waiting:
            now = time.monotonic()
            if now - start > self.max_wait_s:
                self.stats.forced_steps += 1
                log.warning("plant: step %d forced without %s", step, sorted(waiting))
                return
            if now >= next_repeat:
                await self._announce(step)
                self.stats.repeats += 1
                next_repeat = now + self.repeat_s
            try:
                delivery = await sub.get(timeout=max(0.001, next_repeat - time.monotonic()))
            except TimeoutError:
                continue
            for d in [delivery, *sub.drain()]:
                try:
                    env = decode_on(d.topic, d.payload)
                except DecodeError as exc:
                    self.stats.done_rejected += 1
                    log.warning("plant: rejected a done message on %s: %s", d.topic, exc)
                    continue
                if isinstance(env.body, ClockBody) and env.body.done and env.body.step == step:
                    waiting.discard(env.sender)

    async def run(self) -> None:
        """Wait for the participants, then run every episode; records one row per step."""
        await self.broker.connect()
        await self._wait_ready()
        sub = await self.broker.subscribe(agent_filter(self.site, "done"))
        try:
            for episode, start_step in enumerate(self.start_steps):
                if episode > 0:
                    self.plant.reset(year=self.year, start_step=start_step)
                for _ in range(self.steps_per_episode):
                    if self._stopping:
                        return
                    t0 = time.perf_counter()
                    step = self.plant.t
                    await self._publish_meter(step)
                    await self._publish_forecast(step)
                    if self.mode == "lockstep":
                        await self._lockstep_wait(sub, step)
                    else:
                        await self._announce(step)
                        await asyncio.sleep(max(0.0, self.period_s - (time.perf_counter() - t0)))
                    measurements = self.plant.step(self.devices.request_for_step())
                    row = measurement_row(measurements, self._zones, self.plant.profiles.steps_per_day, self.plant.dt_h)
                    row["day"] = episode
                    self.records.append(row)
                    self.step_times.append(time.perf_counter() - t0)
            self.finished_at = time.time()  # every step ran: whatever the participants do from now on is shutdown
        finally:
            await self.broker.unsubscribe(sub)

    def trajectory_arrays(self) -> dict[str, np.ndarray]:
        """Records as arrays (steps x microgrids), plus ``step``; ready for ``simulate.Trajectory``."""
        n = self.plant.n
        columns: dict[str, np.ndarray] = {}
        for name in self.records[0] if self.records else ():
            columns[name] = np.array([np.broadcast_to(np.asarray(r[name], dtype=np.float64), (n,)) for r in self.records])
        columns["step"] = np.repeat(np.arange(len(self.records))[:, None], n, axis=1).astype(np.float64)
        return columns

    def save_trajectory(self, path: Path) -> None:
        """Write the trajectory (npz: one array per column, plus names and step_hours), atomically."""
        tmp = path.with_name(path.name + ".tmp")
        arrays: dict[str, Any] = {"names": np.array(self.plant.names), "step_hours": np.array(self.plant.dt_h),
                                  **self.trajectory_arrays()}
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        tmp.replace(path)

    @property
    def complete(self) -> bool:
        """Every step of every episode ran."""
        return self.finished_at is not None

    def result(self) -> PlantResult:
        """What the run did: steps, counters, mean step time, and when it finished."""
        stats = {"steps": len(self.records), **int_fields(self.stats),
                 "step_ms_mean": 1e3 * sum(self.step_times) / max(len(self.step_times), 1)}
        last = int(self.records[-1]["step_in_year"]) if self.records else None  # type: ignore[call-overload]
        return PlantResult(stats=stats, finished_at=self.finished_at, last_step=last)


@dataclass
class PlantStats:
    """What the plant's clock did: announcements (and repeats while it waited), steps forced without every
    ``done``, rejected ``done`` messages, failed publishes."""

    announcements: int = 0
    repeats: int = 0
    forced_steps: int = 0
    done_rejected: int = 0
    announce_failed: int = 0
    meter_failed: int = 0
    forecast_failed: int = 0


@dataclass(frozen=True)
class PlantResult:
    """The plant's account of a run (``heron-edge plant --result FILE``): its counters (``steps``, ``forced_steps``,
    ``step_ms_mean``, ...), the unix time its last step ran (None: the run was cut short) and that step of the year.
    The file appears once the run is complete, so its appearance is the end of the run for a supervisor."""

    stats: dict[str, float]
    finished_at: float | None
    last_step: int | None

    def write(self, path: Path) -> None:
        """As JSON, atomically (a reader never sees half a file)."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"plant": self.stats, "finished_at": self.finished_at, "last_step": self.last_step}))
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> PlantResult:
        data = json.loads(path.read_text())
        return cls(stats=dict(data["plant"]), finished_at=data.get("finished_at"), last_step=data.get("last_step"))
