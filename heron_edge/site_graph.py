"""The site graph: which microgrids are each agent's neighbours (whose telemetry it subscribes to).

An agent's observation holds aggregates of its neighbours' telemetry, never every peer's: what it
subscribes to, and the work it does per step, stays bounded however many microgrids the site has.

Specs:
  ``"feeder"`` (the default): electrical adjacency along the feeder. Scenarios list their microgrids in
      order along the feeder (and a generated scenario in the order of its attachment buses), so each
      microgrid's neighbours are the one before and the one after it in that order: at most two.
  ``"ring"``: the feeder order closed into a ring (every microgrid has two neighbours when there are three or more).
  a mapping ``{agent: [neighbours, ...]}``: configured; made symmetric (a lists b => b lists a).
Neighbours are always kept in the site's agent order, so every reader aggregates them in the same order.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from heron_edge.errors import ConfigError

__all__ = ["SiteGraph", "SiteGraphSpec", "site_graph"]

SiteGraphSpec = Literal["feeder", "ring"] | Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class SiteGraph:
    """The agents of a site (in order) and each one's neighbours (in that order)."""

    agents: tuple[str, ...]
    neighbours: Mapping[str, tuple[str, ...]]

    @property
    def max_degree(self) -> int:
        return max((len(v) for v in self.neighbours.values()), default=0)

    def index_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(index, valid)``, both ``(n, max degree)``: row i lists agent i's neighbours by agent index, padded
        with 0 where ``valid`` is False (the vectorised form :func:`heron_edge.observations.neighbour_means` takes)."""
        n, d = len(self.agents), self.max_degree
        position = {a: k for k, a in enumerate(self.agents)}
        index = np.zeros((n, d), dtype=np.intp)
        valid = np.zeros((n, d), dtype=bool)
        for i, agent in enumerate(self.agents):
            row = [position[b] for b in self.neighbours[agent]]
            index[i, : len(row)] = row
            valid[i, : len(row)] = True
        return index, valid


def site_graph(agents: Sequence[str], spec: SiteGraphSpec = "feeder") -> SiteGraph:
    """Build the site graph of ``agents`` (in feeder order) from ``spec``; ConfigError for an unknown name or agent."""
    names = tuple(agents)
    if len(set(names)) != len(names):
        raise ConfigError(f"site graph: agent ids must be unique, got {list(names)}")
    position = {a: k for k, a in enumerate(names)}
    adjacent: dict[str, set[str]] = {a: set() for a in names}
    n = len(names)
    if isinstance(spec, str):
        if spec not in ("feeder", "ring"):
            raise ConfigError(f"site graph {spec!r}: use 'feeder', 'ring' or a mapping agent -> neighbours")
        pairs = [(k, k + 1) for k in range(n - 1)]
        if spec == "ring" and n > 2:
            pairs.append((n - 1, 0))
        for i, j in pairs:
            adjacent[names[i]].add(names[j])
            adjacent[names[j]].add(names[i])
    else:
        for agent, listed in spec.items():
            if agent not in adjacent:
                raise ConfigError(f"site graph names {agent!r}, which is not an agent of the site {list(names)}")
            for other in listed:
                if other not in adjacent:
                    raise ConfigError(f"site graph: neighbour {other!r} of {agent!r} is not an agent of the site")
                if other == agent:
                    raise ConfigError(f"site graph: {agent!r} lists itself as a neighbour")
                adjacent[agent].add(other)
                adjacent[other].add(agent)
    neighbours = {a: tuple(sorted(adjacent[a], key=position.__getitem__)) for a in names}
    return SiteGraph(agents=names, neighbours=neighbours)
