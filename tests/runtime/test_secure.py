"""The secure deployment of the runtime: ``sil --secure`` end to end (TLS, a user and certificate per process,
per-agent ACLs, HMAC-signed commands), the plant's own user and rights, the operator's signing, and the
gateway's security settings (errors name the field)."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from heron_edge.brokers import InMemoryBroker
from heron_edge.errors import BrokerError, ConfigError
from heron_edge.messages import (
    ClockBody,
    PriceBody,
    SetpointBody,
    TelemetryBody,
    agent_topic,
    command_topic,
    decode,
    make_envelope,
)
from heron_edge.runtime.config import parse_gateway_config
from heron_edge.runtime.secure import COMMAND_KEYS_ENV, PASSWORD_ENV, SecureSite, SigningBroker, signer_from_env
from heron_edge.security import CommandGuard, new_key
from heron_edge.security.auth import CommandRejected
from heron_edge.security.launch import running_site_mosquitto
from tests.conftest import require_mosquitto, run_async


@pytest.mark.mqtt
@pytest.mark.modbus
@pytest.mark.slow
def test_sil_secure_day_matches_centralized(tmp_path: Path) -> None:
    require_mosquitto()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "heron_edge.cli", "sil", "--secure", "--days", "1", "--protocol",
                             "setpoint", "--protocol", "p2p_trading", "--workdir", str(tmp_path), "--timeout-s", "90"],
                            capture_output=True, text=True, timeout=150, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SIL vs centralized (24 vs 24 steps): MATCH" in result.stdout
    stats = json.loads(next(line for line in result.stdout.splitlines() if line.startswith('{"secure"')))
    assert stats["secure"] is True
    for name, agent in stats["agents"].items():
        assert agent["failsafe_entries"] == 0, name
        assert agent["cmd_accepted"] == 24 and agent["cmd_rejected"] == 0, name  # every setpoint signed and verified
    conf = (tmp_path / "site" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "require_certificate true" in conf and "listener" in conf
    creds = json.loads((tmp_path / "site" / "credentials.json").read_text())
    assert set(creds["users"]) == {"mg1", "mg2", "mg3", "system_operator", "plant"}
    secrets = [u["password"] for u in creds["users"].values()] + [u["command_key"] for u in creds["users"].values()
                                                                    if u.get("command_key")]
    for path in tmp_path.glob("agent-*.toml"):  # configs name environment variables, never hold secrets
        text = path.read_text()
        assert 'url = "mqtts://127.0.0.1:' in text and "password_env" in text and "command_key_env" in text
        assert not any(secret in text for secret in secrets), path
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps  # mosquitto and every process we started are gone


@pytest.mark.mqtt
def test_plant_user_has_exactly_the_clock_rights(tmp_path: Path) -> None:
    """The plant announces the clock and its meter, reads statuses; it cannot price, command or trade."""
    require_mosquitto()
    site = SecureSite.generate(tmp_path / "site", site="s", agents=["mg1", "mg2"], operator="op", plant="plant")
    acl = (tmp_path / "site" / "acl").read_text()
    assert "user plant\ntopic write heron/s/plant/+\ntopic deny heron/s/plant/cmd\n" in acl  # its own topics only
    assert site.users["plant"]["command_key"] is None and not site.users["plant"]["command_keys"]

    def broker(user: str):
        from heron_edge.security import load_credentials

        return load_credentials(tmp_path / "site" / "credentials.json").broker(user, site.url, request_timeout_s=5.0)

    async def scenario() -> None:
        plant, op = broker("plant"), broker("op")
        await plant.connect()
        await op.connect()
        seen = await op.subscribe("heron/s/#")
        await plant.publish(agent_topic("s", "plant", "clock"), make_envelope("plant", ClockBody(step=1), step=1))
        await plant.publish(agent_topic("s", "plant", "meter"), make_envelope("plant", TelemetryBody(values={}), step=1))
        for topic, body in ((agent_topic("s", "op", "price"), PriceBody(price_usd_per_mwh=1.0)),
                            (command_topic("s", "mg1", "setpoint"), SetpointBody(p_mw=1.0)),
                            (agent_topic("s", "mg1", "done"), ClockBody(step=1, done=True)),
                            (agent_topic("s", "mg1", "telemetry"), TelemetryBody(values={}))):
            with pytest.raises(BrokerError, match="Not authorized"):
                await plant.publish(topic, make_envelope("plant", body, step=1))
        await asyncio.sleep(0.3)
        topics = [d.topic for d in seen.drain()]
        assert topics == [agent_topic("s", "plant", "clock"), agent_topic("s", "plant", "meter")]
        await plant.close()
        await op.close()

    with running_site_mosquitto(site.conf, port=site.port):
        run_async(scenario(), timeout=30)


def test_operator_signs_commands_only(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = {"mg1": new_key(), "mg2": new_key()}
    monkeypatch.setenv(COMMAND_KEYS_ENV, json.dumps({a: k.hex() for a, k in keys.items()}))
    signer = signer_from_env()
    assert signer is not None

    async def scenario() -> None:
        inner = InMemoryBroker()
        broker = SigningBroker(inner, signer)
        await broker.connect()
        sub = await inner.subscribe("heron/s/#")
        await broker.publish(command_topic("s", "mg2", "setpoint"),
                             make_envelope("op", SetpointBody(p_mw=0.2), step=3, recipient="mg2", ttl_s=30))
        await broker.publish(agent_topic("s", "op", "price"), make_envelope("op", PriceBody(price_usd_per_mwh=5.0), step=3))
        command, price = sub.drain()
        assert decode(price.payload).mac is None and broker.signed == 1
        CommandGuard("mg2", "op", key=keys["mg2"]).check_payload(command.payload, topic=command.topic)
        with pytest.raises(CommandRejected, match="bad_mac"):
            CommandGuard("mg2", "op", key=keys["mg1"]).check_payload(command.payload, topic=command.topic)
        await broker.close()

    run_async(scenario())
    monkeypatch.setenv(COMMAND_KEYS_ENV, "[1, 2]")
    with pytest.raises(ConfigError, match=COMMAND_KEYS_ENV):
        signer_from_env()


def _secure_config(tmp_path: Path) -> dict:
    from tests.runtime.test_protocols import _config

    data = _config(["setpoint"])
    data["broker"] = {"url": "mqtts://broker.example:8883", "username": "mg2", "password_env": "T_PW",
                      "tls": {"ca_file": str(tmp_path / "ca.crt"), "cert_file": str(tmp_path / "mg2.crt"),
                              "key_file": str(tmp_path / "mg2.key"), "check_hostname": True}}
    data["command_key_env"] = "T_KEY"
    return data


def test_gateway_security_settings_name_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from heron_edge.runtime.gateway import make_broker

    data = _secure_config(tmp_path)
    config = parse_gateway_config(data)
    monkeypatch.delenv("T_KEY", raising=False)
    with pytest.raises(ConfigError, match="command_key_env: environment variable T_KEY"):
        config.command_key()
    monkeypatch.setenv("T_KEY", "abcd")
    with pytest.raises(ConfigError, match="command_key_env .*at least 16 bytes"):
        config.command_key()
    key = new_key()
    monkeypatch.setenv("T_KEY", key.hex())
    assert config.command_key() == key
    monkeypatch.setenv("T_PW", "secret")
    with pytest.raises(ConfigError, match="broker.tls: TLS options"):  # the CA file does not exist
        make_broker(config)
    data["broker"]["tls"] = {"cert_file": "x.crt"}
    with pytest.raises(ConfigError, match="broker.tls: .*cert_file and key_file go together"):
        parse_gateway_config(data)
    data["broker"]["tls"] = {"check_hostname": False}
    data["broker"]["url"] = "mqtt://broker.example:1883"
    with pytest.raises(ConfigError, match="broker: .*tls settings need an mqtts:// url"):
        parse_gateway_config(data)


def test_gateway_refuses_plaintext_to_a_remote_broker_unless_opted_in(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    from heron_edge.runtime.gateway import make_broker

    data = _secure_config(tmp_path)
    data["broker"] = {"url": "mqtt://10.1.2.3:1883"}
    with pytest.raises(ConfigError, match="plaintext"):
        make_broker(parse_gateway_config(data))
    data["broker"]["allow_insecure"] = True
    assert make_broker(parse_gateway_config(data)).url == "mqtt://10.1.2.3:1883"


def test_secure_example_config_loads() -> None:
    from heron_edge.runtime.config import load_gateway_config

    config = load_gateway_config(Path(__file__).resolve().parents[2] / "examples" / "gateway-secure.toml")
    assert config.broker.url.startswith("mqtts://") and config.broker.tls is not None
    assert config.broker.tls.cert_file and config.broker.tls.check_hostname
    assert config.broker.password_env == PASSWORD_ENV and config.command_key_env == "HERON_COMMAND_KEY"
    assert config.coordination is not None and config.coordination.protocols == ["setpoint", "p2p_trading"]
