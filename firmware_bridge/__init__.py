"""firmware_bridge: SunSpec Modbus register images, a Modbus device client and emulated devices. Knows nothing of agents, MQTT or the simulator."""
from __future__ import annotations

from firmware_bridge.client import DeviceInfo, ModbusDevice, PowerLimits, SetpointResult, Telemetry
from firmware_bridge.config import ModbusDeviceConfig
from firmware_bridge.device import DeviceKind, DeviceModel, Measurement, Nameplate
from firmware_bridge.emulator import Emulator, EmulatorError, make_model
from firmware_bridge.errors import (
    ConfigurationError,
    DeviceClosedError,
    DeviceConnectionError,
    DeviceError,
    DeviceExceptionResponse,
    DeviceTimeoutError,
    FirmwareBridgeError,
    ModelMissingError,
    NotSunSpecError,
)
from firmware_bridge.link import LinkStats, ModbusLink
from firmware_bridge.models import (
    BatteryModel,
    PVInverterModel,
    battery_nameplate,
    daily_irradiance,
    inverter_nameplate,
)
from firmware_bridge.sunspec_device import SunSpecDevice

__all__ = [
    "BatteryModel",
    "ConfigurationError",
    "DeviceClosedError",
    "DeviceConnectionError",
    "DeviceError",
    "DeviceExceptionResponse",
    "DeviceInfo",
    "DeviceKind",
    "DeviceModel",
    "DeviceTimeoutError",
    "Emulator",
    "EmulatorError",
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
    "SetpointResult",
    "SunSpecDevice",
    "Telemetry",
    "battery_nameplate",
    "daily_irradiance",
    "inverter_nameplate",
    "make_model",
]
