"""Serve register tables over Modbus TCP or RTU: any number of unit ids on one server, as on an RS-485 bus.

``RegisterTables`` are a device's four tables (holding, input, coil, discrete) as plain address -> value maps, so
a test can write a vendor document's registers by hand; ``MapEmulation`` fills them from a register map with
plausible values and a small model (a battery or generator's measured power follows its setpoint, a PV output
follows its cap), which is what ``heron-edge emulate --map`` serves. ``RegmapServer`` serves them: per table, the
addresses from the lowest to the highest the tables use, reads of those nobody defined answering 0 (as most
devices answer reserved registers), others exception 02 (illegal data address); writes go only where the tables
allow them; unit ids it does not serve get no answer.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Literal, Self

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from firmware_bridge.capabilities import Role
from firmware_bridge.errors import ConfigurationError, DeviceClosedError
from firmware_bridge.regmap.codec import decode, encode
from firmware_bridge.regmap.schema import Point, RegisterMap, Table
from firmware_bridge.server import ServerError

__all__ = ["MapEmulation", "RegisterTables", "RegmapServer"]

log = logging.getLogger(__name__)

_TABLE_OF = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 3: "holding", 6: "holding", 16: "holding",
             4: "input"}
"""Function code -> table (22, 23: mask write and read/write are not served)."""


class RegisterTables:
    """One device's four tables. ``writable``: the (table, address) pairs a client may write (None: every holding
    register and coil). ``on_write(table, address, values)`` runs after an accepted write (a device's model)."""

    def __init__(self, values: Mapping[tuple[Table, int], int] | None = None, *,
                 writable: Iterable[tuple[Table, int]] | None = None) -> None:
        self.values: dict[tuple[Table, int], int] = dict(values or {})
        for (table, address), value in self.values.items():
            _check(table, address, value)
        self.writable = None if writable is None else set(writable)
        self.on_write: Callable[[Table, int, list[int]], None] | None = None
        self.requests = 0

    def set(self, table: Table, address: int, words: Iterable[int]) -> None:
        """Put ``words`` at ``address`` onward."""
        for i, value in enumerate(words):
            _check(table, address + i, value)
            self.values[table, address + i] = value

    def read(self, table: Table, address: int, count: int) -> list[int]:
        self.requests += 1
        return [self.values.get((table, address + i), 0) for i in range(count)]

    def write(self, table: Table, address: int, values: list[int]) -> bool:
        """Apply a write; False (nothing changed) when an address is not writable."""
        self.requests += 1
        if table not in ("holding", "coil"):
            return False
        if self.writable is not None and any((table, address + i) not in self.writable for i in range(len(values))):
            return False
        self.set(table, address, values)
        if self.on_write is not None:
            self.on_write(table, address, values)
        return True


def _check(table: Table, address: int, value: int) -> None:
    top = 1 if table in ("coil", "discrete") else 0xFFFF
    if not 0 <= address <= 0xFFFF or not 0 <= value <= top:
        raise ConfigurationError(f"{table} {address} = {value}: outside the table")


def _action(tables: RegisterTables, delay_s: float) -> Callable[..., object]:
    """The pymodbus ``SimDevice.action``: every access goes to ``tables`` (the block is only pymodbus's copy)."""

    async def action(func_code: int, start: int, address: int, count: int, block: list[int],
                     values: list[int] | list[bool] | None) -> ExcCodes | None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        table: Table | None = _TABLE_OF.get(func_code)  # type: ignore[assignment]
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        bits = table in ("coil", "discrete")
        if values is not None:
            ok = tables.write(table, address, [int(v) for v in values])
            return None if ok else ExcCodes.ILLEGAL_ADDRESS
        if bits:  # pymodbus packs 16 bits per block register; ``count`` counts those registers
            first = (address // 16) * 16
            flags = tables.read(table, first, 16 * count)
            for r in range(count):
                block[address // 16 - start + r] = sum(bit << i for i, bit in enumerate(flags[16 * r : 16 * r + 16]))
            return None
        block[address - start : address - start + count] = tables.read(table, address, count)
        return None

    return action


def _span(tables: RegisterTables, table: Table) -> tuple[int, int]:
    """(first, count) of the addresses ``table`` defines or accepts writes at (at least one register)."""
    addresses = [a for t, a in tables.values if t == table]
    addresses += [a for t, a in tables.writable or () if t == table]
    if not addresses:
        return 0, 1
    return min(addresses), max(addresses) - min(addresses) + 1


def _sim_device(unit_id: int, tables: RegisterTables, delay_s: float) -> SimDevice:
    """One unit's pymodbus device: a block per table over the addresses the tables use (outside them: exception
    02); pymodbus addresses coils and discrete inputs in blocks of 16 bits per register."""
    blocks: list[list[SimData]] = []
    order: tuple[Table, ...] = ("coil", "discrete", "holding", "input")
    for table in order:
        first, count = _span(tables, table)
        if table in ("coil", "discrete"):
            first, count = first // 16, (first + count + 15) // 16 - first // 16
            blocks.append([SimData(first, count=count, datatype=DataType.BITS)])
        else:
            blocks.append([SimData(first, count=count, datatype=DataType.REGISTERS)])
    return SimDevice(unit_id, simdata=(blocks[0], blocks[1], blocks[2], blocks[3]),
                     action=_action(tables, delay_s))  # type: ignore[arg-type]


class RegmapServer:
    """Serves ``units`` (unit id -> tables) on Modbus TCP (``host:port``, port 0 picks one) or, with
    ``serial_port``, Modbus RTU on that serial device (an RS-485 adapter, or a pty in tests). Restartable."""

    def __init__(self, units: Mapping[int, RegisterTables], *, host: str = "127.0.0.1", port: int = 0,
                 serial_port: str | None = None, baudrate: int = 9600, parity: Literal["N", "E", "O"] = "N",
                 stopbits: int = 1, bytesize: int = 8, reply_delay_s: float = 0.0) -> None:
        top = 247 if serial_port is not None else 255  # 248..255 are reserved on a serial line
        if not units or any(not 1 <= u <= top for u in units):
            raise ConfigurationError(f"unit ids {sorted(units)}: need at least one, each 1..{top}")
        self.units = dict(units)
        self.host = host
        self.serial_port = serial_port
        self._line = (baudrate, parity, stopbits, bytesize)
        self._delay = reply_delay_s
        self._requested_port = port
        self._port: int | None = None
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    @property
    def port(self) -> int:
        """The TCP port bound."""
        if self._port is None:
            raise DeviceClosedError("RegmapServer is not listening on TCP")
        return self._port

    def _ours(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        """pymodbus's PDU hook: a request for a unit id this server does not serve is dropped unanswered (on a bus,
        it is another device's); pymodbus handles a request only when this returns it."""
        if not sending and pdu.dev_id not in self.units:
            return None  # type: ignore[return-value]
        return pdu

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("RegmapServer already running")
        devices = [_sim_device(u, t, self._delay) for u, t in self.units.items()]
        server: ModbusTcpServer | ModbusSerialServer
        if self.serial_port is not None:
            baudrate, parity, stopbits, bytesize = self._line
            server = ModbusSerialServer(devices, framer=FramerType.RTU, port=self.serial_port, baudrate=baudrate,
                                        parity=parity, stopbits=stopbits, bytesize=bytesize, trace_pdu=self._ours)
        else:
            port = self._port if self._port is not None else self._requested_port
            server = ModbusTcpServer(devices, framer=FramerType.SOCKET, address=(self.host, port),
                                     trace_pdu=self._ours)
        try:
            await server.serve_forever(background=True)
        except (RuntimeError, OSError) as exc:
            server.close()
            raise ServerError(f"cannot serve on {self.serial_port or f'{self.host}:{self._requested_port}'}: "
                              f"{exc}") from exc
        if self.serial_port is None:
            listener: object = server.transport
            if not isinstance(listener, asyncio.Server) or not listener.sockets:
                server.close()
                raise ServerError("pymodbus returned no listening socket")
            self._port = int(listener.sockets[0].getsockname()[1])
        self._server = server

    async def stop(self) -> None:
        """Stop serving; twice is harmless."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


_DEFAULTS: dict[str, float] = {
    "p_w": 1500.0, "q_var": 100.0, "v_v": 400.0, "hz": 50.0, "soc_pct": 50.0, "energy_available_wh": 5000.0,
    "dc_w": 1600.0, "phase_a_w": 500.0, "phase_b_w": 500.0, "phase_c_w": 500.0, "p_set_w": 0.0,
}
"""What a role field reads when the map gives no ``example``."""
_PV_AVAILABLE_W = 4000.0


class MapEmulation:
    """A device that serves ``regmap``: every point at its ``example`` value (else a plausible one for its role
    field, else 0), writable points writable (others refuse writes with exception 02), and a small model: a battery's or generator's measured power follows the setpoint written, a PV / wind
    output follows its cap (the map's sign and scale are honoured both ways)."""

    def __init__(self, regmap: RegisterMap) -> None:
        self.regmap = regmap
        writable = [(p.table, p.address + i) for p in regmap.points if p.writable for i in range(p.size)]
        self.tables = RegisterTables(writable=writable)
        self.tables.on_write = self._written
        self._power: dict[Role, float] = {}
        for point in regmap.points:
            if point.scale_register is None:
                self._put(point, self._initial(point))
        for point in regmap.points:  # scale registers are in place now
            if point.scale_register is not None:
                self._put(point, self._initial(point))

    def _initial(self, point: Point) -> float | str:
        if point.example is not None:
            return point.example
        if point.role is not None:
            return _DEFAULTS.get(point.role.partition(".")[2], 0.0)
        return "" if point.type == "string" else 0.0

    def _scale_power(self, point: Point) -> int:
        if point.scale_register is None:
            return 0
        sf = self.regmap.point(point.scale_register)
        word = self.tables.values.get((sf.table, sf.address), 0)
        return word - 0x10000 if sf.type == "i16" and word >= 0x8000 else word

    def _put(self, point: Point, value: float | str) -> None:
        self.tables.set(point.table, point.address, encode(point, self.regmap.device, value, self._scale_power(point)))

    def _written(self, table: Table, address: int, values: list[int]) -> None:
        for point in self.regmap.points:
            if point.role is None or point.table != table or not point.address <= address < point.address + point.size:
                continue
            role, _, field = point.role.partition(".")
            words = [self.tables.values.get((table, point.address + i), 0) for i in range(point.size)]
            value = decode(point, self.regmap.device, words, self._scale_power(point))
            if not isinstance(value, float):
                continue
            measured = self.regmap.feeding(f"{role}.p_w")
            if measured is None:
                continue
            if field == "p_set_w":
                self._put(measured, value)
            elif field == "p_limit_w":
                self._put(measured, max(0.0, min(value, _PV_AVAILABLE_W)))
