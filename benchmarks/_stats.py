"""Shared summary statistics for the benchmark scripts (imported as a sibling module)."""
from __future__ import annotations

import statistics
from collections.abc import Sequence


def summary_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """Median, p99 and mean of ``samples_s`` (seconds) in milliseconds, and the sample count."""
    ordered = sorted(samples_s)
    return {
        "median_ms": round(statistics.median(ordered) * 1e3, 4),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3, 4),
        "mean_ms": round(statistics.fmean(ordered) * 1e3, 4),
        "n": len(ordered),
    }
