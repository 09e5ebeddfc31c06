"""``heron-edge probe`` against every emulator profile and quirk: models, roles, capabilities with the model and
points used, readings with units, writes through the resolved path with their read-back; unit ids and base
addresses found without being told; one error line and exit 1 for a device that is not there or ignores writes."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware_bridge import (
    BatteryModel,
    DeviceModel,
    Emulator,
    PVInverterModel,
    SiteMeterModel,
    battery_nameplate,
    inverter_nameplate,
    meter_nameplate,
    parse_quirks,
)
from heron_edge.commands import probe
from heron_edge.errors import DeviceError
from tests.firmware_bridge.conftest import run

pytestmark = pytest.mark.modbus


def _args(port: int, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    probe.add_arguments(parser)
    return parser.parse_args(["--host", "127.0.0.1", "--port", str(port), "--timeout-s", "0.3", *extra])


def _model(kind: str) -> DeviceModel:
    if kind == "battery":
        return BatteryModel(battery_nameplate(p_max_w=5000, energy_wh=10000), soc=0.5)
    if kind == "inverter":
        return PVInverterModel(inverter_nameplate(p_max_w=10000), time_of_day=lambda: 12 * 3600.0)
    return SiteMeterModel(meter_nameplate(p_max_w=30000), time_of_day=lambda: 20 * 3600.0)


EXPECTED = {  # (kind, profile) -> the role it is probed as, and the model behind each capability
    ("battery", "ieee1547"): ("battery", {"battery_power": 704, "soc": 713, "measurement": 701, "limits": 702}),
    ("battery", "legacy"): ("battery", {"battery_power": 124, "soc": 802, "measurement": 103, "limits": 121}),
    ("inverter", "ieee1547"): ("pv", {"curtailment": 704, "measurement": 701, "limits": 702}),
    ("inverter", "legacy"): ("pv", {"curtailment": 123, "measurement": 103, "limits": 121, "mppt": 160}),
    ("meter", "ieee1547"): ("meter", {"exchange": 213}),
    ("meter", "legacy"): ("meter", {"exchange": 203}),
}


@pytest.mark.parametrize(("kind", "profile"), list(EXPECTED))
def test_probe_every_profile(kind: str, profile: str) -> None:
    role, models = EXPECTED[kind, profile]

    async def scenario() -> None:
        async with Emulator(_model(kind), profile=profile) as emu:  # type: ignore[arg-type]
            report = await probe.probe(_args(emu.port))
        assert (report.unit, report.base_address, report.role) == (1, 40000, role)
        assert [m["id"] for m in report.models] == list(emu.device.image.views)
        assert report.roles[role]["ok"]
        assert {name: cap["model"] for name, cap in report.roles[role]["capabilities"].items()} == models
        readings = report.readings
        assert readings["p_w"]["units"] == "W" and readings["p_w"]["value"] is not None
        assert readings["hz"] == {"value": 50.0, "units": "Hz", "what": "frequency"}
        if role == "battery":
            assert readings["soc_pct"]["value"] == 50.0 and readings["soc_pct"]["units"] == "%"
        if role == "meter":
            assert readings["phase_w"]["value"] == pytest.approx([readings["p_w"]["value"] / 3] * 3, abs=10)
        text = report.text()
        assert f"roles it can fill: {role}" in text and "readings (as " in text
        json.dumps(report.as_dict())  # one JSON document

    run(scenario())


def test_a_legacy_battery_with_its_soc_only_in_802_charges_as_told() -> None:
    """124 ChaState is not implemented on the legacy storage: the SoC comes from 802, and a charge command is
    written through 124 as -40 % of WChaMax and held: not turned into 0 W."""
    async def scenario() -> None:
        model = _model("battery")
        async with Emulator(model, profile="legacy") as emu:
            report = await probe.probe(_args(emu.port, "--write", "battery_w=-2000"))
            assert emu.device.image[124].raw("ChaState") is None
        (write,) = report.writes
        assert write["readback_ok"] and write["written_w"] == -2000.0 and write["limit_pct"] == -40.0
        assert write["measured_w"] == -2000.0 and model.measure().p_w == -2000.0
        assert "model 124" in write["via"] and write["revert_s"] == 60

    run(scenario())


@pytest.mark.parametrize("profile", ["ieee1547", "legacy"])
def test_a_pv_limit_through_the_resolved_path(profile: str) -> None:
    async def scenario() -> None:
        model = _model("inverter")
        async with Emulator(model, profile=profile) as emu:
            report = await probe.probe(_args(emu.port, "--write", "pv_limit_pct=50", "--revert-s", "5"))
        (write,) = report.writes
        assert write["readback_ok"] and write["limit_pct"] == 50.0 and write["written_w"] == 5000.0
        assert write["measured_w"] == pytest.approx(5000.0) and write["revert_s"] == 5
        assert f"model {123 if profile == 'legacy' else 704} WMaxLimPct" in write["via"]

    run(scenario())


def test_unit_ids_and_base_addresses_are_found() -> None:
    """A device that answers only at its own unit id (126, as SMA's SunSpec unit) and one whose map starts at 0 or
    50000: found without --unit / --base-address; an explicit --unit is used as given."""
    async def scenario() -> None:
        quirks = parse_quirks(["own-unit-only"])
        async with Emulator(_model("battery"), unit_id=126, quirks=quirks, profile="legacy") as emu:
            started = time.monotonic()
            report = await probe.probe(_args(emu.port))
            assert report.unit == 126 and report.role == "battery"
            assert time.monotonic() - started < 5  # unit 1 silent: one timeout (and its retry), then 126
            with pytest.raises(DeviceError, match="unit 7: no answer"):
                await probe.probe(_args(emu.port, "--unit", "7"))
        for base in (0, 50000):
            async with Emulator(_model("inverter"), base=base) as emu:
                report = await probe.probe(_args(emu.port))
                assert (report.base_address, report.role) == (base, "pv")

    run(scenario())


@pytest.mark.parametrize("quirk", ["busy", "slow"])
def test_busy_and_slow_devices_are_probed(quirk: str) -> None:
    async def scenario() -> None:
        async with Emulator(_model("battery"), quirks=parse_quirks([quirk]), profile="legacy") as emu:
            timeout = "1.0" if quirk == "slow" else "0.3"
            args = _args(emu.port, "--write", "battery_w=1000")
            args.timeout_s = float(timeout)
            report = await probe.probe(args)
            assert report.role == "battery" and report.writes[0]["readback_ok"]
            if quirk == "busy":
                assert emu.registers.busy_answers >= 1  # exception 04 answered, retried by the link

    run(scenario())


def test_a_device_that_ignores_writes_is_caught_by_the_read_back() -> None:
    async def scenario() -> None:
        model = _model("battery")
        async with Emulator(model, quirks=parse_quirks(["ignore-writes"])) as emu:
            report = await probe.probe(_args(emu.port, "--write", "battery_w=-2000"))
            assert emu.registers.ignored_writes >= 1
        (write,) = report.writes
        assert not write["readback_ok"] and not report.writes_held
        assert model.measure().p_w == 0.0
        assert "DIFFERS" in report.text()

    run(scenario())


def test_not_a_sunspec_device_and_nothing_there() -> None:
    async def scenario() -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(DeviceError, match="cannot connect"):
            await probe.probe(_args(port, "--unit", "1"))

    run(scenario())


def test_the_cli_prints_text_or_json_and_exits_by_the_outcome() -> None:
    """As a process: the text report, ``--json`` as one document, a bad ``--write`` is a usage error (exit 2), a
    write that is not held exit 1 with one error line."""
    emu = subprocess.Popen([sys.executable, "-m", "heron_edge.cli", "emulate", "--device", "meter", "--profile", "legacy",
                            "--port", "0", "--quirk", "ignore-writes", "--log-level", "WARNING"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert emu.stdout is not None
        line = emu.stdout.readline()
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", line).group(1)  # type: ignore[union-attr]

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "heron_edge.cli", "probe", "--host", "127.0.0.1", "--port", port,
                                   "--timeout-s", "0.5", *args], capture_output=True, text=True, timeout=60)

        done = cli()
        assert done.returncode == 0, done.stderr
        assert "roles it can fill: meter" in done.stdout and "model 203 W, WphA, WphB, WphC" in done.stdout
        assert done.stderr == ""
        data = json.loads(cli("--json").stdout)
        assert data["role"] == "meter" and [m["id"] for m in data["models"]] == [1, 203]
        bad = cli("--write", "battery_w=lots")
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "battery_w" in bad.stderr
        refused = cli("--write", "battery_w=100")  # a meter is no battery: the capability error, exit 1
        assert refused.returncode == 1 and "cannot be a battery" in refused.stdout
    finally:
        emu.terminate()
        emu.wait(timeout=10)


def test_emulate_and_probe_a_register_map_as_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``emulate --map`` serves a shipped map with plausible values and writable points; ``probe --map`` reads every
    point (text and ``--json``), writes a point and reads it back; mistakes are one line and exit 2."""
    from heron_edge.cli import main

    emu = subprocess.Popen([sys.executable, "-m", "heron_edge.cli", "emulate", "--map", "victron-gx-ess", "--port", "0",
                            "--log-level", "WARNING"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert emu.stdout is not None
        line = emu.stdout.readline()
        assert "writable ess_setpoint_l1, ess_disable_charge, ess_disable_feed_in" in line and "unit 227" in line
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", line).group(1)  # type: ignore[union-attr]
        probe_map = ["probe", "--map", "victron-gx-ess", "--host", "127.0.0.1", "--port", port, "--timeout-s", "0.5"]
        done = subprocess.run([sys.executable, "-m", "heron_edge.cli", *probe_map, "--write", "ess_setpoint_l1=-1500"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "roles it can fill: battery" in done.stdout and "soc_pct              64 %" in done.stdout
        assert "write ess_setpoint_l1=-1500: wrote -1500.0 via holding 37 (i16), function 06; read back: held" in done.stdout
        assert main([*probe_map, "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["role"] == "battery" and data["points"]["ess_setpoint_l1"]["value"] == -1500.0
        assert data["readings"]["p_w"]["value"] == -1500.0  # the emulated Multi follows its setpoint
        for extra, said in ((["--write", "soc=50"], "no writable point 'soc'"),
                            (["--map", "acme-x1"], "no shipped map 'acme-x1'"),
                            (["--serial", "/dev/null"], "--host (Modbus TCP) or its --serial port")):
            assert main([*probe_map, *extra]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and said in err, err
        with pytest.raises(SystemExit) as exited:
            main([*probe_map, "--write", "ess_setpoint_l1=x"])
        assert exited.value.code == 2 and "a number expected" in capsys.readouterr().err
    finally:
        emu.terminate()
        emu.wait(timeout=10)
    broken = tmp_path / "broken.toml"
    broken.write_text('[device]\nvendor = "a"\nmodel = "b"\n[[points]]\nname = "x"\naddress = 1\naccess = "rw"\n')
    assert main(["emulate", "--map", str(broken), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{broken}: point x: min: a writable number needs write limits" in err
