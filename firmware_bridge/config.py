"""Validated configuration of one Modbus device and the link that reaches it."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from firmware_bridge.sunspec import BASE_ADDRESS

__all__ = ["ModbusDeviceConfig", "ModbusLinkConfig"]


class ModbusLinkConfig(BaseModel):
    """One Modbus link (a TCP endpoint or an RS-485 port) and how patiently it is used; the fields are explained on
    :class:`ModbusDeviceConfig`, which adds the device's own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: Literal["tcp", "rtu"] = "tcp"
    host: str = "127.0.0.1"
    port: int = Field(502, ge=1, le=65535)
    serial_port: str | None = None
    baudrate: int = Field(9600, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_s: float = Field(1.0, gt=0, le=60)
    retries: int = Field(2, ge=0, le=10)
    backoff_s: float = Field(0.05, ge=0, le=10)
    backoff_max_s: float = Field(2.0, ge=0, le=60)
    min_gap_s: float = Field(0.0, ge=0, le=5)

    @model_validator(mode="after")
    def _rtu_needs_a_port(self) -> ModbusLinkConfig:
        if self.transport == "rtu" and not self.serial_port:
            raise ValueError("transport 'rtu' needs serial_port")
        return self


class ModbusDeviceConfig(ModbusLinkConfig):
    """How to reach one SunSpec device, and how patiently.

    transport: "tcp" (host, port) or "rtu" (serial_port, e.g. /dev/ttyUSB0, or a pyserial URL such as
    socket://host:port). timeout_s bounds each request; a failed request is retried ``retries``
    times after backoff_s, 2*backoff_s, ... (capped at backoff_max_s), reconnecting first when the
    link dropped. min_gap_s is the least idle time between two requests on one link (RTU buses and
    some TCP gateways need a few ms). unit_id: 0-255 over TCP (devices answer at 1, 126, 240, 0 or 255:
    see docs/edge.md), 1-247 on RTU. base_address: where the 'SunS' marker sits (40000, 0 or 50000).

    setpoint_revert_s is written with every setpoint: the device drops the setpoint if it is not rewritten
    within that many seconds (0 = never). keepalive: re-write an active setpoint every half revert time,
    so the device keeps it between cycles longer than its timer (and still drops it within
    setpoint_revert_s when the gateway stops). ramp_w_per_s: the largest change of the commanded power
    per second (None: no ramp). min_limit_pct: the lowest output limit written to a PV / wind inverter
    (% of WMax); 0 allows a 0 % limit, which some inverters treat as a stop or a disconnect.

    map: a register-map device instead of a SunSpec one: a shipped map's name (``eastron-sdm630``, see
    ``firmware_bridge.regmap``) or a TOML file's path. link: the name of the shared link the device is reached
    through (a gateway config's ``[links.NAME]``, whose transport fields are copied here); devices with the same
    ``endpoint`` share one connection and request queue either way. bytesize: data bits of a serial line.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit_id: int = Field(1, ge=0, le=255)
    base_address: int = Field(BASE_ADDRESS, ge=0, le=65535)
    setpoint_revert_s: int = Field(60, ge=0, le=0xFFFF_FFFE)
    keepalive: bool = False
    ramp_w_per_s: float | None = Field(None, gt=0, le=1e10, allow_inf_nan=False)
    min_limit_pct: float = Field(1.0, ge=0, le=100, allow_inf_nan=False)
    map: str | None = Field(None, min_length=1)
    link: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$")

    @model_validator(mode="after")
    def _rtu_unit_id(self) -> ModbusDeviceConfig:
        if self.transport == "rtu" and not 1 <= self.unit_id <= 247:
            raise ValueError(f"an RTU unit_id is 1..247, not {self.unit_id}")
        return self

    @property
    def link_name(self) -> str:
        """A readable name of the link, for messages and logs."""
        return f"{self.host}:{self.port}" if self.transport == "tcp" else f"{self.serial_port} (rtu)"

    @property
    def endpoint(self) -> tuple[str, str]:
        """What identifies the link's medium: ("tcp", "host:port") or ("rtu", serial port); devices with the
        same endpoint share one connection and one request queue."""
        return ("tcp", f"{self.host}:{self.port}") if self.transport == "tcp" else ("rtu", self.serial_port or "")
