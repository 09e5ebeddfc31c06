"""Start and stop a real Mosquitto broker on a loopback port (tests, benchmarks, the SIL rig).

The broker only ever listens on 127.0.0.1, with a generated config: anonymous access,
``set_tcp_nodelay true`` (without it QoS-1 round trips stall at tens of ms, see docs/architecture.md), no
persistence, ``max_queued_messages 100000`` (Mosquitto's default of 1000 silently drops QoS-1
messages to a subscriber that falls behind a burst) and ``max_packet_size`` (default
:data:`~heron_edge.brokers.base.MAX_PACKET_BYTES`, as on a site broker: a larger packet is dropped
and its sender disconnected). It is stopped by PID: terminate, then kill after a timeout.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

from heron_edge.brokers.base import MAX_PACKET_BYTES
from heron_edge.errors import HeronError

__all__ = [
    "HOST",
    "INSTALL_HINT",
    "MosquittoError",
    "MosquittoNotFoundError",
    "MosquittoProcess",
    "TlsListener",
    "find_mosquitto",
    "running_mosquitto",
]

HOST: Final = "127.0.0.1"
INSTALL_HINT: Final = "install it with 'apt-get install mosquitto' (Debian/Ubuntu) or 'brew install mosquitto'"
_FALLBACK_PATHS: Final = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")
_MIN_PACKET_BYTES: Final = 20  # mosquitto refuses a smaller max_packet_size


class MosquittoError(HeronError, RuntimeError):
    """Mosquitto could not be started (or did not start accepting connections in time)."""


class MosquittoNotFoundError(MosquittoError, FileNotFoundError):
    """No mosquitto executable on PATH nor in the usual sbin directories."""


@dataclass(frozen=True)
class TlsListener:
    """Serve MQTT over TLS (``mqtts://``): the CA that signed the server (and client) certificates,
    the server's certificate and key, and whether clients must present a certificate."""

    ca_file: str
    cert_file: str
    key_file: str
    require_certificate: bool = False


def find_mosquitto() -> str | None:
    """Path of the mosquitto executable (PATH first, then /usr/sbin and friends), or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for path in _FALLBACK_PATHS:
        if os.access(path, os.X_OK):
            return path
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mosquitto does: TIME_WAIT is fine
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


class MosquittoProcess:
    """One mosquitto process on ``127.0.0.1:port``; restartable on the same port.

    ``port=None`` picks a free port on the first :meth:`start`; later starts reuse it (so clients
    can reconnect to the same URL after :meth:`stop` or :meth:`kill`). ``max_packet_bytes`` is the
    broker's ``max_packet_size`` (tests of oversized messages raise it).
    """

    def __init__(self, *, port: int | None = None, binary: str | None = None, tls: TlsListener | None = None,
                 max_packet_bytes: int = MAX_PACKET_BYTES) -> None:
        if max_packet_bytes < _MIN_PACKET_BYTES:
            raise ValueError(f"max_packet_bytes must be at least {_MIN_PACKET_BYTES}, not {max_packet_bytes}")
        self._binary = binary or find_mosquitto()
        if self._binary is None:
            raise MosquittoNotFoundError(f"mosquitto not found; {INSTALL_HINT}")
        self._max_packet_bytes = max_packet_bytes
        self._port: int | None = port
        self._tls = tls
        self._dir = Path(tempfile.mkdtemp(prefix="heron-mosquitto-"))
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<MosquittoProcess {HOST}:{self._port} {state}>"

    @property
    def host(self) -> str:
        """Always ``127.0.0.1``."""
        return HOST

    @property
    def port(self) -> int:
        """The TCP port (fixed after the first start)."""
        if self._port is None:
            raise MosquittoError("port not chosen yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT`` (``mqtts://`` with TLS), what MqttBroker takes."""
        return f"{'mqtts' if self._tls else 'mqtt'}://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the running process, None when stopped."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        """Mosquitto's stdout/stderr, for diagnostics."""
        return self._dir / "mosquitto.log"

    def _write_config(self, port: int) -> Path:
        config = self._dir / "mosquitto.conf"
        tls = ""
        if self._tls is not None:
            tls = (
                f"cafile {self._tls.ca_file}\ncertfile {self._tls.cert_file}\nkeyfile {self._tls.key_file}\n"
                f"require_certificate {'true' if self._tls.require_certificate else 'false'}\n"
            )
        # Started as root, mosquitto drops to user "mosquitto", which cannot read files in private
        # temporary directories (e.g. pytest's certificates); a loopback test broker keeps the user.
        user = "user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
        config.write_text(
            f"listener {port} {HOST}\n"
            f"{user}{tls}"
            "allow_anonymous true\n"
            "set_tcp_nodelay true\n"
            "persistence false\n"
            "max_queued_messages 100000\n"
            f"max_packet_size {self._max_packet_bytes}\n"
            "log_dest stdout\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        return config

    def start(self, *, timeout: float = 10.0) -> MosquittoProcess:
        """Start (no-op when running) and wait until it accepts TCP connections."""
        if self.running:
            return self
        attempts = 3 if self._port is None else 1  # a freshly picked port may be taken meanwhile
        for attempt in range(attempts):
            port = self._port if self._port is not None else _free_port()
            try:
                self._spawn(port, timeout)
            except MosquittoError:
                if attempt == attempts - 1:
                    raise
                continue
            self._port = port
            return self
        raise AssertionError("unreachable")

    def _spawn(self, port: int, timeout: float) -> None:
        if not _port_free(port):
            raise MosquittoError(f"{HOST}:{port} is already in use")
        config = self._write_config(port)
        assert self._binary is not None
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [self._binary, "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal does not reach it
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if _accepts(port):
                return
            time.sleep(0.01)
        self._terminate(timeout=2.0)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise MosquittoError(f"mosquitto did not accept connections on {HOST}:{port} within {timeout} s:\n{tail}")

    def _terminate(self, *, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self._proc = None

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop by PID: SIGTERM, then SIGKILL after ``timeout`` seconds. Idempotent."""
        self._terminate(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL now (a crash: clients see the TCP connection drop). Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5.0)
        self._proc = None

    def cleanup(self) -> None:
        """Stop and delete the generated config and log."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> MosquittoProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


@contextmanager
def running_mosquitto(
    *, port: int | None = None, binary: str | None = None, tls: TlsListener | None = None,
    max_packet_bytes: int = MAX_PACKET_BYTES,
) -> Iterator[MosquittoProcess]:
    """A started :class:`MosquittoProcess`, stopped and cleaned up on exit."""
    process = MosquittoProcess(port=port, binary=binary, tls=tls, max_packet_bytes=max_packet_bytes)
    try:
        yield process.start()
    finally:
        process.cleanup()
