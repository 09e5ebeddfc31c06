"""ConsensusProtocol (horizontal): average consensus, and economic dispatch built on it.

**Average consensus.** Node ``i`` holds a vector ``x_i`` and repeats ``x_i <- W_ii x_i + sum_j W_ij x_j``
over its neighbours with Metropolis weights (:mod:`heron_edge.protocols.topology`); ``W`` is
doubly stochastic, so every ``x_i`` tends to the true average. The centralized form is that fixed
point at once (:meth:`ConsensusProtocol.average`).

**Stopping rule** (each node evaluates it locally and all stop at the same round). Rounds are
grouped in epochs of ``E = diameter + 1``. At an epoch's first round each node records its own
change ``d_i = max |x_i(t+1) - x_i(t)|``; during the next ``diameter`` rounds the nodes flood the
maximum of those records (sent along with ``x``). At the epoch's last round every node therefore
holds the same ``g = max_i d_i`` and stops if ``g <= tol * (1 - lambda2) / sqrt(n)``, which
guarantees ``max_i |x_i - average| <= tol`` (``lambda2``: second largest eigenvalue of ``W``,
since ``||x - avg||_2 <= ||W x - x||_2 / (1 - lambda2)`` and later rounds only shrink it).
Otherwise it runs until ``max_rounds`` and reports ``converged=False``.

**Wire.** One ``consensus`` message per node per round on its own ``heron/{site}/{node}/consensus``;
each node subscribes to its neighbours' topics only;
``round`` counts rounds within the step (it keeps increasing across the consensus runs of a
dispatch). ``values`` is ``[*x_i, flooded max change]`` during averaging, and ``x_i`` alone during
the agreement floods that follow a converged average (marked ``converged=True``).

**Loss.** A node waits ``timeout_s`` per round for its neighbours. A neighbour whose message did not
arrive is **excluded** for the rest of the step and its weight moves to the node's self weight
(the remaining nodes keep symmetric doubly-stochastic weights and agree on the average of the
nodes still talking); the result lists ``excluded``. Every run is bounded by ``max_rounds``.

**Economic dispatch** (:meth:`ConsensusProtocol.dispatch_node`): every node owns one unit
(quadratic cost, limits) and a local demand; the units must meet the total demand at least cost.
All nodes run the same incremental-cost (lambda) iteration in lock step:

1. the lambda bracket ``[min_i lambda_min_i, max_i lambda_max_i]`` by a max flood (exact);
2. per iteration, average consensus on ``[p_i(lambda) - d_i, dp_i/dlambda, p_min_i - d_i, p_max_i - d_i]``,
   then a max flood of the estimates so every node holds bit-identical averages
   ``(M, S, Mmin, Mmax)``; stop when ``n |M| <= balance_tol_mw`` (or demand is infeasible:
   ``Mmax <= 0`` or ``Mmin >= 0``); else shrink the bracket by the sign of ``M`` and take the
   Newton step ``lambda - M / S`` when it lies inside the bracket (and the last step halved ``|M|``),
   bisection otherwise. ``sum p_i(lambda)`` is piecewise linear, so Newton is exact on the
   final segment. The centralized optimum is :meth:`ConsensusProtocol.dispatch` (exact KKT).
"""
from __future__ import annotations

import math
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from heron_edge.errors import ActionError, ConfigError, UsageError
from heron_edge.messages import ConsensusBody, agent_topic
from heron_edge.protocols.base import Link, ProtocolConfig, load_config
from heron_edge.protocols.dispatch import DispatchResult, GeneratorCost, economic_dispatch
from heron_edge.protocols.topology import Graph, TopologyName, build_graph

__all__ = ["ConsensusConfig", "ConsensusProtocol", "ConsensusResult", "NodeDispatch"]


class ConsensusConfig(ProtocolConfig):
    """Parameters of :class:`ConsensusProtocol`."""

    nodes: tuple[str, ...] = Field(min_length=1, description="Participating agent ids, in array order.")
    topology: TopologyName | dict[str, list[str]] = Field(
        default="ring", description="ring, complete, path, star (centre = first node) or an adjacency list.")
    tol: float = Field(default=1e-6, gt=0.0, description="Max |x_i - average| at stop, in the values' units.")
    max_rounds: int = Field(default=1000, ge=1, description="Round limit of one averaging run.")
    balance_tol_mw: float = Field(default=1e-4, gt=0.0, description="Dispatch: allowed total power mismatch, MW.")
    max_iterations: int = Field(default=60, ge=1, description="Dispatch: limit of lambda iterations.")

    @field_validator("nodes")
    @classmethod
    def _unique(cls, nodes: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"node ids must be unique, got {list(nodes)}")
        return nodes


@dataclass(frozen=True)
class ConsensusResult:
    """One node's outcome: its final estimate, rounds used, whether the stopping rule fired, and the
    neighbours excluded after a lost message."""

    value: np.ndarray
    rounds: int
    converged: bool
    excluded: tuple[str, ...]


@dataclass(frozen=True)
class NodeDispatch:
    """One node's dispatch: its unit's output (MW), the agreed incremental cost ($/MWh), lambda
    iterations and message rounds used, whether the balance tolerance was met, excluded neighbours."""

    p_mw: float
    lambda_usd_per_mwh: float
    iterations: int
    rounds: int
    converged: bool
    excluded: tuple[str, ...]


def neighbour_topics(graph: Graph, link: Link) -> tuple[str, ...]:
    """The consensus topics of ``link``'s neighbours (what its node listens to), in the graph's order."""
    return tuple(agent_topic(link.site, j, "consensus") for j in graph.neighbours[link.agent_id])


class _Session:
    """One node's rounds within one step: neighbours still talking, round counter, exclusions.

    Over a Link (distributed), or, without one, driven in lock step with the other nodes' sessions by
    :meth:`ConsensusProtocol.dispatch_lockstep` (the same arithmetic, no messages)."""

    def __init__(self, proto: ConsensusProtocol, link: Link | None, me: str | None = None) -> None:
        self.graph = proto.graph
        self.config = proto.config
        self.link = link
        self.me = link.agent_id if link is not None else str(me)
        self.graph.index(self.me)  # raises ConfigError for a node outside the topology
        self.present: list[str] = list(self.graph.neighbours[self.me])
        self.excluded: list[str] = []
        self.round = 0
        if link is not None:
            self.topic = agent_topic(link.site, self.me, "consensus")
            self.inbox = neighbour_topics(self.graph, link)
        self.threshold = self.config.tol * (1.0 - self.graph.lambda2) / math.sqrt(len(self.graph.nodes))
        self.w = {j: self.graph.weight(self.me, j) for j in self.graph.neighbours[self.me]}

    async def exchange(self, values: np.ndarray, *, flood: bool) -> dict[str, np.ndarray]:
        """Send ``values`` for this round, gather the neighbours' (excluding the silent ones)."""
        t = self.round
        self.round += 1
        if not self.present:
            return {}
        link = self.link
        if link is None:  # lock step: the driver hands every node its neighbours' values of this round
            got: dict[str, np.ndarray] = await _LockstepRound(self.me, values)
            return {j: got[j] for j in self.present}
        await link.send(self.topic, ConsensusBody(round=t, values=values.tolist(), converged=flood),
                        ttl_s=self.config.ttl_s)
        got = {}
        deadline = link.deadline()
        while len(got) < len(self.present):
            env = await link.receive(self.inbox, ConsensusBody, deadline=deadline, senders=self.present,
                                     accept=lambda e: e.sender not in got and e.body.round == t)  # type: ignore[union-attr]
            if env is None:
                break
            assert isinstance(env.body, ConsensusBody)
            vec = np.asarray(env.body.values, dtype=float)
            if vec.shape != values.shape or env.body.converged != flood:
                link.stats.rejected["shape"] += 1
                continue
            got[env.sender] = vec
        missing = [j for j in self.present if j not in got]
        if missing:
            link.stats.timeouts += 1
            self.excluded.extend(missing)
            self.present = [j for j in self.present if j in got]
        return got

    async def average(self, x0: np.ndarray) -> tuple[np.ndarray, int, bool]:
        """Average consensus from ``x0`` with the stopping rule; (estimate, rounds, converged)."""
        epoch = self.graph.diameter + 1
        x = x0.astype(float, copy=True)
        g = 0.0
        for s in range(self.config.max_rounds):
            got = await self.exchange(np.append(x, g), flood=False)
            w_self = 1.0 - sum(w for j, w in self.w.items() if j in got)  # neighbour order, not arrival order
            x_new = w_self * x
            for j, w in self.w.items():  # fixed neighbour order: the same sums on every run
                if j in got:
                    x_new = x_new + w * got[j][:-1]
            change = float(np.max(np.abs(x_new - x))) if x.size else 0.0
            g = change if s % epoch == 0 else max([g, *(float(v[-1]) for v in got.values())])
            x = x_new
            if s % epoch == epoch - 1 and g <= self.threshold:
                return x, s + 1, True
        return x, self.config.max_rounds, False

    async def flood_max(self, y: np.ndarray) -> np.ndarray:
        """Elementwise max over the graph in ``diameter`` rounds (identical on every node)."""
        y = y.astype(float, copy=True)
        for _ in range(self.graph.diameter):
            got = await self.exchange(y, flood=True)
            for v in got.values():
                y = np.maximum(y, v)
        return y


class _LockstepRound:
    """What a node's session awaits in lock step: its values of this round out, every node's values back."""

    __slots__ = ("node", "values")

    def __init__(self, node: str, values: np.ndarray) -> None:
        self.node = node
        self.values = values

    def __await__(self) -> Generator[_LockstepRound, dict[str, np.ndarray], dict[str, np.ndarray]]:
        got = yield self
        return got


class ConsensusProtocol:
    """Average consensus and consensus-based economic dispatch over a configured topology.

    Centralized: :meth:`average` (the fixed point) and :meth:`dispatch` (exact optimum).
    Distributed: :meth:`node` and :meth:`dispatch_node`, one coroutine per node.
    """

    def __init__(self, config: ConsensusConfig | Mapping[str, Any]) -> None:
        self.config: ConsensusConfig = load_config(ConsensusConfig, config)
        self.graph: Graph = build_graph(self.config.nodes, self.config.topology)

    def __repr__(self) -> str:
        return f"ConsensusProtocol(nodes={list(self.config.nodes)}, topology={self.config.topology!r})"

    @property
    def weights(self) -> np.ndarray:
        """The Metropolis weight matrix (rows/columns in ``config.nodes`` order)."""
        return self.graph.weights.copy()

    # -- centralized --------------------------------------------------------------------------
    def average(self, values: np.ndarray) -> np.ndarray:
        """The consensus fixed point: every node's row replaced by the column means.

        ``values`` has shape ``(n,)`` or ``(n, k)`` with one row per node in ``config.nodes`` order.
        """
        x = np.asarray(values, dtype=float)
        if x.ndim not in (1, 2) or x.shape[0] != len(self.graph.nodes) or not np.isfinite(x).all():
            raise ActionError(f"values must be finite with {len(self.graph.nodes)} rows, got shape {x.shape}")
        return np.broadcast_to(x.mean(axis=0), x.shape).copy()

    @staticmethod
    def dispatch(generators: Sequence[GeneratorCost], demand_mw: float) -> DispatchResult:
        """The least-cost dispatch of ``generators`` (in node order) meeting ``demand_mw`` (exact)."""
        return economic_dispatch(np.array([g.a_usd_per_mw2h for g in generators]),
                                 np.array([g.b_usd_per_mwh for g in generators]),
                                 np.array([g.p_min_mw for g in generators]),
                                 np.array([g.p_max_mw for g in generators]), demand_mw)

    # -- distributed --------------------------------------------------------------------------
    async def prepare(self, link: Link, role: Literal["node"] = "node") -> None:
        """Subscribe the consensus topic (call once per Link before the first step)."""
        if role != "node":
            raise ConfigError(f"unknown consensus role {role!r}")
        self.graph.index(link.agent_id)
        for topic in neighbour_topics(self.graph, link):
            await link.subscribe(topic)

    async def node(self, link: Link, value: np.ndarray | float) -> ConsensusResult:
        """Run average consensus from this node's ``value`` (scalar or 1-d) with its neighbours."""
        x0 = np.atleast_1d(np.asarray(value, dtype=float))
        if x0.ndim != 1 or not np.isfinite(x0).all():
            raise ActionError(f"consensus value must be a finite scalar or 1-d array, got {value!r}")
        session = _Session(self, link)
        x, rounds, converged = await session.average(x0)
        return ConsensusResult(value=x, rounds=rounds, converged=converged, excluded=tuple(session.excluded))

    async def dispatch_node(self, link: Link, generator: GeneratorCost, demand_mw: float) -> NodeDispatch:
        """This node's share of the distributed economic dispatch (see the module docstring)."""
        if not math.isfinite(demand_mw):
            raise ActionError(f"demand must be finite, got {demand_mw!r}")
        return await self._dispatch(_Session(self, link), generator, demand_mw)

    def dispatch_lockstep(self, generators: Sequence[GeneratorCost], demands_mw: Sequence[float]) -> list[NodeDispatch]:
        """Every node's :meth:`dispatch_node` result on a lossless link, computed in one process without messages:
        the nodes' iterations run in lock step, round by round, each with exactly its own arithmetic (the values a
        message would carry are passed as they are; JSON carries float64 exactly). Bit for bit what the
        distributed nodes return when no message is lost (``generators`` and ``demands_mw`` in node order)."""
        nodes = self.graph.nodes
        if len(generators) != len(nodes) or len(demands_mw) != len(nodes):
            raise ActionError(f"need one generator and one demand per node ({len(nodes)})")
        if not all(math.isfinite(d) for d in demands_mw):
            raise ActionError(f"demands must be finite, got {list(demands_mw)!r}")
        runs = [self._dispatch(_Session(self, None, node), g, float(d))
                for node, g, d in zip(nodes, generators, demands_mw, strict=True)]
        results: list[NodeDispatch | None] = [None] * len(runs)
        inbox: list[object] = [None] * len(runs)
        while True:
            sent: dict[str, np.ndarray] = {}
            for i, run in enumerate(runs):
                if results[i] is not None:
                    continue
                try:
                    request = run.send(inbox[i])
                except StopIteration as stop:
                    results[i] = stop.value
                    continue
                if not isinstance(request, _LockstepRound):
                    raise UsageError(f"consensus node {nodes[i]} awaited {request!r} in lock step")
                sent[request.node] = request.values
            if not sent:
                break
            if len(sent) != len(runs):  # the stopping rule makes every node stop at the same round
                for run in runs:
                    run.close()
                raise UsageError("consensus nodes left the lock step at different rounds")
            inbox = [sent] * len(runs)
        return [r for r in results if r is not None]

    async def _dispatch(self, session: _Session, generator: GeneratorCost, demand_mw: float) -> NodeDispatch:
        n = len(self.graph.nodes)
        lam_min, lam_max = generator.lambda_range_usd_per_mwh
        bracket = await session.flood_max(np.array([-lam_min, lam_max]))
        lo, hi = float(-bracket[0]), float(bracket[1])
        lam = 0.5 * (lo + hi)
        prev_abs_m = math.inf
        converged = False
        iterations = 0
        for iterations in range(1, self.config.max_iterations + 1):  # noqa: B007 - the count is reported after
            p = generator.output_mw(lam)
            local = np.array([p - demand_mw, generator.slope_mw_per_usd(lam),
                              generator.p_min_mw - demand_mw, generator.p_max_mw - demand_mw])
            est, _, _ = await session.average(local)
            m, s, m_min, m_max = (float(v) for v in await session.flood_max(est))
            if n * abs(m) <= self.config.balance_tol_mw:
                converged = True
                break
            if m_max <= 0.0:  # demand at or above total capacity: everyone at p_max
                lam, converged = hi, n * abs(m_max) <= self.config.balance_tol_mw
                break
            if m_min >= 0.0:  # demand at or below total minimum: everyone at p_min
                lam, converged = lo, n * abs(m_min) <= self.config.balance_tol_mw
                break
            if m < 0.0:
                lo = lam
            else:
                hi = lam
            newton = lam - m / s if s > 0.0 else math.nan
            if lo < newton < hi and abs(m) <= 0.5 * prev_abs_m:
                lam = newton
            else:
                lam = 0.5 * (lo + hi)
            prev_abs_m = abs(m)
            if hi - lo <= 1e-12 * max(1.0, abs(lo), abs(hi)):
                break
        return NodeDispatch(p_mw=generator.output_mw(lam), lambda_usd_per_mwh=lam, iterations=iterations,
                            rounds=session.round, converged=converged, excluded=tuple(session.excluded))
