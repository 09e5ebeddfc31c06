"""heron-edge: the same multi-agent microgrid controllers, centralized on a laptop or distributed on edge gateways.

Importing ``heron_edge`` stays light (no simulator): ``MultiAgentMicrogrids`` is loaded lazily
because it needs the ``[sim]`` extra.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["MultiAgentMicrogrids", "__version__"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from heron_edge.env import MultiAgentMicrogrids


def __getattr__(name: str) -> Any:
    if name == "MultiAgentMicrogrids":
        from heron_edge.env import MultiAgentMicrogrids

        return MultiAgentMicrogrids
    raise AttributeError(f"module 'heron_edge' has no attribute {name!r}")
