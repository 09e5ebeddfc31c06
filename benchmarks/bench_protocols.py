"""Protocol benchmark: time and messages per protocol round, centralized vs distributed, 3 microgrids.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_protocols.py [--steps 300] [--out benchmarks/results/protocols.json]

For each protocol one "round" is what one environment step needs:

* setpoint: the operator allocates and sends 3 setpoints; 3 microgrids receive theirs;
* price_signal: the operator broadcasts one price; 3 microgrids receive it;
* p2p_trading: 3 participants send orders; the market clears and broadcasts the clearing;
* consensus_{topology}: 3 nodes average a 2-vector to tol 1e-6 (message rounds reported);
* dispatch_{topology}: 3 nodes run the consensus-based economic dispatch.

Centralized = the direct function (allocate / price / clear / average / exact dispatch).
Distributed = every role as its own coroutine with its own Link, gathered in one event loop:
over one shared InMemoryBroker, and over Mosquitto (started on loopback by the launcher) with one
MqttBroker connection per agent. ``messages`` = envelopes published per round;
``deliveries`` = envelopes handed to agents per round (a bus message counts once per subscriber).
Every distributed round is checked against the centralized result. Only the protocol work is
timed: every step's inputs are built before the clock starts, and the checks run after it stops.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from _stats import summary_ms

from heron_edge.brokers import Broker, InMemoryBroker, MqttBroker
from heron_edge.protocols import (
    ConsensusProtocol,
    GeneratorCost,
    Link,
    P2PTradingProtocol,
    PriceSignalProtocol,
    SetpointProtocol,
)
from heron_edge.runtime.mosquitto import find_mosquitto, running_mosquitto

MGS = ("mg1", "mg2", "mg3")
GENS = [GeneratorCost(0.10, 20.0, 0.0, 5.0), GeneratorCost(0.05, 25.0, 0.5, 4.0), GeneratorCost(0.20, 15.0, 0.0, 3.0)]


@dataclass
class Scenario:
    """One protocol round: the agents, how to prepare them, a step's input, the distributed round,
    its check against the centralized result, and the centralized round.

    ``make_input(step)`` is called for every step before any clock starts; ``distributed`` returns
    what the agents produced, and ``check(input, outcome)`` (run after the clock stops) asserts it
    matches the centralized result and returns the message rounds used (0 if n/a)."""

    name: str
    agents: tuple[str, ...]
    make_input: Callable[[int], Any]
    prepare: Callable[[dict[str, Link]], Awaitable[None]]
    distributed: Callable[[dict[str, Link], Any], Awaitable[Any]]
    check: Callable[[Any, Any], int]
    centralized: Callable[[Any], object]


def inputs(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {"needs": rng.uniform(-1.0, 3.0, 3), "limit": rng.uniform(20.0, 80.0, 3),
            "values": rng.uniform(-10.0, 10.0, (3, 2)), "demand": rng.uniform(1.0, 3.5, 3),
            "price": rng.uniform(20.0, 90.0, 1), "loading": rng.uniform(0.5, 1.1, 1)}


def scenarios() -> list[Scenario]:
    setpoint = SetpointProtocol({"import_limit_mw": 4.0})
    price = PriceSignalProtocol({"congestion_adder_usd_per_mwh": 40.0})
    p2p = P2PTradingProtocol({"fee_usd_per_mwh": 1.0})
    out: list[Scenario] = []

    async def sp_prepare(links: dict[str, Link]) -> None:
        for m in MGS:
            await setpoint.prepare(links[m], "microgrid")

    async def sp_round(links: dict[str, Link], needs: np.ndarray) -> Any:
        return await asyncio.gather(setpoint.operator(links["operator"], needs, MGS),
                                    *(setpoint.receive(links[m]) for m in MGS))

    def sp_check(needs: np.ndarray, outcome: Any) -> int:
        sent, *got = outcome
        assert [g.p_mw for g in got] == setpoint.allocate(needs).tolist() == sent.tolist()
        return 0

    out.append(Scenario("setpoint", ("operator", *MGS), lambda k: inputs(k)["needs"], sp_prepare, sp_round,
                        sp_check, setpoint.allocate))

    def pr_input(step: int) -> tuple[float, float]:
        x = inputs(step)
        return float(x["price"][0]), float(x["loading"][0])

    async def pr_prepare(links: dict[str, Link]) -> None:
        for m in MGS:
            await price.prepare(links[m], "microgrid")

    async def pr_round(links: dict[str, Link], x: tuple[float, float]) -> Any:
        p, loading = x
        return await asyncio.gather(price.operator(links["operator"], p, loading),
                                    *(price.receive(links[m]) for m in MGS))

    def pr_check(x: tuple[float, float], outcome: Any) -> int:
        _, *got = outcome
        assert all(g.source == "message" and g.signal == price.price(*x) for g in got)
        return 0

    out.append(Scenario("price_signal", ("operator", *MGS), pr_input, pr_prepare, pr_round, pr_check,
                        lambda x: price.price(*x)))

    def orders(step: int) -> list[Any]:
        x = inputs(step)
        return p2p.orders_from_net(MGS, x["needs"] - 1.0, x["limit"])

    async def p2p_prepare(links: dict[str, Link]) -> None:
        await p2p.prepare(links["market"], "market")
        for m in MGS:
            await p2p.prepare(links[m], "participant")

    async def p2p_round(links: dict[str, Link], book: list[Any]) -> Any:
        return await asyncio.gather(p2p.market(links["market"], MGS),
                                    *(p2p.participant(links[o.agent_id], o) for o in book))

    def p2p_check(book: list[Any], outcome: Any) -> int:
        market, *confs = outcome
        expected = p2p.clear(book)
        assert market == expected and all(c.clearing == expected for c in confs)
        return 0

    out.append(Scenario("p2p_trading", ("market", *MGS), orders, p2p_prepare, p2p_round, p2p_check, p2p.clear))

    for topology in ("complete", "path"):
        cons = ConsensusProtocol({"nodes": MGS, "topology": topology, "tol": 1e-6})

        async def c_prepare(links: dict[str, Link], cons: ConsensusProtocol = cons) -> None:
            for m in MGS:
                await cons.prepare(links[m])

        async def c_round(links: dict[str, Link], values: np.ndarray, cons: ConsensusProtocol = cons) -> Any:
            return await asyncio.gather(*(cons.node(links[m], values[k]) for k, m in enumerate(MGS)))

        def c_check(values: np.ndarray, res: Any) -> int:
            assert all(np.max(np.abs(r.value - values.mean(axis=0))) <= 1e-6 for r in res)
            return res[0].rounds

        out.append(Scenario(f"consensus_{topology}", MGS, lambda k: inputs(k)["values"], c_prepare, c_round,
                            c_check, cons.average))

        async def d_round(links: dict[str, Link], demand: np.ndarray, cons: ConsensusProtocol = cons) -> Any:
            return await asyncio.gather(*(cons.dispatch_node(links[m], g, float(d))
                                          for m, g, d in zip(MGS, GENS, demand, strict=True)))

        def d_check(demand: np.ndarray, res: Any, cons: ConsensusProtocol = cons) -> int:
            opt = cons.dispatch(GENS, float(demand.sum()))
            assert np.max(np.abs(np.array([r.p_mw for r in res]) - opt.p_mw)) <= 0.01 * demand.sum()
            return res[0].rounds

        out.append(Scenario(f"dispatch_{topology}", MGS, lambda k: inputs(k)["demand"], c_prepare, d_round,
                            d_check, lambda demand, cons=cons: cons.dispatch(GENS, float(demand.sum()))))
    return out


def bench_centralized(sc: Scenario, steps: int) -> dict[str, Any]:
    xs = [sc.make_input(k) for k in range(steps)]
    for x in xs[:20]:
        sc.centralized(x)
    samples = []
    for x in xs:
        start = time.perf_counter()
        sc.centralized(x)
        samples.append(time.perf_counter() - start)
    return {"time_per_round": summary_ms(samples), "messages_per_round": 0}


async def bench_distributed(sc: Scenario, steps: int, make_broker: Callable[[], Broker] | None) -> dict[str, Any]:
    """``make_broker`` None: one shared InMemoryBroker; else one broker (connection) per agent."""
    site = f"bench{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        shared = await stack.enter_async_context(InMemoryBroker()) if make_broker is None else None
        links: dict[str, Link] = {}
        for agent in sc.agents:
            broker = shared if shared is not None else await stack.enter_async_context(make_broker())  # type: ignore[misc]
            links[agent] = Link(broker, site=site, agent_id=agent, timeout_s=2.0)
        await sc.prepare(links)
        warmup = min(20, steps)
        xs = [sc.make_input(k) for k in range(steps + warmup)]
        samples: list[float] = []
        rounds: list[int] = []
        sent0 = deliveries0 = 0
        for k in range(steps + warmup):
            if k == warmup:
                sent0 = sum(link.stats.sent for link in links.values())
                deliveries0 = sum(_deliveries(link) for link in links.values())
            for link in links.values():
                link.step = k
            start = time.perf_counter()
            outcome = await sc.distributed(links, xs[k])
            elapsed = time.perf_counter() - start
            r = sc.check(xs[k], outcome)
            if k >= warmup:
                samples.append(elapsed)
                rounds.append(r)
        sent = sum(link.stats.sent for link in links.values()) - sent0
        deliveries = sum(_deliveries(link) for link in links.values()) - deliveries0
        problems = {a: {"rejected": link.stats.rejected_total, "timeouts": link.stats.timeouts}
                    for a, link in links.items() if link.stats.rejected_total or link.stats.timeouts}
        for link in links.values():
            await link.close()
    result: dict[str, Any] = {"time_per_round": summary_ms(samples), "messages_per_round": round(sent / steps, 2),
                              "deliveries_per_round": round(deliveries / steps, 2)}
    if any(rounds):
        result["message_rounds"] = {"mean": round(statistics.fmean(rounds), 2), "max": max(rounds)}
    if problems:
        result["problems"] = problems
    return result


def _deliveries(link: Link) -> int:
    s = link.stats
    return s.received + s.ignored + s.stale + s.duplicates + s.rejected_total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "protocols.json")
    args = parser.parse_args(argv)
    if find_mosquitto() is None:
        print("mosquitto not found; apt-get install mosquitto", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "benchmark": "protocols",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "paho_mqtt": version("paho-mqtt"),
        "microgrids": len(MGS),
        "steps": args.steps,
        "protocols": {},
    }
    with running_mosquitto() as mosquitto:
        for sc in scenarios():
            steps = args.steps if not sc.name.startswith("dispatch") else max(20, args.steps // 3)
            row = {
                "centralized": bench_centralized(sc, steps),
                "in_memory": asyncio.run(bench_distributed(sc, steps, None)),
                "mosquitto": asyncio.run(bench_distributed(sc, steps, lambda: MqttBroker(mosquitto.url))),
            }
            report["protocols"][sc.name] = row
            print(f"{sc.name:20s} central {row['centralized']['time_per_round']['median_ms']:8.4f} ms | "
                  f"memory {row['in_memory']['time_per_round']['median_ms']:8.3f} ms "
                  f"{row['in_memory']['messages_per_round']:6.1f} msg | "
                  f"mosquitto {row['mosquitto']['time_per_round']['median_ms']:8.3f} ms "
                  f"{row['mosquitto']['messages_per_round']:6.1f} msg", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
