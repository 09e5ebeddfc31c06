"""broker-config: the generated files, their validation, the CLI, and the insecure-connection rule."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from heron_edge.brokers import MqttBroker, TlsOptions
from heron_edge.brokers.base import MAX_PACKET_BYTES
from heron_edge.brokers.mqtt import is_loopback_host
from heron_edge.cli import main
from heron_edge.errors import ConfigError
from heron_edge.security import BrokerSiteConfig, acl_text, load_credentials, mosquitto_conf_text, write_broker_config
from tests.security.conftest import site_config


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_acl_lets_each_identity_write_only_its_own_topics_and_the_operator_the_commands() -> None:
    acl = acl_text(BrokerSiteConfig(site="s", agents=("mg1", "mg2"), operator="op", plant="pl"))
    blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in acl.split("\n\n") if b.startswith("user ")}
    assert list(blocks) == ["user mg1", "user mg2", "user op", "user pl"]
    assert blocks["user mg1"] == ["topic write heron/s/mg1/+", "topic deny heron/s/mg1/cmd",
                                  "topic read heron/s/+/+", "topic read heron/s/mg1/cmd/+"]
    assert blocks["user op"] == ["topic write heron/s/op/+", "topic deny heron/s/op/cmd",
                                 "topic write heron/s/+/cmd/+", "topic read heron/s/+/+"]
    assert blocks["user pl"] == ["topic write heron/s/pl/+", "topic deny heron/s/pl/cmd", "topic read heron/s/+/+"]
    # only the operator writes commands; nobody writes a topic of another identity
    writes = [line for block in blocks.values() for line in block if line.startswith("topic write")]
    assert [w for w in writes if "cmd" in w] == ["topic write heron/s/+/cmd/+"]
    # nothing for anonymous clients or unknown users: every topic line sits in a user block
    assert all(not line.startswith(("topic", "pattern")) for line in acl.split("user ")[0].splitlines())
    assert "bus" not in acl


def test_mosquitto_conf_is_tls_only_authenticated_nodelay_and_bounded() -> None:
    cfg = BrokerSiteConfig(site="s", agents=("mg1",), port=8884, bind_address="10.0.0.2")
    conf = mosquitto_conf_text(cfg, directory=Path("/etc/mosquitto/heron")).splitlines()
    for line in ["allow_anonymous false", "set_tcp_nodelay true", "listener 8884 10.0.0.2",
                 "password_file /etc/mosquitto/heron/passwd", "acl_file /etc/mosquitto/heron/acl",
                 "cafile /etc/mosquitto/heron/ca.crt", "certfile /etc/mosquitto/heron/server.crt",
                 "keyfile /etc/mosquitto/heron/server.key", "require_certificate false",
                 "use_username_as_clientid true", f"max_packet_size {MAX_PACKET_BYTES}"]:
        assert line in conf
    assert sum(line.startswith("listener") for line in conf) == 1  # no plaintext listener
    assert not any(line.startswith("use_identity_as_username") for line in conf)
    # with client certificates, the certificate's CN is the identity
    with_certs = mosquitto_conf_text(cfg.model_copy(update={"require_certificate": True}), directory=Path("/x"))
    assert {"require_certificate true", "use_identity_as_username true"} <= set(with_certs.splitlines())


@pytest.mark.parametrize(
    "overrides",
    [{"agents": ()}, {"agents": ("mg1", "mg1")}, {"agents": ("mg/1",)}, {"agents": ("+",)}, {"site": "a b"},
     {"agents": ("a:b",)}, {"operator": "mg1"}, {"plant": "mg2"}, {"plant": "#"}, {"port": 0},
     {"agents": ("cmd",)}, {"operator": "cmd"}, {"plant": "cmd"}, {"agent_bus_writes": ("clock",)}, {"unknown": 1}],
)
def test_config_is_validated(overrides: dict[str, object]) -> None:
    fields: dict[str, object] = {"site": "s", "agents": ("mg1", "mg2"), **overrides}
    with pytest.raises(ValidationError):
        BrokerSiteConfig(**fields)  # type: ignore[arg-type]


def test_cmd_is_no_identity_but_may_name_a_site() -> None:
    """The topic scheme reserves the id cmd (the command level); a site named cmd is unambiguous."""
    with pytest.raises(ValidationError, match="reserved"):
        BrokerSiteConfig(site="s", agents=("cmd",))
    acl = acl_text(BrokerSiteConfig(site="cmd", agents=("mg1",)))
    assert "user mg1\ntopic write heron/cmd/mg1/+\ntopic deny heron/cmd/mg1/cmd\n" in acl


def test_written_files_hash_passwords_and_keep_secrets_private(tmp_path: Path) -> None:
    files = write_broker_config(site_config(8883), tmp_path, self_signed_ca=True, passwords={"mg1": "pw-of-mg1"})
    passwd = files.password_file.read_text()
    users = [line.split(":", 1)[0] for line in passwd.splitlines()]
    assert users == ["mg1", "mg2", "mg3", "system_operator"]
    assert "pw-of-mg1" not in passwd and all("$7$" in line for line in passwd.splitlines())  # mosquitto_passwd's hash
    for private in [files.password_file, files.credentials_file, tmp_path / "server.key", tmp_path / "ca.key",
                    tmp_path / "mg1.key"]:
        assert mode(private) == 0o600, private
    creds = load_credentials(files.credentials_file)
    assert creds == files.credentials
    assert creds.user("mg1").password == "pw-of-mg1"
    assert len({creds.user(a).password for a in creds.users}) == 4
    # the operator holds every agent's command key, each agent only its own
    assert creds.user("system_operator").command_keys == {a: creds.user(a).command_key for a in ("mg1", "mg2", "mg3")}
    assert creds.user("mg1").command_keys == {}
    assert Path(creds.user("mg1").cert_file or "").exists() and Path(creds.ca_file).exists()
    with pytest.raises(ConfigError, match="refusing"):
        write_broker_config(site_config(8883), tmp_path)
    with pytest.raises(ConfigError, match="unknown users"):
        write_broker_config(site_config(8883), tmp_path / "other", passwords={"mallory": "x"})
    with pytest.raises(ConfigError, match="no credentials"):
        creds.user("mallory")
    with pytest.raises(ConfigError, match="no command key"):
        creds.guard("system_operator")


def test_cli_writes_a_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "site"
    assert main(["broker-config", "--site", "s", "--agents", "mg1,mg2,mg3", "--out", str(out), "--self-signed-ca",
                 "--config-dir", "/etc/mosquitto/heron"]) == 0
    printed = capsys.readouterr().out
    assert "credentials.json" in printed and "mosquitto -c" in printed
    assert {p.name for p in out.iterdir()} >= {"mosquitto.conf", "acl", "passwd", "credentials.json", "ca.crt",
                                               "server.crt", "server.key", "mg1.crt", "system_operator.key"}
    conf = (out / "mosquitto.conf").read_text().splitlines()
    assert "password_file /etc/mosquitto/heron/passwd" in conf
    # every user got a certificate: required by default, and its CN is the identity
    assert {"require_certificate true", "use_identity_as_username true"} <= set(conf)
    assert load_credentials(out / "credentials.json").ca_file == "/etc/mosquitto/heron/ca.crt"
    assert main(["broker-config", "--site", "s", "--agents", "mg1", "--out", str(out)]) == 2  # no silent overwrite
    assert main(["broker-config", "--site", "s/x", "--agents", "mg1", "--out", str(tmp_path / "bad")]) == 2
    assert "site" in capsys.readouterr().err
    # opting out with --self-signed-ca, and the default without it: passwords only
    for extra, name in [(["--self-signed-ca", "--no-require-certificate"], "opt-out"), ([], "own-ca")]:
        assert main(["broker-config", "--site", "s", "--agents", "mg1", "--out", str(tmp_path / name), *extra]) == 0
        conf = (tmp_path / name / "mosquitto.conf").read_text().splitlines()
        assert "require_certificate false" in conf and "use_identity_as_username true" not in conf


def test_insecure_connections_to_other_hosts_are_an_explicit_opt_in() -> None:
    for host in ["127.0.0.1", "127.5.0.1", "localhost", "[::1]"]:
        assert is_loopback_host(host.strip("[]"))
        MqttBroker(f"mqtt://{host}:1883")  # loopback: plaintext, anonymous, no opt-in needed (tests, SIL)
    for host in ["broker.site.lan", "10.0.0.2", "[fe80::1]", "localhost.evil.example", "0.0.0.0"]:
        assert not is_loopback_host(host.strip("[]"))
        with pytest.raises(ConfigError, match="plaintext MQTT to a non-loopback host.*allow_insecure=True"):
            MqttBroker(f"mqtt://{host}:1883")
        with pytest.raises(ConfigError, match="plaintext"):
            MqttBroker(f"mqtt://{host}:1883", username="mg1", password="pw")  # the password would travel in clear
        with pytest.raises(ConfigError, match="no authentication"):
            MqttBroker(f"mqtts://{host}:8883", tls=TlsOptions())
        MqttBroker(f"mqtt://{host}:1883", allow_insecure=True)
        MqttBroker(f"mqtts://{host}:8883", tls=TlsOptions(), allow_insecure=True)
        MqttBroker(f"mqtts://{host}:8883", username="mg1", password="pw", tls=TlsOptions())
