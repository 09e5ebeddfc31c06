"""broker-config: the generated files, their validation, the CLI, and the insecure-connection rule."""
from __future__ import annotations

import os
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


def test_the_monitor_reads_the_site_and_writes_nothing_in_the_acl() -> None:
    cfg = BrokerSiteConfig(site="s", agents=("mg1", "mg2"), operator="op", monitor="watcher")
    assert cfg.users == ("mg1", "mg2", "op", "watcher")
    blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in acl_text(cfg).split("\n\n") if b.startswith("user ")}
    rules = [line for line in blocks["user watcher"] if not line.startswith("#")]
    assert rules == ["topic read heron/s/#"]  # no write line: Mosquitto denies every write
    assert blocks["user mg1"][0] == "topic write heron/s/mg1/+"  # the others unchanged
    for clash in [{"monitor": "mg1"}, {"monitor": "op"}, {"monitor": "pl", "plant": "pl"}, {"monitor": "cmd"},
                  {"monitor": "a/b"}]:
        with pytest.raises(ValidationError):
            BrokerSiteConfig(**{"site": "s", "agents": ("mg1",), "operator": "op", **clash})  # type: ignore[arg-type]


def test_cli_adds_a_read_only_monitor_and_names_mosquittos_user(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "site"
    assert main(["broker-config", "--site", "s", "--agents", "mg1,mg2", "--out", str(out), "--self-signed-ca"]) == 0
    assert "read-only monitor" in capsys.readouterr().out
    creds = load_credentials(out / "credentials.json")
    assert creds.monitor == "monitor" and set(creds.users) == {"mg1", "mg2", "system_operator", "monitor"}
    assert creds.user("monitor").command_key is None and creds.user("monitor").command_keys == {}
    assert "monitor" not in creds.user("system_operator").command_keys  # nobody commands it, it commands nobody
    assert Path(creds.user("monitor").cert_file or "").exists()  # certificates required: it has one (CN monitor)
    assert "user monitor\n" in (out / "acl").read_text()
    assert [line.split(":")[0] for line in (out / "passwd").read_text().splitlines()][-1] == "monitor"
    conf = (out / "mosquitto.conf").read_text().splitlines()
    assert not any(line.startswith("user ") for line in conf)  # mosquitto's default user unless told
    assert not any(".md" in line for line in conf)  # the broker host has no checkout: no pointers to documents
    assert main(["broker-config", "--site", "s", "--agents", "mg1", "--out", str(tmp_path / "quiet"), "--no-monitor",
                 "--run-as-user", "broker"]) == 0
    capsys.readouterr()
    assert load_credentials(tmp_path / "quiet" / "credentials.json").monitor is None
    assert "user broker" in (tmp_path / "quiet" / "mosquitto.conf").read_text().splitlines()
    assert "monitor" not in (tmp_path / "quiet" / "acl").read_text()


def test_files_mosquitto_reads_are_private_and_certificates_public_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        files = write_broker_config(site_config(8883, monitor="monitor"), tmp_path / "site", self_signed_ca=True)
    finally:
        os.umask(old)
    assert [p.name for p in files.broker_files] == ["passwd", "acl", "server.key"]
    for private in files.broker_files:
        assert mode(private) == 0o600, private  # Mosquitto 2.x warns about, later refuses, readable ones
    for public in ["ca.crt", "server.crt", "mg1.crt", "monitor.crt"]:
        assert mode(tmp_path / "site" / public) == 0o644, public  # the broker's user reads ca.crt and server.crt


def test_not_root_the_cli_prints_the_chown_to_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000, raising=False)
    out = tmp_path / "site"
    assert main(["broker-config", "--site", "s", "--agents", "mg1", "--out", str(out), "--self-signed-ca",
                 "--config-dir", "/etc/heron-broker"]) == 0
    printed = capsys.readouterr().out
    assert ("sudo chown mosquitto: /etc/heron-broker/passwd /etc/heron-broker/acl /etc/heron-broker/server.key"
            in printed)
    assert "run: sudo mosquitto -c /etc/heron-broker/mosquitto.conf" in printed
    assert main(["broker-config", "--site", "s", "--agents", "mg1", "--out", str(tmp_path / "b"),
                 "--self-signed-ca", "--run-as-user", "mqtt"]) == 0
    assert f"sudo chown mqtt: {tmp_path / 'b' / 'passwd'}" in capsys.readouterr().out


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
def test_as_root_the_files_mosquitto_reads_go_to_its_user(tmp_path: Path) -> None:
    import pwd

    files = write_broker_config(site_config(8883).model_copy(update={"run_as_user": "nobody"}), tmp_path / "site",
                                self_signed_ca=True)
    nobody = pwd.getpwnam("nobody")
    assert files.broker_owner == "nobody"
    for path in files.broker_files:
        assert (path.stat().st_uid, path.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid), path
    for path in [files.credentials_file, tmp_path / "site" / "ca.key", files.conf]:
        assert path.stat().st_uid == 0, path
    # an unknown user: nothing changes (mosquitto itself would refuse to start as it)
    other = write_broker_config(site_config(8883).model_copy(update={"run_as_user": "no-such-user-here"}),
                                tmp_path / "other", self_signed_ca=True)
    assert other.broker_owner is None and all(p.stat().st_uid == 0 for p in other.broker_files)
    # chown=False (a library caller that installs the files itself)
    kept = write_broker_config(site_config(8883), tmp_path / "kept", self_signed_ca=True, chown=False)
    assert kept.broker_owner is None and all(p.stat().st_uid == 0 for p in kept.broker_files)
