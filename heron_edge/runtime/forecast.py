"""The next step's load, PV and wind: a ``ForecastSource`` port, apart from the site meter.

A gateway's policy decides step N on the load it will have to serve and the PV / wind power available in N. No
meter measures that; a forecast source gives it, from what the devices measured in step N-1:

- ``persistence``: step N as measured in step N-1 (load = meter import + PV + wind + battery + generator output;
  PV and wind = their inverters' output, which under a curtailment cap understates what was available);
- ``profile``: a daily profile shaped to the site (one value per step of the day, any unit), scaled by the
  recent measurements: ``shape[step of day of N] * sum(measured) / sum(shape)`` over the last ``window_steps``
  (persistence until the window holds a shape sum above zero, e.g. PV after its first daylight hour; a series
  whose shape is all 0, e.g. a site without wind, is forecast 0);
- ``mqtt``: an external forecaster's ``heron/{site}/{forecaster}/forecast`` (:class:`~heron_edge.messages.ForecastBody`)
  stamped with step N; waited for at most ``timeout_s``, then persistence (counted ``late``). In SIL the plant
  publishes its exact forecast there, so a SIL run still equals the centralized one.

Every forecast says which source produced it (:attr:`StepForecast.source`): the gateway's journal and status
carry it, so an observation can always be traced to the forecast it used.
"""
from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from heron_edge.brokers.base import Broker, Subscription
from heron_edge.counters import Rejections
from heron_edge.errors import BrokerError
from heron_edge.messages import LIMITS, DecodeError, ForecastBody, agent_topic, decode_on

if TYPE_CHECKING:
    from heron_edge.runtime.config import GatewayConfig

__all__ = ["FORECAST_AHEAD", "FORECAST_KINDS", "ForecastKind", "ForecastSource", "ForecastStats", "MqttForecast", "PersistenceForecast",
           "ProfileForecast", "SiteMeasurement", "StepForecast", "forecast_source"]

log = logging.getLogger(__name__)

FORECAST_AHEAD = 8
"""An mqtt forecast may be for the current step or up to this many steps ahead (a forecaster sending early)."""

ForecastKind = Literal["persistence", "profile", "mqtt"]
FORECAST_KINDS: tuple[ForecastKind, ...] = ("persistence", "profile", "mqtt")


@dataclass(frozen=True, slots=True)
class SiteMeasurement:
    """What the site measured in the last step (MW): its load (+ consumed), PV and wind output."""

    load_mw: float
    pv_mw: float
    wind_mw: float


@dataclass(frozen=True, slots=True)
class StepForecast:
    """The forecast of ``step`` (MW) and the source that produced it (``mqtt`` falls back to ``persistence``)."""

    step: int
    load_mw: float
    pv_mw: float
    wind_mw: float
    source: ForecastKind


@dataclass
class ForecastStats:
    """Forecasts given, by source, and (mqtt) steps whose forecast did not come in time."""

    given: dict[str, int] = field(default_factory=dict)
    late: int = 0
    rejected: Rejections = field(default_factory=Rejections)

    def count(self, source: ForecastKind) -> None:
        self.given[source] = self.given.get(source, 0) + 1


class ForecastSource(Protocol):
    """The next step's forecast. ``start`` (with the gateway's broker, once connected) and ``close`` bracket its use;
    ``forecast`` is called once per cycle with the step about to be dispatched and the last step's measurement."""

    kind: ForecastKind
    stats: ForecastStats

    async def start(self, broker: Broker) -> None: ...

    async def close(self) -> None: ...

    async def forecast(self, step: int, measured: SiteMeasurement) -> StepForecast: ...


def _persist(step: int, measured: SiteMeasurement) -> StepForecast:
    return StepForecast(step, measured.load_mw, max(measured.pv_mw, 0.0), max(measured.wind_mw, 0.0), "persistence")


class PersistenceForecast:
    """Step N as measured in step N-1."""

    kind: ForecastKind = "persistence"

    def __init__(self) -> None:
        self.stats = ForecastStats()

    async def start(self, broker: Broker) -> None:
        """Nothing to start."""

    async def close(self) -> None:
        """Nothing to close."""

    async def forecast(self, step: int, measured: SiteMeasurement) -> StepForecast:
        self.stats.count("persistence")
        return _persist(step, measured)


class ProfileForecast:
    """A daily shape per series, scaled by the measurements of the last ``window_steps`` steps.

    ``shapes``: load, pv, wind, each one value per step of the day (``steps_per_day`` values, any unit: only the
    shape matters); ``step_of_day``: the step of the day (0 .. steps_per_day - 1, in the data's time zone) of a step.
    """

    kind: ForecastKind = "profile"

    def __init__(self, shapes: tuple[Sequence[float], Sequence[float], Sequence[float]], *, window_steps: int,
                 step_of_day: Callable[[int], int]) -> None:
        lengths = {len(s) for s in shapes}
        if len(lengths) != 1 or not all(math.isfinite(v) and v >= 0.0 for s in shapes for v in s):
            raise ValueError("profile shapes need the same number of finite values >= 0 each")
        if window_steps < 1:
            raise ValueError(f"window_steps must be >= 1, got {window_steps}")
        self.shapes = tuple(tuple(float(v) for v in s) for s in shapes)
        self.steps_per_day = lengths.pop()
        self.step_of_day = step_of_day
        self.stats = ForecastStats()
        # (shape value at the measured step, measured value) per series over the window
        self._history: tuple[deque[tuple[float, float]], ...] = tuple(deque(maxlen=window_steps) for _ in shapes)
        self._last_step: int | None = None

    async def start(self, broker: Broker) -> None:
        """Nothing to start."""

    async def close(self) -> None:
        """Nothing to close."""

    def _shape(self, series: int, step: int) -> float:
        return self.shapes[series][self.step_of_day(step) % self.steps_per_day]

    def scale(self, series: int) -> float | None:
        """measured / shape over the window (None while the window's shape sum is 0: no information yet)."""
        history = self._history[series]
        shape_sum = sum(s for s, _ in history)
        return sum(m for _, m in history) / shape_sum if shape_sum > 0.0 else None

    async def forecast(self, step: int, measured: SiteMeasurement) -> StepForecast:
        if self._last_step is None or step != self._last_step:  # a repeated step adds nothing to the window
            values = (measured.load_mw, measured.pv_mw, measured.wind_mw)
            for k, value in enumerate(values):
                self._history[k].append((self._shape(k, step - 1), max(value, 0.0)))
            self._last_step = step
        out: list[float] = []
        persisted = (measured.load_mw, max(measured.pv_mw, 0.0), max(measured.wind_mw, 0.0))
        scaled = True
        for k in range(3):
            scale = self.scale(k)
            if not any(self.shapes[k]):  # the site has none of it (e.g. no wind turbine): 0
                out.append(0.0)
            elif scale is None:
                scaled = False
                out.append(persisted[k])
            else:
                out.append(self._shape(k, step) * scale)
        source: ForecastKind = "profile" if scaled else "persistence"
        self.stats.count(source)
        return StepForecast(step, out[0], out[1], out[2], source)


class MqttForecast:
    """The forecast an external forecaster (``sender``) publishes for each step; persistence when it is late.

    Values are bounded on arrival: finite, PV and wind >= 0, every power within ``limit_mw``; a forecast of
    another microgrid, an old step or out of bounds is not used (rejections are counted by reason)."""

    kind: ForecastKind = "mqtt"

    def __init__(self, *, site: str, agent_id: str, sender: str, timeout_s: float,
                 limit_mw: float = LIMITS.power_mw) -> None:
        self.topic = agent_topic(site, sender, "forecast")
        self.agent_id = agent_id
        self.timeout_s = timeout_s
        self.limit_mw = limit_mw
        self.stats = ForecastStats()
        self._broker: Broker | None = None
        self._sub: Subscription | None = None
        self._received: dict[int, StepForecast] = {}

    async def start(self, broker: Broker) -> None:
        """Subscribe to the forecaster's topic (again after :meth:`close`)."""
        if self._sub is None:
            self._broker = broker
            self._sub = await broker.subscribe(self.topic)

    async def close(self) -> None:
        if self._sub is not None and self._broker is not None:
            sub, self._sub = self._sub, None
            await self._broker.unsubscribe(sub)

    def _take(self, topic: str, payload: bytes, step: int) -> None:
        try:
            envelope = decode_on(topic, payload)
        except DecodeError as exc:
            self.stats.rejected.record(exc.reason, log, self.agent_id, topic, exc)
            return
        body = envelope.body
        if not isinstance(body, ForecastBody):
            return
        values = body.microgrids.get(self.agent_id)
        if values is None:
            return  # a forecaster may publish for other microgrids only
        if envelope.step < step:
            return  # an old step's forecast: never used
        if envelope.step > step + FORECAST_AHEAD:  # kept for later it would let a sender fill our memory
            self.stats.rejected.record("bounds", log, self.agent_id, topic,
                                       f"a forecast of step {envelope.step}, more than {FORECAST_AHEAD} ahead of {step}")
            return
        if max(abs(values.load_mw), values.pv_mw, values.wind_mw) > self.limit_mw:
            self.stats.rejected.record("bounds", log, self.agent_id, topic, f"a power beyond {self.limit_mw:g} MW")
            return
        self._received[envelope.step] = StepForecast(envelope.step, values.load_mw, values.pv_mw, values.wind_mw, "mqtt")
        for old in [s for s in self._received if s < step]:
            del self._received[old]

    async def forecast(self, step: int, measured: SiteMeasurement) -> StepForecast:
        sub = self._sub
        deadline = time.monotonic() + self.timeout_s
        while sub is not None and step not in self._received:
            for delivery in sub.drain():
                self._take(delivery.topic, delivery.payload, step)
            if step in self._received:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                delivery = await sub.get(timeout=remaining)
            except (TimeoutError, BrokerError):  # late, or the broker is gone: persistence this step
                break
            self._take(delivery.topic, delivery.payload, step)
        found = self._received.get(step)
        if found is None:
            self.stats.late += 1
            log.warning("%s: no forecast for step %d on %s within %.2f s; persistence", self.agent_id, step, self.topic,
                        self.timeout_s)
            found = _persist(step, measured)
        self.stats.count(found.source)
        return found


def forecast_source(config: GatewayConfig, step_of_day: Callable[[int], int], *,
                    limit_mw: float = LIMITS.power_mw) -> ForecastSource:
    """The gateway's forecast source from its ``[forecast]`` table (``step_of_day``: see
    ``heron_edge.runtime.wallclock.step_of_day_function``; ``limit_mw``: the largest power an mqtt forecast may say)."""
    from heron_edge.runtime.config import MqttForecastSettings, ProfileForecastSettings

    f = config.forecast
    if isinstance(f, ProfileForecastSettings):
        return ProfileForecast((f.load, f.pv, f.wind), window_steps=f.window_steps, step_of_day=step_of_day)
    if isinstance(f, MqttForecastSettings):
        return MqttForecast(site=config.site, agent_id=config.agent_id, sender=f.sender,
                            timeout_s=f.timeout_s if f.timeout_s is not None else config.cycle.step_timeout_s,
                            limit_mw=limit_mw)
    return PersistenceForecast()
