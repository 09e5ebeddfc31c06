"""Security of the distributed deployment: broker configuration (TLS, passwords, per-agent ACL),
a small self-signed PKI for tests and SIL, and application-level command authentication.

``from heron_edge.security import CommandGuard, sign, BrokerSiteConfig, write_broker_config``
(:mod:`heron_edge.security.certs` needs the ``[security]`` extra, ``cryptography``).
"""
from __future__ import annotations

from heron_edge.security.auth import (
    CommandGuard,
    CommandRejected,
    CommandSigner,
    compute_mac,
    new_key,
    parse_key,
    sign,
    verify,
)
from heron_edge.security.broker_config import (
    BrokerSiteConfig,
    SiteCredentials,
    SiteFiles,
    acl_text,
    load_credentials,
    mosquitto_conf_text,
    write_broker_config,
)

__all__ = [
    "BrokerSiteConfig",
    "CommandGuard",
    "CommandRejected",
    "CommandSigner",
    "SiteCredentials",
    "SiteFiles",
    "acl_text",
    "compute_mac",
    "load_credentials",
    "mosquitto_conf_text",
    "new_key",
    "parse_key",
    "sign",
    "verify",
    "write_broker_config",
]
