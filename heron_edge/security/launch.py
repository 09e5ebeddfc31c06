"""Run Mosquitto with a site configuration written by :func:`write_broker_config` (tests, secure SIL).

The same process handling as :class:`heron_edge.runtime.mosquitto.MosquittoProcess` (start, wait
until the listener accepts TCP connections, stop by PID, restart on the same port); only the
configuration differs: the site's ``mosquitto.conf`` as written, with its TLS listener on loopback.
"""
from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from heron_edge.runtime.mosquitto import HOST, MosquittoProcess

__all__ = ["SiteMosquitto", "free_port", "running_site_mosquitto"]


def free_port(host: str = HOST) -> int:
    """A TCP port free on ``host`` right now (for a generated configuration)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class SiteMosquitto(MosquittoProcess):
    """``mosquitto -c <site conf>`` whose TLS listener is ``127.0.0.1:port``; stopped by PID."""

    def __init__(self, conf: Path, *, port: int, binary: str | None = None) -> None:
        super().__init__(port=port, binary=binary)
        self.conf = Path(conf)

    @property
    def url(self) -> str:
        """``mqtts://127.0.0.1:port``."""
        return f"mqtts://{HOST}:{self.port}"

    def _write_config(self, port: int) -> Path:
        return self.conf  # the site's own configuration, listener included


@contextmanager
def running_site_mosquitto(conf: Path, *, port: int) -> Iterator[SiteMosquitto]:
    """A started :class:`SiteMosquitto`, stopped (and its log dir removed) on exit."""
    process = SiteMosquitto(conf, port=port)
    with process:
        yield process
