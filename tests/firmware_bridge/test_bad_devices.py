"""Devices that are not what we expect: no 'SunS' marker, exception answers, broken chains.

Each must give a clear error and a stale value, never a crash and never a write.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from firmware_bridge import DeviceExceptionResponse, ModbusDevice, ModbusDeviceConfig, NotSunSpecError
from firmware_bridge.sunspec import SUNS_MARKER
from tests.firmware_bridge.conftest import run

pytestmark = pytest.mark.modbus


_WRITE_FUNCTIONS = frozenset({5, 6, 15, 16, 22, 23})  # coils and holding registers, single and multiple


@dataclass
class Recorder:
    """Every write request a plain server received: (function code, address), whatever it answered."""

    writes: list[tuple[int, int]] = field(default_factory=list)

    def trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        """pymodbus's PDU trace hook: note incoming writes, pass every PDU on unchanged."""
        if not sending and pdu.function_code in _WRITE_FUNCTIONS:
            self.writes.append((pdu.function_code, getattr(pdu, "address", -1)))
        return pdu


@asynccontextmanager
async def plain_server(start: int, registers: list[int]) -> AsyncIterator[tuple[int, Recorder]]:
    """A bare pymodbus server (unit 1) whose holding registers ``start..`` hold ``registers`` (protocol
    addresses, nothing mapped elsewhere); the recorder sees every write request it receives."""
    recorder = Recorder()
    device = SimDevice(1, simdata=[SimData(start, values=registers, datatype=DataType.REGISTERS)])
    server = ModbusTcpServer(device, address=("127.0.0.1", 0), trace_pdu=recorder.trace_pdu)
    await server.serve_forever(background=True)
    try:
        listener = server.transport
        assert isinstance(listener, asyncio.Server)
        yield listener.sockets[0].getsockname()[1], recorder
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves shutdown() unannotated


def _config(port: int) -> ModbusDeviceConfig:
    return ModbusDeviceConfig(port=port, timeout_s=0.3, retries=0)


def test_no_suns_marker() -> None:
    async def scenario() -> None:
        async with plain_server(40000, [0x1234] * 200) as (port, recorder):
            async with ModbusDevice(_config(port)) as device:
                with pytest.raises(NotSunSpecError, match="no 'SunS' marker at 40000"):
                    await device.discover()
                t = await device.read_telemetry()
                assert t.stale and "SunS" in (t.error or "")
                with pytest.raises(NotSunSpecError):
                    await device.write_setpoint(1000.0)
            assert recorder.writes == []

    run(scenario())


def test_illegal_address_at_the_base_means_no_sunspec_map() -> None:
    async def scenario() -> None:
        async with plain_server(0, [0] * 100) as (port, recorder):  # nothing mapped near 40000
            async with ModbusDevice(_config(port)) as device:
                with pytest.raises(NotSunSpecError, match="exception 2"):
                    await device.discover()
                with pytest.raises(NotSunSpecError):
                    await device.write_setpoint(-500.0)
                assert (await device.read_telemetry()).stale
            assert recorder.writes == []

    run(scenario())


def test_a_model_chain_that_runs_off_the_map() -> None:
    async def scenario() -> None:
        # 'SunS', then a model 701 claiming 153 registers, and nothing mapped after them
        async with plain_server(40000, [*SUNS_MARKER, 701, 153] + [0] * 20) as (port, recorder):
            async with ModbusDevice(_config(port)) as device:
                with pytest.raises(DeviceExceptionResponse) as caught:
                    await device.discover()
                assert caught.value.exception_code == 2
                t = await device.read_telemetry()
                assert t.stale and t.p_w is None
                with pytest.raises(DeviceExceptionResponse):
                    await device.write_setpoint(100.0)
            assert recorder.writes == []

    run(scenario())


def test_a_device_without_setpoint_control_is_never_written() -> None:
    async def scenario() -> None:
        # 'SunS', an empty model 713 (7 registers, all 'not implemented'), the end marker
        image = [*SUNS_MARKER, 713, 7, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0x8000, 0x8000, 0xFFFF, 0]
        async with plain_server(40000, image) as (port, recorder):
            async with ModbusDevice(_config(port)) as device:
                info = await device.discover()
                assert [loc.model_id for loc in info.models] == [713] and info.limits is None
                t = await device.read_telemetry()
                assert t.stale and "701" in (t.error or "")
                with pytest.raises(Exception, match="704"):
                    await device.write_setpoint(100.0)
                storage = await device.read_model(713)
                assert storage.value("SoC") is None  # not implemented, not 6553.5 %
            assert recorder.writes == []

    run(scenario())


def test_a_model_chain_that_ends_at_the_top_of_the_address_space() -> None:
    """A chain whose last model fills the map up to 65535 leaves no room for the end marker: our own
    NotSunSpecError, never pymodbus's ValueError for address 65536."""
    async def scenario() -> None:
        base = 0x10000 - 2 - 2 - 12  # 'SunS', then model 1 claiming 12 registers up to 65535
        async with plain_server(base, [*SUNS_MARKER, 1, 12] + [0] * 12) as (port, recorder):
            config = ModbusDeviceConfig(port=port, timeout_s=0.3, retries=0, base_address=base)
            async with ModbusDevice(config) as device:
                with pytest.raises(NotSunSpecError, match="broken SunSpec model chain"):
                    await device.discover()
                t = await device.read_telemetry()
                assert t.stale and t.p_w is None
            assert recorder.writes == []

    run(scenario())
