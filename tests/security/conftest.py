"""A real Mosquitto started with the configuration `write_broker_config` generates (TLS, passwords, ACL)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from heron_edge.security.broker_config import BrokerSiteConfig, SiteFiles, write_broker_config
from heron_edge.security.launch import SiteMosquitto, free_port, running_site_mosquitto
from tests.conftest import require_mosquitto

SITE = "s1"
AGENTS = ("mg1", "mg2", "mg3")
OPERATOR = "system_operator"


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


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The generated site configuration (self-signed CA), served by a real Mosquitto on 127.0.0.1."""
    require_mosquitto()
    out: Path = tmp_path_factory.mktemp("site")
    port = free_port()
    files = write_broker_config(site_config(port), out, self_signed_ca=True)
    with running_site_mosquitto(files.conf, port=port) as broker:
        yield Site(files, broker)
