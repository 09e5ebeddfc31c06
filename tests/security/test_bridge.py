"""Many sites: the bridge ``broker-config --bridge-to`` writes, between two real Mosquitto processes on loopback
(a site broker and a central one, both TLS with passwords and ACLs). Statuses and the operator's summaries reach
the central broker, commands to the site's operator reach the site, and nothing else crosses either way."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from heron_edge.brokers import MqttBroker, TlsOptions
from heron_edge.cli import main
from heron_edge.security.broker_config import (
    BridgeConfig,
    SiteFiles,
    central_acl_text,
    hash_passwords,
    load_credentials,
    write_broker_config,
)
from heron_edge.security.certs import make_ca
from heron_edge.security.launch import free_port, running_site_mosquitto
from tests.conftest import require_mosquitto, run_async
from tests.security.conftest import OPERATOR, SITE, site_config
from tests.security.test_site_broker import only_sentinel

pytestmark = pytest.mark.mqtt
BRIDGE_USER = "s1-bridge"
FLEET = "fleet"


@dataclass(frozen=True)
class Fleet:
    site: SiteFiles
    site_url: str
    central_url: str
    central_ca: str
    fleet_password: str

    def fleet(self) -> MqttBroker:
        """The fleet's client on the central broker (reads and writes heron/#)."""
        return MqttBroker(self.central_url, username=FLEET, password=self.fleet_password,
                          tls=TlsOptions(ca_file=self.central_ca), request_timeout_s=10)


def _central_conf(directory: Path, port: int) -> Path:
    user = "user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"per_listener_settings false\n{user}allow_anonymous false\npassword_file {directory / 'passwd'}\n"
        f"acl_file {directory / 'acl'}\nset_tcp_nodelay true\npersistence false\n"
        f"listener {port} 127.0.0.1\ncafile {directory / 'ca.crt'}\ncertfile {directory / 'server.crt'}\n"
        f"keyfile {directory / 'server.key'}\ntls_version tlsv1.2\n")
    return conf


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_mosquitto()
    central_dir = tmp_path_factory.mktemp("central")
    central_port, site_port = free_port(), free_port()
    ca = make_ca("central CA")
    ca.write_ca(central_dir / "ca.crt")
    ca.issue_server("central", ["127.0.0.1", "localhost"], central_dir / "server.crt", central_dir / "server.key")
    bridge = BridgeConfig(url=f"mqtts://127.0.0.1:{central_port}", username=BRIDGE_USER, password="bridge-secret",
                          ca_file=central_dir / "ca.crt")
    site = write_broker_config(site_config(site_port, monitor="monitor", bridge=bridge),
                               tmp_path_factory.mktemp("site"), self_signed_ca=True)
    hash_passwords(central_dir / "passwd", {BRIDGE_USER: "bridge-secret", FLEET: "fleet-secret"})
    (central_dir / "acl").write_text(central_acl_text(site_config(site_port, bridge=bridge))
                                     + f"\nuser {FLEET}\ntopic readwrite heron/#\n")
    os.chmod(central_dir / "acl", 0o600)
    with running_site_mosquitto(_central_conf(central_dir, central_port), port=central_port) as central, \
            running_site_mosquitto(site.conf, port=site_port) as site_broker:
        yield Fleet(site, site_broker.url, central.url, str(central_dir / "ca.crt"), "fleet-secret")


def test_statuses_and_summaries_go_out_and_nothing_else(fleet: Fleet) -> None:
    creds = fleet.site.credentials

    async def main_() -> list[str]:
        async with fleet.fleet() as central, creds.broker("mg1", fleet.site_url) as mg1, \
                creds.broker(OPERATOR, fleet.site_url) as op:
            watch = await central.subscribe(f"heron/{SITE}/#")
            # the bridge connects on its own after the site broker starts: the retained status crosses once it is up
            await mg1.publish(f"heron/{SITE}/mg1/status", b"online", retain=True)
            while (await watch.get(timeout=20)).topic != f"heron/{SITE}/mg1/status":
                pass
            for kind in ("telemetry", "order", "consensus", "action"):  # per-agent traffic stays on the site
                await mg1.publish(f"heron/{SITE}/mg1/{kind}", b"x")
            await mg1.publish(f"heron/{SITE}/mg1/status", b"still online")
            seen = await only_sentinel(watch, f"heron/{SITE}/mg1/status")
            for kind in ("price", "clearing"):
                await op.publish(f"heron/{SITE}/{OPERATOR}/{kind}", b"x")
            await op.publish(f"heron/{SITE}/mg2/cmd/setpoint", b"x")  # the operator's commands stay on the site
            await op.publish(f"heron/{SITE}/{OPERATOR}/aggregates", b"means")
            return seen + await only_sentinel(watch, f"heron/{SITE}/{OPERATOR}/aggregates")

    seen = run_async(main_(), timeout=60)
    assert seen == [f"heron/{SITE}/mg1/status", f"heron/{SITE}/{OPERATOR}/aggregates"]


def test_commands_to_the_site_operator_come_in_and_nothing_else(fleet: Fleet) -> None:
    creds = fleet.site.credentials

    async def main_() -> tuple[list[str], bytes]:
        async with fleet.fleet() as central, creds.broker(OPERATOR, fleet.site_url) as op, \
                creds.broker("monitor", fleet.site_url) as monitor, creds.broker("mg1", fleet.site_url) as mg1:
            probe = await central.subscribe(f"heron/{SITE}/mg1/status")
            await mg1.publish(f"heron/{SITE}/mg1/status", b"up", retain=True)
            await probe.get(timeout=20)  # the bridge is up (its subscriptions were made when it connected)
            everything = await monitor.subscribe(f"heron/{SITE}/+/cmd/+")
            mine = await op.subscribe(f"heron/{SITE}/{OPERATOR}/cmd/+")
            await central.publish(f"heron/{SITE}/mg1/cmd/setpoint", b"forged")  # only the site operator commands agents
            await central.publish(f"heron/other/{OPERATOR}/cmd/limit", b"another site's")
            await central.publish(f"heron/{SITE}/{OPERATOR}/cmd/limit", b"import <= 2 MW")
            got = await mine.get(timeout=20)
            return await only_sentinel(everything, f"heron/{SITE}/{OPERATOR}/cmd/limit"), got.payload

    seen, payload = run_async(main_(), timeout=60)
    assert seen == [f"heron/{SITE}/{OPERATOR}/cmd/limit"] and payload == b"import <= 2 MW"


def test_the_cli_writes_the_bridge_and_the_central_acl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_mosquitto()
    out = tmp_path / "site"
    assert main(["broker-config", "--site", "s2", "--agents", "mg1,mg2", "--out", str(out), "--self-signed-ca",
                 "--bridge-to", "mqtts://central.example:8883"]) == 0
    conf = (out / "mosquitto.conf").read_text()
    assert "address central.example:8883" in conf and "bridge_insecure false" in conf
    assert "topic heron/s2/+/status out 1" in conf and "topic heron/s2/system_operator/cmd/+ in 1" in conf
    assert conf.count(" out 1") == 2 and conf.count(" in 1") == 1
    creds = load_credentials(out / "credentials.json")
    assert creds.bridge is not None and creds.bridge.username == "s2-bridge" and creds.bridge.password in conf
    assert (out / "mosquitto.conf").stat().st_mode & 0o077 == 0  # it holds the bridge's password
    assert "user s2-bridge\ntopic write heron/s2/+/status" in (out / "central-acl").read_text()
    assert "central-acl" in capsys.readouterr().out
    assert main(["broker-config", "--site", "s2", "--agents", "mg1", "--out", str(tmp_path / "x"),
                 "--bridge-to", "mqtt://central.example"]) == 2
    assert "must be mqtts://" in capsys.readouterr().err
    ca = make_ca("fleet CA")
    ca.write_ca(tmp_path / "fleet-ca.crt")
    ca.issue_client("s3-bridge", tmp_path / "b.crt", tmp_path / "b.key")
    out3 = tmp_path / "site3"
    assert main(["broker-config", "--site", "s3", "--agents", "mg1", "--out", str(out3), "--self-signed-ca",
                 "--bridge-to", "mqtts://10.0.0.5", "--bridge-ca", str(tmp_path / "fleet-ca.crt"),
                 "--bridge-cert", str(tmp_path / "b.crt"), "--bridge-key", str(tmp_path / "b.key")]) == 0
    conf3 = (out3 / "mosquitto.conf").read_text()
    assert f"bridge_cafile {out3 / 'central-ca.crt'}" in conf3 and "address 10.0.0.5:8883" in conf3
    assert f"bridge_keyfile {out3 / 'central-client.key'}" in conf3
    assert (out3 / "central-client.key").stat().st_mode & 0o077 == 0
    assert (out3 / "central-ca.crt").read_bytes() == (tmp_path / "fleet-ca.crt").read_bytes()
    assert main(["broker-config", "--site", "s4", "--agents", "mg1", "--out", str(tmp_path / "y"),
                 "--bridge-cert", str(tmp_path / "b.crt")]) == 2
    assert "need --bridge-to" in capsys.readouterr().err
