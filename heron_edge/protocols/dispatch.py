"""Economic dispatch with quadratic costs: the exact centralized optimum (lambda iteration by KKT).

Unit ``i`` costs ``a_i p^2 + b_i p`` $/h for ``p`` in ``[p_min_i, p_max_i]`` MW (``a_i > 0``). At the
optimum every unit runs at the common incremental cost ``lambda`` ($/MWh) unless at a limit:
``p_i(lambda) = clip((lambda - b_i) / (2 a_i), p_min_i, p_max_i)``, with ``sum_i p_i = demand``.
``sum_i p_i(lambda)`` is piecewise linear and nondecreasing with breakpoints at
``b_i + 2 a_i p_min_i`` and ``b_i + 2 a_i p_max_i``, so the root is found exactly by locating the
bracketing breakpoints and interpolating linearly. Demand outside ``[sum p_min, sum p_max]`` is
infeasible: every unit is put at the nearer limit and ``feasible`` is False.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from heron_edge.errors import ConfigError

__all__ = ["DispatchResult", "GeneratorCost", "dispatch_at", "economic_dispatch"]


@dataclass(frozen=True)
class GeneratorCost:
    """One unit's quadratic cost ``a p^2 + b p`` ($/h; ``a`` in $/MW^2h > 0, ``b`` in $/MWh) and
    limits ``[p_min_mw, p_max_mw]``."""

    a_usd_per_mw2h: float
    b_usd_per_mwh: float
    p_min_mw: float
    p_max_mw: float

    def __post_init__(self) -> None:
        vals = (self.a_usd_per_mw2h, self.b_usd_per_mwh, self.p_min_mw, self.p_max_mw)
        if not all(math.isfinite(v) for v in vals):
            raise ConfigError(f"generator cost parameters must be finite, got {vals}")
        if self.a_usd_per_mw2h <= 0.0:
            raise ConfigError(f"quadratic cost coefficient a must be > 0, got {self.a_usd_per_mw2h}")
        if self.p_min_mw > self.p_max_mw:
            raise ConfigError(f"p_min_mw {self.p_min_mw} > p_max_mw {self.p_max_mw}")

    def output_mw(self, lambda_usd_per_mwh: float) -> float:
        """Output at incremental cost ``lambda`` (clipped to the limits), MW."""
        return float(np.clip((lambda_usd_per_mwh - self.b_usd_per_mwh) / (2.0 * self.a_usd_per_mw2h),
                             self.p_min_mw, self.p_max_mw))

    def slope_mw_per_usd(self, lambda_usd_per_mwh: float) -> float:
        """d output / d lambda at ``lambda``: ``1 / (2 a)`` strictly between the limits, else 0."""
        free = (lambda_usd_per_mwh - self.b_usd_per_mwh) / (2.0 * self.a_usd_per_mw2h)
        return 1.0 / (2.0 * self.a_usd_per_mw2h) if self.p_min_mw < free < self.p_max_mw else 0.0

    @property
    def lambda_range_usd_per_mwh(self) -> tuple[float, float]:
        """Incremental cost at ``p_min`` and at ``p_max``."""
        a, b = self.a_usd_per_mw2h, self.b_usd_per_mwh
        return b + 2.0 * a * self.p_min_mw, b + 2.0 * a * self.p_max_mw


@dataclass(frozen=True)
class DispatchResult:
    """Dispatch of every unit (MW), the incremental cost ($/MWh), the total cost ($/h), feasibility."""

    p_mw: np.ndarray
    lambda_usd_per_mwh: float
    cost_usd_per_h: float
    feasible: bool


def _arrays(a: np.ndarray, b: np.ndarray, p_min: np.ndarray, p_max: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrs = [np.asarray(v, dtype=float).reshape(-1) for v in (a, b, p_min, p_max)]
    n = arrs[0].shape[0]
    if n == 0 or any(v.shape[0] != n for v in arrs):
        raise ConfigError(f"a, b, p_min, p_max must be non-empty and of one length, got {[v.shape for v in arrs]}")
    if not all(np.isfinite(v).all() for v in arrs):
        raise ConfigError("generator cost parameters must be finite")
    if (arrs[0] <= 0.0).any():
        raise ConfigError("quadratic cost coefficients a must be > 0")
    if (arrs[2] > arrs[3]).any():
        raise ConfigError("p_min must not exceed p_max")
    return arrs[0], arrs[1], arrs[2], arrs[3]


def dispatch_at(lambda_usd_per_mwh: float, a: np.ndarray, b: np.ndarray, p_min: np.ndarray,
                p_max: np.ndarray) -> np.ndarray:
    """Every unit's output at incremental cost ``lambda``, MW."""
    return np.clip((lambda_usd_per_mwh - b) / (2.0 * a), p_min, p_max)


def _close(x: float, y: float) -> bool:
    """``np.isclose(x, y)`` for two floats, without its array machinery (every consensus step asks)."""
    return abs(x - y) <= 1e-8 + 1e-5 * abs(y)


def economic_dispatch(a: np.ndarray, b: np.ndarray, p_min: np.ndarray, p_max: np.ndarray,
                      demand_mw: float) -> DispatchResult:
    """The least-cost dispatch meeting ``demand_mw`` exactly (see the module docstring)."""
    a, b, p_min, p_max = _arrays(a, b, p_min, p_max)
    if not math.isfinite(demand_mw):
        raise ConfigError(f"demand must be finite, got {demand_mw!r}")
    lam_lo = b + 2.0 * a * p_min
    lam_hi = b + 2.0 * a * p_max
    low, high = float(p_min.sum()), float(p_max.sum())
    if demand_mw <= low:
        lam, p, feasible = float(lam_lo.min()), p_min.copy(), _close(demand_mw, low)
    elif demand_mw >= high:
        lam, p, feasible = float(lam_hi.max()), p_max.copy(), _close(demand_mw, high)
    else:
        bps = np.unique(np.concatenate([lam_lo, lam_hi]))
        total = np.clip((bps[:, None] - b) / (2.0 * a), p_min, p_max).sum(axis=1)
        k = int(np.searchsorted(total, demand_mw, side="left"))  # total[k-1] < demand <= total[k]
        k = min(max(k, 1), len(bps) - 1)
        t0, t1 = total[k - 1], total[k]
        lam = float(bps[k - 1] + (demand_mw - t0) * (bps[k] - bps[k - 1]) / (t1 - t0)) if t1 > t0 else float(bps[k])
        p = dispatch_at(lam, a, b, p_min, p_max)
        feasible = True
    cost = float((a * p * p + b * p).sum())
    return DispatchResult(p_mw=p, lambda_usd_per_mwh=lam, cost_usd_per_h=cost, feasible=feasible)
