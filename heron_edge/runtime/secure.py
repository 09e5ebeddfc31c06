"""Secure connections for the runtime processes: broker options for the plant and operator commands, the
operator's command signing, and the secure SIL site (its own broker config, PKI and per-process secrets).

Every process connects as its own MQTT user over TLS; secrets come from environment variables, never
from argv (``ps`` shows argv to every local user):

- ``HERON_BROKER_PASSWORD``: the process's broker password (the variable name is configurable);
- ``HERON_COMMAND_KEY``: an agent's command HMAC key (hex), checked by its CommandGuard;
- ``HERON_COMMAND_KEYS``: the operator's keys, a JSON object ``{"mg1": "<hex>", ...}``; it signs each
  command with the key of its recipient.
"""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heron_edge.brokers import Broker, MqttBroker
from heron_edge.brokers.base import BrokerWrapper, Payload
from heron_edge.brokers.mqtt import TlsOptions
from heron_edge.errors import ConfigError
from heron_edge.messages import Envelope, parse_topic
from heron_edge.security.auth import CommandSigner, parse_key

__all__ = [
    "COMMAND_KEYS_ENV",
    "COMMAND_KEY_ENV",
    "PASSWORD_ENV",
    "SecureSite",
    "SigningBroker",
    "add_broker_arguments",
    "broker_from_args",
    "check_tls_files",
    "signer_from_env",
]

PASSWORD_ENV = "HERON_BROKER_PASSWORD"
COMMAND_KEY_ENV = "HERON_COMMAND_KEY"
COMMAND_KEYS_ENV = "HERON_COMMAND_KEYS"


class SigningBroker(BrokerWrapper):
    """A Broker wrapper for the operator: every Envelope published on a command topic
    (``heron/{site}/{agent}/cmd/{kind}``) is signed with its recipient's key first. Everything else
    passes through unchanged."""

    def __init__(self, inner: Broker, signer: CommandSigner) -> None:
        super().__init__(inner)
        self.signer = signer
        self.signed = 0


    async def publish(self, topic: str, payload: Payload, *, qos: int = 1, retain: bool = False) -> None:
        parts = parse_topic(topic)
        if isinstance(payload, Envelope) and parts is not None and parts.command:
            payload = self.signer.sign(payload)
            self.signed += 1
        await self.inner.publish(topic, payload, qos=qos, retain=retain)







def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """``--username``, ``--password-env``, ``--ca-file``, ``--cert-file``, ``--key-file`` (plant, operator)."""
    parser.add_argument("--username", default=None, metavar="USER",
                        help="MQTT username (the password comes from --password-env)")
    parser.add_argument("--password-env", default=PASSWORD_ENV, metavar="VAR",
                        help="environment variable holding the password, used with --username (default: %(default)s)")
    parser.add_argument("--ca-file", default=None, metavar="FILE", help="mqtts://: CA bundle of the broker's certificate")
    parser.add_argument("--cert-file", default=None, metavar="FILE", help="mqtts://: client certificate (mutual TLS)")
    parser.add_argument("--key-file", default=None, metavar="FILE", help="mqtts://: client key (mutual TLS)")


def check_tls_files(files: Mapping[str, str | None]) -> None:
    """Each TLS file given (option or config field -> path) is a readable file: a ConfigError naming the option
    and the file, said at start (the TLS library's own error names neither)."""
    for name, path in files.items():
        if path is None:
            continue
        if not os.path.exists(path):
            raise ConfigError(f"{name} {path}: no such file")
        if not os.path.isfile(path):
            raise ConfigError(f"{name} {path}: not a file")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"{name} {path}: not readable (permissions)")


def broker_from_args(args: argparse.Namespace, *, client_id: str, **options: Any) -> MqttBroker:
    """The process's MqttBroker from :func:`add_broker_arguments` options and ``args.broker`` (not connected yet);
    ConfigError naming the option, and the file for a TLS file that is missing or unreadable."""
    password = None
    if args.username is not None:
        password = os.environ.get(args.password_env)
        if password is None:
            raise ConfigError(f"--password-env: environment variable {args.password_env} is not set")
    tls = None
    if args.ca_file or args.cert_file or args.key_file:
        if not args.broker.startswith("mqtts://"):
            raise ConfigError(f"--ca-file/--cert-file/--key-file need an mqtts:// --broker, not {args.broker!r}")
        check_tls_files({"--ca-file": args.ca_file, "--cert-file": args.cert_file, "--key-file": args.key_file})
        tls = TlsOptions(ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file)
        try:
            tls.context()  # a file that is not a certificate or key: say it now, not at the first connect
        except ConfigError as exc:
            raise ConfigError(f"--ca-file/--cert-file/--key-file: {exc}") from None
    return MqttBroker(args.broker, client_id=client_id, username=args.username, password=password, tls=tls, **options)


def signer_from_env(variable: str = COMMAND_KEYS_ENV) -> CommandSigner | None:
    """The operator's CommandSigner from ``variable`` (JSON ``{agent: hex key}``); None when it is not set."""
    text = os.environ.get(variable)
    if text is None:
        return None
    try:
        keys = json.loads(text)
        if not isinstance(keys, dict):
            raise ValueError("not a JSON object")
        return CommandSigner({str(agent): parse_key(str(key)) for agent, key in keys.items()})
    except (ValueError, ConfigError) as exc:
        raise ConfigError(f"{variable}: {{agent: hex key}} expected: {exc}") from None


@dataclass(frozen=True)
class SecureSite:
    """A generated site for ``heron-edge sil --secure``: broker config + self-signed PKI in ``directory``,
    one user per process (every agent, the operator, the plant) with its own password, client certificate
    (which decides the identity: its CN is the username) and (agents) command key; an ACL where each
    user writes only its own topics and only the operator writes commands."""

    directory: Path
    conf: Path
    port: int
    ca_file: str
    users: dict[str, Any]
    operator: str
    plant: str

    @classmethod
    def generate(cls, directory: Path, *, site: str, agents: list[str], operator: str, plant: str) -> SecureSite:
        from heron_edge.security import BrokerSiteConfig, write_broker_config
        from heron_edge.security.launch import free_port

        port = free_port()
        config = BrokerSiteConfig(
            site=site, agents=tuple(agents), operator=operator, plant=plant, port=port, bind_address="127.0.0.1",
            require_certificate=True,
            # started as root, mosquitto would drop to user "mosquitto", who cannot read a private temp dir
            run_as_user="root" if hasattr(os, "geteuid") and os.geteuid() == 0 else None)
        files = write_broker_config(config, directory, self_signed_ca=True, overwrite=True)
        creds = files.credentials
        return cls(directory=files.directory, conf=files.conf, port=port, ca_file=creds.ca_file,
                   users={name: u.model_dump() for name, u in creds.users.items()}, operator=operator, plant=plant)

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def cli_args(self, user: str) -> list[str]:
        """Broker options for the plant / operator command of ``user`` (no secret in them)."""
        u = self.users[user]
        return ["--username", user, "--password-env", PASSWORD_ENV, "--ca-file", self.ca_file,
                "--cert-file", u["cert_file"], "--key-file", u["key_file"]]

    def environment(self, user: str, base: dict[str, str]) -> dict[str, str]:
        """``base`` plus ``user``'s own secrets only: its password, and its command key(s)."""
        u = self.users[user]
        env = {k: v for k, v in base.items() if k not in (PASSWORD_ENV, COMMAND_KEY_ENV, COMMAND_KEYS_ENV)}
        env[PASSWORD_ENV] = u["password"]
        if u.get("command_key"):
            env[COMMAND_KEY_ENV] = u["command_key"]
        if u.get("command_keys"):
            env[COMMAND_KEYS_ENV] = json.dumps(u["command_keys"])
        return env

    def gateway_broker(self, user: str) -> dict[str, Any]:
        """The gateway config's ``[broker]`` table for agent ``user`` (TLS, username, password from the env)."""
        u = self.users[user]
        return {"url": self.url, "username": user, "password_env": PASSWORD_ENV,
                "tls": {"ca_file": self.ca_file, "cert_file": u["cert_file"], "key_file": u["key_file"],
                        "check_hostname": True}}
