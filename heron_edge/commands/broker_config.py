"""Write a Mosquitto configuration for a site: TLS listener, password file, per-identity ACL, credentials.

With ``--self-signed-ca`` every user gets a client certificate, so certificates are required by default
(the certificate's CN is then the identity); ``--no-require-certificate`` falls back to passwords only.
A read-only user ``monitor`` (``--monitor NAME``, ``--no-monitor``) reads the whole site and writes nothing.

Run as root, the files Mosquitto reads after dropping its privileges (``passwd``, ``acl``,
``server.key``) are given to the user it runs as (``--run-as-user``, default Mosquitto's own
``mosquitto``), so ``mosquitto -c DIR/mosquitto.conf`` starts as generated; otherwise the command
prints the ``chown`` to run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from heron_edge.errors import ConfigError


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="site name (heron/{site}/...)")
    parser.add_argument("--agents", required=True, type=_names, help="comma-separated agent ids, e.g. mg1,mg2,mg3")
    parser.add_argument("--operator", default="system_operator", help="the upstream that commands the agents")
    parser.add_argument("--monitor", default="monitor",
                        help="the read-only user: reads heron/{site}/#, writes nothing (default monitor)")
    parser.add_argument("--no-monitor", dest="monitor", action="store_const", const=None,
                        help="no read-only user")
    parser.add_argument("--run-as-user", default=None,
                        help="the user mosquitto runs as when started by root (its 'user' option; default: "
                             "mosquitto's own default, user 'mosquitto'); run as root, passwd, acl and server.key "
                             "are given to it")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--self-signed-ca", action="store_true",
                        help="also generate a CA, a server certificate and client certificates (tests, SIL)")
    parser.add_argument("--port", type=int, default=8883, help="TLS listener port (default 8883)")
    parser.add_argument("--bind", default=None, help="listen on this address only (default: all)")
    parser.add_argument("--server-name", action="append", dest="server_names", default=None,
                        help="DNS name or IP in the server certificate (repeatable; default localhost, 127.0.0.1)")
    parser.add_argument("--require-certificate", action=argparse.BooleanOptionalAction, default=None,
                        help="clients must present a certificate whose CN is their username, which then decides "
                             "the identity (default: yes with --self-signed-ca, no otherwise)")
    parser.add_argument("--config-dir", type=Path, default=None,
                        help="where the files will live on the broker host (paths in mosquitto.conf; default --out)")
    parser.add_argument("--force", action="store_true", help="replace existing credentials in --out")


def run(args: argparse.Namespace) -> int:
    from heron_edge.security.broker_config import BrokerSiteConfig, broker_user, write_broker_config

    try:
        config = BrokerSiteConfig(
            site=args.site,
            agents=args.agents,
            operator=args.operator,
            monitor=args.monitor,
            run_as_user=args.run_as_user,
            port=args.port,
            bind_address=args.bind,
            server_names=tuple(args.server_names or ("localhost", "127.0.0.1")),
            require_certificate=(args.self_signed_ca if args.require_certificate is None
                                 else args.require_certificate),
            config_dir=args.config_dir,
        )
        files = write_broker_config(config, args.out, self_signed_ca=args.self_signed_ca, overwrite=args.force)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        print(f"broker-config: {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
        return 2
    except (ConfigError, ImportError) as exc:
        print(f"broker-config: {exc}", file=sys.stderr)
        return 2
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
    print(f"run: sudo mosquitto -c {(config.config_dir or files.directory) / files.conf.name}")
    return 0
