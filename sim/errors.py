"""sim's own exception tree: what the simulator raises on purpose, so callers can tell it from bugs.

sim imports nothing of heron_edge (see ``tests/test_layering.py``), so these do not derive from
``heron_edge.errors``; each also derives from the matching built-in (ValueError, RuntimeError) so
code that caught those before keeps working.
"""
from __future__ import annotations

__all__ = ["PlantStateError", "ScenarioError", "SimError"]


class SimError(Exception):
    """Base of every error sim raises on purpose."""


class ScenarioError(SimError, ValueError):
    """A scenario, or the network it builds, is inconsistent (unknown bus, a zone without a point of
    connection, unknown profile columns...); the message names what is wrong."""


class PlantStateError(SimError, RuntimeError):
    """The plant was asked for something before it can answer (e.g. a forecast before ``reset()``)."""
