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

Centralized observation (every agent the same global state, plus who it is):
  context (3) | local features of every microgrid (8 n) | one-hot agent index (n)
Distributed observation (local state plus messages):
  context (3, the price as received from the upstream) | own local features (8)
  | peers' last reported exchange_mw (n - 1, in agent order, from their telemetry messages)
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
  load_mw, pv_mw, wind_mw, exchange_mw (own and
  peers'), setpoint_mw, traded_mw              / dispatchable rating: battery + generator rating (MW)
  everything else (hour, price / 100, soc,
  violation_pu, clearing_price, one-hot)       unchanged
In a local layout every entry is divided by the observer's own ratings (a gateway does not know its
peers'); in a global or state layout each microgrid's entries by that microgrid's.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

import numpy as np

if TYPE_CHECKING:  # the simulator is an extra: a gateway imports the layouts without it
    from sim.plant import Forecast, Measurements

N_LOCAL = 8
N_CONTEXT = 3
LOCAL_NAMES = ("load_mw", "pv_mw", "wind_mw", "soc", "generator_mw", "battery_mw", "exchange_mw", "violation_pu")
PRICE_SCALE = 100.0


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
    def exchange_of(values: Mapping[str, float]) -> float | None:
        """Only ``exchange_mw`` (what a peer reads every step, without building the whole record)."""
        return values.get("exchange_mw")

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


# ---------------------------------------------------------------------------------------------- layouts
LAYOUT_VERSION: Final = 1
"""Version of the layouts below: bumped whenever a name, its meaning or the order changes."""
CONTEXT_NAMES: Final = ("hour_sin", "hour_cos", "price")
"""The context entries: sin and cos of the hour of day, the signalled price / 100 (USD/MWh / 100)."""

LayoutKind = Literal["global", "local", "state"]
ScaleRef = Literal["one", "battery_p_max_mw", "generator_p_max_mw", "dispatchable_mw"]
"""What an entry is divided by when normalised per rating (see the module docstring)."""

_SCALE_OF: Final[dict[str, ScaleRef]] = {
    "battery_mw": "battery_p_max_mw", "generator_mw": "generator_p_max_mw", "dispatch_mw": "generator_p_max_mw",
    "load_mw": "dispatchable_mw", "pv_mw": "dispatchable_mw", "wind_mw": "dispatchable_mw",
    "exchange_mw": "dispatchable_mw", "setpoint_mw": "dispatchable_mw", "traded_mw": "dispatchable_mw",
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


def local_layout(n_agents: int, protocol_features: Sequence[str] = ()) -> ObservationLayout:
    """What a distributed agent of a site of ``n_agents`` microgrids sees: context | own local features | peers'
    exchange (``peer1.exchange_mw`` .. in agent order, without itself) | its protocol features."""
    peers = tuple(f"peer{k}.exchange_mw" for k in range(1, n_agents))
    return ObservationLayout("local", CONTEXT_NAMES + LOCAL_NAMES + peers + tuple(protocol_features))


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
