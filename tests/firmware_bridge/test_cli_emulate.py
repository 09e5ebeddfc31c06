"""``heron-edge emulate``: starts, serves a SunSpec device, stops cleanly on SIGINT."""
from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys

import pytest

from firmware_bridge import ModbusDevice, ModbusDeviceConfig
from heron_edge.commands import emulate
from tests.firmware_bridge.conftest import run

# the dispatcher in heron_edge.cli imports every subcommand; this runs ours alone
_SCRIPT = (
    "import argparse, sys\n"
    "from heron_edge.commands import emulate\n"
    "parser = argparse.ArgumentParser()\n"
    "emulate.add_arguments(parser)\n"
    "sys.exit(emulate.run(parser.parse_args(sys.argv[1:])))\n"
)


def test_arguments() -> None:
    parser = argparse.ArgumentParser()
    emulate.add_arguments(parser)
    args = parser.parse_args(["--device", "inverter", "--port", "1502", "--unit-id", "7"])
    assert (args.device, args.port, args.unit_id, args.host) == ("inverter", 1502, 7, "127.0.0.1")
    with pytest.raises(SystemExit):
        parser.parse_args(["--device", "toaster", "--port", "1"])
    assert emulate.__doc__  # the help text


def test_importing_the_command_stays_light() -> None:
    code = "import sys, heron_edge.commands.emulate; print(sorted(m for m in ('firmware_bridge', 'pymodbus') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.modbus
def test_a_taken_port_is_a_clear_error() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-c", _SCRIPT, "--device", "inverter", "--port", str(port)],
            capture_output=True, text=True, timeout=20,
        )
    assert done.returncode == 2
    assert "cannot listen" in done.stderr


@pytest.mark.modbus
def test_emulate_serves_until_interrupted() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, "--device", "battery", "--port", "0", "--unit-id", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+) unit 5", line)
        assert match, line
        port = int(match.group(1))

        async def talk() -> None:
            async with ModbusDevice(ModbusDeviceConfig(port=port, unit_id=5, timeout_s=1.0)) as device:
                info = await device.discover()
                assert info.storage
                await device.write_setpoint(-1000.0)
                assert (await device.read_telemetry()).p_w == -1000.0

        run(talk())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
