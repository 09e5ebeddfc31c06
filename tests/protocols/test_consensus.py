"""ConsensusProtocol: the distributed rounds agree with the fixed point; dispatch matches the optimum."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heron_edge.brokers import InMemoryBroker
from heron_edge.errors import ActionError, ConfigError
from heron_edge.messages import ConsensusBody, SetpointBody, agent_topic, make_envelope
from heron_edge.protocols import ConsensusConfig, ConsensusProtocol, GeneratorCost, Link
from heron_edge.protocols.consensus import RoundsWarning
from heron_edge.protocols.dispatch import dispatch_at, economic_dispatch
from tests.conftest import run_async
from tests.protocols.conftest import Transport

IDS = ("mg1", "mg2", "mg3")
GENS = [GeneratorCost(0.10, 20.0, 0.0, 5.0), GeneratorCost(0.05, 25.0, 0.5, 4.0), GeneratorCost(0.20, 15.0, 0.0, 3.0)]


async def _run_nodes(proto: ConsensusProtocol, links: dict[str, Link], values: np.ndarray) -> list:
    for link in links.values():
        await proto.prepare(link)
    return await asyncio.gather(*(proto.node(links[a], values[k]) for k, a in enumerate(proto.config.nodes)))


def test_centralized_form_is_the_average() -> None:
    proto = ConsensusProtocol({"nodes": IDS, "topology": "path"})
    values = np.array([[1.0, 5.0], [2.0, -1.0], [9.0, 2.0]])
    assert np.array_equal(proto.average(values), np.tile([4.0, 2.0], (3, 1)))
    with pytest.raises(ActionError):
        proto.average(np.ones(2))
    with pytest.raises(ConfigError):
        ConsensusProtocol({"nodes": ("a", "a")})
    with pytest.raises(ConfigError, match="expander topology only"):
        ConsensusProtocol({"nodes": IDS, "topology": "ring", "degree": 4})
    assert max(len(v) for v in ConsensusProtocol({"nodes": [f"n{k}" for k in range(40)], "degree": 4})
               .graph.neighbours.values()) <= 4


@pytest.mark.parametrize("topology", ["expander", "complete", "path", "star", "ring"])
def test_distributed_rounds_agree_with_the_fixed_point(transport: Transport, topology: str) -> None:
    proto = ConsensusProtocol({"nodes": IDS, "topology": topology, "tol": 1e-6})
    values = np.array([[1.0, 5.0], [2.0, -1.0], [10.0, 0.0]])

    async def main() -> list:
        async with transport.links(IDS) as links:
            return await _run_nodes(proto, links, values)

    results = run_async(main())
    expected = proto.average(values)
    rounds = {r.rounds for r in results}
    assert len(rounds) == 1 and 1 <= rounds.pop() <= proto.max_rounds  # all stop at the same round
    for k, r in enumerate(results):
        assert r.converged and r.excluded == ()
        assert np.max(np.abs(r.value - expected[k])) <= proto.config.tol


@settings(max_examples=40, deadline=None)
@given(topology=st.sampled_from(["path", "star", "expander"]), n=st.integers(2, 12),
       data=st.data())
def test_consensus_reaches_the_true_average_on_path_and_star(topology: str, n: int, data: st.DataObject) -> None:
    values = np.array(data.draw(st.lists(st.floats(-100.0, 100.0, allow_nan=False), min_size=n, max_size=n)))
    ids = tuple(f"n{k}" for k in range(n))
    proto = ConsensusProtocol({"nodes": ids, "topology": topology, "tol": 1e-6, "max_rounds": 5000})

    async def main() -> list:
        async with InMemoryBroker() as broker:
            links = {a: Link(broker, site="s", agent_id=a) for a in ids}
            return await _run_nodes(proto, links, values)

    results = run_async(main())
    for r in results:
        assert r.converged
        assert abs(float(r.value[0]) - values.mean()) <= 1e-6


def test_expander_consensus_takes_at_most_50_rounds_at_1000_nodes_and_matches_the_average() -> None:
    ids = tuple(f"mg{k}" for k in range(1000))
    proto = ConsensusProtocol({"nodes": ids, "tol": 1e-6})  # the default graph: the expander
    assert max(len(v) for v in proto.graph.neighbours.values()) <= 8  # the default degree
    assert proto.needed_rounds <= 50  # derived from the spectral gap, for values spread over 1e9 tol
    values = np.random.default_rng(7).uniform(-100.0, 100.0, size=(1000, 2))
    results = proto.average_lockstep(values)
    expected = proto.average(values)
    assert {r.rounds for r in results} == {results[0].rounds} and results[0].rounds <= 50
    assert all(r.converged for r in results)
    assert np.max(np.abs(np.array([r.value for r in results]) - expected)) <= proto.config.tol


def test_lockstep_average_equals_the_distributed_rounds_bit_for_bit() -> None:
    ids = tuple(f"n{k}" for k in range(24))
    proto = ConsensusProtocol({"nodes": ids})
    values = np.random.default_rng(3).normal(size=24)

    async def main() -> list:
        async with InMemoryBroker() as broker:
            return await _run_nodes(proto, {a: Link(broker, site="s", agent_id=a) for a in ids}, values)

    distributed = run_async(main())
    lockstep = proto.average_lockstep(values)
    assert [r.rounds for r in distributed] == [r.rounds for r in lockstep]
    assert all(np.array_equal(d.value, c.value) for d, c in zip(distributed, lockstep))
    assert lockstep[0].rounds < 40 and np.allclose([r.value[0] for r in lockstep], values.mean(), atol=1e-6)


@pytest.mark.parametrize("topology", ["expander", "ring", "star"])
def test_lockstep_dispatch_equals_the_distributed_nodes_bit_for_bit(topology: str) -> None:
    rng = np.random.default_rng(11)
    ids = tuple(f"g{k}" for k in range(14))
    gens = [GeneratorCost(float(rng.uniform(0.02, 0.3)), float(rng.uniform(5.0, 40.0)), 0.0, float(rng.uniform(0.5, 3.0)))
            for _ in ids]
    demands = list(rng.uniform(0.1, 1.5, len(ids)))
    proto = ConsensusProtocol({"nodes": ids, "topology": topology})

    async def main() -> list:
        async with InMemoryBroker() as broker:
            return await _distributed_dispatch(proto, {a: Link(broker, site="s", agent_id=a) for a in ids}, gens, demands)

    distributed = run_async(main())
    assert proto.dispatch_lockstep(gens, demands) == distributed  # every field, every node, exactly
    _assert_within_one_percent(distributed, gens, demands)


def test_a_too_low_max_rounds_warns_and_reports_unconverged() -> None:
    ids = tuple(f"n{k}" for k in range(30))
    ring = ConsensusProtocol({"nodes": ids, "topology": "ring"})  # the ring stays available; it needs far more rounds
    assert ring.max_rounds == 2 * ring.needed_rounds and ring.needed_rounds > 100
    with pytest.warns(RoundsWarning, match="max_rounds=20 is below"):
        short = ConsensusProtocol({"nodes": ids, "topology": "ring", "max_rounds": 20})
    results = short.average_lockstep(np.arange(30.0))
    assert all(not r.converged and r.rounds == 20 for r in results)
    assert all(r.converged for r in ring.average_lockstep(np.arange(30.0)))


def test_a_silent_node_is_excluded_after_one_timeout_and_the_rest_agree() -> None:
    proto = ConsensusProtocol({"nodes": ("a", "b", "c", "d"), "topology": "complete"})

    async def main() -> tuple[list, float]:
        async with InMemoryBroker() as broker:
            links = {a: Link(broker, site="s", agent_id=a, timeout_s=0.2) for a in ("a", "b", "c")}
            for link in links.values():
                await proto.prepare(link)
            t0 = time.perf_counter()
            out = await asyncio.gather(*(proto.node(links[a], v) for a, v in zip("abc", (1.0, 2.0, 6.0))))
            return out, time.perf_counter() - t0

    results, elapsed = run_async(main(), timeout=10.0)
    assert elapsed < 1.0  # one timeout of 0.2 s, then no more waiting
    for r in results:
        assert r.excluded == ("d",) and r.converged
        assert r.value[0] == pytest.approx(3.0, abs=1e-6)  # average of the nodes still talking


def test_malformed_consensus_payloads_are_counted_and_ignored() -> None:
    proto = ConsensusProtocol({"nodes": IDS, "topology": "complete"})

    async def main() -> list:
        async with InMemoryBroker() as broker:
            links = {a: Link(broker, site="s", agent_id=a) for a in IDS}
            for link in links.values():
                await proto.prepare(link)
            topic = agent_topic("s", "mg2", "consensus")  # every node hears mg2 (a complete graph)
            await broker.publish(topic, b"{not json")
            await broker.publish(topic, b'{"sender": "mg2", "step": 0, "body": {"kind": "consensus", "round": -1}}')
            await broker.publish(topic, make_envelope("mg2", SetpointBody(p_mw=1.0), step=0, ttl_s=-1.0))
            await broker.publish(topic, make_envelope("mg3", ConsensusBody(round=0, values=[1e6, 0.0]), step=0))  # forged
            await broker.publish(topic, b'{"sender": "mg2", "step": 0, "body": {"kind": "consensus", "round": 0, '
                                        b'"values": [1e300, 0.0]}}')
            out = await asyncio.gather(*(proto.node(links[a], v) for a, v in zip(IDS, (3.0, 6.0, 9.0))))
            return [out, [links[a].stats for a in IDS]]

    results, stats = run_async(main())
    assert all(r.value[0] == pytest.approx(6.0) and r.excluded == () for r in results)
    for agent, s in zip(IDS, stats):
        if agent == "mg2":  # mg2 does not listen to its own topic
            assert s.rejected.total() == 0
            continue
        assert s.rejected["not_json"] == 1 and s.rejected["schema"] == 1 and s.rejected["expired"] == 1
        assert s.rejected["sender"] == 1 and s.rejected["bounds"] == 1


# -- economic dispatch -----------------------------------------------------------------------


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[GeneratorCost], list[float]]:
    n = draw(st.integers(1, 5))
    gens = []
    for _ in range(n):
        p_min = draw(st.floats(0.0, 2.0))
        gens.append(GeneratorCost(draw(st.floats(0.01, 1.0)), draw(st.floats(0.0, 50.0)), p_min,
                                  p_min + draw(st.floats(0.1, 5.0))))
    lo = sum(g.p_min_mw for g in gens)
    hi = sum(g.p_max_mw for g in gens)
    total = draw(st.floats(0.9 * lo, 1.1 * hi))
    shares = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n))) + 1e-3
    return gens, list(total * shares / shares.sum())


@settings(max_examples=200, deadline=None)
@given(fleets())
def test_centralized_dispatch_satisfies_kkt(fleet: tuple[list[GeneratorCost], list[float]]) -> None:
    gens, demands = fleet
    a, b, lo, hi = (np.array([getattr(g, f) for g in gens]) for f in ("a_usd_per_mw2h", "b_usd_per_mwh", "p_min_mw", "p_max_mw"))
    demand = sum(demands)
    result = economic_dispatch(a, b, lo, hi, demand)
    p = result.p_mw
    assert (p >= lo - 1e-12).all() and (p <= hi + 1e-12).all()
    if lo.sum() < demand < hi.sum():
        assert result.feasible and p.sum() == pytest.approx(demand, abs=1e-9)
        mc = 2 * a * p + b
        free = (p > lo + 1e-9) & (p < hi - 1e-9)
        assert np.allclose(mc[free], result.lambda_usd_per_mwh, atol=1e-6)
        assert (mc[p <= lo + 1e-9] >= result.lambda_usd_per_mwh - 1e-6).all()
        assert (mc[p >= hi - 1e-9] <= result.lambda_usd_per_mwh + 1e-6).all()
        # no random feasible perturbation is cheaper
        rng = np.random.default_rng(0)
        for _ in range(20):
            d = rng.normal(size=p.size)
            d -= d.mean()
            q = np.clip(p + 1e-3 * d, lo, hi)
            if abs(q.sum() - demand) < 1e-12:
                assert (a * q * q + b * q).sum() >= result.cost_usd_per_h - 1e-9
    else:
        assert np.array_equal(p, lo if demand <= lo.sum() else hi)
    assert np.allclose(dispatch_at(result.lambda_usd_per_mwh, a, b, lo, hi), p, atol=1e-9) or not result.feasible


def _distributed_dispatch(proto: ConsensusProtocol, links: dict[str, Link], gens: list[GeneratorCost],
                          demands: list[float]) -> list:
    async def main() -> list:
        for link in links.values():
            await proto.prepare(link)
        return await asyncio.gather(*(proto.dispatch_node(links[a], g, d)
                                      for a, g, d in zip(proto.config.nodes, gens, demands)))
    return main()  # type: ignore[return-value]


def _assert_within_one_percent(results: list, gens: list[GeneratorCost], demands: list[float],
                               balance_tol_mw: float = ConsensusConfig.model_fields["balance_tol_mw"].default) -> None:
    """Within 1 % of the demand, or within the protocol's own balance tolerance when the demand is tiny
    (the distributed search stops once the total mismatch is below ``balance_tol_mw``)."""
    opt = ConsensusProtocol.dispatch(gens, sum(demands))
    p = np.array([r.p_mw for r in results])
    allowed_mw = max(0.01 * sum(demands), balance_tol_mw)
    assert np.max(np.abs(p - opt.p_mw)) <= allowed_mw
    cost = sum(g.a_usd_per_mw2h * x * x + g.b_usd_per_mwh * x for g, x in zip(gens, p))
    marginal = max(2 * g.a_usd_per_mw2h * g.p_max_mw + abs(g.b_usd_per_mwh) for g in gens)
    assert abs(cost - opt.cost_usd_per_h) <= max(0.01 * abs(opt.cost_usd_per_h), marginal * balance_tol_mw * len(gens))
    assert len({r.lambda_usd_per_mwh for r in results}) == 1  # every node holds the same lambda


@settings(max_examples=60, deadline=None)
@given(fleets(), st.sampled_from(["expander", "complete", "path", "star", "ring"]))
def test_distributed_dispatch_matches_the_centralized_optimum_within_one_percent(
        fleet: tuple[list[GeneratorCost], list[float]], topology: str) -> None:
    gens, demands = fleet
    ids = tuple(f"g{k}" for k in range(len(gens)))
    proto = ConsensusProtocol({"nodes": ids, "topology": topology})

    async def main() -> list:
        async with InMemoryBroker() as broker:
            links = {a: Link(broker, site="s", agent_id=a) for a in ids}
            return await _distributed_dispatch(proto, links, gens, demands)

    results = run_async(main())
    feasible = ConsensusProtocol.dispatch(gens, sum(demands)).feasible
    assert all(r.excluded == () for r in results)
    if feasible:  # infeasible demand: every unit at a limit, the balance cannot be met
        assert all(r.converged for r in results)
    _assert_within_one_percent(results, gens, demands)


@pytest.mark.parametrize("topology", ["expander", "path"])
def test_distributed_dispatch_agrees_over_each_transport(transport: Transport, topology: str) -> None:
    proto = ConsensusProtocol({"nodes": IDS, "topology": topology})
    demands = [2.0, 3.0, 2.5]

    async def main() -> list:
        async with transport.links(IDS) as links:
            return await _distributed_dispatch(proto, links, GENS, demands)

    results = run_async(main())
    assert all(r.converged and r.rounds > 0 for r in results)
    _assert_within_one_percent(results, GENS, demands)


def test_dispatch_with_a_silent_node_balances_among_the_others_in_bounded_time() -> None:
    ids = ("mg1", "mg2", "mg3", "mg4")
    proto = ConsensusProtocol({"nodes": ids, "topology": "complete"})
    demands = [2.0, 3.0, 2.5]

    async def main() -> tuple[list, float]:
        async with InMemoryBroker() as broker:
            links = {a: Link(broker, site="s", agent_id=a, timeout_s=0.2) for a in ids[:3]}  # mg4 is down
            t0 = time.perf_counter()
            out = await _distributed_dispatch(proto, links, GENS, demands)
            return out, time.perf_counter() - t0

    results, elapsed = run_async(main(), timeout=10.0)
    assert elapsed < 1.0
    assert all(r.excluded == ("mg4",) and r.converged for r in results)
    _assert_within_one_percent(results, GENS, demands)  # the optimum of the units still talking
