"""The forecast sources (persistence, profile, mqtt) and the data time zone of the hour features."""
from __future__ import annotations

import datetime as dt

import pytest

from heron_edge.brokers import InMemoryBroker
from heron_edge.errors import ConfigError
from heron_edge.messages import ForecastBody, ForecastValues, agent_topic, make_envelope
from heron_edge.runtime.config import parse_gateway_config
from heron_edge.runtime.forecast import MqttForecast, PersistenceForecast, ProfileForecast, SiteMeasurement
from heron_edge.runtime.wallclock import hour_of_year_index, step_of_day_function, zone
from tests.conftest import run_async


def _m(load: float, pv: float = 0.0, wind: float = 0.0) -> SiteMeasurement:
    return SiteMeasurement(load, pv, wind)


def test_persistence_is_the_last_measurement() -> None:
    source = PersistenceForecast()
    f = run_async(source.forecast(7, _m(0.8, 0.1, -1e-4)))
    assert (f.step, f.load_mw, f.pv_mw, f.wind_mw, f.source) == (7, 0.8, 0.1, 0.0, "persistence")  # no negative PV
    assert source.stats.given == {"persistence": 1}


def test_profile_scales_the_site_shape_by_recent_measurements() -> None:
    load = [1.0] * 12 + [2.0] * 12  # the site's load doubles in the afternoon
    pv = [0.0] * 6 + [1.0] * 12 + [0.0] * 6  # daylight 6-18
    wind = [1.0] * 24
    source = ProfileForecast((load, pv, wind), window_steps=3, step_of_day=lambda step: step % 24)

    async def run() -> list:
        out = []
        # night: PV's shape is 0 over the window -> no scale yet, so the whole forecast is persistence
        out.append(await source.forecast(3, _m(0.5, 0.0, 0.2)))
        out.append(await source.forecast(7, _m(0.5, 0.3, 0.2)))  # measured in step 6 (shape 1 for load and PV)
        out.append(await source.forecast(13, _m(1.0, 0.3, 0.2)))  # measured in step 12 (load shape 2)
        return out

    night, morning, afternoon = run_async(run())
    assert night.source == "persistence" and (night.load_mw, night.pv_mw) == (0.5, 0.0)
    assert morning.source == "profile"
    # load: measured 0.5 + 0.5 over shapes 1 + 1 (steps 2 and 6) -> scale 0.5; step 7's shape 1 -> 0.5
    assert morning.load_mw == pytest.approx(0.5)
    assert morning.pv_mw == pytest.approx(0.3)  # 0.3 over shape 1 (step 2's shape 0 adds nothing)
    # window of 3: steps 2, 6, 12 -> load (0.5 + 0.5 + 1.0) / (1 + 1 + 2) = 0.5; step 13's shape 2 -> 1.0
    assert afternoon.load_mw == pytest.approx(1.0) and afternoon.wind_mw == pytest.approx(0.2)
    assert source.stats.given == {"persistence": 1, "profile": 2}


def test_a_series_the_site_does_not_have_is_forecast_zero() -> None:
    source = ProfileForecast(([1.0] * 24, [1.0] * 24, [0.0] * 24), window_steps=2, step_of_day=lambda step: step % 24)

    async def run() -> list:
        return [await source.forecast(step, _m(0.4, 0.1, 0.05)) for step in (10, 11)]

    first, second = run_async(run())
    assert first.wind_mw == 0.0 and second.wind_mw == 0.0  # no wind turbine: never the measured noise
    assert second.source == "profile" and second.load_mw == pytest.approx(0.4)


def test_profile_needs_one_value_per_step_of_the_day() -> None:
    with pytest.raises(ConfigError, match="forecast: a profile needs cycle.steps_per_day \\(24\\) values"):
        parse_gateway_config(_config(forecast={"kind": "profile", "load": [1.0] * 12, "pv": [0.0] * 12,
                                               "wind": [0.0] * 12}))
    with pytest.raises(ConfigError, match="load, pv and wind need as many values"):
        parse_gateway_config(_config(forecast={"kind": "profile", "load": [1.0] * 24, "pv": [0.0] * 24,
                                               "wind": [0.0] * 23}))
    with pytest.raises(ConfigError, match="forecast.mqtt.sender"):
        parse_gateway_config(_config(forecast={"kind": "mqtt"}))
    assert parse_gateway_config(_config()).forecast.kind == "persistence"  # the default


def test_mqtt_forecast_takes_this_step_and_falls_back_when_late() -> None:
    broker = InMemoryBroker()
    topic = agent_topic("s", "fc", "forecast")
    source = MqttForecast(site="s", agent_id="mg1", sender="fc", timeout_s=0.05, limit_mw=10.0)

    async def send(step: int, **values: ForecastValues) -> None:
        await broker.publish(topic, make_envelope("fc", ForecastBody(microgrids=values), step=step))

    async def run() -> list:
        await broker.connect()
        await source.start(broker)
        out = []
        await send(4, mg1=ForecastValues(load_mw=0.9, pv_mw=0.1, wind_mw=0.05), mg2=ForecastValues(load_mw=1, pv_mw=0, wind_mw=0))
        out.append(await source.forecast(4, _m(0.5)))
        await send(5, mg2=ForecastValues(load_mw=1.0, pv_mw=0.0, wind_mw=0.0))  # another microgrid's only
        out.append(await source.forecast(5, _m(0.6)))
        await send(6, mg1=ForecastValues(load_mw=99.0, pv_mw=0.0, wind_mw=0.0))  # beyond the site's limit
        out.append(await source.forecast(6, _m(0.7)))
        await broker.publish(agent_topic("s", "fc", "forecast"),  # a forecast sent in another's name
                             make_envelope("mg2", ForecastBody(microgrids={"mg1": ForecastValues(
                                 load_mw=0.1, pv_mw=0.0, wind_mw=0.0)}), step=7))
        out.append(await source.forecast(7, _m(0.8)))
        await send(10**9, mg1=ForecastValues(load_mw=0.5, pv_mw=0.0, wind_mw=0.0))  # far ahead: not kept
        await send(9, mg1=ForecastValues(load_mw=0.3, pv_mw=0.0, wind_mw=0.0))  # one step early: kept for step 9
        out.append(await source.forecast(8, _m(0.9)))
        out.append(await source.forecast(9, _m(0.9)))
        await source.close()
        return out

    exact, other, bounded, forged, late, early = run_async(run())
    assert (exact.load_mw, exact.pv_mw, exact.wind_mw, exact.source) == (0.9, 0.1, 0.05, "mqtt")
    assert (other.load_mw, other.source) == (0.6, "persistence")
    assert (bounded.load_mw, bounded.source) == (0.7, "persistence")
    assert (forged.load_mw, forged.source) == (0.8, "persistence")
    assert (late.source, early.load_mw, early.source) == ("persistence", 0.3, "mqtt")
    assert source.stats.late == 4 and source.stats.given == {"mqtt": 2, "persistence": 4}
    assert source.stats.rejected == {"bounds": 2, "sender": 1}


# ------------------------------------------------------------------ the data time zone
def _utc(*args: int) -> float:
    return dt.datetime(*args, tzinfo=dt.UTC).timestamp()


def test_timer_hour_features_are_the_data_time_zone_hours() -> None:
    """At 19:30 UTC on 1 July it is 12:30 in California (PDT, UTC-7) and 11:30 on 1 January's clock offset
    (PST, UTC-8): a policy trained on the shipped (California local) data must see hour 12, not 19."""
    period = 3600.0
    la = step_of_day_function(timer=True, period_s=period, steps_per_day=24, time_zone="America/Los_Angeles")
    utc = step_of_day_function(timer=True, period_s=period, steps_per_day=24, time_zone="UTC")
    summer = int(_utc(2026, 7, 1, 19, 30) // period)
    winter = int(_utc(2026, 1, 15, 19, 30) // period)
    assert (la(summer), utc(summer)) == (12, 19)
    assert la(winter) == 11
    quarter = step_of_day_function(timer=True, period_s=900.0, steps_per_day=96, time_zone="Europe/Berlin")
    assert quarter(int(_utc(2026, 7, 1, 19, 30) // 900)) == 21 * 4 + 2  # 21:30 CEST
    bus = step_of_day_function(timer=False, period_s=0.5, steps_per_day=24, time_zone="Europe/Berlin")
    assert bus(4000) == 4000 % 24  # a bus clock's steps are the data's own
    # the price's position in the year follows the same wall clock
    assert hour_of_year_index(_utc(2026, 1, 1, 7, 0), 1.0, 8760, zone("America/Los_Angeles")) == 8759  # 23:00 31 Dec
    assert hour_of_year_index(_utc(2026, 1, 1, 8, 0), 1.0, 8760, zone("America/Los_Angeles")) == 0


def test_an_unknown_time_zone_is_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_gateway_config(_config(cycle={"time_zone": "Mars/Olympus_Mons"}))
    assert "\n" not in str(info.value) and "cycle: Value error, unknown time zone 'Mars/Olympus_Mons'" in str(info.value)


def _config(**extra: object) -> dict:
    return {"agent_id": "mg1", "site": "s", "peers": ["mg1"], "battery_p_max_mw": 0.005,
            "broker": {"url": "mqtt://127.0.0.1:1883"},
            "devices": {"battery": {"host": "127.0.0.1", "port": 1502}, "meter": {"host": "127.0.0.1", "port": 1503}},
            "policy": {"kind": "rule", "cost_a_usd_per_mw2h": 0.0, "cost_b_usd_per_mwh": 1000.0}, **extra}
