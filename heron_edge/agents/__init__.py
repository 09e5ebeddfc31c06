"""Agents: the microgrid controller, its distributed proxy, and the system operator."""
from heron_edge.agents.microgrid import ExternalPolicy, MicrogridAgent, Policy, Ratings
from heron_edge.agents.operator import SystemOperator
from heron_edge.agents.proxy import ProxyAgent

__all__ = ["ExternalPolicy", "MicrogridAgent", "Policy", "ProxyAgent", "Ratings", "SystemOperator"]
