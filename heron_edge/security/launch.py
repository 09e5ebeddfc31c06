"""Run Mosquitto with a site configuration written by :func:`write_broker_config` (tests, secure SIL).

Unlike :class:`heron_edge.runtime.mosquitto.MosquittoProcess`, which writes its own anonymous
config, this starts ``mosquitto -c <the site's mosquitto.conf>`` as is, waits until the TLS
listener accepts TCP connections on ``host:port``, and stops the process by PID.
"""
from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from heron_edge.runtime.mosquitto import HOST, INSTALL_HINT, MosquittoError, MosquittoNotFoundError, find_mosquitto

__all__ = ["SiteMosquitto", "free_port", "running_site_mosquitto"]


def free_port(host: str = HOST) -> int:
    """A TCP port free on ``host`` right now (for a generated configuration)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class SiteMosquitto:
    """One ``mosquitto -c conf`` process whose listener is ``host:port``; stopped by PID."""

    def __init__(self, conf: Path, *, port: int, host: str = HOST, binary: str | None = None) -> None:
        self.conf = Path(conf)
        self.port = port
        self.host = host
        self._binary = binary or find_mosquitto()
        if self._binary is None:
            raise MosquittoNotFoundError(f"mosquitto not found; {INSTALL_HINT}")
        self.log_path = self.conf.with_name("mosquitto.log")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtts://host:port``."""
        return f"mqtts://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID while running, else None."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self, *, timeout: float = 10.0) -> SiteMosquitto:
        """Start and wait until the listener accepts connections; MosquittoError with the log tail otherwise."""
        if self.pid is not None:
            return self
        assert self._binary is not None
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen([self._binary, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._proc.poll() is None:
            if _accepts(self.host, self.port):
                return self
            time.sleep(0.01)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise MosquittoError(f"mosquitto -c {self.conf} did not accept connections on {self.host}:{self.port}:\n{tail}")

    def stop(self, *, timeout: float = 5.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout`` seconds. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def __enter__(self) -> SiteMosquitto:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@contextmanager
def running_site_mosquitto(conf: Path, *, port: int, host: str = HOST) -> Iterator[SiteMosquitto]:
    """A started :class:`SiteMosquitto`, stopped on exit."""
    process = SiteMosquitto(conf, port=port, host=host)
    try:
        yield process.start()
    finally:
        process.stop()
