"""Preconditions are real errors, not asserts (``python -O`` strips those): a configuration that slipped
past validation fails where it is used, with firmware_bridge's own ConfigurationError."""
from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

import firmware_bridge
from firmware_bridge import ConfigurationError, Measurement, ModbusDeviceConfig, ModbusLink, SunSpecDevice
from firmware_bridge.models import BatteryModel, battery_nameplate


def test_no_assert_statements_in_firmware_bridge() -> None:
    root = Path(firmware_bridge.__file__).parent
    found = [f"{path.name}:{node.lineno}" for path in sorted(root.glob("*.py"))
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Assert)]
    assert found == []


def test_an_rtu_link_without_a_serial_port_is_a_configuration_error() -> None:
    config = ModbusDeviceConfig.model_construct(transport="rtu", serial_port=None)  # skips the validator
    with pytest.raises(ConfigurationError, match="'rtu' needs serial_port"):
        ModbusLink(config)
    assert issubclass(ConfigurationError, ValueError)


def test_a_battery_nameplate_without_capacity_is_a_configuration_error() -> None:
    model = BatteryModel(battery_nameplate())
    plate = model.nameplate
    object.__setattr__(plate, "energy_wh", None)  # what a duck-typed nameplate could hand over
    with pytest.raises(ConfigurationError, match="needs energy_wh"):
        SunSpecDevice(model)


def test_reads_refresh_only_what_they_cover() -> None:
    """Model 701's measured points come from a fresh measurement; the revert countdown alone needs none."""
    model = BatteryModel(battery_nameplate())
    calls = 0
    measure = model.measure

    def counting_measure() -> Measurement:
        nonlocal calls
        calls += 1
        return measure()

    device = SunSpecDevice(model)
    model.measure = counting_measure  # type: ignore[method-assign]  # count the device's calls
    ctl = device.image[704]
    rem = ctl.start + ctl.model.point("WSetRvrtRem").offset
    assert isinstance(device.read(device.image.base + rem, 1), list)
    assert calls == 0
    meas = device.image[701]
    assert isinstance(device.read(device.image.base + meas.start, 10), list)
    assert calls == 1


def test_encoding_and_definition_errors_are_firmware_bridge_errors() -> None:
    """Values that do not fit a point, and model definitions that cannot be laid out, are our errors (still
    ValueErrors, as before)."""
    from firmware_bridge import EncodingError, FirmwareBridgeError, SunSpecDefinitionError
    from firmware_bridge.sunspec import to_raw

    for error in (EncodingError, SunSpecDefinitionError):
        assert issubclass(error, FirmwareBridgeError) and issubclass(error, ValueError)
    for value in (math.inf, math.nan, 1e9):  # not finite; beyond an int16 at scale factor 0
        with pytest.raises(EncodingError):
            to_raw(value, 0, "int16")
    assert to_raw(-2000.0, 1, "int16") == -200
