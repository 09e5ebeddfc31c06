"""MqttBroker over TLS (mqtts://) against a Mosquitto TLS listener with certificates made by openssl."""
from __future__ import annotations

import gc
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from heron_edge.brokers import MqttBroker, TlsOptions
from heron_edge.errors import BrokerError
from heron_edge.runtime.mosquitto import MosquittoProcess, TlsListener, running_mosquitto
from tests.conftest import require_mosquitto, run_async

pytestmark = pytest.mark.mqtt

# paho 2.1 does not close the socket when a TLS handshake fails (_ssl_wrap_socket); the garbage
# collector does, with a ResourceWarning. The tests that make handshakes fail collect it here.
paho_handshake_leak = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning", "ignore::ResourceWarning"
)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 only, and a client certificate."""
    if shutil.which("openssl") is None:  # certificates from an independent tool, not our own CA code
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail("openssl not found (CI=true: the TLS tests must run; scripts/test.sh installs it)", pytrace=False)
        pytest.skip("openssl not found (needed to make test certificates): apt-get install openssl")
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=heron test CA",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    for name, ext in [("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")]:
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)
    return d


def listener(pki: Path, *, require_certificate: bool) -> TlsListener:
    return TlsListener(str(pki / "ca.crt"), str(pki / "server.crt"), str(pki / "server.key"), require_certificate)


async def round_trip(broker: MqttBroker) -> bytes:
    async with broker:
        sub = await broker.subscribe("secure/x")
        await broker.publish("secure/x", b"over tls")
        return (await sub.get(timeout=5)).payload


@paho_handshake_leak
def test_tls_with_ca_and_client_certificate(pki: Path) -> None:
    require_mosquitto()
    with running_mosquitto(tls=listener(pki, require_certificate=True)) as proc:
        assert proc.url.startswith("mqtts://127.0.0.1:")
        tls = TlsOptions(ca_file=str(pki / "ca.crt"), cert_file=str(pki / "client.crt"), key_file=str(pki / "client.key"))
        assert run_async(round_trip(MqttBroker(proc.url, tls=tls))) == b"over tls"
        without_cert = MqttBroker(proc.url, tls=TlsOptions(ca_file=str(pki / "ca.crt")), request_timeout_s=3)
        with pytest.raises(BrokerError):
            run_async(round_trip(without_cert))
    gc.collect()


@paho_handshake_leak
def test_tls_verifies_the_server(pki: Path) -> None:
    require_mosquitto()
    with running_mosquitto(tls=listener(pki, require_certificate=False)) as proc:
        ca = str(pki / "ca.crt")
        assert run_async(round_trip(MqttBroker(proc.url, tls=TlsOptions(ca_file=ca)))) == b"over tls"
        # the certificate names 127.0.0.1, not localhost: the name check must refuse ...
        by_name = proc.url.replace("127.0.0.1", "localhost")
        with pytest.raises(BrokerError, match="cannot connect"):
            run_async(round_trip(MqttBroker(by_name, tls=TlsOptions(ca_file=ca), request_timeout_s=3)))
        # ... unless it is switched off (the chain is still verified)
        relaxed = TlsOptions(ca_file=ca, check_hostname=False)
        assert run_async(round_trip(MqttBroker(by_name, tls=relaxed))) == b"over tls"
        # an unknown CA (system CAs) is refused
        with pytest.raises(BrokerError, match="cannot connect"):
            run_async(round_trip(MqttBroker(proc.url, tls=TlsOptions(), request_timeout_s=3)))
    gc.collect()


def test_plain_client_against_tls_listener_fails_cleanly(pki: Path) -> None:
    require_mosquitto()
    with running_mosquitto(tls=listener(pki, require_certificate=False)) as proc:
        plain = MqttBroker(proc.url.replace("mqtts://", "mqtt://"), request_timeout_s=2)
        with pytest.raises(BrokerError):
            run_async(round_trip(plain))
    assert isinstance(proc, MosquittoProcess)
