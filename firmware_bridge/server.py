"""A pymodbus TCP server for one unit id: listen, report the bound port, restart on it, stop.

What a server serves is its datastore context (``_context``); the emulated SunSpec devices and the
SIL rig's meter share this lifecycle.
"""
from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Literal

from pymodbus.datastore import ModbusBaseDeviceContext, ModbusServerContext
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer

from firmware_bridge.errors import DeviceClosedError, FirmwareBridgeError

__all__ = ["Framing", "ModbusServer", "ServerError"]

log = logging.getLogger(__name__)

Framing = Literal["socket", "rtu"]
_FRAMERS: dict[str, FramerType] = {"socket": FramerType.SOCKET, "rtu": FramerType.RTU}


class ServerError(FirmwareBridgeError):
    """A Modbus server could not start (e.g. the port is taken)."""


class ModbusServer:
    """Serves ``_context()`` as unit ``unit_id`` on ``host:port`` (port 0 picks a free one; a restart keeps it).

    Subclasses implement ``_context`` and may extend ``start``/``stop``.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, unit_id: int = 1, framing: Framing = "socket") -> None:
        if not 1 <= unit_id <= 247:
            raise ValueError(f"unit_id {unit_id} outside 1..247")
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} outside 0..65535")
        self.host = host
        self.unit_id = unit_id
        self.framing = framing
        self._requested_port = port
        self._port: int | None = None
        self._server: ModbusTcpServer | None = None
        self._listener: asyncio.base_events.Server | None = None

    def _context(self) -> ModbusBaseDeviceContext:
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

    async def start(self) -> None:
        """Listen on host:port. Starting a running server is an error; restarting a stopped one is fine."""
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} already running")
        context = ModbusServerContext(devices={self.unit_id: self._context()}, single=False)
        port = self._port if self._port is not None else self._requested_port  # a restart keeps its port
        server = ModbusTcpServer(context, framer=_FRAMERS[self.framing], address=(self.host, port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            server.close()
            raise ServerError(f"cannot listen on {self.host}:{port}: {exc}") from exc
        listener = server.transport
        assert isinstance(listener, asyncio.base_events.Server)
        self._listener = listener
        self._port = listener.sockets[0].getsockname()[1]
        self._server = server
        log.info("%s on %s:%d unit %d", type(self).__name__, self.host, self._port, self.unit_id)

    async def stop(self) -> None:
        """Stop listening and drop every connection; stopping twice is harmless."""
        server, self._server = self._server, None
        if server is None:
            return
        await server.shutdown()
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None

    async def __aenter__(self) -> ModbusServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
