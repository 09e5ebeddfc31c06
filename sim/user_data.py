"""The user's own hourly data: series read from a CSV file, checked, in the units the plant works in.

Checked, each problem one line naming the file and the row (the header is row 1): the time column and every
named column exist; every cell holds a finite number (an empty cell is a gap); powers are not negative and
``pu`` values lie in [0, 1]; times are ISO 8601, hourly without gaps (one hour apart on the wall clock of the
data's time zone, or in absolute time: both conventions occur around daylight-saving changes), starting on
1 January 00:00; and each calendar year is complete (8760 rows, 8784 in a leap year). At most two years: the
first trains, the second tests (one year does both).

Units: ``MW``, ``kW``, ``W`` become per unit of the series' largest value (the scenario's ratings scale them,
as the shipped data's); ``pu`` stays; ``USD/kWh`` becomes USD/MWh.
"""
from __future__ import annotations

import csv
import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from sim.errors import ScenarioError
from sim.scenario import DataConfig

__all__ = ["UserData", "load_user_data"]

_HOUR = dt.timedelta(hours=1)
_MAX_BYTES = 256 << 20
"""A data file larger than this is refused (two years of hourly rows are a few MB)."""


@dataclass(frozen=True)
class UserData:
    """The user's series per calendar year: ``years[k][name]`` (k = 0: training, k = 1: test when given)."""

    path: str
    time_zone: str
    calendar_years: tuple[int, ...]
    years: tuple[dict[str, np.ndarray], ...]

    def year(self, index: int) -> dict[str, np.ndarray]:
        """The series of the training (``index`` 0) or test (1) year; with one year, that year for both."""
        return self.years[min(index, len(self.years) - 1)]


def _fail(path: str, row: int | None, message: str) -> ScenarioError:
    return ScenarioError(f"{path}{'' if row is None else f' row {row}'}: {message}")


def _parse_time(path: str, row: int, text: str, tz: ZoneInfo) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise _fail(path, row, f"time {text!r} is not an ISO 8601 time (e.g. 2023-01-01T00:00)") from None
    return moment.replace(tzinfo=tz) if moment.tzinfo is None else moment.astimezone(tz)


def _hourly(previous: dt.datetime, moment: dt.datetime) -> bool:
    """One hour later on the wall clock or in absolute time."""
    wall = moment.replace(tzinfo=None) - previous.replace(tzinfo=None)
    absolute = moment.astimezone(dt.UTC) - previous.astimezone(dt.UTC)
    return _HOUR in (wall, absolute)


def _number(path: str, row: int, column: str, text: str) -> float:
    if not text.strip():
        raise _fail(path, row, f"column {column!r} is empty (a gap: every hour needs a value)")
    try:
        value = float(text)
    except ValueError:
        raise _fail(path, row, f"column {column!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise _fail(path, row, f"column {column!r}: {text.strip()} is not a finite number")
    return value


def _read(config: DataConfig) -> tuple[list[dt.datetime], dict[str, np.ndarray], list[int]]:
    """Times, raw values per series name, and the file row of every value."""
    path = config.path
    try:
        if Path(path).stat().st_size > _MAX_BYTES:
            raise _fail(path, None, f"larger than {_MAX_BYTES >> 20} MB")
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise _fail(path, None, f"cannot read the data file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise _fail(path, None, f"not UTF-8 text (byte {exc.start})") from None
    reader = csv.reader(text.splitlines())
    header = [h.strip() for h in next(reader, [])]
    if not header:
        raise _fail(path, None, "empty file (a header row is needed)")
    wanted = {config.time_column: "time column", **{s.column: f"column of series {n!r}" for n, s in config.series.items()}}
    for column, what in wanted.items():
        if column not in header:
            raise _fail(path, 1, f"no {what} {column!r} (columns: {', '.join(header)})")
    time_at = header.index(config.time_column)
    at = {name: header.index(s.column) for name, s in config.series.items()}
    tz = ZoneInfo(config.time_zone)
    times: list[dt.datetime] = []
    values: dict[str, list[float]] = {name: [] for name in at}
    rows: list[int] = []
    for row, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue  # a blank line (e.g. at the end)
        if len(cells) < len(header):
            raise _fail(path, row, f"{len(cells)} cells, the header has {len(header)}")
        moment = _parse_time(path, row, cells[time_at], tz)
        if times and not _hourly(times[-1], moment):
            raise _fail(path, row, f"time {cells[time_at].strip()} is not one hour after the row before's "
                                   f"({times[-1].replace(tzinfo=None).isoformat(timespec='minutes')}): rows must be "
                                   "hourly, without gaps")
        times.append(moment)
        rows.append(row)
        for name, k in at.items():
            values[name].append(_number(path, row, header[k], cells[k]))
    if not times:
        raise _fail(path, None, "no data rows")
    return times, {name: np.array(v) for name, v in values.items()}, rows


def _convert(config: DataConfig, raw: dict[str, np.ndarray], rows: list[int]) -> dict[str, np.ndarray]:
    """Each series in the plant's units (per unit, USD/MWh), with its range checked."""
    out: dict[str, np.ndarray] = {}
    for name, series in config.series.items():
        values = raw[name]
        if series.unit in ("USD/MWh", "USD/kWh"):
            out[name] = values * (1000.0 if series.unit == "USD/kWh" else 1.0)
            continue
        negative = np.flatnonzero(values < 0)
        if negative.size:
            k = int(negative[0])
            raise _fail(config.path, rows[k], f"column {series.column!r}: {values[k]:g} {series.unit} is negative "
                                              "(loads, PV and wind are >= 0)")
        if series.unit == "pu":
            above = np.flatnonzero(values > 1.0)
            if above.size:
                k = int(above[0])
                raise _fail(config.path, rows[k], f"column {series.column!r}: {values[k]:g} pu is above 1 (per unit "
                                                  "of the rating: give MW, kW or W to have it scaled)")
            out[name] = values.copy()
            continue
        peak = float(values.max())
        if peak <= 0.0:
            raise _fail(config.path, None, f"column {series.column!r} is zero throughout: nothing to scale")
        out[name] = values / peak
    return out


def _split_years(config: DataConfig, times: list[dt.datetime], rows: list[int]) -> tuple[list[int], list[slice]]:
    """The calendar years and their row slices; each year complete, at most two."""
    first = times[0]
    if (first.month, first.day, first.hour, first.minute) != (1, 1, 0, 0):
        raise _fail(config.path, rows[0], f"the data starts at {first.replace(tzinfo=None).isoformat(timespec='minutes')}"
                                          f" ({config.time_zone}); it must start on 1 January 00:00 (the hours of the "
                                          "year are positions in it)")
    years: list[int] = []
    slices: list[slice] = []
    start = 0
    for k in range(1, len(times) + 1):
        if k == len(times) or times[k].year != times[start].year:
            year = times[start].year
            expected = 8784 if (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)) else 8760
            if k - start != expected:
                raise _fail(config.path, rows[k - 1], f"{year} has {k - start} hourly rows, a whole year has {expected}")
            years.append(year)
            slices.append(slice(start, k))
            start = k
    if len(years) > 2:
        raise _fail(config.path, rows[slices[2].start], f"{len(years)} years of data; give one (training and test) or "
                                                        "two (training, then test)")
    return years, slices


def _load(config: DataConfig) -> UserData:
    times, raw, rows = _read(config)
    years, slices = _split_years(config, times, rows)
    series = _convert(config, raw, rows)
    per_year = []
    for part in slices:
        year = {}
        for name, values in series.items():
            chunk = values[part].copy()
            chunk.setflags(write=False)
            year[name] = chunk
        per_year.append(year)
    return UserData(config.path, config.time_zone, tuple(years), tuple(per_year))


_CACHE: dict[tuple[object, ...], UserData] = {}
_CACHED = 4


def load_user_data(config: DataConfig) -> UserData:
    """The user's series, read and checked once per file version; ScenarioError naming the file and row."""
    try:
        mtime_ns = Path(config.path).stat().st_mtime_ns
    except OSError as exc:
        raise _fail(config.path, None, f"cannot read the data file: {exc.strerror or exc}") from None
    key = (config.model_dump_json(), mtime_ns)
    data = _CACHE.get(key)
    if data is None:
        data = _load(config)
        while len(_CACHE) >= _CACHED:
            del _CACHE[next(iter(_CACHE))]
        _CACHE[key] = data
    return data
