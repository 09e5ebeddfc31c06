"""The hourly profiles (load, solar, wind, price), resampled to the step: the shipped ones and the user's own.

The shipped data (CAISO OASIS 2023-2024) is loaded from the package's own files
(``sim/data/caiso_hourly_2023_2024.csv.gz``), never downloaded. Its rows are hours of California local time
(``sim.scenario.SHIPPED_TIME_ZONE``), 24 a day. Load, solar and wind are per unit of each series' maximum;
price is USD/MWh and can be negative. 2023 is the training year, 2024 the test year.

A scenario's ``[data]`` adds the user's series by name (``sim.user_data``): its first calendar year stands for
the training year, its second (or, with one, the same) for the test year.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal

import numpy as np

from sim.errors import ScenarioError
from sim.scenario import DataConfig

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


def _resample(column: np.ndarray, step_hours: float) -> np.ndarray:
    """An hourly column linearly interpolated (or averaged over whole hours) onto steps of ``step_hours``."""
    if step_hours >= 1.0:  # mean over each block of whole hours
        k = round(step_hours)
        resampled: np.ndarray = column[: len(column) // k * k].reshape(-1, k).mean(axis=1)
    else:
        hours = np.arange(len(column), dtype=np.float64)
        resampled = np.interp(np.arange(0.0, len(column), step_hours), hours, column)
    resampled.setflags(write=False)
    return resampled


def load_profiles(year: int, names: list[str], step_hours: float = 1.0, data: DataConfig | None = None) -> Profiles:
    """The named columns for one year, linearly interpolated (or averaged) onto steps of ``step_hours``.

    ``year`` must be one of ``Year`` (ValueError otherwise; checked here, so callers may pass any int);
    a name that is neither a column of the shipped data nor a series of ``data`` (the user's) is a ScenarioError,
    and so is a year of the user's data whose length differs from the shipped year's it is used with.
    """
    header, values = _hourly()
    own = set(data.series) if data is not None else set()
    unknown = sorted(set(names) - set(header) - own)
    if unknown:
        extra = f"; the data's series: {', '.join(sorted(own))}" if own else ""
        raise ScenarioError(f"unknown profile columns {unknown}; available: {', '.join(header)}{extra}")
    if year not in (2023, 2024):
        raise ValueError(f"year must be 2023 (training) or 2024 (test), got {year}")
    rows = slice(0, HOURS_2023) if year == 2023 else slice(HOURS_2023, len(values))
    hourly = values[rows]
    user = None
    if data is not None and own & set(names):
        from sim.user_data import load_user_data

        user = load_user_data(data).year(0 if year == 2023 else 1)
    series: dict[str, np.ndarray] = {}
    for name in dict.fromkeys(names):
        column = user[name] if user is not None and name in user else hourly[:, header.index(name)]
        series[name] = _resample(column, step_hours)
    lengths = {name: len(s) for name, s in series.items()}
    if len(set(lengths.values())) > 1:
        raise ScenarioError(f"the profiles of the {year} year differ in length ({lengths}): the user's year and the "
                            f"shipped {year} must both have {len(hourly)} hours, or give every series of the "
                            "scenario from the data file")
    return Profiles(year=year, step_hours=step_hours, series=series)
