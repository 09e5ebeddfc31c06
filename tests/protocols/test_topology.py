"""Topologies and their Metropolis weights."""
from __future__ import annotations

import numpy as np
import pytest

from heron_edge.errors import ConfigError
from heron_edge.protocols.topology import build_graph

NODES = ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("topology,diameter,degrees", [
    ("complete", 1, [4, 4, 4, 4, 4]),
    ("ring", 2, [2, 2, 2, 2, 2]),
    ("path", 4, [1, 2, 2, 2, 1]),
    ("star", 2, [4, 1, 1, 1, 1]),
    ({"a": ["b"], "b": ["c"], "c": ["d", "e"]}, 3, [1, 2, 3, 1, 1]),
])
def test_weights_are_symmetric_doubly_stochastic_and_contracting(topology: object, diameter: int, degrees: list[int]) -> None:
    g = build_graph(NODES, topology)  # type: ignore[arg-type]
    w = g.weights
    assert np.allclose(w, w.T) and np.allclose(w.sum(axis=0), 1.0) and np.allclose(w.sum(axis=1), 1.0)
    assert (w >= 0).all() and g.lambda2 < 1.0 - 1e-9
    assert g.diameter == diameter
    assert [len(g.neighbours[v]) for v in NODES] == degrees
    # Metropolis rule on an edge
    u, v = NODES[0], g.neighbours[NODES[0]][0]
    assert g.weight(u, v) == pytest.approx(1.0 / (1.0 + max(len(g.neighbours[u]), len(g.neighbours[v]))))


def test_disconnected_or_invalid_topologies_are_refused() -> None:
    with pytest.raises(ConfigError, match="not connected"):
        build_graph(NODES, {"a": ["b"], "c": ["d", "e"]})
    with pytest.raises(ConfigError, match="unknown node"):
        build_graph(NODES, {"a": ["z"]})
    with pytest.raises(ConfigError, match="unknown topology"):
        build_graph(NODES, "mesh")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unique"):
        build_graph(["a", "a"], "path")
    with pytest.raises(ConfigError):
        build_graph(NODES, "path").index("z")


def test_single_node_and_small_rings() -> None:
    g = build_graph(["solo"], "complete")
    assert g.weights.tolist() == [[1.0]] and g.diameter == 0
    assert build_graph(["a", "b"], "ring").diameter == 1


def test_expander_has_bounded_degree_a_flat_spectral_gap_and_is_the_same_everywhere() -> None:
    gaps = []
    for n in (12, 96, 600):
        nodes = [f"mg{k}" for k in range(n)]
        g = build_graph(nodes, "expander", degree=8)
        assert max(len(v) for v in g.neighbours.values()) <= 8
        assert all(nodes[(k + 1) % n] in g.neighbours[nodes[k]] for k in range(n))  # the ring is inside
        assert np.allclose(g.weights.sum(axis=1), 1.0) and np.allclose(g.weights, g.weights.T)
        gaps.append(1.0 - g.lambda2)
        assert g.lambda_min > -1.0 and g.diameter <= 2 + np.log2(n)
    assert min(gaps) > 0.25  # does not shrink with n (a ring's gap falls like 1/n^2)
    again = build_graph([f"mg{k}" for k in range(96)], "expander", degree=8)
    assert again.neighbours == build_graph([f"mg{k}" for k in range(96)], "expander", degree=8).neighbours
    assert build_graph(NODES, "expander").neighbours == build_graph(NODES, "complete").neighbours  # small n
    with pytest.raises(ConfigError, match="even"):
        build_graph(NODES, "expander", degree=5)


def test_rounds_to_certify_grows_with_the_spread_and_falls_with_the_gap() -> None:
    nodes = [f"n{k}" for k in range(64)]
    expander, ring = build_graph(nodes, "expander"), build_graph(nodes, "ring")
    assert expander.rounds_to_certify(1e3) < expander.rounds_to_certify(1e9) < 60
    assert ring.rounds_to_certify(1e9) > 5 * expander.rounds_to_certify(1e9)
