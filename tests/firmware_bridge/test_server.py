"""What firmware_bridge's Modbus server answers, seen by a plain pymodbus client: the register map
decides reads and writes, other function codes and unit ids get the right exception codes, and a
broken map is a device failure rather than a short answer."""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
from pymodbus.client import AsyncModbusTcpClient

from firmware_bridge import Emulator
from firmware_bridge.models import BatteryModel, battery_nameplate
from firmware_bridge.server import HoldingRegisters, ModbusServer, ServerError
from firmware_bridge.sunspec import BASE_ADDRESS, SUNS_MARKER
from firmware_bridge.sunspec_device import ExceptionCode
from tests.firmware_bridge.conftest import run

pytestmark = pytest.mark.modbus


class TenRegisters:
    """Registers 100..109 holding 1000 + their offset; writes accepted at 100..104 only; a read of
    109 returns one register too few (a broken map)."""

    span = (100, 10)

    def __init__(self) -> None:
        self.values = [1000 + i for i in range(10)]
        self.writes: list[tuple[int, list[int]]] = []

    def read(self, address: int, count: int) -> list[int] | ExceptionCode:
        begin = address - 100
        if address + count - 1 == 109:
            return self.values[begin : begin + count - 1]
        return self.values[begin : begin + count]

    def write(self, address: int, values: Sequence[int]) -> ExceptionCode | None:
        if address + len(values) > 105:
            return ExceptionCode.ILLEGAL_VALUE
        self.writes.append((address, list(values)))
        self.values[address - 100 : address - 100 + len(values)] = values
        return None


class TenRegisterServer(ModbusServer):
    """A ModbusServer over a ``TenRegisters`` map (unit 7)."""

    def __init__(self, registers: TenRegisters) -> None:
        super().__init__(unit_id=7)
        self.registers = registers

    def _registers(self) -> HoldingRegisters:
        return self.registers


@asynccontextmanager
async def client_of(port: int) -> AsyncIterator[AsyncModbusTcpClient]:
    """A connected pymodbus client on 127.0.0.1:port (no retries: every answer is the server's first)."""
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2.0, retries=0)
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


def _exception_code(response: object) -> int | None:
    """The Modbus exception code of a response, None for a normal answer."""
    return int(getattr(response, "exception_code", 0)) or None


def test_the_map_decides_reads_and_writes() -> None:
    async def scenario() -> None:
        registers = TenRegisters()
        async with TenRegisterServer(registers) as server, client_of(server.port) as client:
            read = await client.read_holding_registers(100, count=3, device_id=7)
            assert _exception_code(read) is None and read.registers == [1000, 1001, 1002]
            written = await client.write_registers(101, [5, 6], device_id=7)
            assert _exception_code(written) is None and registers.writes == [(101, [5, 6])]
            assert (await client.read_holding_registers(100, count=3, device_id=7)).registers == [1000, 5, 6]
            single = await client.write_register(102, 9, device_id=7)  # function 6: write, then read back
            assert _exception_code(single) is None and registers.values[2] == 9
            refused = await client.write_registers(104, [1, 2], device_id=7)  # the map says no
            assert _exception_code(refused) == 3 and registers.writes[-1] == (102, [9])
            outside = await client.read_holding_registers(108, count=5, device_id=7)  # past the span
            assert _exception_code(outside) == 2
            short = await client.read_holding_registers(105, count=5, device_id=7)  # the map's short answer
            assert _exception_code(short) == 4

    run(scenario())


def test_other_functions_and_units_are_refused() -> None:
    async def scenario() -> None:
        registers = TenRegisters()
        async with TenRegisterServer(registers) as server, client_of(server.port) as client:
            assert _exception_code(await client.read_input_registers(100, count=2, device_id=7)) == 1
            assert _exception_code(await client.read_coils(100, count=8, device_id=7)) == 1
            assert _exception_code(await client.write_coil(100, True, device_id=7)) == 1
            other = await client.read_holding_registers(100, count=2, device_id=8)  # a unit nobody serves
            assert _exception_code(other) == 11
            assert _exception_code(await client.write_registers(100, [1], device_id=8)) == 11
            assert registers.writes == []

    run(scenario())


def test_emulator_serves_its_image_and_nothing_else() -> None:
    async def scenario() -> None:
        async with Emulator(BatteryModel(battery_nameplate())) as emu, client_of(emu.port) as client:
            head = await client.read_holding_registers(BASE_ADDRESS, count=4, device_id=1)
            assert head.registers[:2] == list(SUNS_MARKER) and head.registers[2] == 1
            end = BASE_ADDRESS + len(emu.device.image.registers)
            assert (await client.read_holding_registers(end - 2, count=2, device_id=1)).registers == [0xFFFF, 0]
            assert _exception_code(await client.read_holding_registers(end - 1, count=2, device_id=1)) == 2
            assert _exception_code(await client.read_holding_registers(0, count=1, device_id=1)) == 2
            assert _exception_code(await client.write_registers(BASE_ADDRESS, [0, 0], device_id=1)) == 2  # 'SunS'
            assert emu.device.writes == 0

    run(scenario())


def test_a_map_outside_the_address_space_cannot_start() -> None:
    class Nowhere(TenRegisters):
        span = (0xFFFF, 2)

    async def scenario() -> None:
        server = TenRegisterServer(Nowhere())
        with pytest.raises(ServerError, match="16-bit address space"):
            await server.start()
        assert not server.running

    run(scenario())
