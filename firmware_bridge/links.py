"""One ``ModbusLink`` per medium, however many devices sit behind it.

An RS-485 bus carries one request at a time: two links opening the same serial port interleave their frames and
corrupt each other's answers, and a TCP gateway often accepts one connection only. ``LinkPool.link`` hands every
device on the same endpoint (``ModbusDeviceConfig.endpoint``: a TCP host:port or a serial port) the same link, so
they share one connection, one request queue and its minimum gap. Devices on one serial line must agree on how it
is driven (baud rate, parity, stop bits, data bits); a mismatch is a configuration error, not a silent pick.
"""
from __future__ import annotations

from types import TracebackType

from firmware_bridge.config import ModbusDeviceConfig
from firmware_bridge.errors import ConfigurationError
from firmware_bridge.link import ModbusLink

__all__ = ["LinkPool"]

_SERIAL_FIELDS = ("baudrate", "parity", "stopbits", "bytesize")


class LinkPool:
    """The links of one process, keyed by endpoint; ``close`` closes them all (twice is harmless)."""

    def __init__(self) -> None:
        self._links: dict[tuple[str, str], ModbusLink] = {}

    def link(self, config: ModbusDeviceConfig) -> ModbusLink:
        """The link to ``config``'s endpoint: the one already open, or a new one configured by ``config``."""
        key = config.endpoint
        found = self._links.get(key)
        if found is None:
            found = self._links[key] = ModbusLink(config)
            return found
        if config.transport == "rtu":
            first = found.config
            differ = [f"{name} {getattr(config, name)} != {getattr(first, name)}" for name in _SERIAL_FIELDS
                      if getattr(config, name) != getattr(first, name)]
            if differ:
                raise ConfigurationError(f"{config.link_name}: devices on one serial line disagree: {', '.join(differ)}")
        return found

    @property
    def links(self) -> list[ModbusLink]:
        """Every link handed out, in the order they were first asked for."""
        return list(self._links.values())

    async def close(self) -> None:
        """Close every link."""
        for link in self._links.values():
            await link.close()

    async def __aenter__(self) -> LinkPool:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
