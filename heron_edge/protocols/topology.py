"""Communication graphs for the horizontal protocols and their Metropolis-Hastings weights.

A topology is one of ``"complete"``, ``"ring"``, ``"path"``, ``"star"`` (centre = first node) or an
adjacency list ``{node: [neighbours]}`` (made symmetric; it must be connected). Metropolis weights
``W[i, j] = 1 / (1 + max(deg i, deg j))`` on edges and ``W[i, i] = 1 - sum_j W[i, j]`` are symmetric
and doubly stochastic, so ``x <- W x`` converges to the true average on any connected graph.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from heron_edge.errors import ConfigError

__all__ = ["Graph", "TopologyName", "TopologySpec", "build_graph"]

TopologyName = Literal["complete", "ring", "path", "star"]
TopologySpec = TopologyName | Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class Graph:
    """An undirected connected graph over named nodes, with its Metropolis weights.

    ``weights`` is the n x n doubly stochastic matrix (rows/columns in ``nodes`` order);
    ``lambda2`` its second largest eigenvalue (``1 - lambda2`` is the spectral gap that bounds the
    convergence rate); ``diameter`` the longest shortest path in hops.
    """

    nodes: tuple[str, ...]
    neighbours: Mapping[str, tuple[str, ...]]
    weights: np.ndarray
    lambda2: float
    diameter: int

    def index(self, node: str) -> int:
        """Row of ``node`` in ``weights``; raises ConfigError for an unknown node."""
        try:
            return self.nodes.index(node)
        except ValueError:
            raise ConfigError(f"node {node!r} is not in the topology {list(self.nodes)}") from None

    def weight(self, i: str, j: str) -> float:
        """Metropolis weight that node ``i`` gives node ``j`` (``i == j``: its self weight)."""
        return float(self.weights[self.index(i), self.index(j)])


def _edges(nodes: tuple[str, ...], spec: TopologySpec) -> dict[str, set[str]]:
    adj: dict[str, set[str]] = {v: set() for v in nodes}
    n = len(nodes)
    if isinstance(spec, str):
        if spec == "complete":
            pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        elif spec == "path":
            pairs = [(i, i + 1) for i in range(n - 1)]
        elif spec == "ring":
            pairs = [(i, (i + 1) % n) for i in range(n)] if n > 2 else [(i, i + 1) for i in range(n - 1)]
        elif spec == "star":
            pairs = [(0, i) for i in range(1, n)]
        else:
            raise ConfigError(f"unknown topology {spec!r}: use complete, ring, path, star or an adjacency list")
        for i, j in pairs:
            adj[nodes[i]].add(nodes[j])
            adj[nodes[j]].add(nodes[i])
        return adj
    for v, nbrs in spec.items():
        if v not in adj:
            raise ConfigError(f"adjacency list names node {v!r} that is not in nodes {list(nodes)}")
        for u in nbrs:
            if u not in adj:
                raise ConfigError(f"adjacency list of {v!r} names unknown node {u!r}")
            if u == v:
                raise ConfigError(f"adjacency list of {v!r} has a self loop")
            adj[v].add(u)
            adj[u].add(v)
    return adj


def _eccentricity(adj: Mapping[str, set[str]], start: str) -> tuple[int, int]:
    """(hops to the farthest node, number of nodes reached) from ``start`` by BFS."""
    dist = {start: 0}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for u in adj[v]:
            if u not in dist:
                dist[u] = dist[v] + 1
                queue.append(u)
    return max(dist.values()), len(dist)


def build_graph(nodes: Sequence[str], topology: TopologySpec) -> Graph:
    """Build the graph and its Metropolis weights; raises ConfigError if it is not connected."""
    names = tuple(nodes)
    if len(names) == 0:
        raise ConfigError("a topology needs at least one node")
    if len(set(names)) != len(names):
        raise ConfigError(f"node ids must be unique, got {list(names)}")
    adj = _edges(names, topology)
    diameter = 0
    for v in names:
        ecc, reached = _eccentricity(adj, v)
        if reached != len(names):
            raise ConfigError(f"topology is not connected: {v!r} reaches {reached} of {len(names)} nodes")
        diameter = max(diameter, ecc)
    n = len(names)
    idx = {v: k for k, v in enumerate(names)}
    deg = np.array([len(adj[v]) for v in names], dtype=float)
    w = np.zeros((n, n))
    for v in names:
        for u in adj[v]:
            w[idx[v], idx[u]] = 1.0 / (1.0 + max(deg[idx[v]], deg[idx[u]]))
    w[np.diag_indices(n)] = 1.0 - w.sum(axis=1)
    eig = np.sort(np.linalg.eigvalsh(w))
    lambda2 = float(eig[-2]) if n > 1 else 0.0
    neighbours = {v: tuple(sorted(adj[v], key=idx.__getitem__)) for v in names}
    return Graph(nodes=names, neighbours=neighbours, weights=w, lambda2=lambda2, diameter=diameter)
