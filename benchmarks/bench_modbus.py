"""Modbus cost per telemetry cycle and per setpoint: our client against our emulator, and pymodbus's own floor.

For each role (battery, PV, meter) on each device profile (``ieee1547``: 7xx; ``legacy``: 1xx, see
``firmware_bridge.sunspec_device``), one workload is a full telemetry read as the gateway does it each cycle
(``ModbusDevice.read_telemetry``: the requests its read plan merges, decoded through the resolved capabilities).
Its floor is a bare pymodbus client reading the very same register spans from a bare pymodbus server (a plain
``SimDevice`` holding the same image, no action), on the same loopback, in the same run. The setpoint workloads
write a battery setpoint through the resolved path (704 ``WSet`` / 124 ``InWRte`` + ``OutWRte``) and read it back;
the floor writes the same registers and reads the same span. Each workload is measured in short paired rounds
(floor, then ours, repeated); the ratio reported is the median of the per-round ratios, which stays put while
other processes load the machine.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_modbus.py [--cycles 200] [--rounds 15]

Writes benchmarks/results/modbus.json. Target: every workload within 1.5x of the floor.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pymodbus
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from firmware_bridge import (
    BatteryModel,
    DeviceModel,
    Emulator,
    ModbusDevice,
    ModbusDeviceConfig,
    PVInverterModel,
    SiteMeterModel,
    battery_nameplate,
    inverter_nameplate,
    meter_nameplate,
)

RESULTS = Path(__file__).parent / "results" / "modbus.json"
TARGET_RATIO = 1.5
PROFILES = ("ieee1547", "legacy")
ROLES = {"battery": "battery", "pv": "inverter", "meter": "meter"}


def _model(kind: str) -> DeviceModel:
    if kind == "battery":
        return BatteryModel(battery_nameplate())
    if kind == "inverter":
        return PVInverterModel(inverter_nameplate(), time_of_day=lambda: 12 * 3600.0)
    return SiteMeterModel(meter_nameplate(), time_of_day=lambda: 12 * 3600.0)


async def _time_per_call(op: Callable[[], Awaitable[object]], calls: int) -> float:
    """Microseconds per call of ``op`` over ``calls`` calls (after a short warm-up)."""
    for _ in range(min(20, calls)):
        await op()
    started = time.perf_counter()
    for _ in range(calls):
        await op()
    return (time.perf_counter() - started) / calls * 1e6


class _Floor:
    """A bare pymodbus server holding a copy of an image (a plain ``SimDevice``: no action), and a bare client."""

    def __init__(self, base: int, registers: list[int]) -> None:
        self.server = ModbusTcpServer(SimDevice(1, simdata=[SimData(base, values=list(registers),
                                                                      datatype=DataType.REGISTERS)]),
                                      address=("127.0.0.1", 0))
        self.client: AsyncModbusTcpClient | None = None

    async def start(self) -> AsyncModbusTcpClient:
        await self.server.serve_forever(background=True)
        port = self.server.transport.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0, reconnect_delay=0)
        await self.client.connect()
        return self.client

    async def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        await self.server.shutdown()  # type: ignore[no-untyped-call]


async def _workloads(stack: list[Callable[[], Awaitable[None]]]) -> dict[str, tuple[Callable[[], Awaitable[object]],
                                                                                   Callable[[], Awaitable[object]], int]]:
    """name -> (floor op, our op, requests per call); ``stack`` collects what to stop afterwards."""
    workloads: dict[str, tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[object]], int]] = {}
    for profile in PROFILES:
        for role, kind in ROLES.items():
            emulator = Emulator(_model(kind), profile=profile)  # type: ignore[arg-type]
            await emulator.start()
            device = ModbusDevice(ModbusDeviceConfig(port=emulator.port, min_gap_s=0.0, retries=0), role=role)  # type: ignore[arg-type]
            await device.open()
            await device.discover()
            floor = _Floor(emulator.device.image.base, emulator.device.image.registers)
            client = await floor.start()
            stack += [device.close, emulator.stop, floor.stop]
            requests = list(device.telemetry_requests)  # the spans ours reads each cycle

            async def floor_telemetry(client: AsyncModbusTcpClient = client, spans: list[tuple[int, int]] = requests) -> None:
                for address, count in spans:
                    await client.read_holding_registers(address, count=count, device_id=1)

            async def ours_telemetry(device: ModbusDevice = device) -> None:
                t = await device.read_telemetry()
                if t.stale:
                    raise RuntimeError(t.error)

            workloads[f"telemetry_{role}_{profile}"] = (floor_telemetry, ours_telemetry, len(requests))
            if role != "battery":
                continue
            await device.write_setpoint(1000.0)  # the revert timer and the mode are written once
            info = device.info
            assert info is not None
            model_id = 704 if profile == "ieee1547" else 124
            loc = info.location(model_id)
            assert loc is not None

            layout = info.views[model_id].model

            def at(point: str, layout: object = layout, address: int = loc.address) -> int:
                return address + layout.point(point).offset  # type: ignore[attr-defined]

            if profile == "ieee1547":  # WSetEna, WSetMod, WSet; read back up to WSet_SF
                write_at, write = at("WSetEna"), [1, 1, 0, 1000]
                check = (at("WSetEna"), at("WSet_SF") - at("WSetEna") + 1)
            else:  # OutWRte, InWRte, InOutWRte_WinTms, InOutWRte_RvrtTms; read back WChaMax .. InOutWRte_SF
                write_at, write = at("OutWRte"), [2000, (-2000) & 0xFFFF, 0, 60]
                check = (at("WChaMax"), at("InOutWRte_SF") - at("WChaMax") + 1)

            async def floor_write(client: AsyncModbusTcpClient = client, at: int = write_at, values: list[int] = write,
                                  span: tuple[int, int] = check) -> None:
                await client.write_registers(at, values, device_id=1)
                await client.read_holding_registers(span[0], count=span[1], device_id=1)

            async def ours_write(device: ModbusDevice = device) -> None:
                result = await device.write_setpoint(1000.0)
                if not result.readback_ok:
                    raise RuntimeError("read-back differs")

            workloads[f"write_setpoint_battery_{profile}"] = (floor_write, ours_write, 2)
    return workloads


async def main(cycles: int, rounds: int) -> dict[str, object]:
    stack: list[Callable[[], Awaitable[None]]] = []
    results: dict[str, dict[str, float]] = {}
    try:
        workloads = await _workloads(stack)
        for name, (floor_op, ours_op, requests) in workloads.items():
            floor_runs, ours_runs, ratios = [], [], []
            for _ in range(rounds):  # short paired rounds: both sides see the same background load
                floor_runs.append(await _time_per_call(floor_op, cycles))
                ours_runs.append(await _time_per_call(ours_op, cycles))
                ratios.append(ours_runs[-1] / floor_runs[-1])
            floor_us, ours_us, ratio = statistics.median(floor_runs), statistics.median(ours_runs), statistics.median(ratios)
            results[name] = {
                "requests_per_cycle": requests,
                "floor_ms_per_cycle": round(floor_us / 1e3, 3),
                "ours_ms_per_cycle": round(ours_us / 1e3, 3),
                "floor_ms_per_cycle_best": round(min(floor_runs) / 1e3, 3),
                "ours_ms_per_cycle_best": round(min(ours_runs) / 1e3, 3),
                "ratio": round(ratio, 3),
            }
            print(f"{name:32s} {requests} req  floor {floor_us / 1e3:6.3f} ms (best {min(floor_runs) / 1e3:6.3f})  "
                  f"ours {ours_us / 1e3:6.3f} ms (best {min(ours_runs) / 1e3:6.3f})  ratio {ratio:5.2f}")
    finally:
        for stop in reversed(stack):
            await stop()
    worst = max(r["ratio"] for r in results.values())
    return {
        "benchmark": "modbus per cycle on loopback: firmware_bridge (ModbusDevice + Emulator) vs bare pymodbus "
                     "(client + plain SimDevice server), per role and device profile",
        "pymodbus": pymodbus.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "cycles_per_round": cycles,
        "rounds": rounds,
        "workloads": results,
        "worst_ratio": worst,
        "worst_workload": max(results, key=lambda n: results[n]["ratio"]),
        "target_ratio": TARGET_RATIO,
        "within_target": worst <= TARGET_RATIO,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=200, help="cycles per round and workload")
    parser.add_argument("--rounds", type=int, default=15, help="paired rounds; medians are reported")
    options = parser.parse_args()
    report = asyncio.run(main(options.cycles, options.rounds))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"worst ratio {report['worst_ratio']} ({report['worst_workload']}; target {TARGET_RATIO}); wrote {RESULTS}")
