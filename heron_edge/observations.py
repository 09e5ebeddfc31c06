"""Observation vectors: what each microgrid knows about itself, and the layouts of both modes.

Local features of microgrid i (8 values, MW unless said):
  0 load_mw       load of the step about to be dispatched (perfect forecast)
  1 pv_mw         PV power available in that step
  2 wind_mw       wind power available in that step
  3 soc           battery state of charge, fraction of capacity
  4 generator_mw  generator output in the last step (the ramp reference)
  5 battery_mw    battery power in the last step (+ discharge)
  6 exchange_mw   import at the point of connection in the last step (+ import)
  7 violation_pu  p.u. outside the voltage band summed over the microgrid's buses, last step
Context (3 values): sin and cos of the hour of day of the step about to be dispatched, price / 100
(USD/MWh / 100) of that step.

Neighbour aggregates (3 values, :func:`neighbour_means`): the mean over the agent's neighbours in the site
graph (``heron_edge.site_graph``; 0 without neighbours) of
  nbr.exchange_mw  their exchange in the last step (MW, + import)
  nbr.soc          their state of charge (fraction)
  nbr.need_mw      their load - PV - wind of the step about to be dispatched (MW, + deficit)
Operator aggregates (11 values), published once per step by the system operator (``aggregates`` message):
  site.load_mw, site.pv_mw, site.wind_mw, site.soc, site.exchange_mw   the mean of every microgrid's
                   telemetry of this step (:func:`site_means`: MW, soc a fraction)
  the day-ahead price outlook of the step's calendar day (:func:`price_outlook`; hourly prices, without
  the congestion adder, which nobody knows ahead; USD/MWh / 100 like the context's price):
  price_day_min, price_day_mean, price_day_max   the day's lowest, mean and highest price
  price_quantile   the share of the day's prices below this step's (0: the cheapest hour)
  price_rest_min, price_rest_max   the lowest and highest price from this step to the day's end

Centralized observation (every agent the same global state, plus who it is):
  context (3) | local features of every microgrid (8 n) | one-hot agent index (n)
Distributed (``local``) observation, layout v2: the same size for any number of microgrids, so one policy
serves any site:
  context (3, the price as received from the upstream) | own local features (8) | neighbour aggregates (3)
  | operator aggregates (11)
In both, the per-agent protocol features (``heron_edge.coordination``) follow when protocols run.

Versioned layouts (:class:`ObservationLayout`): every vector above has a kind (``global``: the
centralized observation; ``local``: what a distributed agent sees, also produced by the centralized
loop with ``"observation": "local"``; ``state``: the critic's view, ``env.state()``), a version
(:data:`LAYOUT_VERSION`) and one name per entry, in order. A policy bundle records them, and a
gateway compares them with its own before it runs a policy.

Normalisation per rating (:func:`feature_scales`, :func:`normalize`): each entry is divided by a
rating of the microgrid it describes, so one shared policy fits microgrids of different sizes:
  battery_mw                                   / battery power rating (MW)
  generator_mw, dispatch_mw                    / generator rating (MW; 1 when there is none)
  load_mw, pv_mw, wind_mw, exchange_mw, need_mw
  (own, neighbours' and the site's means),
  setpoint_mw, traded_mw                       / dispatchable rating: battery + generator rating (MW)
  everything else (hour, prices / 100, soc,
  violation_pu, clearing_price, one-hot)       unchanged
In a local layout every entry is divided by the observer's own ratings (a gateway does not know its
peers'); in a global or state layout each microgrid's entries by that microgrid's.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

import numpy as np

if TYPE_CHECKING:  # the simulator is an extra: a gateway imports the layouts without it
    from sim.plant import Forecast, Measurements

N_LOCAL = 8
N_CONTEXT = 3
LOCAL_NAMES = ("load_mw", "pv_mw", "wind_mw", "soc", "generator_mw", "battery_mw", "exchange_mw", "violation_pu")
PRICE_SCALE = 100.0
_COLUMN: Final = {name: k for k, name in enumerate(LOCAL_NAMES)}


@dataclass(frozen=True)
class LocalTelemetry:
    """A microgrid's telemetry as its peers and the operator read it (MW; ``soc`` a fraction, ``violation_pu``
    p.u.): the wire carries it as ``TelemetryBody.values`` named by :data:`LOCAL_NAMES`; a name the sender
    left out is None here (the reader keeps its last value or its default)."""

    load_mw: float | None = None
    pv_mw: float | None = None
    wind_mw: float | None = None
    soc: float | None = None
    generator_mw: float | None = None
    battery_mw: float | None = None
    exchange_mw: float | None = None
    violation_pu: float | None = None

    @classmethod
    def from_values(cls, values: Mapping[str, float]) -> LocalTelemetry:
        """From a telemetry body's values (other names are ignored)."""
        return cls(**{name: values[name] for name in LOCAL_NAMES if name in values})

    @staticmethod
    def into_row(values: Mapping[str, float], row: np.ndarray | list[float]) -> None:
        """Write a telemetry body's values into a local feature row (``local_features`` layout) in place: what a
        neighbour and the operator keep of each report; a name the sender left out keeps its last value."""
        if len(values) == N_LOCAL and tuple(values) == LOCAL_NAMES:  # what every agent sends: all, in order
            row[:] = list(values.values())
            return
        for name, value in values.items():
            k = _COLUMN.get(name)
            if k is not None:
                row[k] = value

    @staticmethod
    def values_of(local: np.ndarray) -> dict[str, float]:
        """The wire values of a local feature row (``local_features`` layout)."""
        return dict(zip(LOCAL_NAMES, local.tolist(), strict=True))


def local_features(last: Measurements, forecast: Forecast, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (n x 8) with every microgrid's local features and return it."""
    out[:, 0] = forecast.load_mw
    out[:, 1] = forecast.pv_mw
    out[:, 2] = forecast.wind_mw
    out[:, 3] = last.soc
    out[:, 4] = last.applied.generator_mw
    out[:, 5] = last.applied.battery_mw
    out[:, 6] = last.exchange_mw
    out[:, 7] = last.violation_v_pu
    return out


def context(step_in_year: int, steps_per_day: int, price_usd_per_mwh: float, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (3,) with the hour-of-day encoding and the scaled price."""
    angle = 2.0 * math.pi * (step_in_year % steps_per_day) / steps_per_day
    out[0] = math.sin(angle)  # math, not numpy: scalars, on every agent's every step
    out[1] = math.cos(angle)
    out[2] = price_usd_per_mwh / PRICE_SCALE
    return out


def local_bounds(p_max_battery: float, p_max_generator: float, pv_mw: float, wind_mw: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of one microgrid's local features."""
    inf = np.inf
    low = np.array([0.0, 0.0, 0.0, 0.0, 0.0, -p_max_battery, -inf, 0.0])
    high = np.array([inf, pv_mw, wind_mw, 1.0, p_max_generator, p_max_battery, inf, inf])
    return low, high


CONTEXT_LOW = np.array([-1.0, -1.0, -np.inf])
CONTEXT_HIGH = np.array([1.0, 1.0, np.inf])


# ---------------------------------------------------------------------------------------------- aggregates
NEIGHBOUR_NAMES: Final = ("nbr.exchange_mw", "nbr.soc", "nbr.need_mw")
"""The neighbour aggregates: means over the agent's site-graph neighbours (see the module docstring)."""
SITE_NAMES: Final = ("site.load_mw", "site.pv_mw", "site.wind_mw", "site.soc", "site.exchange_mw")
"""The operator's site means of the microgrids' telemetry."""
OUTLOOK_NAMES: Final = ("price_day_min", "price_day_mean", "price_day_max", "price_quantile", "price_rest_min",
                        "price_rest_max")
"""The operator's day-ahead price outlook (prices / 100, the quantile a fraction)."""
OPERATOR_NAMES: Final = SITE_NAMES + OUTLOOK_NAMES
N_NEIGHBOUR: Final = len(NEIGHBOUR_NAMES)
N_OPERATOR: Final = len(OPERATOR_NAMES)
N_LOCAL_BASE: Final = N_CONTEXT + N_LOCAL + N_NEIGHBOUR + N_OPERATOR
"""Entries of a local observation before the protocol features (25, whatever the site's size)."""
_INF = np.inf
AGGREGATES_LOW: Final = np.array([-_INF, 0.0, -_INF, 0.0, 0.0, 0.0, 0.0, -_INF, -_INF, -_INF, -_INF, 0.0, -_INF, -_INF])
"""Lower bounds of the neighbour and operator aggregates (in layout order)."""
AGGREGATES_HIGH: Final = np.array([_INF, 1.0, _INF, _INF, _INF, _INF, 1.0, _INF, _INF, _INF, _INF, 1.0, _INF, _INF])
_SITE_COLUMNS: Final = [0, 1, 2, 3, 6]  # load, pv, wind, soc, exchange in the local features
_QUANTILE: Final = OUTLOOK_NAMES.index("price_quantile")


def neighbour_means(local: np.ndarray, index: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The neighbour aggregates ``(m, 3)`` of ``m`` observers: ``local`` holds local feature rows (``(n, 8)``),
    row i of ``index`` (``(m, d)``) the rows of observer i's neighbours where ``valid`` (``(m, d)``) is True.

    Summed in neighbour order, then divided by the count (0 without neighbours): a ProxyAgent (one observer,
    its received rows) and the centralized loop (every observer at once) get the same bits."""
    m, d = index.shape
    total = np.zeros((m, N_NEIGHBOUR))
    values = np.empty((m, N_NEIGHBOUR))
    for j in range(d):
        rows = local[index[:, j]]
        values[:, 0] = rows[:, 6]
        values[:, 1] = rows[:, 3]
        values[:, 2] = rows[:, 0] - rows[:, 1] - rows[:, 2]
        np.add(total, values, out=total, where=valid[:, j, None])
    count = valid.sum(axis=1, dtype=np.float64)[:, None]
    out: np.ndarray = np.divide(total, count, out=np.zeros((m, N_NEIGHBOUR)), where=count > 0.0)
    return out


def neighbour_mean(rows: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """:func:`neighbour_means` of one observer whose every neighbour's row is ``rows``, in plain floats (a ProxyAgent,
    every step): the same sums in the same order, so the same bits."""
    if not rows:
        return 0.0, 0.0, 0.0
    exchange = soc = need = 0.0
    for row in rows:
        exchange += row[6]
        soc += row[3]
        need += row[0] - row[1] - row[2]
    count = float(len(rows))
    return exchange / count, soc / count, need / count


def site_means(local: np.ndarray) -> np.ndarray:
    """The operator's site means ``(5,)`` (:data:`SITE_NAMES`) of every microgrid's local features ``(n, 8)``."""
    means: np.ndarray = local[:, _SITE_COLUMNS].mean(axis=0)
    return means


def day_prices(price_of: Callable[[int], float], step: int, steps_per_day: int) -> np.ndarray:
    """The hourly prices (USD/MWh) of the calendar day of ``step``: what a day-ahead market has published."""
    start = step - step % steps_per_day
    return np.array([price_of(start + k) for k in range(steps_per_day)], dtype=np.float64)


def price_outlook(prices: np.ndarray, step: int) -> np.ndarray:
    """The outlook ``(6,)`` (:data:`OUTLOOK_NAMES`, in USD/MWh, the quantile a fraction) of ``step`` from its day's
    prices (:func:`day_prices`)."""
    here = step % len(prices)
    price, rest = prices[here], prices[here:]
    return np.array([prices.min(), prices.mean(), prices.max(), float(np.count_nonzero(prices < price)) / len(prices),
                     rest.min(), rest.max()])


def operator_features(means: Sequence[float], outlook: Sequence[float]) -> list[float]:
    """The observation's operator aggregates (11): the site means (5) as they are, the outlook's (6) prices / 100
    (:data:`PRICE_SCALE`) and its quantile as it is. Plain floats: every agent computes them every step."""
    features = [*means, *(price / PRICE_SCALE for price in outlook)]
    features[len(SITE_NAMES) + _QUANTILE] = outlook[_QUANTILE]
    return features


# ---------------------------------------------------------------------------------------------- layouts
LAYOUT_VERSION: Final = 2
"""Version of the layouts below: bumped whenever a name, its meaning or the order changes (v2: the local layout's
peers' exchange, one entry per peer, became neighbour and operator aggregates of a fixed size)."""
CONTEXT_NAMES: Final = ("hour_sin", "hour_cos", "price")
"""The context entries: sin and cos of the hour of day, the signalled price / 100 (USD/MWh / 100)."""

LayoutKind = Literal["global", "local", "state"]
ScaleRef = Literal["one", "battery_p_max_mw", "generator_p_max_mw", "dispatchable_mw"]
"""What an entry is divided by when normalised per rating (see the module docstring)."""

_SCALE_OF: Final[dict[str, ScaleRef]] = {
    "battery_mw": "battery_p_max_mw", "generator_mw": "generator_p_max_mw", "dispatch_mw": "generator_p_max_mw",
    "load_mw": "dispatchable_mw", "pv_mw": "dispatchable_mw", "wind_mw": "dispatchable_mw",
    "exchange_mw": "dispatchable_mw", "setpoint_mw": "dispatchable_mw", "traded_mw": "dispatchable_mw",
    "need_mw": "dispatchable_mw",
}


@dataclass(frozen=True, slots=True)
class Ratings:
    """A microgrid's device ratings (MW): they scale a normalised action to MW and normalise observations."""

    battery_p_max_mw: float
    generator_p_max_mw: float

    @property
    def dispatchable_mw(self) -> float:
        """Battery plus generator rating (MW): the size of the microgrid's controllable part."""
        return self.battery_p_max_mw + self.generator_p_max_mw

    def scale(self, ref: ScaleRef) -> float:
        """The divisor of an entry scaled by ``ref`` (1 where a rating is 0: that entry is always 0 then)."""
        value = 1.0 if ref == "one" else float(getattr(self, ref))
        return value if value > 0.0 else 1.0


@dataclass(frozen=True)
class ObservationLayout:
    """One observation vector's kind, version and entry names (in order)."""

    kind: LayoutKind
    names: tuple[str, ...]
    version: int = LAYOUT_VERSION

    @property
    def size(self) -> int:
        return len(self.names)

    def owners(self) -> tuple[str | None, ...]:
        """Per entry, the microgrid it describes in a global / state layout (``mg2.load_mw`` -> ``mg2``); None for
        the context, the one-hot and every entry of a local layout (the observer's own)."""
        if self.kind == "local":
            return (None,) * len(self.names)
        return tuple(name.split(".", 1)[0] if "." in name and not name.startswith("is.") else None for name in self.names)

    def scale_refs(self) -> tuple[ScaleRef, ...]:
        """Per entry, what it is divided by when normalised per rating."""
        return tuple(_SCALE_OF.get(name.rsplit(".", 1)[-1], "one") for name in self.names)


def local_layout(protocol_features: Sequence[str] = ()) -> ObservationLayout:
    """What a distributed agent sees, whatever the size of its site: context | own local features | neighbour
    aggregates | operator aggregates | its protocol features."""
    return ObservationLayout("local", CONTEXT_NAMES + LOCAL_NAMES + NEIGHBOUR_NAMES + OPERATOR_NAMES
                             + tuple(protocol_features))


def global_layout(agents: Sequence[str], protocol_features: Sequence[str] = ()) -> ObservationLayout:
    """The centralized observation: context | every microgrid's local features | one-hot (``is.mg1``..) | every
    microgrid's protocol features."""
    return ObservationLayout("global", CONTEXT_NAMES + tuple(f"{a}.{f}" for a in agents for f in LOCAL_NAMES)
                             + tuple(f"is.{a}" for a in agents)
                             + tuple(f"{a}.{f}" for a in agents for f in protocol_features))


def state_layout(agents: Sequence[str], protocol_features: Sequence[str] = ()) -> ObservationLayout:
    """``env.state()``, the critic's view: the global layout without the one-hot."""
    return ObservationLayout("state", CONTEXT_NAMES + tuple(f"{a}.{f}" for a in agents for f in LOCAL_NAMES)
                             + tuple(f"{a}.{f}" for a in agents for f in protocol_features))


def feature_scales(layout: ObservationLayout, own: Ratings, ratings: Mapping[str, Ratings] | None = None) -> np.ndarray:
    """The divisor of every entry of ``layout`` (float64): ``own`` ratings for a local layout, ``ratings[mg]`` for
    the entries of microgrid ``mg`` in a global or state layout (``own`` where a microgrid is not in ``ratings``)."""
    ratings = ratings or {}
    return np.array([(ratings.get(owner, own) if owner is not None else own).scale(ref)
                     for owner, ref in zip(layout.owners(), layout.scale_refs(), strict=True)])


def normalize(observation: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``observation / scales`` as float32 (computed in float64): the one function the environment and a policy
    bundle apply, so both give bit-identical inputs to a network."""
    out: np.ndarray = (np.asarray(observation, dtype=np.float64) / scales).astype(np.float32)
    return out
