"""The field set-up in a real rig: gateways and the operator each on the wall-clock timer (no bus clock),
emulated Modbus devices, a real Mosquitto. They must meet on every step: fresh prices, no failsafe."""
from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from heron_edge.brokers import MqttBroker
from heron_edge.messages import PriceBody, agent_topic, decode
from heron_edge.runtime.mosquitto import MosquittoProcess
from heron_edge.runtime.wallclock import hour_of_year_index, step_at, zone
from sim.profiles import load_profiles
from sim.scenario import load_scenario
from tests.conftest import run_async
from tests.runtime.rig import Rig, wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.modbus, pytest.mark.slow]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_gateways_and_operator_meet_on_the_timer_clock(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    period = 0.4

    async def scenario() -> None:
        async with Rig(mosquitto.url, tmp_path, clock="timer", steps=200, period_s=period, step_timeout_s=0.25,
                       upstream_timeout_s=3 * period) as rig:
            journals = {name: tmp_path / f"journal-{name}.jsonl" for name in rig.gateways}
            await wait_for(lambda: all(len(_rows(j)) >= 4 for j in journals.values()), 30, "4 cycles per gateway")
            late_at_start = {name: g.counters().get("late", 0) for name, g in rig.gateways.items()}  # peers joining
            await wait_for(lambda: all(len(_rows(j)) >= 12 for j in journals.values()), 30, "12 cycles per gateway")
            snapshot = {name: _rows(j) for name, j in journals.items()}
            price_steps = {name: g.proxy.price_step for name, g in rig.gateways.items()}
            settled_steps = {r["step"] for rows in snapshot.values() for r in rows[4:]}
            # the operator writes a step's ledger line and counts it once the meter read is done, which may
            # finish after a gateway's journal line: wait for both, do not assume them
            await wait_for(lambda: rig.op_runtime.stats.steps >= 12, 30, "12 operator steps")
            await wait_for(lambda: settled_steps <= {r["step"] for r in _rows(rig.ledger)}, 10,
                           "a ledger line for every settled step")
            ledger = {row["step"]: row for row in _rows(rig.ledger)}
            now = step_at(period)
            for name, g in rig.gateways.items():
                rows = snapshot[name]
                steps = [r["step"] for r in rows]
                assert all(b > a for a, b in itertools.pairwise(steps)), f"{name}: steps must increase"
                assert now - 20 <= steps[0] and steps[-1] <= now  # wall-clock steps, not the plant's
                settled = rows[4:]  # the first cycles may run before everybody is subscribed
                assert not any(r["failsafe"] for r in settled), f"{name}: failsafe on the timer clock"
                assert all(r["step"] in ledger for r in settled), f"{name}: a step the operator never priced"
                assert price_steps[name] - steps[-1] in (0, 1), (name, price_steps[name], steps[-1])
                # price and peers arrive within milliseconds of the boundary: at most two slow steps under load
                assert g.counters().get("late", 0) - late_at_start[name] <= 2, (name, g.counters())
            for row in ledger.values():
                assert row["price_usd_per_mwh"] == rig.wall_price(row["step"])
            assert not rig.op_runtime.stats.step_failed

    run_async(scenario(), timeout=90)


def test_operator_cli_on_the_timer_clock_prices_the_time_of_year(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    """``heron-edge operator --clock timer`` as a process: one price per wall-clock step, the profile's at that
    time of year, a ledger line each, and a clean exit on SIGTERM."""
    period = 0.25
    ledger = tmp_path / "ledger.jsonl"

    async def listen() -> list:
        broker = MqttBroker(mosquitto.url, client_id="listener")
        await broker.connect()
        prices = await broker.subscribe(agent_topic("field", "system_operator", "price"))
        process = subprocess.Popen([sys.executable, "-m", "heron_edge.cli", "operator", "--broker", mosquitto.url,
                                    "--site", "field", "--clock", "timer", "--period-s", str(period),
                                    "--ledger", str(ledger)], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            await wait_for(lambda: len(prices) >= 5, 30, "5 prices")
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.get_running_loop().run_in_executor(None, process.communicate, None, 10)
        assert process.returncode == 0, stderr
        messages = [decode(d.payload) for d in prices.drain()]
        await broker.close()
        return messages

    messages = run_async(listen(), timeout=60)
    scenario = load_scenario("ieee34_3x13")
    profile = load_profiles(2023, [scenario.price_profile], scenario.step_hours).series[scenario.price_profile]
    steps = [m.step for m in messages]
    assert steps == list(range(steps[0], steps[0] + len(steps)))
    for m in messages:
        assert isinstance(m.body, PriceBody) and m.sender == "system_operator"
        expected = float(profile[hour_of_year_index(m.step * period, scenario.step_hours, len(profile),
                                                    zone(scenario.time_zone))])  # the data's (California) clock
        assert np.isclose(m.body.price_usd_per_mwh, expected)
    assert [r["step"] for r in _rows(ledger)][: len(steps)] == steps
