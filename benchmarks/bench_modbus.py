"""Modbus round trips per second: our client against our emulator, and pymodbus's own floor.

The floor is a bare pymodbus client reading (or writing) the same register ranges from a bare
pymodbus server with a plain datastore, on the same loopback, in the same run. Each workload is
measured in short paired rounds (floor, then ours, repeated); the ratio reported is the median of
the per-round ratios, which stays put while other processes load the machine.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_modbus.py [--requests 400] [--rounds 15]

Writes benchmarks/results/modbus.json. Target: ours within about 1.5x of the floor per request.
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
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusTcpServer

from firmware_bridge import BatteryModel, Emulator, ModbusDevice, ModbusDeviceConfig, battery_nameplate

RESULTS = Path(__file__).parent / "results" / "modbus.json"
TARGET_RATIO = 1.5


async def _time_per_request(op: Callable[[], Awaitable[object]], calls: int, requests_per_call: int) -> float:
    """Microseconds per Modbus request over ``calls`` calls of ``op``."""
    for _ in range(min(20, calls)):  # warm up
        await op()
    started = time.perf_counter()
    for _ in range(calls):
        await op()
    return (time.perf_counter() - started) / (calls * requests_per_call) * 1e6


async def main(requests: int, rounds: int) -> dict[str, object]:
    # ours: the emulated battery and ModbusDevice (no minimum gap: we measure the software, not the policy)
    emulator = Emulator(BatteryModel(battery_nameplate()))
    await emulator.start()
    device = ModbusDevice(ModbusDeviceConfig(port=emulator.port, min_gap_s=0.0, retries=0, setpoint_revert_s=60))
    await device.open()
    info = await device.discover()
    await device.write_setpoint(0.0)  # writes the revert timer once; later setpoints are one request
    loc = {m.model_id: m for m in info.models}
    telemetry_spans = [(loc[701].address, 123), (loc[713].address, loc[713].length + 2)]

    # the floor: a plain datastore holding the same image, and a bare pymodbus client
    image = emulator.device.image
    block = ModbusSequentialDataBlock(image.base + 1, list(image.registers))  # the context adds 1
    server = ModbusTcpServer(
        ModbusServerContext(devices={1: ModbusDeviceContext(hr=block)}, single=False), address=("127.0.0.1", 0)
    )
    await server.serve_forever(background=True)
    floor_port = server.transport.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    bare = AsyncModbusTcpClient("127.0.0.1", port=floor_port, retries=0, reconnect_delay=0)
    await bare.connect()

    async def floor_read_model() -> None:
        await bare.read_holding_registers(loc[704].address, count=loc[704].length + 2, device_id=1)

    async def floor_telemetry() -> None:
        for address, count in telemetry_spans:
            await bare.read_holding_registers(address, count=count, device_id=1)

    async def floor_write() -> None:
        await bare.write_registers(loc[704].address + 22, [1, 1, 0, 1000], device_id=1)

    async def ours_read_model() -> None:
        await device.read_model(704)

    async def ours_telemetry() -> None:
        t = await device.read_telemetry()
        assert not t.stale, t.error

    async def ours_write() -> None:
        await device.write_setpoint(1000.0)

    workloads = {
        "read_model_704": (floor_read_model, ours_read_model, 1),
        "read_telemetry_701_713": (floor_telemetry, ours_telemetry, 2),
        "write_setpoint": (floor_write, ours_write, 1),
    }
    results: dict[str, dict[str, float]] = {}
    try:
        for name, (floor_op, ours_op, per_call) in workloads.items():
            calls = max(1, requests // per_call)
            floor_runs, ours_runs, ratios = [], [], []
            for _ in range(rounds):  # short paired rounds: both sides see the same background load
                floor_runs.append(await _time_per_request(floor_op, calls, per_call))
                ours_runs.append(await _time_per_request(ours_op, calls, per_call))
                ratios.append(ours_runs[-1] / floor_runs[-1])
            floor_us, ours_us, ratio = statistics.median(floor_runs), statistics.median(ours_runs), statistics.median(ratios)
            results[name] = {
                "requests_per_call": per_call,
                "floor_us_per_request": round(floor_us, 1),
                "ours_us_per_request": round(ours_us, 1),
                "floor_us_per_request_best": round(min(floor_runs), 1),
                "ours_us_per_request_best": round(min(ours_runs), 1),
                "floor_requests_per_s": round(1e6 / floor_us),
                "ours_requests_per_s": round(1e6 / ours_us),
                "ratio": round(ratio, 3),
            }
            print(
                f"{name:24s} floor {floor_us:7.1f} us (best {min(floor_runs):6.1f})  "
                f"ours {ours_us:7.1f} us (best {min(ours_runs):6.1f})  ratio {ratio:5.2f}"
            )
    finally:
        bare.close()
        await server.shutdown()
        await device.close()
        await emulator.stop()
    worst = max(r["ratio"] for r in results.values())
    return {
        "benchmark": "modbus round trips on loopback: firmware_bridge (ModbusDevice + Emulator) vs bare pymodbus",
        "pymodbus": pymodbus.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "requests_per_round": requests,
        "rounds": rounds,
        "workloads": results,
        "worst_ratio": worst,
        "target_ratio": TARGET_RATIO,
        "within_target": worst <= TARGET_RATIO,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="requests per round and workload")
    parser.add_argument("--rounds", type=int, default=15, help="paired rounds; medians are reported")
    options = parser.parse_args()
    report = asyncio.run(main(options.requests, options.rounds))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"worst ratio {report['worst_ratio']} (target {TARGET_RATIO}); wrote {RESULTS}")
