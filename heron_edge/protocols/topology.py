"""Communication graphs for the horizontal protocols, their Metropolis weights and spectra.

A topology is one of ``"expander"`` (the default for consensus: see below), ``"complete"``,
``"ring"``, ``"path"``, ``"star"`` (centre = first node) or an adjacency list ``{node: [neighbours]}``
(made symmetric; it must be connected). Metropolis weights ``W[i, j] = 1 / (1 + max(deg i, deg j))``
on edges and ``W[i, i] = 1 - sum_j W[i, j]`` are symmetric and doubly stochastic, so ``x <- W x``
converges to the true average on any connected graph.

**Expander.** The ring in node order plus ``degree / 2 - 1`` more Hamiltonian cycles, each over a
pseudo-random permutation of the nodes (from SHA-256 of the cycle and node index: every process that
knows the node list builds the same graph, whatever its numpy). Such a union of random cycles is,
with overwhelming probability, an expander: its spectral gap stays bounded away from zero as N grows
(about 0.3 for degree 8), so the rounds consensus needs stay flat in N while each node still talks
to at most ``degree`` neighbours; the diameter grows like log N. The ring inside keeps it connected.
With ``n <= degree + 1`` it is the complete graph.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path

from heron_edge.errors import ConfigError

__all__ = ["DEFAULT_DEGREE", "Graph", "TopologyName", "TopologySpec", "build_graph"]

TopologyName = Literal["expander", "complete", "ring", "path", "star"]
TopologySpec = TopologyName | Mapping[str, Sequence[str]]
DEFAULT_DEGREE = 8
# The Chebyshev iteration assumes W's other eigenvalues lie in [lambda_min - pad, lambda2 + pad]:
# the pad absorbs rounding in the eigenvalues and keeps a one-point spectrum (complete graph) well conditioned.
_SPECTRUM_PAD = 0.01


@dataclass(frozen=True)
class Graph:
    """An undirected connected graph over named nodes, with its Metropolis weights.

    ``weights`` is the n x n doubly stochastic matrix (rows/columns in ``nodes`` order);
    ``lambda2`` its second largest eigenvalue (``1 - lambda2`` is the spectral gap that bounds the
    convergence rate), ``lambda_min`` its smallest; ``diameter`` the longest shortest path in hops.
    """

    nodes: tuple[str, ...]
    neighbours: Mapping[str, tuple[str, ...]]
    weights: np.ndarray
    lambda2: float
    diameter: int
    lambda_min: float = 0.0

    def index(self, node: str) -> int:
        """Row of ``node`` in ``weights``; raises ConfigError for an unknown node."""
        try:
            return self.positions[node]
        except KeyError:
            raise ConfigError(f"node {node!r} is not in the topology {list(self.nodes[:20])}") from None

    @cached_property
    def positions(self) -> dict[str, int]:
        """Node id -> row in ``weights``."""
        return {v: k for k, v in enumerate(self.nodes)}

    def weight(self, i: str, j: str) -> float:
        """Metropolis weight that node ``i`` gives node ``j`` (``i == j``: its self weight)."""
        return float(self.weights[self.index(i), self.index(j)])

    @property
    def chebyshev_interval(self) -> tuple[float, float]:
        """``[a, b]``, padded, holding every eigenvalue of ``weights`` but the top one (1): the Chebyshev iteration's."""
        b = min(self.lambda2 + _SPECTRUM_PAD, 0.5 * (1.0 + self.lambda2))
        a = max(self.lambda_min - _SPECTRUM_PAD, -1.0)
        return a, b

    @property
    def chebyshev_mu(self) -> float:
        """Where the eigenvalue 1 lands when ``[a, b]`` is mapped onto ``[-1, 1]`` (> 1; larger is faster)."""
        a, b = self.chebyshev_interval
        return (2.0 - a - b) / (b - a)

    def rounds_to_certify(self, spread_over_tol: float) -> int:
        """Rounds of the accelerated consensus (with its stopping flood) that certify ``max |x_i - average| <= tol``
        when the nodes' initial values differ by at most ``spread_over_tol`` tolerances (an a-priori bound)."""
        n = len(self.nodes)
        if n == 1:
            return 1
        # Chebyshev: ||e_k|| <= ||e_0|| / T_k(mu), ||e_0|| <= sqrt(n) spread; the certificate needs the
        # residual (<= (1 - lambda_min) ||e_k||) below tol (1 - lambda2) / sqrt(n).
        factor = max(n * spread_over_tol * (1.0 - self.lambda_min) / (1.0 - self.lambda2), 1.0)
        k = math.ceil(math.acosh(factor) / math.acosh(self.chebyshev_mu))
        return k + self.diameter + 1


def _cycle_order(n: int, cycle: int) -> list[int]:
    """A permutation of ``range(n)`` that is the same on every machine (SHA-256, not a library RNG)."""
    def key(i: int) -> bytes:
        return hashlib.sha256(f"heron-expander:{cycle}:{i}".encode()).digest()
    return sorted(range(n), key=key)


def _pairs(n: int, spec: TopologyName, degree: int) -> list[tuple[int, int]]:
    if spec == "complete" or (spec == "expander" and n <= degree + 1):
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    if spec == "path":
        return [(i, i + 1) for i in range(n - 1)]
    if spec == "ring":
        return [(i, (i + 1) % n) for i in range(n)] if n > 2 else [(i, i + 1) for i in range(n - 1)]
    if spec == "star":
        return [(0, i) for i in range(1, n)]
    if spec == "expander":
        pairs = [(i, (i + 1) % n) for i in range(n)]
        for cycle in range(1, max(degree // 2, 1)):
            order = _cycle_order(n, cycle)
            pairs += [(order[k], order[(k + 1) % n]) for k in range(n)]
        return pairs
    raise ConfigError(f"unknown topology {spec!r}: use expander, complete, ring, path, star or an adjacency list")


def _edges(nodes: tuple[str, ...], spec: TopologySpec, degree: int) -> list[set[int]]:
    n = len(nodes)
    adj: list[set[int]] = [set() for _ in nodes]
    if isinstance(spec, str):
        pairs = _pairs(n, spec, degree)  # an unknown name raises inside
    else:
        idx = {v: k for k, v in enumerate(nodes)}
        pairs = []
        for v, nbrs in spec.items():
            if v not in idx:
                raise ConfigError(f"adjacency list names node {v!r} that is not in nodes {list(nodes)}")
            for u in nbrs:
                if u not in idx:
                    raise ConfigError(f"adjacency list of {v!r} names unknown node {u!r}")
                if u == v:
                    raise ConfigError(f"adjacency list of {v!r} has a self loop")
                pairs.append((idx[v], idx[u]))
    for i, j in pairs:
        if i != j:
            adj[i].add(j)
            adj[j].add(i)
    return adj


def build_graph(nodes: Sequence[str], topology: TopologySpec, *, degree: int = DEFAULT_DEGREE) -> Graph:
    """Build the graph, its Metropolis weights and spectrum; raises ConfigError if it is not connected.

    ``degree`` (even, >= 2) only matters for ``"expander"``: each node's number of neighbours (at most).
    """
    names = tuple(nodes)
    if len(names) == 0:
        raise ConfigError("a topology needs at least one node")
    if len(set(names)) != len(names):
        raise ConfigError(f"node ids must be unique, got {list(names)}")
    if degree < 2 or degree % 2:
        raise ConfigError(f"expander degree must be even and >= 2, got {degree}")
    adj = _edges(names, topology, degree)
    n = len(names)
    rows = np.array([i for i in range(n) for _ in adj[i]], dtype=np.int64)
    cols = np.array([j for i in range(n) for j in sorted(adj[i])], dtype=np.int64)
    hops = shortest_path(csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n)), unweighted=True)
    unreachable = np.isinf(hops).any(axis=1)
    if unreachable.any():
        v = int(np.flatnonzero(unreachable)[0])
        reached = int(np.isfinite(hops[v]).sum())
        raise ConfigError(f"topology is not connected: {names[v]!r} reaches {reached} of {n} nodes")
    diameter = int(hops.max()) if n > 1 else 0
    deg = np.array([len(a) for a in adj], dtype=float)
    w = np.zeros((n, n))
    w[rows, cols] = 1.0 / (1.0 + np.maximum(deg[rows], deg[cols]))
    w[np.diag_indices(n)] = 1.0 - w.sum(axis=1)
    eig = np.linalg.eigvalsh(w)  # ascending
    lambda2 = float(eig[-2]) if n > 1 else 0.0
    lambda_min = float(eig[0]) if n > 1 else 0.0
    neighbours = {v: tuple(names[j] for j in sorted(adj[i])) for i, v in enumerate(names)}
    return Graph(nodes=names, neighbours=neighbours, weights=w, lambda2=lambda2, diameter=diameter,
                 lambda_min=lambda_min)
