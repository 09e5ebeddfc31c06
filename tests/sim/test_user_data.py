"""A scenario driven by the user's own hourly CSV: read, converted, run by the plant; every bad file is one
line naming the file and the row."""
from __future__ import annotations

import datetime as dt
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from sim.errors import ScenarioError
from sim.plant import Plant
from sim.profiles import load_profiles
from sim.scenario import SHIPPED_TIME_ZONE, load_scenario

HEADER = "time,load_kw,pv_kw,wind_kw,price_eur_mwh"


def _rows(year: int = 2023, hours: int = 8760) -> list[str]:
    start = dt.datetime(year, 1, 1)
    rows = []
    for h in range(hours):
        t = start + dt.timedelta(hours=h)
        daylight = max(0.0, math.sin(math.pi * (t.hour - 6) / 12)) if 6 <= t.hour <= 18 else 0.0
        rows.append(f"{t.isoformat(timespec='minutes')},{40 + 20 * daylight:.3f},{80 * daylight:.3f},{10 + h % 7},"
                    f"{30 + t.hour:.2f}")
    return rows


def _scenario(tmp_path: Path, rows: list[str], *, unit: str = "kW", price_unit: str = "USD/MWh",
              load_series: str = "site_load") -> Path:
    (tmp_path / "site.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    mgs = "".join(f"""
[[microgrids]]
name = "{name}"
load_profile = "{load_series}"
solar_profile = "site_pv"
wind_profile = "site_wind"
""" for name in ("mg1", "mg2", "mg3"))
    text = f"""name = "my_site"
feeder_load_profile = "{load_series}"
price_profile = "day_ahead"

[network]
kind = "ieee34_3x13"
attach_buses = {{ mg1 = "806", mg2 = "808", mg3 = "812" }}
{mgs}
[data]
path = "site.csv"
time_zone = "Europe/Berlin"
[data.series.site_load]
column = "load_kw"
unit = "{unit}"
[data.series.site_pv]
column = "pv_kw"
unit = "{unit}"
[data.series.site_wind]
column = "wind_kw"
unit = "{unit}"
[data.series.day_ahead]
column = "price_eur_mwh"
unit = "{price_unit}"
"""
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_a_scenario_runs_on_the_users_data(tmp_path: Path) -> None:
    scenario = load_scenario(_scenario(tmp_path, _rows()))
    assert scenario.time_zone == "Europe/Berlin" and load_scenario("ieee34_3x13").time_zone == SHIPPED_TIME_ZONE
    assert scenario.data is not None and Path(scenario.data.path) == tmp_path / "site.csv"  # relative to the scenario
    profiles = load_profiles(2023, ["site_load", "site_pv", "day_ahead", "wind_np15"], 1.0, scenario.data)
    load = profiles.series["site_load"]
    assert len(load) == 8760 and load.max() == 1.0 and load[0] == pytest.approx(40 / 60)  # kW -> per unit of the peak
    assert profiles.series["day_ahead"][13] == pytest.approx(43.0)  # USD/MWh as given, hour 13
    assert profiles.series["site_pv"][:6].max() == 0.0 and profiles.series["site_pv"][12] == 1.0
    assert load_profiles(2024, ["site_load"], 1.0, scenario.data).series["site_load"][5] == load[5]  # one year: both
    plant = Plant(scenario)
    m = plant.reset(year=2023, start_step=12)
    assert plant.price() == pytest.approx(42.0)
    forecast = plant.forecast()
    assert forecast.pv_mw[0] == pytest.approx(scenario.microgrids[0].pv_mw * profiles.series["site_pv"][12])
    assert np.isfinite(m.exchange_mw).all()
    quarter = load_profiles(2023, ["site_load"], 0.25, scenario.data).series["site_load"]
    assert len(quarter) == 4 * 8760 and quarter[4] == load[1]  # interpolated onto 15-minute steps


@pytest.mark.parametrize(("edit", "row", "message"), [
    (lambda r: r[:100] + r[101:], 102, "time 2023-01-05T05:00 is not one hour after the row before's (2023-01-05T03:00)"),
    (lambda r: [*r[:9], r[9].replace(",50.000,", ",,", 1) if ",50.000," in r[9] else "2023-01-01T09:00,,1,1,1",
                *r[10:]], 11, "column 'load_kw' is empty (a gap"),
    (lambda r: [*r[:4], "2023-01-01T04:00,abc,0,0,30", *r[5:]], 6, "column 'load_kw': 'abc' is not a number"),
    (lambda r: [*r[:4], "2023-01-01T04:00,40,0,nan,30", *r[5:]], 6, "column 'wind_kw': nan is not a finite number"),
    (lambda r: [*r[:4], "2023-01-01T04:00,40,-3,1,30", *r[5:]], 6, "column 'pv_kw': -3 kW is negative"),
    (lambda r: r[:-24], 8737, "2023 has 8736 hourly rows, a whole year has 8760"),
    (lambda r: r[3:], 2, "the data starts at 2023-01-01T03:00 (Europe/Berlin); it must start on 1 January 00:00"),
    (lambda r: [*r[:4], "2023-01-01T04:00,40,0", *r[5:]], 6, "3 cells, the header has 5"),
    (lambda r: [*r[:4], "4 o'clock,40,0,0,30", *r[5:]], 6, "time \"4 o'clock\" is not an ISO 8601 time"),
])
def test_bad_series_are_one_line_naming_the_file_and_row(tmp_path: Path, edit, row: int, message: str) -> None:
    with pytest.raises(ScenarioError) as info:  # checked as the scenario file is loaded
        load_scenario(_scenario(tmp_path, edit(_rows())))
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{tmp_path / 'site.csv'} row {row}: ") and message in text, text


def test_units_and_columns_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="price_profile = 'day_ahead': data series in kW"):
        load_scenario(_scenario(tmp_path, _rows(), price_unit="kW"))
    with pytest.raises(ValidationError, match="unit"):
        load_scenario(_scenario(tmp_path, _rows(), unit="kWh"))
    with pytest.raises(ValidationError, match="feeder_load_profile = 'day_ahead': data series in USD/MWh"):
        load_scenario(_scenario(tmp_path, _rows(), load_series="day_ahead"))
    with pytest.raises(ScenarioError, match=r"row 2: column 'load_kw': 40 pu is above 1"):
        load_scenario(_scenario(tmp_path, _rows(), unit="pu"))
    scenario = load_scenario(_scenario(tmp_path, _rows()))
    (tmp_path / "site.csv").write_text("time,load\n2023-01-01T00:00,1\n")
    with pytest.raises(ScenarioError, match=r"site.csv row 1: no column of series 'site_load' 'load_kw' \(columns: time, load\)"):
        load_profiles(2023, ["site_load"], 1.0, scenario.data)


def test_two_years_train_and_test_and_a_leap_year_needs_8784_rows(tmp_path: Path) -> None:
    scenario = load_scenario(_scenario(tmp_path, _rows(2023) + _rows(2024, 8784)))
    train = load_profiles(2023, ["site_wind"], 1.0, scenario.data).series["site_wind"]
    test = load_profiles(2024, ["site_wind"], 1.0, scenario.data).series["site_wind"]
    assert (len(train), len(test)) == (8760, 8784)
    with pytest.raises(ScenarioError, match=r"the profiles of the 2023 year differ in length"):
        load_profiles(2023, ["site_wind", "wind_np15"], 1.0,
                      load_scenario(_scenario(tmp_path, _rows(2024, 8784))).data)
    with pytest.raises(ScenarioError, match="2024 has 8760 hourly rows, a whole year has 8784"):
        load_scenario(_scenario(tmp_path, _rows(2024, 8760)))


def test_daylight_saving_gaps_in_local_times_are_hourly(tmp_path: Path) -> None:
    """Local times with the spring-forward hour missing and the fall-back hour repeated are hourly in absolute
    time; UTC offsets in the times are converted into the data's zone."""
    rows = []
    moment = dt.datetime(2023, 1, 1, tzinfo=dt.UTC) - dt.timedelta(hours=1)  # 00:00 in Berlin (CET, UTC+1)
    for h in range(8760):
        t = (moment + dt.timedelta(hours=h)).isoformat(timespec="minutes")
        rows.append(f"{t},40,1,1,30")
    scenario = load_scenario(_scenario(tmp_path, rows))
    assert len(load_profiles(2023, ["site_load"], 1.0, scenario.data).series["site_load"]) == 8760


def test_the_cli_says_a_bad_series_in_one_line(tmp_path: Path) -> None:
    path = _scenario(tmp_path, _rows()[:50])
    result = subprocess.run([sys.executable, "-m", "heron_edge.cli", "simulate", "--scenario", str(path), "--days", "1",
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "site.csv row 51: 2023 has 50 hourly rows" in lines[0], result.stderr
