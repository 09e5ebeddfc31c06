"""Our client against our emulator over real loopback sockets (127.0.0.1, free ports)."""
from __future__ import annotations

import asyncio
import socket
import time

import pytest

from firmware_bridge import (
    DeviceClosedError,
    DeviceConnectionError,
    DeviceExceptionResponse,
    DeviceTimeoutError,
    Emulator,
    ModbusDevice,
    ModbusDeviceConfig,
    ModbusLink,
    SetpointError,
)
from firmware_bridge.models import BatteryModel, PVInverterModel, battery_nameplate, inverter_nameplate
from tests.firmware_bridge.conftest import run

pytestmark = pytest.mark.modbus


def battery_emulator(**kwargs: object) -> Emulator:
    return Emulator(BatteryModel(battery_nameplate(p_max_w=5000, energy_wh=10000), soc=0.5), **kwargs)  # type: ignore[arg-type]


def pv_emulator() -> Emulator:
    return Emulator(PVInverterModel(inverter_nameplate(p_max_w=10000), time_of_day=lambda: 12 * 3600.0))


def config(port: int, **kwargs: object) -> ModbusDeviceConfig:
    values: dict[str, object] = {"port": port, "timeout_s": 0.3, "retries": 1, "backoff_s": 0.02}
    values.update(kwargs)
    return ModbusDeviceConfig(**values)  # type: ignore[arg-type]


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_discovery_and_telemetry_of_a_battery() -> None:
    async def scenario() -> None:
        async with battery_emulator() as emu, ModbusDevice(config(emu.port)) as device:
            info = await device.discover()
            assert [loc.model_id for loc in info.models] == [1, 701, 702, 704, 713]
            assert (info.manufacturer, info.serial) == ("heron-edge", "BAT-0001")
            assert info.storage
            assert (info.limits.p_min_w, info.limits.p_max_w) == (-5000.0, 5000.0)  # type: ignore[union-attr]
            before = time.time()
            t = await device.read_telemetry()
            assert not t.stale and t.error is None and t.timestamp >= before
            assert t.p_w == 0.0 and t.v_v == 400.0 and t.hz == 50.0
            assert t.soc_pct == 50.0

    run(scenario())


def test_setpoints_reach_the_device_and_are_clamped_to_the_nameplate() -> None:
    async def scenario() -> None:
        async with battery_emulator() as emu, ModbusDevice(config(emu.port)) as device:
            result = await device.write_setpoint(-2000.0)
            assert (result.written_w, result.clamped) == (-2000.0, False)
            assert (await device.read_telemetry()).p_w == -2000.0
            result = await device.write_setpoint(1e6)
            assert (result.written_w, result.clamped) == (5000.0, True)
            assert emu.device.image[704].value("WSet") == 5000.0
            assert (await device.read_telemetry()).p_w == 5000.0
            result = await device.write_setpoint(-7500.0)
            assert result.written_w == -5000.0
            writes = emu.device.writes
            with pytest.raises(SetpointError):  # a device error, not a ValueError
                await device.write_setpoint(float("nan"))
            assert emu.device.writes == writes  # nothing written
            await device.release_setpoint()
            assert (await device.read_telemetry()).p_w == 0.0

        async with pv_emulator() as emu, ModbusDevice(config(emu.port), role="pv") as device:
            assert (await device.read_telemetry()).p_w == pytest.approx(10000.0)
            result = await device.write_setpoint(-3000.0)  # a PV inverter cannot absorb: the lowest limit, 1 %
            assert (result.written_w, result.limit_pct, result.clamped) == (100.0, 1.0, True)
            result = await device.write_setpoint(4000.0)  # a cap, as 40 % of 702 WMax
            assert (result.written_w, result.limit_pct) == (4000.0, 40.0) and "704 WMaxLimPct" in result.capability
            assert (await device.read_telemetry()).p_w == 4000.0
            await device.write_setpoint(None)  # no cap: the limit disabled
            assert (await device.read_telemetry()).p_w == pytest.approx(10000.0)

    run(scenario())


def test_revert_timer_fires_on_the_device_without_any_polling() -> None:
    async def scenario() -> None:
        async with battery_emulator() as emu, ModbusDevice(config(emu.port)) as device:
            await device.write_setpoint(3000.0, revert_s=1)
            assert emu.device.model.measure().p_w == 3000.0
            await asyncio.sleep(0.5)
            await device.write_setpoint(3000.0, revert_s=1)  # a rewrite keeps it alive
            await asyncio.sleep(0.7)
            assert emu.device.reverts == 0
            await asyncio.sleep(0.5)  # no request now: the device's own timer must act
            assert emu.device.reverts == 1
            assert emu.device.model.measure().p_w == 0.0
            assert (await device.read_telemetry()).p_w == 0.0

    run(scenario())


def test_emulator_restart_mid_run_client_reconnects() -> None:
    async def scenario() -> None:
        emu = battery_emulator()
        await emu.start()
        try:
            async with ModbusDevice(config(emu.port)) as device:
                await device.write_setpoint(1000.0)
                assert not (await device.read_telemetry()).stale
                await emu.stop()
                down = await device.read_telemetry()
                assert down.stale and down.error and down.p_w == 1000.0
                with pytest.raises(DeviceConnectionError):
                    await device.write_setpoint(500.0)
                await emu.start()  # same port
                up = await device.read_telemetry()
                assert not up.stale and up.timestamp > down.timestamp
                await device.write_setpoint(-1500.0)
                assert (await device.read_telemetry()).p_w == -1500.0
                assert device.link.stats.connects >= 2
        finally:
            await emu.stop()
            await emu.stop()  # twice is harmless

    run(scenario())


def test_dead_port_gives_a_clear_error_and_a_stale_value() -> None:
    async def scenario() -> None:
        async with ModbusDevice(config(closed_port(), timeout_s=0.2)) as device:
            t = await device.read_telemetry()
            assert t.stale and t.timestamp == 0.0 and t.p_w is None
            assert "cannot connect" in (t.error or "")
            with pytest.raises(DeviceConnectionError):
                await device.write_setpoint(100.0)

    run(scenario())


def test_a_silent_device_times_out_after_the_retries() -> None:
    async def scenario() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)
            while await reader.read(1024):
                pass  # reads requests, never answers

        server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with ModbusDevice(config(port, timeout_s=0.2, retries=2, backoff_s=0.01)) as device:
                started = time.perf_counter()
                t = await device.read_telemetry()
                elapsed = time.perf_counter() - started
                assert t.stale and "no answer" in (t.error or "")
                assert device.link.stats.timeouts == 3
                assert 0.6 <= elapsed < 2.0
                with pytest.raises(DeviceTimeoutError):
                    await device.discover()
        finally:
            for writer in accepted:
                writer.close()
            server.close()
            await server.wait_closed()

    run(scenario())


def test_cancelling_a_request_stays_a_cancellation() -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with ModbusDevice(config(port, timeout_s=5.0)) as device:
                task = asyncio.create_task(device.discover())
                await asyncio.sleep(0.3)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        finally:
            server.close()

    run(scenario())


def test_wrong_unit_id_is_an_exception_response_and_nothing_is_written() -> None:
    async def scenario() -> None:
        async with battery_emulator(unit_id=1) as emu, ModbusDevice(config(emu.port, unit_id=2)) as device:
            t = await device.read_telemetry()
            assert t.stale and "exception 11" in (t.error or "")
            with pytest.raises(DeviceExceptionResponse) as caught:
                await device.write_setpoint(1000.0)
            assert caught.value.exception_code == 11
            assert emu.device.writes == 0

    run(scenario())


def test_min_gap_between_requests_on_a_shared_link() -> None:
    async def scenario() -> None:
        async with battery_emulator() as emu:
            cfg = config(emu.port, min_gap_s=0.05)
            async with ModbusLink(cfg) as link:
                first, second = ModbusDevice(cfg, link=link), ModbusDevice(cfg, link=link)
                async with first, second:
                    await first.read_telemetry()  # discovery + telemetry
                    n = link.stats.requests
                    started = time.perf_counter()
                    await asyncio.gather(first.read_telemetry(), second.read_telemetry())
                    elapsed = time.perf_counter() - started
                    made = link.stats.requests - n
                assert link.connected  # the devices did not close the shared link
            assert made >= 4
            assert elapsed >= 0.05 * (made - 0.5)

    run(scenario())


def test_rtu_framing_by_configuration() -> None:
    async def scenario() -> None:
        async with battery_emulator(framing="rtu") as emu:
            cfg = ModbusDeviceConfig(transport="rtu", serial_port=f"socket://127.0.0.1:{emu.port}", timeout_s=0.5)
            async with ModbusDevice(cfg) as device:
                await device.write_setpoint(-1000.0)
                t = await device.read_telemetry()
                assert not t.stale and t.p_w == -1000.0

    run(scenario())


def test_lifecycle_misuse_says_so() -> None:
    async def scenario() -> None:
        async with battery_emulator() as emu:
            device = ModbusDevice(config(emu.port))
            with pytest.raises(DeviceClosedError, match="async with"):
                await device.read_telemetry()
            async with device:
                assert not (await device.read_telemetry()).stale
            await device.close()  # twice is harmless
            with pytest.raises(DeviceClosedError):
                await device.write_setpoint(0.0)
            with pytest.raises(RuntimeError):
                await emu.start()  # already running

    run(scenario())


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        ModbusDeviceConfig(transport="rtu")  # no serial port
    with pytest.raises(ValueError):
        ModbusDeviceConfig(unit_id=256)
    assert ModbusDeviceConfig(unit_id=0).unit_id == 0  # TCP devices answer at 0 or 255 too
    with pytest.raises(ValueError, match="RTU unit_id"):
        ModbusDeviceConfig(transport="rtu", serial_port="/dev/ttyUSB0", unit_id=0)
    with pytest.raises(ValueError):
        ModbusDeviceConfig(port=502, timeout=3)  # type: ignore[call-arg]  # unknown key


def test_a_link_closed_during_its_retries_does_not_reconnect() -> None:
    """close() while a request waits out its backoff: the request ends with DeviceClosedError, and the
    link opens no new connection, even when the device has come up meanwhile."""
    async def scenario() -> None:
        async with battery_emulator() as emu:
            port = emu.port
        link = ModbusLink(config(port, retries=3, backoff_s=0.2))  # nothing listens on the port now
        request = asyncio.ensure_future(link.read(40000, 2, unit_id=1))
        await asyncio.sleep(0.1)  # the first attempt failed; the link waits out its backoff
        async with battery_emulator(port=port):  # the device is back
            await link.close()
            with pytest.raises(DeviceClosedError):
                await request
            assert not link.connected and link.stats.connects == 1

    run(scenario())
