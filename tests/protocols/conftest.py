"""Fixtures for the protocol tests: the same test runs over InMemoryBroker and a real Mosquitto."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest

from heron_edge.brokers import InMemoryBroker
from heron_edge.protocols import Link
from tests.conftest import require_mosquitto


@dataclass
class Transport:
    """How agents reach each other in a test: one shared InMemoryBroker, or one MqttBroker per agent."""

    kind: str
    url: str | None = None

    @asynccontextmanager
    async def links(self, agent_ids: Sequence[str], *, timeout_s: float = 1.0) -> AsyncIterator[dict[str, Link]]:
        """Connected Links on a fresh site, one per agent id; closed on exit."""
        site = f"t{uuid.uuid4().hex[:10]}"
        async with AsyncExitStack() as stack:
            links: dict[str, Link] = {}
            if self.kind == "memory":
                shared = await stack.enter_async_context(InMemoryBroker())
                for agent in agent_ids:
                    links[agent] = Link(shared, site=site, agent_id=agent, timeout_s=timeout_s)
            else:
                from heron_edge.brokers import MqttBroker

                assert self.url is not None
                for agent in agent_ids:
                    broker = await stack.enter_async_context(MqttBroker(self.url, request_timeout_s=5.0))
                    links[agent] = Link(broker, site=site, agent_id=agent, timeout_s=timeout_s)
            yield links


@pytest.fixture(params=["memory", pytest.param("mqtt", marks=pytest.mark.mqtt)])
def transport(request: pytest.FixtureRequest) -> Transport:
    """Parametrizes a test over InMemoryBroker and a fresh Mosquitto on loopback."""
    if request.param == "memory":
        return Transport("memory")
    require_mosquitto()
    pytest.importorskip("heron_edge.brokers.mqtt", reason="MqttBroker not available yet")
    process = request.getfixturevalue("mosquitto")
    return Transport("mqtt", url=process.url)
