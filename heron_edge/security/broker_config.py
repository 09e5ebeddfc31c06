"""A Mosquitto configuration for one site: TLS listener, identities, per-identity ACL, credentials.

:func:`write_broker_config` writes into one directory::

    mosquitto.conf    TLS listener, set_tcp_nodelay true, allow_anonymous false, password_file, acl_file,
                      use_username_as_clientid, max_packet_size (and use_identity_as_username with
                      require_certificate)
    acl               what each user may read and write (see :func:`acl_text`); mode 0600
    passwd            hashed by the real ``mosquitto_passwd`` (passwords fed on stdin, never in argv); mode 0600
    credentials.json  mode 0600: every user's password and command key (see :class:`SiteCredentials`)
    ca.crt, ca.key, server.crt, server.key, <user>.crt, <user>.key    with ``self_signed_ca=True``

Who may read them: started by root, Mosquitto drops its privileges to the user of its ``user``
option (:attr:`BrokerSiteConfig.run_as_user`; Mosquitto's default is ``mosquitto``) before it opens
``passwd``, ``acl`` and ``server.key``, and Mosquitto 2.x wants its password and ACL files owned by
that user and not readable by others. Run as root, :func:`write_broker_config` therefore gives those
three files (mode 0600) to that user and group, when the user exists on this host
(:func:`broker_user`), and a directory it creates to root and that group (mode 0750). Run as
another user it changes no owner; :attr:`SiteFiles.broker_files` are the files to give to the
broker's user (``chown``) before starting Mosquitto as root.

Every topic names its sender (``heron/S/{id}/{kind}``), and the broker lets each identity write only
its own. The ACL, per user (``S`` = site, ``U`` = any user, ``A`` = agent, ``O`` = operator,
``M`` = monitor):

* every user ``U`` (agents, operator, plant) writes ``heron/S/U/+`` (status, telemetry, action,
  meter, clock, done, price, market, clearing, consensus: its own 4-level topics) except the 4-level
  ``heron/S/U/cmd``, and reads ``heron/S/+/+`` (every 4-level topic of the site);
* an agent ``A`` also reads its own commands ``heron/S/A/cmd/+``;
* the operator ``O`` also writes every command ``heron/S/+/cmd/+``. Nobody else writes a command,
  not even to itself. Commands have exactly five levels; ``cmd/+`` rather than ``cmd/#`` keeps the
  operator off ``heron/S/A/cmd``, a 4-level topic that would name ``A`` as its sender;
* the monitor ``M`` (optional, :attr:`BrokerSiteConfig.monitor`) reads everything of the site,
  ``heron/S/#`` (commands included), and writes nothing: a dashboard or a logger that cannot
  disturb the site;
* anybody else: nothing (no anonymous access, no topic lines outside a ``user`` block).

What else the broker enforces (:func:`mosquitto_conf_text`):

* identity = username: ``use_username_as_clientid`` replaces the client id by the authenticated
  username, so nobody can take over (disconnect) another identity's session with its client id; a
  second connection of the SAME user replaces the first, as MQTT requires for one client id;
* with ``require_certificate``: identity = certificate. ``use_identity_as_username`` makes the client
  certificate's CN the username (Mosquitto then ignores the MQTT username and password): mg1's
  password with mg2's certificate is mg2. Every generated client certificate has CN = its user; with
  your own CA, issue each identity a certificate with CN = its username, and keep the CA key (with
  ``self_signed_ca``: ``ca.key`` in the output directory) off the broker host: whoever holds it can
  mint any identity;
* ``max_packet_size`` :data:`~heron_edge.brokers.base.MAX_PACKET_BYTES`: a larger packet is never
  delivered, and its sender is disconnected.

Many sites (:class:`BridgeConfig`, ``heron-edge broker-config --bridge-to URL``): the site broker
also opens a Mosquitto bridge to a central broker over TLS (username/password of the site's bridge
identity, the central's CA; optionally a client certificate) and forwards only

* out: every identity's ``status`` (``heron/S/+/status``, retained) and the operator's telemetry
  summary ``heron/S/O/aggregates`` (site means, one message a step): never per-agent telemetry,
  orders, consensus rounds, or commands;
* in: the site's commands, which are addressed to its operator, ``heron/S/O/cmd/+`` (the fleet talks
  to a site through its operator; only the site operator commands the agents, as without a bridge).

The operator then also reads ``heron/S/O/cmd/+``. ``central-acl`` (written with the bridge) holds the
lines the central broker's ACL needs for the bridge identity: write exactly those out topics of this
site, read exactly its commands; the central broker also needs the identity's password
(``credentials.json`` -> ``bridge``). Bridge notifications are off (their ``0``/``1`` payloads are no
envelopes). With a bridge the password is in ``mosquitto.conf``, so it is written mode 0600.

Mosquitto filters reads per message, so a subscription to ``heron/S/#`` is accepted and only the
permitted topics are delivered; a denied QoS-1 publish is answered "not authorized". The ACL checks
who publishes on a topic, not the ``sender`` inside the envelope: receivers also reject an envelope
whose sender differs from the topic's id, and agents check the operator's HMAC, expiry and replays
on commands (:mod:`heron_edge.security.auth`).

Names (site, users) are letters, digits, ``_``, ``.``, ``-``; a user may not be called ``cmd``. The
levels alone would not be ambiguous (commands have five levels, everything else four), but the topic
scheme reserves the id (:func:`heron_edge.messages.parse_topic` refuses ``heron/S/cmd/...``), so such
an identity could never be heard: refusing it here says so when the site is configured.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from heron_edge.brokers.base import MAX_PACKET_BYTES
from heron_edge.brokers.mqtt import MqttBroker, TlsOptions
from heron_edge.brokers.mqtt_security import parse_url
from heron_edge.errors import ConfigError
from heron_edge.security.auth import CommandGuard, CommandSigner, parse_key

__all__ = [
    "BridgeConfig",
    "BridgeCredentials",
    "BrokerSiteConfig",
    "SiteCredentials",
    "SiteFiles",
    "UserCredentials",
    "acl_text",
    "bridge_conf_text",
    "bridge_topics",
    "broker_user",
    "central_acl_text",
    "find_mosquitto_passwd",
    "hash_passwords",
    "load_credentials",
    "mosquitto_conf_text",
    "write_broker_config",
]

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_RESERVED_USER: Final = "cmd"  # the command level of heron/{site}/{agent}/cmd/{kind}; no sender id
_PASSWD_FALLBACKS: Final = ("/usr/bin/mosquitto_passwd", "/usr/local/bin/mosquitto_passwd",
                            "/opt/homebrew/bin/mosquitto_passwd")
CONF_NAME: Final = "mosquitto.conf"
ACL_NAME: Final = "acl"
PASSWD_NAME: Final = "passwd"
CREDENTIALS_NAME: Final = "credentials.json"
SERVER_KEY_NAME: Final = "server.key"
CENTRAL_CA_NAME: Final = "central-ca.crt"
CENTRAL_ACL_NAME: Final = "central-acl"
CENTRAL_CERT_NAME: Final = "central-client.crt"
CENTRAL_KEY_NAME: Final = "central-client.key"
MOSQUITTO_DEFAULT_USER: Final = "mosquitto"  # the user Mosquitto drops to, started by root without a 'user' option


def _name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{what} {value!r} must be letters, digits, '_', '.', '-'")
    return value


def _user(value: str) -> str:
    if value == _RESERVED_USER:
        raise ValueError(f"user name {value!r} is reserved: it is the command level of the topics")
    return _name(value, "user name")


class BridgeConfig(BaseModel):
    """A bridge from the site broker to a central broker (see the module doc): where, as whom, which CA."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    url: str = Field(description="The central broker, mqtts://host[:port] (TLS is required).")
    username: str = Field(description="The site's bridge identity on the central broker.")
    password: str | None = Field(default=None, description="Its password on the central broker; None: generated.")
    ca_file: Path | None = Field(default=None, description="The central broker's CA certificate (copied next to the "
                                 "config as central-ca.crt); None: the site's own ca.crt (one CA for the fleet).")
    cert_file: Path | None = Field(default=None, description="A client certificate for the central broker.")
    key_file: Path | None = Field(default=None, description="Its key.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not parse_url(value).tls:
            raise ValueError(f"bridge url {value!r} must be mqtts:// (the bridge always uses TLS)")
        return value

    @field_validator("username")
    @classmethod
    def _check_username(cls, value: str) -> str:
        return _user(value)

    @field_validator("password")
    @classmethod
    def _check_password(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in " \t\n\r\"#")):
            raise ValueError("bridge password must be non-empty, without spaces, '#' or '\"'")
        return value

    @model_validator(mode="after")
    def _cert_and_key(self) -> BridgeConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("bridge client certificate and key go together")
        return self


class BrokerSiteConfig(BaseModel):
    """What :func:`write_broker_config` needs to know about a site."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    site: str = Field(description="Site name, the second topic level (heron/{site}/...).")
    agents: tuple[str, ...] = Field(min_length=1, description="Agent ids; each is also its MQTT username.")
    operator: str = Field(default="system_operator", description="The upstream: the only user that writes commands.")
    port: int = Field(default=8883, ge=1, le=65535, description="TLS listener port.")
    bind_address: str | None = Field(default=None, description="Listen on this address only; None = all.")
    server_names: tuple[str, ...] = Field(default=("localhost", "127.0.0.1"), min_length=1,
                                          description="DNS names / IPs in the server certificate.")
    plant: str | None = Field(default=None, description="A clock / plant user (SIL): its clock, meter and status.")
    monitor: str | None = Field(default=None, description="A read-only user: reads heron/{site}/#, writes nothing "
                                "(dashboards, loggers; 'heron-edge broker-config' adds 'monitor').")
    require_certificate: bool = Field(default=False, description="Clients must present a certificate; its CN is "
                                      "then the username (the password is not checked).")
    config_dir: Path | None = Field(default=None, description="Where the files live on the broker host; "
                                    "default: the output directory.")
    run_as_user: str | None = Field(default=None, description="Mosquitto's 'user' option: the user it runs as "
                                    "when started by root (None: its default, 'mosquitto').")
    cert_days: int = Field(default=365, ge=1, description="Validity of generated certificates, days.")
    bridge: BridgeConfig | None = Field(default=None, description="A bridge to a central broker (many sites).")

    @field_validator("site")
    @classmethod
    def _check_site(cls, value: str) -> str:
        return _name(value, "site")

    @field_validator("operator")
    @classmethod
    def _check_operator(cls, value: str) -> str:
        return _user(value)

    @field_validator("plant", "monitor")
    @classmethod
    def _check_plant(cls, value: str | None) -> str | None:
        return None if value is None else _user(value)

    @field_validator("agents")
    @classmethod
    def _check_names(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            _user(value)
        if len(set(values)) != len(values):
            raise ValueError(f"duplicate names in {list(values)}")
        return values

    @model_validator(mode="after")
    def _operator_is_not_an_agent(self) -> BrokerSiteConfig:
        if self.operator in self.agents:
            raise ValueError(f"operator {self.operator!r} is also listed as an agent")
        if self.plant is not None and self.plant in (*self.agents, self.operator):
            raise ValueError(f"plant {self.plant!r} is also the operator or an agent")
        if self.monitor is not None and self.monitor in (*self.agents, self.operator, self.plant):
            raise ValueError(f"monitor {self.monitor!r} is also the operator, the plant or an agent")
        if self.bridge is not None and self.bridge.username in self.users:
            raise ValueError(f"bridge user {self.bridge.username!r} is also a user of the site")
        return self

    @property
    def users(self) -> tuple[str, ...]:
        """Every MQTT user: the agents, then the operator (then the plant and the monitor, when set)."""
        return (*self.agents, self.operator, *((self.plant,) if self.plant else ()),
                *((self.monitor,) if self.monitor else ()))


class UserCredentials(BaseModel):
    """One MQTT user's secrets and files."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    password: str
    command_key: str | None = Field(default=None, description="Agents: hex key the operator signs commands with.")
    command_keys: dict[str, str] = Field(default_factory=dict, description="Operator: agent -> hex command key.")
    cert_file: str | None = None
    key_file: str | None = None


class BridgeCredentials(BaseModel):
    """The site's bridge identity on the central broker (give the central broker this user and password)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    url: str
    username: str
    password: str


class SiteCredentials(BaseModel):
    """The content of ``credentials.json``: enough to connect any user of the site and check commands."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    site: str
    operator: str
    monitor: str | None = Field(default=None, description="The read-only user, when the site has one.")
    port: int
    ca_file: str
    users: dict[str, UserCredentials]
    bridge: BridgeCredentials | None = Field(default=None, description="The bridge to a central broker, if any.")

    def user(self, name: str) -> UserCredentials:
        """One user's credentials; ConfigError when unknown."""
        try:
            return self.users[name]
        except KeyError:
            raise ConfigError(f"no credentials for user {name!r} (known: {sorted(self.users)})") from None

    def tls_options(self, name: str, *, check_hostname: bool = True) -> TlsOptions:
        """``TlsOptions`` for ``name``: the site CA and, when generated, its client certificate."""
        creds = self.user(name)
        return TlsOptions(ca_file=self.ca_file, cert_file=creds.cert_file, key_file=creds.key_file,
                          check_hostname=check_hostname)

    def broker(self, name: str, url: str, *, client_id: str | None = None, **options: Any) -> MqttBroker:
        """An :class:`MqttBroker` connecting as ``name`` (TLS + username/password) to ``url`` (mqtts://);
        ``options`` are further MqttBroker keywords (status_topic, request_timeout_s, ...)."""
        creds = self.user(name)
        return MqttBroker(url, client_id=client_id or name, username=name, password=creds.password,
                          tls=self.tls_options(name), **options)

    def guard(self, agent_id: str, **options: Any) -> CommandGuard:
        """The :class:`CommandGuard` of ``agent_id``: commands only from the operator, signed with its key."""
        creds = self.user(agent_id)
        if creds.command_key is None:
            raise ConfigError(f"user {agent_id!r} has no command key (is it an agent?)")
        return CommandGuard(agent_id, self.operator, key=parse_key(creds.command_key), **options)

    def signer(self) -> CommandSigner:
        """The operator's :class:`CommandSigner` (one key per agent)."""
        keys = self.user(self.operator).command_keys
        return CommandSigner({agent: parse_key(key) for agent, key in keys.items()})


@dataclass(frozen=True)
class SiteFiles:
    """Paths written by :func:`write_broker_config` (as on this machine) and the credentials.

    ``broker_owner`` is the user the :attr:`broker_files` were given to (run as root), None when
    their owner was left alone (then they belong to whoever wrote them).
    """

    directory: Path
    conf: Path
    acl: Path
    password_file: Path
    credentials_file: Path
    credentials: SiteCredentials
    broker_owner: str | None = None

    @property
    def broker_files(self) -> tuple[Path, ...]:
        """What Mosquitto opens after dropping its privileges: ``passwd``, ``acl``, ``server.key`` (and the
        bridge's client key, when there is one)."""
        bridge_key = self.directory / CENTRAL_KEY_NAME
        return (self.password_file, self.acl, self.directory / SERVER_KEY_NAME,
                *((bridge_key,) if bridge_key.exists() else ()))


# --------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------


def acl_text(config: BrokerSiteConfig) -> str:
    """The Mosquitto ACL file for the site (format: ``user``, ``topic read|write|deny`` lines).

    Each user writes only its own topics; only the operator writes commands (see the module doc).
    """
    s = config.site
    lines = [
        f"# heron-edge ACL for site {s!r}: generated by 'heron-edge broker-config'.",
        "# Every topic names its sender: each user writes only heron/S/<itself>/<kind>; only the operator",
        "# writes commands. No lines outside a 'user' block: anonymous clients and unknown users get nothing.",
        "",
    ]
    for user in config.users:
        lines += [
            f"user {user}",
            f"topic write heron/{s}/{user}/+",
            f"topic deny heron/{s}/{user}/cmd",
            *([f"topic write heron/{s}/+/cmd/+"] if user == config.operator else []),
            f"topic read heron/{s}/+/+",
            *([f"topic read heron/{s}/{user}/cmd/+"] if user in config.agents
              or (user == config.operator and config.bridge is not None) else []),
            "",
        ] if user != config.monitor else [
            f"user {user}",
            "# read-only: every topic of the site, commands included; no write line, so it writes nothing",
            f"topic read heron/{s}/#",
            "",
        ]
    return "\n".join(lines)


def mosquitto_conf_text(config: BrokerSiteConfig, *, directory: Path) -> str:
    """``mosquitto.conf`` referring to files in ``directory`` (where they live on the broker host):
    one TLS listener where the client id is the username and, with ``require_certificate``, the
    username is the certificate's CN; packets over MAX_PACKET_BYTES are refused."""
    d = Path(directory)
    listener = f"listener {config.port}" + (f" {config.bind_address}" if config.bind_address else "")
    user = f"user {config.run_as_user}\n" if config.run_as_user else ""
    owner = broker_user(config)
    identity = ("# the certificate decides the identity: its CN is the username (passwords are not checked)\n"
                "use_identity_as_username true\n") if config.require_certificate else ""
    return (
        f"# heron-edge broker for site {config.site!r}: generated by 'heron-edge broker-config'.\n"
        "per_listener_settings false\n"
        f"{user}"
        f"# started by root, mosquitto runs as user {owner} before it reads passwd, acl and {SERVER_KEY_NAME}:\n"
        f"# they must belong to {owner} (mode 0600), e.g. 'chown {owner}: passwd acl {SERVER_KEY_NAME}'\n"
        "allow_anonymous false\n"
        f"password_file {d / PASSWD_NAME}\n"
        f"acl_file {d / ACL_NAME}\n"
        "# Nagle's algorithm otherwise delays small QoS-1 packets: round trips stall at ~40 ms (delayed ACKs)\n"
        "set_tcp_nodelay true\n"
        "# the default of 1000 silently drops QoS-1 bursts to a slow subscriber\n"
        "max_queued_messages 100000\n"
        "# a larger packet is never delivered and its sender is disconnected (real messages: ~10 kB at most)\n"
        f"max_packet_size {MAX_PACKET_BYTES}\n"
        "\n"
        f"{listener}\n"
        "# the client id is the authenticated username: nobody can take over another identity's session\n"
        "use_username_as_clientid true\n"
        f"cafile {d / 'ca.crt'}\n"
        f"certfile {d / 'server.crt'}\n"
        f"keyfile {d / SERVER_KEY_NAME}\n"
        "tls_version tlsv1.2\n"
        f"require_certificate {'true' if config.require_certificate else 'false'}\n"
        f"{identity}"
    )


def bridge_topics(config: BrokerSiteConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(out, in): the topic filters the bridge forwards to the central broker, and from it."""
    s, op = config.site, config.operator
    return (f"heron/{s}/+/status", f"heron/{s}/{op}/aggregates"), (f"heron/{s}/{op}/cmd/+",)


def bridge_conf_text(config: BrokerSiteConfig, *, directory: Path, password: str) -> str:
    """The ``connection`` section of ``mosquitto.conf`` (``config.bridge`` must be set): TLS to the central
    broker with the bridge identity, only :func:`bridge_topics` crossing, QoS 1."""
    bridge = config.bridge
    if bridge is None:
        raise ConfigError("the site has no bridge configured")
    endpoint = parse_url(bridge.url)
    d = Path(directory)
    out_topics, in_topics = bridge_topics(config)
    ca = d / (CENTRAL_CA_NAME if bridge.ca_file is not None else "ca.crt")
    cert = (f"bridge_certfile {d / CENTRAL_CERT_NAME}\nbridge_keyfile {d / CENTRAL_KEY_NAME}\n"
            if bridge.cert_file is not None else "")
    return (
        "\n# Bridge to the central broker: only statuses and the operator's summaries go out, only the\n"
        "# commands addressed to this site's operator come in (nothing else crosses).\n"
        f"connection heron-{config.site}\n"
        f"address {endpoint.host}:{endpoint.port}\n"
        "bridge_protocol_version mqttv311\n"
        f"remote_clientid {bridge.username}\n"
        f"remote_username {bridge.username}\n"
        f"remote_password {password}\n"
        f"bridge_cafile {ca}\n"
        f"{cert}"
        "bridge_insecure false\n"
        "bridge_tls_version tlsv1.2\n"
        "try_private true\n"
        "cleansession true\n"
        "notifications false\n"
        "start_type automatic\n"
        "restart_timeout 2 30\n"
        "keepalive_interval 30\n"
        + "".join(f"topic {t} out 1\n" for t in out_topics)
        + "".join(f"topic {t} in 1\n" for t in in_topics)
    )


def central_acl_text(config: BrokerSiteConfig) -> str:
    """The lines the central broker's ACL needs for this site's bridge identity (``config.bridge`` set)."""
    if config.bridge is None:
        raise ConfigError("the site has no bridge configured")
    out_topics, in_topics = bridge_topics(config)
    return "\n".join([
        f"# add to the central broker's ACL: the bridge of site {config.site} (generated by 'heron-edge broker-config')",
        f"user {config.bridge.username}",
        *(f"topic write {t}" for t in out_topics),
        *(f"topic read {t}" for t in in_topics),
        "",
    ])


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def find_mosquitto_passwd() -> str | None:
    """Path of ``mosquitto_passwd`` (PATH first, then the usual bin directories), or None."""
    found = shutil.which("mosquitto_passwd")
    if found:
        return found
    return next((p for p in _PASSWD_FALLBACKS if os.access(p, os.X_OK)), None)


def broker_user(config: BrokerSiteConfig) -> str:
    """The user Mosquitto runs as when started by root: ``run_as_user``, else Mosquitto's default ``mosquitto``."""
    return config.run_as_user or MOSQUITTO_DEFAULT_USER


def _give_to_broker(config: BrokerSiteConfig, files: tuple[Path, ...], created: Path | None) -> str | None:
    """Run as root: chown ``files`` to the broker's user and group (and ``created``, a directory this call
    made, to root and that group, 0750, so the user can enter it). Returns the user, or None when not root
    or when the user does not exist on this host (nothing changed)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    user = broker_user(config)
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    for path in files:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    if created is not None:
        os.chown(created, 0, entry.pw_gid)
        os.chmod(created, 0o750)
    return user


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.chmod(path, 0o600)


def hash_passwords(password_file: Path, passwords: dict[str, str], *, binary: str | None = None) -> None:
    """Write ``password_file`` (0600) with ``mosquitto_passwd``; passwords go through stdin, not argv."""
    binary = binary or find_mosquitto_passwd()
    if binary is None:
        raise ConfigError("mosquitto_passwd not found; install it with 'apt-get install mosquitto'")
    _write_private(Path(password_file), "")
    for user, password in passwords.items():
        if ":" in user or "\n" in password:
            raise ConfigError(f"user {user!r}: ':' in a username or a newline in a password cannot be stored")
        try:
            result = subprocess.run([binary, str(password_file), user], input=f"{password}\n{password}\n",
                                    capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"{binary} failed for user {user!r}: {exc}") from exc
        if result.returncode != 0:
            raise ConfigError(f"{binary} failed for user {user!r}: {result.stderr.strip() or result.stdout.strip()}")
    os.chmod(password_file, 0o600)


def write_broker_config(
    config: BrokerSiteConfig,
    out: Path,
    *,
    self_signed_ca: bool = False,
    passwords: dict[str, str] | None = None,
    mosquitto_passwd: str | None = None,
    overwrite: bool = False,
    chown: bool = True,
) -> SiteFiles:
    """Write the site's broker configuration into ``out`` (created if missing; see the module doc).

    Passwords are generated (``secrets.token_urlsafe``) unless given; every agent gets a fresh
    32-byte command key, which the operator also holds. Without ``self_signed_ca`` the TLS files
    (``ca.crt``, ``server.crt``, ``server.key``) must be provided in the configuration directory.
    Refuses to overwrite an existing ``credentials.json`` unless ``overwrite``. Run as root (and
    ``chown``), ``passwd``, ``acl`` and ``server.key`` (generated, or provided in ``out``) are given
    to :func:`broker_user` when that user exists here (``SiteFiles.broker_owner``).
    """
    out = Path(out).resolve()
    created = None if out.exists() else out
    out.mkdir(parents=True, exist_ok=True)
    credentials_file = out / CREDENTIALS_NAME
    if credentials_file.exists() and not overwrite:
        raise ConfigError(f"{credentials_file} exists; refusing to replace a site's credentials "
                          "(overwrite=True, or --force)")
    directory = config.config_dir or out
    passwords = dict(passwords or {})
    unknown = set(passwords) - set(config.users)
    if unknown:
        raise ConfigError(f"passwords given for unknown users {sorted(unknown)}")
    for user in config.users:
        passwords.setdefault(user, secrets.token_urlsafe(24))

    certs: dict[str, tuple[str | None, str | None]] = {}
    if self_signed_ca:
        from heron_edge.security.certs import make_ca

        ca = make_ca(f"heron-edge {config.site} CA", days=config.cert_days)
        ca.write_ca(out / "ca.crt", out / "ca.key")
        ca.issue_server(f"heron-edge {config.site} broker", config.server_names, out / "server.crt", out / "server.key")
        for user in config.users:
            ca.issue_client(user, out / f"{user}.crt", out / f"{user}.key")
            certs[user] = (str(directory / f"{user}.crt"), str(directory / f"{user}.key"))
        for public in ("ca", "server", *config.users):  # certificates are public; under umask 077 the broker's
            os.chmod(out / f"{public}.crt", 0o644)      # user could not read ca.crt and server.crt

    keys = {agent: secrets.token_bytes(32).hex() for agent in config.agents}
    users: dict[str, UserCredentials] = {}
    for user in config.users:
        cert_file, key_file = certs.get(user, (None, None))
        if user == config.operator:
            users[user] = UserCredentials(password=passwords[user], command_keys=keys, cert_file=cert_file,
                                          key_file=key_file)
        elif user in (config.plant, config.monitor):
            users[user] = UserCredentials(password=passwords[user], cert_file=cert_file, key_file=key_file)
        else:
            users[user] = UserCredentials(password=passwords[user], command_key=keys[user], cert_file=cert_file,
                                          key_file=key_file)
    op = config.operator
    bridge: BridgeCredentials | None = None
    if config.bridge is not None:
        bridge = BridgeCredentials(url=config.bridge.url, username=config.bridge.username,
                                   password=config.bridge.password or secrets.token_urlsafe(24))
        for source, name in ((config.bridge.ca_file, CENTRAL_CA_NAME), (config.bridge.cert_file, CENTRAL_CERT_NAME)):
            if source is not None:
                shutil.copyfile(source, out / name)
                os.chmod(out / name, 0o644)
        if config.bridge.key_file is not None:
            _write_private(out / CENTRAL_KEY_NAME, Path(config.bridge.key_file).read_text())
        (out / CENTRAL_ACL_NAME).write_text(central_acl_text(config))
    credentials = SiteCredentials(site=config.site, operator=op, monitor=config.monitor, port=config.port,
                                  ca_file=str(directory / "ca.crt"), users=users, bridge=bridge)

    hash_passwords(out / PASSWD_NAME, passwords, binary=mosquitto_passwd)
    _write_private(out / ACL_NAME, acl_text(config))  # Mosquitto 2.x warns about (later: refuses) a readable ACL
    conf = mosquitto_conf_text(config, directory=directory)
    if bridge is not None:  # the conf then holds the bridge's password: private
        _write_private(out / CONF_NAME, conf + bridge_conf_text(config, directory=directory, password=bridge.password))
    else:
        (out / CONF_NAME).write_text(conf)
    _write_private(credentials_file, credentials.model_dump_json(indent=2) + "\n")
    files = SiteFiles(out, out / CONF_NAME, out / ACL_NAME, out / PASSWD_NAME, credentials_file, credentials)
    if not chown:
        return files
    owned = tuple(path for path in files.broker_files if path.exists())  # server.key: generated or provided
    return dataclasses.replace(files, broker_owner=_give_to_broker(config, owned, created))


def load_credentials(path: Path) -> SiteCredentials:
    """Read ``credentials.json``; ConfigError naming the file on any problem."""
    try:
        return SiteCredentials.model_validate(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
