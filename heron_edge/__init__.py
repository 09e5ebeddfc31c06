"""heron-edge: the same multi-agent microgrid controllers, centralized on a laptop or distributed on edge gateways.

Importing ``heron_edge`` stays light (no simulator): ``MultiAgentMicrogrids`` and ``VectorMicrogrids`` are loaded
lazily because they need the ``[sim]`` extra.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["MultiAgentMicrogrids", "VectorMicrogrids", "__version__"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from heron_edge.env import MultiAgentMicrogrids
    from heron_edge.vector import VectorMicrogrids


SIM_EXTRA_HINT = "install the simulator extra: pip install 'heron-edge[sim]'"


def __getattr__(name: str) -> Any:
    if name == "MultiAgentMicrogrids":
        try:
            from heron_edge.env import MultiAgentMicrogrids
        except ModuleNotFoundError as exc:  # a gateway install has no simulator
            raise ModuleNotFoundError(f"MultiAgentMicrogrids needs {exc.name}: {SIM_EXTRA_HINT}", name=exc.name) from exc
        return MultiAgentMicrogrids
    if name == "VectorMicrogrids":
        try:
            from heron_edge.vector import VectorMicrogrids
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(f"VectorMicrogrids needs {exc.name}: {SIM_EXTRA_HINT}", name=exc.name) from exc
        return VectorMicrogrids
    raise AttributeError(f"module 'heron_edge' has no attribute {name!r}")
