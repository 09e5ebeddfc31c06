"""The shipped hourly profiles (CAISO OASIS 2023-2024: load, solar, wind, price), resampled to the step.

Loaded from the package's own files (``sim/data/caiso_hourly_2023_2024.csv.gz``), never downloaded.
Load, solar and wind are per unit of each series' maximum; price is USD/MWh and can be negative.
2023 is the training year, 2024 the test year.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal

import numpy as np

from sim.errors import ScenarioError

DATA_FILE = "caiso_hourly_2023_2024.csv.gz"
HOURS_2023 = 8760
Year = Literal[2023, 2024]
"""The years the shipped data covers (2023 training, 2024 test)."""


@lru_cache(maxsize=1)
def _hourly() -> tuple[tuple[str, ...], np.ndarray]:
    """Column names (without 'time') and the hourly float64 matrix, read once per process."""
    with resources.files("sim.data").joinpath(DATA_FILE).open("rb") as raw, gzip.open(raw, "rt") as text:
        header = text.readline().strip().split(",")
        values = np.loadtxt(text, delimiter=",", usecols=range(1, len(header)), dtype=np.float64)
    values.setflags(write=False)
    return tuple(header[1:]), values


def columns() -> tuple[str, ...]:
    """The profile names a scenario may refer to."""
    return _hourly()[0]


@dataclass(frozen=True)
class Profiles:
    """One year of profiles at the scenario's step: ``series[name][t]`` for step t of the year."""

    year: int
    step_hours: float
    series: dict[str, np.ndarray]

    @property
    def n_steps(self) -> int:
        return len(next(iter(self.series.values())))

    @property
    def steps_per_day(self) -> int:
        return round(24 / self.step_hours)


def load_profiles(year: int, names: list[str], step_hours: float = 1.0) -> Profiles:
    """The named columns for one year, linearly interpolated (or averaged) onto steps of ``step_hours``.

    ``year`` must be one of ``Year`` (ValueError otherwise; checked here, so callers may pass any int);
    a name that is not a column of the data is a ScenarioError.
    """
    header, values = _hourly()
    unknown = sorted(set(names) - set(header))
    if unknown:
        raise ScenarioError(f"unknown profile columns {unknown}; available: {', '.join(header)}")
    if year not in (2023, 2024):
        raise ValueError(f"year must be 2023 (training) or 2024 (test), got {year}")
    rows = slice(0, HOURS_2023) if year == 2023 else slice(HOURS_2023, len(values))
    hourly = values[rows]
    hours = np.arange(len(hourly), dtype=np.float64)
    series: dict[str, np.ndarray] = {}
    for name in dict.fromkeys(names):
        column = hourly[:, header.index(name)]
        if step_hours >= 1.0:  # mean over each block of whole hours
            k = round(step_hours)
            resampled = column[: len(column) // k * k].reshape(-1, k).mean(axis=1)
        else:
            resampled = np.interp(np.arange(0.0, len(column), step_hours), hours, column)
        resampled.setflags(write=False)
        series[name] = resampled
    return Profiles(year=year, step_hours=step_hours, series=series)
