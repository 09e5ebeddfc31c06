"""One Modbus link (a TCP connection or a serial port), shared by the devices behind it.

It owns the pymodbus async client and gives every request the same treatment: one request at a
time, a minimum idle gap between requests, a timeout, retries with exponential backoff, reconnect
when the link dropped, and pymodbus errors translated into ``firmware_bridge.errors``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from firmware_bridge.config import ModbusDeviceConfig
from firmware_bridge.errors import (
    ConfigurationError,
    DeviceClosedError,
    DeviceConnectionError,
    DeviceError,
    DeviceExceptionResponse,
    DeviceTimeoutError,
)

__all__ = ["LinkStats", "ModbusLink", "Table", "WriteFunction"]

log = logging.getLogger(__name__)

_TRANSIENT_CODES = frozenset({4, 5, 6})
"""Server device failure, acknowledge, device busy: worth another try (devices answer bursts of 04 while busy)."""
_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

_Client = AsyncModbusTcpClient | AsyncModbusSerialClient
Table = Literal["holding", "input", "coil", "discrete"]
"""The four Modbus data tables: holding registers (functions 3/6/16), input registers (4), coils (1/5),
discrete inputs (2)."""
WriteFunction = Literal[6, 16]


@dataclass(slots=True)
class LinkStats:
    """Counters of one link: requests attempted, those that failed, timeouts, and connects."""

    requests: int = 0
    failures: int = 0
    timeouts: int = 0
    connects: int = 0


class ModbusLink:
    """A Modbus TCP or RTU link configured by a ``ModbusDeviceConfig`` (its transport fields).

    Every device behind the link shares it (``firmware_bridge.links.LinkPool`` hands out one per endpoint):
    requests are serialized; ``read``/``write`` raise a ``DeviceError`` subclass after the last
    retry. Use as an async context manager, or call ``close()``; closing twice is harmless.
    """

    def __init__(self, config: ModbusDeviceConfig) -> None:
        if config.transport == "rtu" and not config.serial_port:  # only past validation, e.g. model_construct
            raise ConfigurationError(f"link {config.link_name}: transport 'rtu' needs serial_port")
        self.config = config
        self.stats = LinkStats()
        self._client: _Client | None = None
        self._lock = asyncio.Lock()
        self._last_end = float("-inf")
        self._closed = False

    @property
    def connected(self) -> bool:
        """Whether the transport is up right now."""
        return self._client is not None and self._client.connected

    def _new_client(self) -> _Client:
        c = self.config
        if c.transport == "tcp":
            return AsyncModbusTcpClient(
                c.host, port=c.port, timeout=c.timeout_s, retries=0, reconnect_delay=0, name=c.link_name
            )
        if not c.serial_port:  # ruled out in __init__ (the config is frozen); narrows the type
            raise ConfigurationError(f"link {c.link_name}: transport 'rtu' needs serial_port")
        return AsyncModbusSerialClient(
            c.serial_port,
            framer=FramerType.RTU,
            baudrate=c.baudrate,
            parity=c.parity,
            stopbits=c.stopbits,
            bytesize=c.bytesize,
            timeout=c.timeout_s,
            retries=0,
            reconnect_delay=0,
            name=c.link_name,
        )

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _connect(self) -> _Client:
        if self._client is not None and self._client.connected:
            return self._client
        self._drop()
        client = self._new_client()
        self.stats.connects += 1
        try:
            ok = await asyncio.wait_for(client.connect(), self.config.timeout_s + 0.5)
        except (TimeoutError, OSError, ModbusException) as exc:
            client.close()
            raise DeviceConnectionError(f"{self.config.link_name}: cannot connect: {exc}") from exc
        if not ok:
            client.close()
            raise DeviceConnectionError(f"{self.config.link_name}: cannot connect")
        if self._closed:  # closed while connecting
            client.close()
            raise DeviceClosedError(f"{self.config.link_name}: link is closed")
        self._client = client
        return client

    async def _once(self, what: str, call: Callable[[_Client], Awaitable[ModbusPDU]]) -> ModbusPDU:
        client = self._client if self._client is not None and self._client.connected else await self._connect()
        if self.config.min_gap_s > 0:
            gap = self._last_end + self.config.min_gap_s - asyncio.get_running_loop().time()
            if gap > 0:
                await asyncio.sleep(gap)
        self.stats.requests += 1
        try:
            response = await call(client)
        except asyncio.CancelledError:
            self._drop()  # a request is in flight; its answer must not meet the next one
            raise
        except ConnectionException as exc:
            self._drop()
            raise DeviceConnectionError(f"{self.config.link_name}: {what}: {exc}") from exc
        except ModbusIOException as exc:  # pymodbus: no (matching) answer within the timeout
            self._drop()
            if isinstance(exc.__cause__, asyncio.CancelledError):
                # pymodbus up to 3.15 turns our cancellation into an I/O error (3.16 lets it through): keep it one
                raise asyncio.CancelledError() from exc
            self.stats.timeouts += 1
            raise DeviceTimeoutError(
                f"{self.config.link_name}: {what}: no answer within {self.config.timeout_s} s ({exc})"
            ) from exc
        except ModbusException as exc:
            self._drop()
            raise DeviceError(f"{self.config.link_name}: {what}: {exc}") from exc
        except OSError as exc:
            self._drop()
            raise DeviceConnectionError(f"{self.config.link_name}: {what}: {exc}") from exc
        finally:
            if self.config.min_gap_s > 0:
                self._last_end = asyncio.get_running_loop().time()
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = _EXCEPTION_NAMES.get(code, "unknown exception")
            raise DeviceExceptionResponse(
                f"{self.config.link_name}: {what}: exception {code} ({name})",
                function_code=response.function_code,
                exception_code=code,
            )
        return response

    async def _request(self, what: str, call: Callable[[_Client], Awaitable[ModbusPDU]]) -> ModbusPDU:
        c = self.config
        async with self._lock:
            for attempt in range(c.retries + 1):
                if attempt:
                    await asyncio.sleep(min(c.backoff_s * 2 ** (attempt - 1), c.backoff_max_s))
                if self._closed:  # checked before every attempt: a close during a retry must not reconnect
                    raise DeviceClosedError(f"{self.config.link_name}: link is closed")
                try:
                    return await self._once(what, call)
                except DeviceExceptionResponse as exc:
                    self.stats.failures += 1
                    if exc.exception_code not in _TRANSIENT_CODES or attempt == c.retries:
                        raise
                except DeviceError as exc:
                    self.stats.failures += 1
                    log.debug("%s (attempt %d of %d)", exc, attempt + 1, c.retries + 1)
                    if attempt == c.retries:
                        raise
        raise AssertionError("unreachable")  # the loop returns or raises

    async def read(self, address: int, count: int, *, unit_id: int, table: Table = "holding") -> list[int]:
        """Read ``count`` holding (function 3) or input (4) registers, 1..125, or coils (1) or discrete inputs (2),
        1..2000 (as 0 / 1), starting at protocol address ``address``."""
        limit = 125 if table in ("holding", "input") else 2000
        if not 1 <= count <= limit:
            raise ConfigurationError(f"count {count} outside 1..{limit}")
        if not 0 <= address <= 0xFFFF - count + 1:
            raise ConfigurationError(f"address {address} + {count} outside the 16-bit address space")
        readers = {
            "holding": lambda client: client.read_holding_registers(address, count=count, device_id=unit_id),
            "input": lambda client: client.read_input_registers(address, count=count, device_id=unit_id),
            "coil": lambda client: client.read_coils(address, count=count, device_id=unit_id),
            "discrete": lambda client: client.read_discrete_inputs(address, count=count, device_id=unit_id),
        }
        call = readers.get(table)
        if call is None:
            raise ConfigurationError(f"unknown table {table!r}")
        response = await self._request(f"read {count} {table} @ {address} unit {unit_id}", call)
        values = list(response.registers) if table in ("holding", "input") else [int(b) for b in response.bits[:count]]
        if len(values) != count:
            raise DeviceError(f"{self.config.link_name}: asked for {count} {table} at {address}, got {len(values)}")
        return values

    async def write(self, address: int, values: list[int], *, unit_id: int, function: WriteFunction = 16) -> None:
        """Write holding registers starting at protocol address ``address``: function 16 (1..123 registers), or
        function 6 (one register; a device that accepts only single-register writes)."""
        if not 1 <= len(values) <= 123 or any(not 0 <= v <= 0xFFFF for v in values):
            raise ConfigurationError("need 1..123 register values in 0..65535")
        if function == 6:
            if len(values) != 1:
                raise ConfigurationError(f"function 6 writes one register, not {len(values)}")
            await self._request(f"write @ {address} unit {unit_id} (06)",
                                lambda client: client.write_register(address, values[0], device_id=unit_id))
            return
        if function != 16:
            raise ConfigurationError(f"write function {function} is not 6 or 16")
        await self._request(
            f"write {len(values)} @ {address} unit {unit_id}",
            lambda client: client.write_registers(address, values, device_id=unit_id),
        )

    async def write_coil(self, address: int, value: bool, *, unit_id: int) -> None:
        """Write one coil (function 5)."""
        await self._request(f"write coil @ {address} unit {unit_id}",
                            lambda client: client.write_coil(address, value, device_id=unit_id))

    async def close(self) -> None:
        """Close the transport; later requests raise DeviceClosedError. Closing twice is harmless."""
        self._closed = True
        with contextlib.suppress(Exception):
            self._drop()

    async def __aenter__(self) -> ModbusLink:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
