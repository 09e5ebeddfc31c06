"""Each shipped map against an emulation written from its vendor document, register by register (raw words typed
here from the manuals' addresses, types, word orders and weights; never generated from the map file): the probe
reads the values the document says, the role fields carry the right signs, commands land in the right register."""
from __future__ import annotations

import argparse
import struct

import pytest

from firmware_bridge import ModbusDeviceConfig
from firmware_bridge.regmap import RegisterTables, RegmapDevice, RegmapServer, shipped_maps
from heron_edge.commands import probe
from heron_edge.commands.probe import MapReport
from tests.firmware_bridge.conftest import run

pytestmark = pytest.mark.modbus


def _f32(value: float) -> list[int]:
    """IEEE 754 float32, high word first (Eastron)."""
    return list(struct.unpack(">2H", struct.pack(">f", value)))


def _i32_lsw_first(raw: int) -> list[int]:
    """A signed 32-bit integer, least significant word first (Carlo Gavazzi)."""
    word = raw & 0xFFFF_FFFF
    return [word & 0xFFFF, word >> 16]


def _u32_msw_first(raw: int) -> list[int]:
    word = raw & 0xFFFF_FFFF
    return [word >> 16, word & 0xFFFF]


def _at(table: str, start: int, words: list[int]) -> dict[tuple[str, int], int]:
    return {(table, start + i): w for i, w in enumerate(words)}


def _sdm630() -> RegisterTables:
    """Eastron SDM630 Modbus Protocol: input registers, float32; 30013.. phase power, 30053 total W, 30061 total VAr,
    30071 Hz, 30201 V L1-L2, 30073 import kWh."""
    regs = {**_at("input", 12, _f32(411.5)), **_at("input", 14, _f32(-20.0)), **_at("input", 16, _f32(823.0)),
            **_at("input", 52, _f32(1214.5)), **_at("input", 60, _f32(-310.0)), **_at("input", 70, _f32(49.98)),
            **_at("input", 200, _f32(401.25)), **_at("input", 72, _f32(1234.5)), **_at("input", 0, _f32(231.5))}
    return RegisterTables(regs)  # type: ignore[arg-type]


def _em24() -> RegisterTables:
    """Carlo Gavazzi EM24 protocol: INT32 LSW first, weights W*10, V*10, Hz*10; 0012h W L1, 0026h V L-L sys,
    0028h W sys, 002Ch var sys, 0033h Hz (INT16), 000Bh model code."""
    regs = {**_at("holding", 0x12, _i32_lsw_first(4115)), **_at("holding", 0x14, _i32_lsw_first(-200)),
            **_at("holding", 0x16, _i32_lsw_first(8230)), **_at("holding", 0x26, _i32_lsw_first(4012)),
            **_at("holding", 0x28, _i32_lsw_first(-25000)), **_at("holding", 0x2C, _i32_lsw_first(1234)),
            ("holding", 0x33): 500, ("holding", 0x0B): 1648, **_at("holding", 0x34, _i32_lsw_first(8452)),
            **_at("holding", 0x00, _i32_lsw_first(2305)), **_at("holding", 0x4E, _i32_lsw_first(123))}
    return RegisterTables(regs)  # type: ignore[arg-type]


def _victron() -> RegisterTables:
    """Victron CCGX register list, com.victronenergy.vebus: 9 input frequency L1 (int16, /100), 12 input power L1
    (int16, x10 W, + taken from AC-in), 30 SoC (uint16, /10), 37 ESS setpoint L1 (int16 W, + charge), 38 / 39 flags."""
    regs = {("holding", 3): 2301, ("holding", 9): 5001, ("holding", 12): (-250) & 0xFFFF, ("holding", 30): 645, ("holding", 26): 5240,
            ("holding", 37): 0, ("holding", 38): 0, ("holding", 39): 0}
    return RegisterTables(regs, writable=[("holding", 37), ("holding", 38), ("holding", 39)])  # type: ignore[arg-type]


def _dse() -> RegisterTables:
    """DSE GenComm: page 4 basic instrumentation (1024 oil pressure, 1031 Hz /10, 1038 L1-L2 V u32 /10), page 6 total
    watts (1536, s32), 'not available' = -1 masked to the type."""
    regs = {("holding", 1024): 0xFFFF, ("holding", 1030): 1500, ("holding", 1031): 501,
            **_at("holding", 1038, _u32_msw_first(4003)), **_at("holding", 1536, _u32_msw_first(42000)),
            **_at("holding", 1052, _u32_msw_first(0x7FFF_FFFF)), ("holding", 768): 1, ("holding", 769): 32841,
            **_at("holding", 1800, _u32_msw_first(152345))}
    return RegisterTables(regs)  # type: ignore[arg-type]


EMULATIONS = {"eastron-sdm630": (1, _sdm630), "carlo-gavazzi-em24": (1, _em24), "victron-gx-ess": (227, _victron),
              "deepsea-dse7320": (10, _dse)}


def _args(port: int, regmap: str, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    probe.add_arguments(parser)
    return parser.parse_args(["--map", regmap, "--host", "127.0.0.1", "--port", str(port), "--timeout-s", "0.5", *extra])


def _probe(regmap: str, *extra: str) -> tuple[MapReport, RegisterTables]:
    unit, make = EMULATIONS[regmap]
    tables = make()

    async def scenario() -> MapReport:
        async with RegmapServer({unit: tables}) as server:
            report = await probe.probe(_args(server.port, regmap, *extra))
        assert isinstance(report, MapReport)
        return report

    return run(scenario()), tables


def test_every_shipped_map_has_an_independent_emulation() -> None:
    assert sorted(EMULATIONS) == shipped_maps()


def test_eastron_sdm630_reads_the_documented_input_registers() -> None:
    report, tables = _probe("eastron-sdm630")
    assert report.role == "meter" and report.roles == ["meter"] and report.unit == 1
    values = {name: point["value"] for name, point in report.points.items()}
    assert values["total_power"] == 1214.5 and values["frequency"] == pytest.approx(49.98, abs=1e-4)
    assert values["import_energy"] == 1234.5 and values["phase_1_voltage"] == 231.5
    readings = {name: r["value"] for name, r in report.readings.items()}
    assert readings["p_w"] == 1214.5 and readings["q_var"] == -310.0 and readings["v_v"] == 401.25
    assert readings["phase_w"] == [411.5, -20.0, 823.0]
    assert all(t == "input" for t, _, _ in report.requests)  # function 04 only: the meter has no holding values
    meter = RegmapDevice(ModbusDeviceConfig(map="eastron-sdm630"), role="meter")
    assert [list(r) for r in meter.telemetry_requests] == [["input", 12, 6], ["input", 52, 2], ["input", 60, 2],
                                                           ["input", 70, 2], ["input", 200, 2]]
    assert tables.requests == len(report.requests) + len(meter.telemetry_requests)  # nothing read one by one


def test_carlo_gavazzi_em24_reads_int32_least_significant_word_first() -> None:
    report, _ = _probe("carlo-gavazzi-em24")
    readings = {name: r["value"] for name, r in report.readings.items()}
    assert readings["p_w"] == -2500.0  # exporting 2.5 kW: - at a site meter (+ imported)
    assert readings["hz"] == 50.0 and readings["v_v"] == pytest.approx(401.2)
    assert readings["phase_w"] == pytest.approx([411.5, -20.0, 823.0])
    assert readings["q_var"] == pytest.approx(123.4)
    assert report.points["model_code"]["value"] == 1648.0 and report.points["v_l1_n"]["value"] == 230.5
    assert report.points["kwh_exported"]["value"] == pytest.approx(12.3)


def test_victron_gx_ess_battery_signs_and_setpoint_register() -> None:
    report, tables = _probe("victron-gx-ess", "--write", "ess_setpoint_l1=2000", "--write", "ess_disable_charge=1")
    assert report.role == "battery" and report.unit == 227
    readings = {name: r["value"] for name, r in report.readings.items()}
    assert readings["soc_pct"] == pytest.approx(64.5) and readings["hz"] == pytest.approx(50.01)
    assert report.points["input_voltage_l1"]["value"] == pytest.approx(230.1)
    assert readings["p_w"] == 2500.0  # 250 x 10 W flowing out of AC-in: the battery discharges 2.5 kW
    first, second = report.writes
    assert first["readback_ok"] and first["written"] == 2000.0 and "function 06" in first["via"]
    assert tables.values["holding", 37] == (-2000) & 0xFFFF  # discharge 2 kW = 2000 W fed back: setpoint -2000
    assert second["readback_ok"] and tables.values["holding", 38] == 1


def test_victron_setpoint_is_clamped_to_the_map_limits() -> None:
    report, tables = _probe("victron-gx-ess", "--write", "ess_setpoint_l1=-9000")
    (write,) = report.writes
    assert write["clamped"] and write["written"] == -5000.0
    assert tables.values["holding", 37] == 5000  # charge at the 5 kW limit: take 5000 W from AC-in


def test_deepsea_dse7320_sentinels_and_role() -> None:
    report, _ = _probe("deepsea-dse7320")
    values = {name: point["value"] for name, point in report.points.items()}
    assert values["generator_total_watts"] == 42000.0 and values["generator_frequency"] == pytest.approx(50.1)
    assert values["generator_l1_l2_voltage"] == pytest.approx(400.3) and values["engine_speed"] == 1500.0
    assert values["generator_energy"] == pytest.approx(15234.5)
    assert values["oil_pressure"] is None and values["generator_l1_watts"] is None  # 'not available' sentinels
    assert report.roles == [] and report.missing["generator"] == ["generator.p_set_w"]
    assert "generator: no: missing generator.p_set_w" in report.text()
