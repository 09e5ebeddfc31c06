"""Register-map devices: anything that speaks Modbus but not SunSpec (meters, hybrid inverters, genset
controllers), described point by point in a TOML file and used in a role exactly as a SunSpec device is.

Shipped maps live in ``maps/`` as ``vendor-model.toml`` (``shipped_maps()`` lists them); ``load_map`` takes a
shipped name or a file path. ``make_device`` builds the right device for a ``ModbusDeviceConfig``: a
``RegmapDevice`` when it names a ``map``, a SunSpec ``ModbusDevice`` otherwise.
"""
from __future__ import annotations

from firmware_bridge.capabilities import Role
from firmware_bridge.client import ModbusDevice
from firmware_bridge.config import ModbusDeviceConfig
from firmware_bridge.link import ModbusLink
from firmware_bridge.regmap.device import PointWrite, ReadPlan, RegmapDevice, plan_reads
from firmware_bridge.regmap.emulator import MapEmulation, RegisterTables, RegmapServer
from firmware_bridge.regmap.schema import (
    MAPS_DIR,
    READ_FIELDS,
    REQUIRED,
    ROLE_FIELDS,
    WRITE_FIELDS,
    MapError,
    Point,
    RegisterMap,
    load_map,
    parse_map,
    shipped_maps,
)

__all__ = ["MAPS_DIR", "READ_FIELDS", "REQUIRED", "ROLE_FIELDS", "WRITE_FIELDS", "FieldDevice", "MapEmulation",
           "MapError", "Point", "PointWrite", "ReadPlan", "RegisterMap", "RegisterTables", "RegmapDevice",
           "RegmapServer", "load_map", "make_device", "parse_map", "plan_reads", "shipped_maps"]

FieldDevice = ModbusDevice | RegmapDevice
"""A device in a role: SunSpec or register map; both read ``Telemetry`` and take ``write_setpoint``."""


def make_device(config: ModbusDeviceConfig, *, role: Role | None = None, link: ModbusLink | None = None,
                regmap: RegisterMap | None = None) -> FieldDevice:
    """A ``RegmapDevice`` when ``config.map`` (or ``regmap``) is given, else a SunSpec ``ModbusDevice``; on ``link``
    when given (a shared one, e.g. from ``firmware_bridge.links.LinkPool``), else on its own."""
    if config.map is not None or regmap is not None:
        return RegmapDevice(config, regmap=regmap, link=link, role=role)
    return ModbusDevice(config, link=link, role=role)
