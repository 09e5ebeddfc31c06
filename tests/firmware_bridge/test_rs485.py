"""A real RS-485 bus: Modbus RTU frames over a pty per device, joined by a hub that gives every device what the
master sends and the master what any device answers (what the two wires of a multi-drop bus do). Three devices
at unit ids 1, 2 and 3 read concurrently through one shared link: every read of a 120-read run succeeds."""
from __future__ import annotations

import asyncio
import os
import select
import struct
import threading
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from firmware_bridge import ModbusDeviceConfig
from firmware_bridge.links import LinkPool
from firmware_bridge.regmap import RegisterTables, RegmapServer, make_device
from heron_edge.runtime.config import parse_gateway_config
from heron_edge.runtime.modbus_io import ModbusDeviceIO
from tests.firmware_bridge.conftest import run

pytestmark = pytest.mark.modbus


class PtyBus:
    """A master pty and one pty per device; a thread copies the master's bytes to every device and each device's
    bytes to the master. ``master`` and ``devices`` are the tty paths serial ports open."""

    def __init__(self, n_devices: int) -> None:
        self._ptys = [os.openpty() for _ in range(n_devices + 1)]
        for _, slave in self._ptys:
            tty.setraw(slave)  # no echo, no line discipline: bytes pass as they are
        self.master = os.ttyname(self._ptys[0][1])
        self.devices = [os.ttyname(slave) for _, slave in self._ptys[1:]]
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._relay, name="pty bus", daemon=True)
        self.frames = 0

    def _relay(self) -> None:
        master = self._ptys[0][0]
        devices = [m for m, _ in self._ptys[1:]]
        while True:
            ready, _, _ = select.select([master, *devices, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # a side closed its tty for a moment (a port reopened)
                    continue
                if fd == master:
                    self.frames += 1
                    for device in devices:
                        os.write(device, data)
                else:
                    os.write(master, data)

    def __enter__(self) -> PtyBus:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        for fd in (*(fd for pair in self._ptys for fd in pair), self._stop_r, self._stop_w):
            os.close(fd)


@contextmanager
def pty_bus(n_devices: int) -> Iterator[PtyBus]:
    with PtyBus(n_devices) as bus:
        yield bus


def _f32(value: float) -> list[int]:
    return list(struct.unpack(">2H", struct.pack(">f", value)))


def _tables(unit: int) -> RegisterTables:
    """Device ``unit``: input registers 0..3 hold two float32 values that name it."""
    return RegisterTables({**dict(zip([("input", 0), ("input", 1)], _f32(1000.0 * unit), strict=True)),
                           **dict(zip([("input", 2), ("input", 3)], _f32(50.0), strict=True)),
                           ("holding", 10): unit})


def _map_file(tmp_path: Path) -> str:
    path = tmp_path / "bus-meter.toml"
    path.write_text('[device]\nvendor = "test"\nmodel = "bus meter"\n'
                    '[[points]]\nname = "power"\nrole = "meter.p_w"\ntable = "input"\naddress = 0\ntype = "f32"\n'
                    '[[points]]\nname = "hz"\nrole = "meter.hz"\ntable = "input"\naddress = 2\ntype = "f32"\n')
    return str(path)


def test_three_devices_share_one_rtu_link_and_every_read_succeeds(tmp_path: Path) -> None:
    regmap = _map_file(tmp_path)

    async def scenario() -> tuple[int, int, int]:
        with pty_bus(3) as bus:
            servers = [RegmapServer({unit: _tables(unit)}, serial_port=path, baudrate=19200)
                       for unit, path in zip((1, 2, 3), bus.devices, strict=True)]
            for server in servers:
                await server.start()
            pool = LinkPool()
            try:
                configs = [ModbusDeviceConfig(transport="rtu", serial_port=bus.master, baudrate=19200, unit_id=unit,
                                              map=regmap, timeout_s=1.0, retries=0, min_gap_s=0.002)
                           for unit in (1, 2, 3)]
                devices = [make_device(c, role="meter", link=pool.link(c)) for c in configs]
                assert len(pool.links) == 1
                ok = 0
                for device in devices:
                    await device.open()
                for _ in range(40):  # 3 devices x 40 rounds = 120 reads, each round concurrent
                    readings = await asyncio.gather(*(d.read_telemetry() for d in devices))
                    for unit, reading in zip((1, 2, 3), readings, strict=True):
                        assert not reading.stale, reading.error
                        assert reading.p_w == 1000.0 * unit and reading.hz == 50.0
                        ok += 1
                link = pool.links[0]
                for device in devices:
                    await device.close()
                return ok, link.stats.requests, link.stats.failures
            finally:
                await pool.close()
                for server in servers:
                    await server.stop()

    ok, requests, failures = run(scenario(), timeout=60)
    assert ok == 120
    assert failures == 0
    assert requests == 120  # one request per read: power and frequency are adjacent, batched


def test_a_gateway_config_drives_a_meter_and_a_battery_on_one_rs485_link(tmp_path: Path) -> None:
    """``[links.bus]`` (RTU) named by an SDM630 meter at unit 1 and a Victron Multi at unit 2: the gateway's DeviceIO
    reads both and commands the battery through the one serial link."""
    meter = RegisterTables({("input", a + i): w for a, value in ((12, 100.0), (14, 100.0), (16, 100.0), (52, -900.0),
                                                                 (60, 0.0), (70, 50.0), (200, 400.0))
                            for i, w in enumerate(_f32(value))})  # type: ignore[arg-type]
    battery = RegisterTables({("holding", 9): 5000, ("holding", 12): 100, ("holding", 30): 500, ("holding", 37): 0},
                             writable=[("holding", 37)])  # type: ignore[arg-type]

    async def scenario() -> tuple[list[float], int, int]:
        with pty_bus(2) as bus:
            servers = [RegmapServer({1: meter}, serial_port=bus.devices[0], baudrate=19200),
                       RegmapServer({2: battery}, serial_port=bus.devices[1], baudrate=19200)]
            for server in servers:
                await server.start()
            try:
                config = parse_gateway_config({
                    "agent_id": "mg1", "site": "s", "peers": ["mg1"], "battery_p_max_mw": 0.005,
                    "broker": {"url": "mqtt://127.0.0.1:1"},
                    "links": {"bus": {"transport": "rtu", "serial_port": bus.master, "baudrate": 19200,
                                      "timeout_s": 1.0, "retries": 0, "min_gap_s": 0.002}},
                    "devices": {"meter": {"link": "bus", "unit_id": 1, "map": "eastron-sdm630"},
                                "battery": {"link": "bus", "unit_id": 2, "map": "victron-gx-ess", "keepalive": True}},
                    "policy": {"cost_a_usd_per_mw2h": 0.0, "cost_b_usd_per_mwh": 100.0},
                    "cycle": {"clock": "timer", "period_s": 3600.0, "step_timeout_s": 1.0},
                    "outbox": {"path": str(tmp_path / "outbox.sqlite")}})
                async with ModbusDeviceIO(config.devices) as io:
                    assert len(io.links.links) == 1
                    rows = [await io.read() for _ in range(5)]
                    await io.write(0.003, 0.0, 0.0, 0.0)  # discharge 3 kW
                    return [float(v) for v in rows[-1]], battery.values["holding", 37], io.links.links[0].stats.failures
            finally:
                for server in servers:
                    await server.stop()

    row, setpoint, failures = run(scenario(), timeout=60)
    assert row[3] == pytest.approx(0.5) and row[5] == pytest.approx(-0.001)  # 50 %, charging 1 kW (100 x 10 W in)
    assert row[6] == pytest.approx(-0.0009)  # exporting 900 W at the meter
    assert setpoint == (-3000) & 0xFFFF and failures == 0


def test_probe_reads_a_map_device_over_the_serial_line() -> None:
    """``heron-edge probe --map eastron-sdm630 --serial PORT --baud B --unit 2`` on the bus, another device at unit 1."""
    import argparse

    from heron_edge.commands import probe

    meter = RegisterTables({("input", a + i): w for a, value in ((0, 230.0), (12, 10.0), (52, 1500.0), (70, 50.0),
                                                                 (200, 400.0))
                            for i, w in enumerate(_f32(value))})  # type: ignore[arg-type]

    async def scenario() -> probe.MapReport:
        with pty_bus(2) as bus:
            servers = [RegmapServer({1: _tables(1)}, serial_port=bus.devices[0], baudrate=38400),
                       RegmapServer({2: meter}, serial_port=bus.devices[1], baudrate=38400)]
            for server in servers:
                await server.start()
            try:
                parser = argparse.ArgumentParser()
                probe.add_arguments(parser)
                report = await probe.probe(parser.parse_args(["--map", "eastron-sdm630", "--serial", bus.master,
                                                              "--baud", "38400", "--unit", "2", "--timeout-s", "1"]))
            finally:
                for server in servers:
                    await server.stop()
        assert isinstance(report, probe.MapReport)
        return report

    report = run(scenario(), timeout=60)
    assert report.where.endswith("(rtu)") and report.unit == 2 and report.role == "meter"
    assert report.points["total_power"]["value"] == 1500.0 and report.points["phase_1_voltage"]["value"] == 230.0
    assert report.readings["p_w"]["value"] == 1500.0 and report.readings["v_v"]["value"] == 400.0
