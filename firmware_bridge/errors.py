"""firmware_bridge's own exception tree; pymodbus errors are translated into these at the boundary.

firmware_bridge does not import heron_edge, so these do not derive from ``heron_edge.errors``;
the runtime that wires the two together translates again at its own boundary.
"""
from __future__ import annotations

__all__ = [
    "CapabilityError",
    "ConfigurationError",
    "DeviceClosedError",
    "DeviceConnectionError",
    "DeviceError",
    "DeviceExceptionResponse",
    "DeviceTimeoutError",
    "FirmwareBridgeError",
    "ModelMissingError",
    "NotSunSpecError",
    "SetpointError",
]


class FirmwareBridgeError(Exception):
    """Base of every error firmware_bridge raises on purpose."""


class ConfigurationError(FirmwareBridgeError, ValueError):
    """A configuration or nameplate that cannot work (e.g. an RTU link without a serial port, a battery
    without a capacity); raised where it is used, even if it slipped past validation (``model_construct``)."""


class SunSpecDefinitionError(FirmwareBridgeError, ValueError):
    """A SunSpec model definition or point that cannot be laid out (an unknown type, a size that does not match,
    a scale factor that names no ``sunssf`` point): a broken model file, not a device fault."""


class EncodingError(FirmwareBridgeError, ValueError):
    """A value that does not fit a point: not finite, or outside the point's type at its scale factor."""


class DeviceError(FirmwareBridgeError):
    """A Modbus device did not answer, answered an exception, or is not what we expected."""


class DeviceTimeoutError(DeviceError, TimeoutError):
    """No answer within the configured timeout (after all retries)."""


class DeviceConnectionError(DeviceError, ConnectionError):
    """The link (TCP connection or serial port) could not be opened or was lost."""


class DeviceExceptionResponse(DeviceError):
    """The device answered with a Modbus exception code (e.g. 2 illegal address, 3 illegal value)."""

    def __init__(self, message: str, *, function_code: int, exception_code: int) -> None:
        super().__init__(message)
        self.function_code = function_code
        self.exception_code = exception_code


class NotSunSpecError(DeviceError):
    """The device answered, but there is no 'SunS' marker (or a broken model chain) at the base address."""


class ModelMissingError(DeviceError):
    """The device's SunSpec map lacks a model we need (e.g. no 704, so no active-power setpoint)."""


class CapabilityError(ModelMissingError):
    """The device cannot fill its role: the message names the device, the models it has, the capability that is
    missing and what would provide it (e.g. a battery without model 704 WSet or 124 StorCtl_Mod)."""


class SetpointError(DeviceError):
    """A setpoint that cannot be written as asked: not finite, or not representable in the device's points at
    its scale factors. Nothing was written."""


class DeviceClosedError(FirmwareBridgeError, RuntimeError):
    """A closed (or never opened) device or emulator was used."""
