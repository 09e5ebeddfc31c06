"""firmware_bridge: SunSpec Modbus register images (model definitions from pysunspec2's JSON), a Modbus device
client that resolves what a device can do in its role, and emulated devices of several profiles. Knows nothing of
agents, MQTT or the simulator."""
from __future__ import annotations

from firmware_bridge.capabilities import ROLES, Capability, PowerLimits, Role, RoleResolution
from firmware_bridge.client import DeviceInfo, DeviceStats, ModbusDevice, SetpointResult, Telemetry
from firmware_bridge.config import ModbusDeviceConfig
from firmware_bridge.device import DeviceKind, DeviceModel, Measurement, Nameplate
from firmware_bridge.emulator import QUIRKS, Emulator, EmulatorError, Quirks, make_model, parse_quirks
from firmware_bridge.errors import (
    CapabilityError,
    ConfigurationError,
    DeviceClosedError,
    DeviceConnectionError,
    DeviceError,
    DeviceExceptionResponse,
    DeviceTimeoutError,
    EncodingError,
    FirmwareBridgeError,
    ModelMissingError,
    NotSunSpecError,
    SetpointError,
    SunSpecDefinitionError,
)
from firmware_bridge.link import LinkStats, ModbusLink
from firmware_bridge.models import (
    BatteryModel,
    PVInverterModel,
    SiteMeterModel,
    battery_nameplate,
    daily_irradiance,
    inverter_nameplate,
    meter_nameplate,
)
from firmware_bridge.sunspec_device import PROFILES, Profile, SunSpecDevice

__all__ = [
    "PROFILES",
    "QUIRKS",
    "ROLES",
    "BatteryModel",
    "Capability",
    "CapabilityError",
    "ConfigurationError",
    "DeviceClosedError",
    "DeviceConnectionError",
    "DeviceError",
    "DeviceExceptionResponse",
    "DeviceInfo",
    "DeviceKind",
    "DeviceModel",
    "DeviceStats",
    "DeviceTimeoutError",
    "Emulator",
    "EmulatorError",
    "EncodingError",
    "FirmwareBridgeError",
    "LinkStats",
    "Measurement",
    "ModbusDevice",
    "ModbusDeviceConfig",
    "ModbusLink",
    "ModelMissingError",
    "Nameplate",
    "NotSunSpecError",
    "PVInverterModel",
    "PowerLimits",
    "Profile",
    "Quirks",
    "Role",
    "RoleResolution",
    "SetpointError",
    "SetpointResult",
    "SiteMeterModel",
    "SunSpecDefinitionError",
    "SunSpecDevice",
    "Telemetry",
    "battery_nameplate",
    "daily_irradiance",
    "inverter_nameplate",
    "make_model",
    "meter_nameplate",
    "parse_quirks",
]
