"""Broker benchmark: QoS-1 round trips and fan-out steps, over Mosquitto and in memory.

    python benchmarks/bench_brokers.py [--rounds 2000] [--out benchmarks/results/brokers.json]

* round trip: one client publishes (QoS 1, awaiting the PUBACK) to a topic another client
  subscribes to; time from publish to the subscriber's ``get`` returning.
* fan-out step: one publisher, N subscribers (N separate MQTT clients on ONE event loop); a step
  is one broadcast and ends when every subscriber has it.
* in-memory publish cost: one publish delivered to 3 subscriptions.

Mosquitto is started on a free loopback port by ``heron_edge.runtime.mosquitto``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _stats import summary_ms

from heron_edge.brokers import Broker, InMemoryBroker, MqttBroker
from heron_edge.messages import ClockBody, encode, make_envelope
from heron_edge.runtime.mosquitto import find_mosquitto, running_mosquitto

PAYLOAD = encode(make_envelope("coordinator", ClockBody(step=1), step=1))


async def round_trips(publisher: Broker, subscriber: Broker, rounds: int) -> dict[str, Any]:
    sub = await subscriber.subscribe("bench/rt")
    samples: list[float] = []
    for i in range(rounds + 100):
        start = time.perf_counter()
        await publisher.publish("bench/rt", PAYLOAD, qos=1)
        await sub.get(timeout=5.0)
        if i >= 100:  # warm-up
            samples.append(time.perf_counter() - start)
    await subscriber.unsubscribe(sub)
    return summary_ms(samples)


async def fan_out(publisher: Broker, subscribers: list[Broker], rounds: int) -> dict[str, Any]:
    subs = [await b.subscribe("bench/bus/clock") for b in subscribers]
    samples: list[float] = []
    for i in range(rounds + 20):
        start = time.perf_counter()
        await publisher.publish("bench/bus/clock", PAYLOAD, qos=1)
        await asyncio.gather(*(s.get(timeout=5.0) for s in subs))
        if i >= 20:
            samples.append(time.perf_counter() - start)
    for broker, sub in zip(subscribers, subs, strict=True):
        await broker.unsubscribe(sub)
    return summary_ms(samples)


async def mqtt_suite(url: str, rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with MqttBroker(url) as pub, MqttBroker(url) as sub:
        results["qos1_round_trip"] = await round_trips(pub, sub, rounds)
    for n in (3, 30):
        clients = [MqttBroker(url) for _ in range(n)]
        async with MqttBroker(url) as pub:
            for client in clients:
                await client.connect()
            try:
                results[f"fan_out_{n}_clients"] = await fan_out(pub, clients, max(200, rounds // 5))
            finally:
                for client in clients:
                    await client.close()
    return results


async def memory_suite(rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with InMemoryBroker() as broker:
        results["qos1_round_trip"] = await round_trips(broker, broker, rounds)
        for n in (3, 30):
            results[f"fan_out_{n}_subscriptions"] = await fan_out(broker, [broker] * n, max(200, rounds // 5))
        subs = [await broker.subscribe(f) for f in ("heron/s/+/cmd/#", "heron/s/ess1/cmd/setpoint", "heron/#")]
        n_pub = 100_000
        start = time.perf_counter()
        for _ in range(n_pub):
            await broker.publish("heron/s/ess1/cmd/setpoint", PAYLOAD)
            for s in subs:
                s.get_nowait()
        elapsed = time.perf_counter() - start
        results["publish_to_3_subscriptions_us"] = round(elapsed / n_pub * 1e6, 3)
    return results


def mosquitto_version(binary: str) -> str:
    out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=10)
    first = (out.stdout or out.stderr).splitlines()
    return first[0] if first else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "brokers.json")
    args = parser.parse_args(argv)

    binary = find_mosquitto()
    if binary is None:
        print("mosquitto not found; apt-get install mosquitto", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "benchmark": "brokers",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "paho_mqtt": version("paho-mqtt"),
        "mosquitto_version": mosquitto_version(binary),
        "payload_bytes": len(PAYLOAD),
        "rounds": args.rounds,
    }
    report["cpus"] = os.cpu_count()
    report["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    run: Callable[..., Any] = asyncio.run
    report["in_memory"] = run(memory_suite(args.rounds))
    with running_mosquitto() as broker:
        report["mosquitto"] = run(mqtt_suite(broker.url, args.rounds))
    # p99 and the 30-client fan-out are sensitive to other load on the machine (Mosquitto and this
    # process compete for the same cores), so the load is recorded with the numbers.
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
