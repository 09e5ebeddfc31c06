"""Write a Mosquitto configuration for a site: TLS listener, password file, per-identity ACL, credentials.

With ``--self-signed-ca`` every user gets a client certificate, so certificates are required by default
(the certificate's CN is then the identity); ``--no-require-certificate`` falls back to passwords only.
A read-only user ``monitor`` (``--monitor NAME``, ``--no-monitor``) reads the whole site and writes nothing.
``--bridge-to mqtts://central:8883`` adds a bridge to a central broker (many sites, one fleet): statuses and the
operator's summaries go out, commands to the site's operator come in, nothing else crosses.

Run as root, the files Mosquitto reads after dropping its privileges (``passwd``, ``acl``,
``server.key``) are given to the user it runs as (``--run-as-user``, default Mosquitto's own
``mosquitto``), so ``mosquitto -c DIR/mosquitto.conf`` starts as generated; otherwise the command
prints the ``chown`` to run.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError

from heron_edge.commands import tcp_port, validation_summary
from heron_edge.errors import ConfigError


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``heron-edge broker-config``."""
    parser.add_argument("--site", required=True, metavar="NAME", help="site name (heron/{site}/...)")
    parser.add_argument("--agents", required=True, type=_names, metavar="NAME,NAME,...",
                        help="comma-separated agent ids, e.g. mg1,mg2,mg3")
    parser.add_argument("--operator-id", default="system_operator", metavar="NAME",
                        help="the upstream that commands the agents (default: %(default)s)")
    parser.add_argument("--monitor", default="monitor", metavar="NAME",
                        help="the read-only user: reads heron/{site}/#, writes nothing (default: %(default)s)")
    parser.add_argument("--no-monitor", dest="monitor", action="store_const", const=None,
                        help="no read-only user")
    parser.add_argument("--run-as-user", default=None, metavar="USER",
                        help="the user mosquitto runs as when started by root (its 'user' option; default: "
                             "mosquitto's own default, user 'mosquitto'); run as root, passwd, acl and server.key "
                             "are given to it")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory, made if missing")
    parser.add_argument("--self-signed-ca", action="store_true",
                        help="also generate a CA, a server certificate and client certificates (tests, SIL)")
    parser.add_argument("--port", type=tcp_port, default=8883, metavar="PORT",
                        help="TLS listener port (default: %(default)s)")
    parser.add_argument("--bind", default=None, metavar="HOST", help="listen on this address only (default: all)")
    parser.add_argument("--server-name", action="append", dest="server_names", default=None, metavar="NAME",
                        help="DNS name or IP in the server certificate (repeatable; default: localhost, 127.0.0.1)")
    parser.add_argument("--require-certificate", action=argparse.BooleanOptionalAction, default=None,
                        help="clients must present a certificate whose CN is their username, which then decides "
                             "the identity (default: yes with --self-signed-ca, no otherwise)")
    parser.add_argument("--config-dir", type=Path, default=None, metavar="DIR",
                        help="where the files will live on the broker host (paths in mosquitto.conf; default: --out)")
    parser.add_argument("--force", action="store_true", help="replace existing credentials in --out")
    bridge = parser.add_argument_group("bridge to a central broker (many sites)")
    bridge.add_argument("--bridge-to", default=None, metavar="URL",
                        help="the central broker, mqtts://HOST[:PORT]: forward statuses and the operator's summaries "
                             "there, and its commands to this site's operator here")
    bridge.add_argument("--bridge-user", default=None, metavar="NAME",
                        help="this site's identity on the central broker (default: SITE-bridge)")
    bridge.add_argument("--bridge-ca", type=Path, default=None, metavar="FILE",
                        help="the central broker's CA certificate (default: this site's ca.crt)")
    bridge.add_argument("--bridge-cert", type=Path, default=None, metavar="FILE",
                        help="a client certificate for the central broker (with --bridge-key)")
    bridge.add_argument("--bridge-key", type=Path, default=None, metavar="FILE", help="its key")


def run(args: argparse.Namespace) -> int:
    """Validate the site, write its files to ``--out`` and say what to do with them; 0 on success. A bad value,
    an ``--out`` that is a file, or existing credentials without ``--force`` raise a ConfigError: ``heron_edge.cli``
    says it in one line, exit 2."""
    from heron_edge.security.broker_config import BridgeConfig, BrokerSiteConfig, broker_user, write_broker_config

    bridge_flags = ("--bridge-user", "--bridge-ca", "--bridge-cert", "--bridge-key")
    if args.bridge_to is None and any(getattr(args, f[2:].replace("-", "_")) is not None for f in bridge_flags):
        raise ConfigError(f"{'/'.join(bridge_flags)} need --bridge-to URL")
    for flag in ("--bridge-ca", "--bridge-cert", "--bridge-key"):
        path = getattr(args, flag[2:].replace("-", "_"))
        if path is not None and not path.is_file():
            raise ConfigError(f"{flag} {path}: no such file")
    try:
        bridge = None if args.bridge_to is None else BridgeConfig(
            url=args.bridge_to, username=args.bridge_user or f"{args.site}-bridge", ca_file=args.bridge_ca,
            cert_file=args.bridge_cert, key_file=args.bridge_key)
        config = BrokerSiteConfig(
            site=args.site,
            agents=args.agents,
            operator=args.operator_id,
            monitor=args.monitor,
            run_as_user=args.run_as_user,
            port=args.port,
            bind_address=args.bind,
            server_names=tuple(args.server_names or ("localhost", "127.0.0.1")),
            require_certificate=(args.self_signed_ca if args.require_certificate is None
                                 else args.require_certificate),
            config_dir=args.config_dir,
            bridge=bridge,
        )
    except ValidationError as exc:
        raise ConfigError(validation_summary(exc)) from None
    if args.out.exists() and not args.out.is_dir():  # not made here: made by the writer, it is given to mosquitto
        raise ConfigError(f"--out {args.out}: exists and is not a directory")
    try:
        files = write_broker_config(config, args.out, self_signed_ca=args.self_signed_ca, overwrite=args.force)
    except ImportError as exc:  # --self-signed-ca without the [security] extra (cryptography)
        raise ConfigError(str(exc)) from exc
    except OSError as exc:  # a full disk, a file in the way
        where = f" {exc.filename}" if exc.filename else ""
        raise ConfigError(f"--out {args.out}: cannot write{where}: {exc.strerror or exc}") from exc
    monitor = f", read-only {config.monitor}" if config.monitor else ""
    print(f"site {config.site!r}: users {', '.join(config.users)} (operator {config.operator}{monitor})")
    for path in sorted(files.directory.iterdir()):
        print(f"  {path}")
    print(f"credentials (passwords, command keys; mode 0600): {files.credentials_file}")
    if not args.self_signed_ca:
        print(f"provide ca.crt, server.crt and server.key in {config.config_dir or files.directory}")
        if config.require_certificate:
            print("issue each user a client certificate from that CA with CN = its username")
    user = broker_user(config)
    broker_files = " ".join(str((config.config_dir or files.directory) / p.name) for p in files.broker_files)
    if files.broker_owner is not None:
        print(f"owner {files.broker_owner} (mode 0600), the user mosquitto runs as when started by root: "
              f"{broker_files}")
    else:
        print(f"started by root, mosquitto runs as user {user!r} (--run-as-user), which must own passwd, acl and "
              f"server.key; on the broker host run:\n  sudo chown {user}: {broker_files}")
    if config.config_dir is not None and config.config_dir != files.directory:
        print(f"copy the files to {config.config_dir} keeping their owner and mode (e.g. 'sudo cp -a')")
    if files.credentials.bridge is not None:
        b = files.credentials.bridge
        print(f"bridge to {b.url} as {b.username!r}: on the central broker add that user with the password in "
              f"{files.credentials_file} (bridge.password), e.g. 'mosquitto_passwd PASSWD {b.username}', and the "
              f"ACL lines in {files.directory / 'central-acl'}")
    print(f"run: sudo mosquitto -c {(config.config_dir or files.directory) / files.conf.name}")
    return 0
