"""The Mosquitto launcher: loopback only, accepts connections when started, restarts on the same port."""
from __future__ import annotations

import socket

import pytest

from heron_edge.brokers.base import MAX_PACKET_BYTES
from heron_edge.runtime.mosquitto import MosquittoError, MosquittoProcess, running_mosquitto
from tests.conftest import require_mosquitto

pytestmark = pytest.mark.mqtt


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_start_stop_restart_on_the_same_port() -> None:
    require_mosquitto()
    with running_mosquitto() as proc:
        assert proc.url == f"mqtt://127.0.0.1:{proc.port}" and proc.running and proc.pid
        assert accepts(proc.port)
        config = (proc.log_path.parent / "mosquitto.conf").read_text()
        assert f"listener {proc.port} 127.0.0.1" in config and "set_tcp_nodelay true" in config
        assert "allow_anonymous true" in config
        assert f"max_packet_size {MAX_PACKET_BYTES}\n" in config  # as on a site broker
        port, first_pid = proc.port, proc.pid
        proc.kill()
        assert not proc.running and proc.pid is None and not accepts(port)
        proc.start()
        assert proc.port == port and proc.pid != first_pid and accepts(port)
        proc.stop()
        proc.stop()  # idempotent
        assert not accepts(port)
    assert not proc.log_path.parent.exists()


def test_packet_size_limit_is_configurable() -> None:
    require_mosquitto()
    with running_mosquitto(max_packet_bytes=1_000_000) as proc:
        assert "max_packet_size 1000000\n" in (proc.log_path.parent / "mosquitto.conf").read_text()
    with pytest.raises(ValueError, match="at least 20"):
        MosquittoProcess(max_packet_bytes=19)


def test_port_in_use_is_reported() -> None:
    require_mosquitto()
    with running_mosquitto() as first:
        clash = MosquittoProcess(port=first.port)
        try:
            with pytest.raises(MosquittoError, match="already in use"):
                clash.start(timeout=3)
        finally:
            clash.cleanup()


def test_missing_mosquitto_skips_locally_but_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.conftest as conftest

    monkeypatch.setattr(conftest, "find_mosquitto", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install mosquitto"):
        conftest.require_mosquitto()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        conftest.require_mosquitto()
