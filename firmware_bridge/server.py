"""A pymodbus TCP server for one unit id: listen, report the bound port, restart on it, stop.

What a server serves is a ``HoldingRegisters`` map (``_registers``); the emulated SunSpec devices
and the SIL rig's meter share this lifecycle. This module is the only place that knows how pymodbus
models a server's data: since pymodbus 3.13 (we need 3.14+) that is a ``SimDevice`` (a register block
plus an async ``action`` called on every access); the datastore contexts with ``getValues`` and
``setValues`` that pymodbus 3.11 served from are gone.
The action hands every request to the map, so the map stays the single authority on what a read
returns and which writes are accepted.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Literal, Protocol, Self

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimAction, SimData, SimDevice

from firmware_bridge.errors import ConfigurationError, DeviceClosedError, FirmwareBridgeError
from firmware_bridge.sunspec_device import ExceptionCode

__all__ = ["Framing", "HoldingRegisters", "ModbusServer", "ServerError"]

log = logging.getLogger(__name__)

Framing = Literal["socket", "rtu"]
_FRAMERS: dict[str, FramerType] = {"socket": FramerType.SOCKET, "rtu": FramerType.RTU}
_HOLDING_FUNCTIONS = frozenset({3, 6, 16, 22, 23})
"""Function codes on holding registers (read, write single, write multiple, mask write, read/write);
every other data function (coils, discrete inputs, input registers) answers ILLEGAL_FUNCTION."""
_ANY_UNIT = 0
"""pymodbus's catch-all device id: it receives requests for every unit id no device claims."""


class ServerError(FirmwareBridgeError):
    """A Modbus server could not start (e.g. the port is taken)."""


class HoldingRegisters(Protocol):
    """The holding registers a ``ModbusServer`` serves.

    ``span`` is (first address, number of registers): requests that reach outside it are refused
    with ILLEGAL_ADDRESS before the map is asked. Inside it, ``read`` and ``write`` decide.
    """

    @property
    def span(self) -> tuple[int, int]:
        """(first protocol address, number of registers) this map covers."""
        ...

    def read(self, address: int, count: int) -> list[int] | ExceptionCode:
        """``count`` registers from ``address``, or the exception to answer with."""
        ...

    def write(self, address: int, values: Sequence[int]) -> ExceptionCode | None:
        """Apply a write of ``values`` at ``address``; None when accepted, else the exception to answer with."""
        ...


def _forward_to(registers: HoldingRegisters, delay_s: float = 0.0) -> SimAction:
    """The pymodbus ``SimDevice.action`` that hands every access to ``registers``.

    pymodbus calls it with the device block (``block``, starting at protocol address ``start``) once
    the request lies inside the block. A read copies the map's answer into the block, which pymodbus
    then answers from; a write goes to the map, and its exception code (if any) refuses the request.
    ``delay_s``: every answer waits this long first (a slow device).
    """

    async def action(func_code: int, start: int, address: int, count: int, block: list[int],
                     values: list[int] | list[bool] | None) -> ExcCodes | None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if func_code not in _HOLDING_FUNCTIONS:
            return ExcCodes.ILLEGAL_FUNCTION
        if values is not None:
            refused = registers.write(address, [int(v) for v in values])
            return None if refused is None else ExcCodes(int(refused))
        result = registers.read(address, count)
        if isinstance(result, ExceptionCode):
            return ExcCodes(int(result))
        if len(result) != count:  # a broken map: a device failure, never a short answer
            log.error("register map answered %d registers for a read of %d at %d", len(result), count, address)
            return ExcCodes.DEVICE_FAILURE
        offset = address - start
        block[offset : offset + count] = result
        return None

    return action


async def _other_unit(func_code: int, start: int, address: int, count: int, block: list[int],
                      values: list[int] | list[bool] | None) -> ExcCodes | None:
    """The catch-all device's action: a unit id this server does not serve gets 0x0B (gateway target
    failed to respond), as from a gateway with nothing behind that id."""
    return ExcCodes.GATEWAY_NO_RESPONSE


def _block(span: tuple[int, int]) -> list[SimData]:
    """One pymodbus register block covering ``span``; its contents never matter (the action fills
    every read from the map), only its extent, which pymodbus checks before calling the action."""
    first, count = span
    if not 0 <= first <= 0xFFFF or not 1 <= count <= 0x10000 - first:
        raise ServerError(f"register span {span} does not fit the 16-bit address space")
    return [SimData(first, count=count, datatype=DataType.REGISTERS)]


class ModbusServer:
    """Serves ``_registers()`` as unit ``unit_id`` on ``host:port`` (port 0 picks a free one; a restart keeps it).

    Other unit ids get exception 0x0B, or (``other_units="silent"``, a device that answers only at its own
    unit id) no answer at all. ``reply_delay_s`` delays every answer (a slow device). Subclasses implement
    ``_registers`` (called at every start) and may extend ``start``/``stop``.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, unit_id: int = 1, framing: Framing = "socket",
                 other_units: Literal["refuse", "silent"] = "refuse", reply_delay_s: float = 0.0) -> None:
        if not 1 <= unit_id <= 255:
            raise ConfigurationError(f"unit_id {unit_id} outside 1..255")
        if other_units not in ("refuse", "silent"):
            raise ConfigurationError(f"other_units {other_units!r} is not 'refuse' or 'silent'")
        if not 0.0 <= reply_delay_s <= 60.0:
            raise ConfigurationError(f"reply_delay_s {reply_delay_s} outside 0..60")
        if not 0 <= port <= 65535:
            raise ConfigurationError(f"port {port} outside 0..65535")
        if framing not in _FRAMERS:
            raise ConfigurationError(f"framing {framing!r} is not one of {sorted(_FRAMERS)}")
        self.host = host
        self.unit_id = unit_id
        self.framing = framing
        self.other_units = other_units
        self.reply_delay_s = reply_delay_s
        self._requested_port = port
        self._port: int | None = None
        self._server: ModbusTcpServer | None = None
        self._listener: asyncio.Server | None = None

    def _registers(self) -> HoldingRegisters:
        raise NotImplementedError

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful after asking for port 0)."""
        if self._port is None:
            raise DeviceClosedError(f"{type(self).__name__} is not running")
        return self._port

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._server is not None

    def _devices(self) -> list[SimDevice]:
        registers = self._registers()
        return [SimDevice(self.unit_id, simdata=_block(registers.span), action=_forward_to(registers, self.reply_delay_s)),
                SimDevice(_ANY_UNIT, simdata=_block(registers.span), action=_other_unit)]

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        """pymodbus's PDU hook: with ``other_units="silent"`` a request for another unit id is dropped here, so it
        is never handled and never answered (pymodbus handles a request only when this returns it)."""
        if not sending and self.other_units == "silent" and pdu.dev_id != self.unit_id:
            return None  # type: ignore[return-value]  # pymodbus then skips the request
        return pdu

    async def start(self) -> None:
        """Listen on host:port. Starting a running server is an error; restarting a stopped one is fine."""
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} already running")
        port = self._port if self._port is not None else self._requested_port  # a restart keeps its port
        server = ModbusTcpServer(self._devices(), framer=_FRAMERS[self.framing], address=(self.host, port),
                                 trace_pdu=self._trace_pdu)
        try:
            await server.serve_forever(background=True)
        except (RuntimeError, OSError) as exc:
            server.close()
            raise ServerError(f"cannot listen on {self.host}:{port}: {exc}") from exc
        # pymodbus keeps the listening asyncio.Server in ``transport`` (typed there as a BaseTransport)
        listener: object = server.transport
        if not isinstance(listener, asyncio.Server) or not listener.sockets:
            server.close()
            raise ServerError(f"cannot listen on {self.host}:{port}: pymodbus returned no listening socket")
        self._listener = listener
        self._port = int(listener.sockets[0].getsockname()[1])
        self._server = server
        log.info("%s on %s:%d unit %d", type(self).__name__, self.host, self._port, self.unit_id)

    async def stop(self) -> None:
        """Stop listening and drop every connection; stopping twice is harmless."""
        server, self._server = self._server, None
        if server is None:
            return
        await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves shutdown() unannotated
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
