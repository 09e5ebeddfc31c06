"""A real Mosquitto started with the configuration `write_broker_config` generates (TLS, passwords, ACL),
and a raw paho client for attacks MqttBroker itself would refuse to make."""
from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from heron_edge.brokers.mqtt import TlsOptions
from heron_edge.security.broker_config import BrokerSiteConfig, SiteFiles, write_broker_config
from heron_edge.security.launch import SiteMosquitto, free_port, running_site_mosquitto
from tests.conftest import require_mosquitto

SITE = "s1"
AGENTS = ("mg1", "mg2", "mg3")
OPERATOR = "system_operator"
PLANT = "plant"


@dataclass(frozen=True)
class Site:
    files: SiteFiles
    broker: SiteMosquitto

    @property
    def url(self) -> str:
        return self.broker.url


def site_config(port: int, **overrides: object) -> BrokerSiteConfig:
    return BrokerSiteConfig(
        site=SITE, agents=AGENTS, operator=OPERATOR, port=port, bind_address="127.0.0.1",
        # started as root, mosquitto would drop to user "mosquitto", who cannot read pytest's tmp dirs
        run_as_user="root" if hasattr(os, "geteuid") and os.geteuid() == 0 else None,
        **overrides,  # type: ignore[arg-type]
    )


def _serve(tmp_path_factory: pytest.TempPathFactory, name: str, **overrides: object) -> Iterator[Site]:
    require_mosquitto()
    out: Path = tmp_path_factory.mktemp(name)
    port = free_port()
    files = write_broker_config(site_config(port, plant=PLANT, **overrides), out, self_signed_ca=True)
    with running_site_mosquitto(files.conf, port=port) as broker:
        yield Site(files, broker)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The generated site (self-signed CA, a plant user; passwords identify), on a real Mosquitto on 127.0.0.1."""
    yield from _serve(tmp_path_factory, "site")


@pytest.fixture(scope="module")
def cert_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The same site with ``require_certificate``: the client certificate's CN is the identity."""
    yield from _serve(tmp_path_factory, "cert_site", require_certificate=True)


@dataclass
class RawClient:
    """A paho client on its own network thread, with events for its CONNACK and its disconnection."""

    client: paho.Client
    connected: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    connack: list[str] = field(default_factory=list)
    disconnect_reasons: list[str] = field(default_factory=list)

    async def wait_disconnected(self, timeout: float = 10.0) -> str:
        """The reason of the first disconnection; TimeoutError when still connected after ``timeout``."""
        if not await asyncio.to_thread(self.disconnected.wait, timeout):
            raise TimeoutError("the raw client is still connected")
        return self.disconnect_reasons[0]


@asynccontextmanager
async def raw_client(port: int, *, client_id: str, username: str | None = None, password: str | None = None,
                     tls: TlsOptions | None = None) -> AsyncIterator[RawClient]:
    """A connected :class:`RawClient` to ``127.0.0.1:port`` (MQTT 5), disconnected and its thread stopped on exit."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5,
                         reconnect_on_failure=False)
    raw = RawClient(client)

    def on_connect(c: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        raw.connack.append(str(reason))
        raw.connected.set()

    def on_disconnect(c: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        raw.disconnect_reasons.append(str(reason))
        raw.disconnected.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    if username is not None:
        client.username_pw_set(username, password)
    if tls is not None:
        client.tls_set_context(tls.context())
    await asyncio.to_thread(client.connect, "127.0.0.1", port, 30)
    client.loop_start()
    try:
        if not await asyncio.to_thread(raw.connected.wait, 10.0):
            raise TimeoutError("no CONNACK within 10 s")
        if raw.connack != ["Success"]:
            raise ConnectionError(f"refused: {raw.connack}")
        yield raw
    finally:
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
