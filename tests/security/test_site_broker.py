"""The generated site configuration, enforced by a real Mosquitto: authentication, TLS, the per-identity ACL,
client id = username, certificate CN = username, and the packet size limit."""
from __future__ import annotations

import gc
import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from heron_edge.brokers import MqttBroker, Subscription, TlsOptions
from heron_edge.brokers.base import MAX_PACKET_BYTES
from heron_edge.cli import main
from heron_edge.errors import BrokerError
from heron_edge.messages import SetpointBody, TelemetryBody, encode, make_envelope
from heron_edge.security import CommandRejected, load_credentials
from heron_edge.security.certs import make_ca
from heron_edge.security.launch import free_port, running_site_mosquitto
from tests.conftest import require_mosquitto, run_async
from tests.security.conftest import OPERATOR, PLANT, SITE, Site, _serve, raw_client

pytestmark = pytest.mark.mqtt

# paho 2.1 leaves the socket of a failed TLS handshake to the garbage collector (see tests/brokers/test_mqtt_tls.py)
paho_handshake_leak = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning", "ignore::ResourceWarning"
)


def topic(who: str, kind: str) -> str:
    """``heron/s1/{who}/{kind}``: every topic names its sender."""
    return f"heron/{SITE}/{who}/{kind}"


def cmd(agent: str, kind: str) -> str:
    """``heron/s1/{agent}/cmd/{kind}``: a command to ``agent`` (written by the operator only)."""
    return f"heron/{SITE}/{agent}/cmd/{kind}"


async def connect_and_close(broker: MqttBroker) -> None:
    async with broker:
        await broker.publish(topic("mg1", "telemetry"), b"x")


async def only_sentinel(watch: Subscription, sentinel: str) -> list[str]:
    """Topics received up to and including ``sentinel``'s. One publisher, one subscriber: MQTT keeps their order,
    so a message the broker had forwarded before the sentinel would be among them."""
    topics = [(await watch.get(timeout=5)).topic]
    while topics[-1] != sentinel:
        topics.append((await watch.get(timeout=5)).topic)
    return topics


def test_every_user_connects_with_its_credentials(site: Site) -> None:
    creds = site.files.credentials
    assert set(creds.users) == {"mg1", "mg2", "mg3", OPERATOR, PLANT}
    for user in creds.users:
        run_async(_status_round_trip(creds.broker(user, site.url), user))


async def _status_round_trip(broker: MqttBroker, user: str) -> None:
    async with broker:
        status = topic(user, "status")
        sub = await broker.subscribe(status)
        await broker.publish(status, b"online")
        assert (await sub.get(timeout=5)).payload == b"online"


def test_anonymous_connection_refused(site: Site) -> None:
    anonymous = MqttBroker(site.url, tls=TlsOptions(ca_file=site.files.credentials.ca_file), request_timeout_s=3)
    with pytest.raises(BrokerError, match="refused the connection: Not authorized"):
        run_async(connect_and_close(anonymous))


def test_wrong_password_and_unknown_user_refused(site: Site) -> None:
    tls = site.files.credentials.tls_options("mg1")
    for user, password in [("mg1", "not-the-password"), ("mg1", site.files.credentials.user("mg2").password),
                           ("intruder", "whatever")]:
        broker = MqttBroker(site.url, username=user, password=password, tls=tls, request_timeout_s=3)
        with pytest.raises(BrokerError, match="refused the connection"):
            run_async(connect_and_close(broker))


@paho_handshake_leak
def test_tls_with_the_wrong_ca_fails_to_connect(site: Site, tmp_path: Path) -> None:
    other = make_ca("some other CA")
    other.write_ca(tmp_path / "other-ca.crt")
    creds = site.files.credentials
    wrong_ca = MqttBroker(site.url, username="mg1", password=creds.user("mg1").password,
                          tls=TlsOptions(ca_file=str(tmp_path / "other-ca.crt")), request_timeout_s=3)
    with pytest.raises(BrokerError, match="cannot connect.*CERTIFICATE_VERIFY_FAILED"):
        run_async(connect_and_close(wrong_ca))
    # plaintext MQTT on the TLS port does not get in either
    plain = MqttBroker(site.url.replace("mqtts://", "mqtt://"), username="mg1", password=creds.user("mg1").password,
                       request_timeout_s=2)
    with pytest.raises(BrokerError):
        run_async(connect_and_close(plain))
    gc.collect()


def test_mg1_cannot_command_mg2_but_the_operator_can(site: Site) -> None:
    creds = site.files.credentials
    guard = creds.guard("mg2")
    signer = creds.signer()

    async def scenario() -> None:
        async with creds.broker("mg1", site.url) as mg1, creds.broker("mg2", site.url) as mg2, \
                creds.broker(OPERATOR, site.url) as op:
            commands = await mg2.subscribe(cmd("mg2", "+"))
            reports = await mg2.subscribe(topic("mg1", "telemetry"))
            forged = make_envelope(OPERATOR, SetpointBody(p_mw=9.9), step=1, recipient="mg2", ttl_s=60)
            # mg1 even holds a validly signed setpoint (say, captured earlier): the broker still refuses it
            with pytest.raises(BrokerError, match="Not authorized"):
                await mg1.publish(cmd("mg2", "setpoint"), encode(signer.sign(forged)))
            # a sentinel mg1 may publish, sent after the forbidden one: once mg2 has it, the setpoint would have
            # arrived before it had the broker forwarded it (one publisher, one subscriber: ordered)
            await mg1.publish(topic("mg1", "telemetry"),
                              encode(make_envelope("mg1", TelemetryBody(values={"x": 1.0}), step=1)))
            assert (await reports.get(timeout=5)).topic == topic("mg1", "telemetry")
            assert commands.drain() == []
            # the operator's signed setpoint arrives, and the guard applies it
            real = signer.sign(make_envelope(OPERATOR, SetpointBody(p_mw=0.5), step=1, recipient="mg2", ttl_s=60))
            await op.publish(cmd("mg2", "setpoint"), encode(real))
            delivery = await commands.get(timeout=5)
            applied = guard.check_payload(delivery.payload, topic=delivery.topic)
            assert applied.body == SetpointBody(p_mw=0.5)
            # the same bytes again (a replay by anyone who may write the topic) are refused
            await op.publish(cmd("mg2", "setpoint"), encode(real))
            again = await commands.get(timeout=5)
            with pytest.raises(CommandRejected) as rejected:
                guard.check_payload(again.payload, topic=again.topic)
            assert rejected.value.reason == "replay_id"

    run_async(scenario())
    assert guard.stats.accepted == 1 and guard.stats.rejected == {"replay_id": 1}


# every topic someone other than mg1 owns, and topics outside the scheme: none may carry mg1's words
NOT_MG1S = [topic("mg2", "telemetry"), topic(OPERATOR, "price"), topic(PLANT, "clock"), topic("mg2", "consensus"),
            topic(OPERATOR, "clearing"), topic("mg2", "done"), topic(OPERATOR, "status"), topic(PLANT, "meter"),
            cmd("mg2", "setpoint"), cmd("mg1", "setpoint"), topic("mg1", "cmd"), f"heron/{SITE}/mg1/extra/level",
            f"heron/{SITE}/bus/price", "elsewhere/x", "heron/other_site/mg1/telemetry"]


def test_each_identity_writes_only_its_own_topics(site: Site) -> None:
    creds = site.files.credentials

    async def scenario() -> None:
        async with creds.broker("mg1", site.url) as mg1, creds.broker(OPERATOR, site.url) as op:
            watch = await op.subscribe("#")  # accepted; the broker filters per message what the operator may read
            commands = await mg1.subscribe(cmd("mg1", "+"))
            for forbidden in NOT_MG1S:
                with pytest.raises(BrokerError, match="Not authorized"):
                    await mg1.publish(forbidden, b"forged")  # QoS 1: refused in the PUBACK
                await mg1.publish(forbidden, b"forged", qos=0)  # QoS 0: silently dropped
            own = [topic("mg1", kind) for kind in ("status", "telemetry", "action", "consensus", "done", "market")]
            for mine in own:
                await mg1.publish(mine, b"own")
            assert await only_sentinel(watch, own[-1]) == own
            # the operator commands mg1, and only mg1 reads it
            await op.publish(cmd("mg1", "setpoint"), b"setpoint for mg1")
            delivery = await commands.get(timeout=5)
            assert (delivery.topic, delivery.payload) == (cmd("mg1", "setpoint"), b"setpoint for mg1")
            assert watch.drain() == []  # the operator does not read commands back

    run_async(scenario())


def test_the_plant_and_the_operator_write_only_their_own(site: Site) -> None:
    creds = site.files.credentials

    async def scenario() -> None:
        async with creds.broker(PLANT, site.url) as plant, creds.broker(OPERATOR, site.url) as op, \
                creds.broker("mg1", site.url) as mg1:
            watch = await mg1.subscribe(f"heron/{SITE}/#")
            for writer, forbidden in [(plant, topic(OPERATOR, "price")), (plant, cmd("mg1", "setpoint")),
                                      (plant, topic("mg1", "done")), (op, topic(PLANT, "clock")),
                                      (op, topic("mg1", "telemetry")), (op, topic("mg1", "cmd"))]:
                with pytest.raises(BrokerError, match="Not authorized"):
                    await writer.publish(forbidden, b"forged")
            await plant.publish(topic(PLANT, "clock"), b"step 1")
            await op.publish(topic(OPERATOR, "price"), b"42")
            await op.publish(cmd("mg1", "setpoint"), b"setpoint")
            received = {(await watch.get(timeout=5)).topic for _ in range(3)}
            assert received == {topic(PLANT, "clock"), topic(OPERATOR, "price"), cmd("mg1", "setpoint")}

    run_async(scenario())


def test_agents_read_the_site_and_only_their_own_commands(site: Site) -> None:
    creds = site.files.credentials

    async def scenario() -> None:
        async with creds.broker("mg1", site.url) as mg1, creds.broker("mg2", site.url) as mg2, \
                creds.broker(OPERATOR, site.url) as op:
            everything = await mg1.subscribe("heron/#")  # accepted; the broker filters per message
            await op.publish(cmd("mg2", "setpoint"), b"for mg2 only")
            await op.publish(cmd("mg1", "setpoint"), b"for mg1")
            await mg2.publish(topic("mg2", "action"), b"peer action")
            await mg2.publish(topic("mg2", "telemetry"), b"peer telemetry")
            await op.publish(topic(OPERATOR, "price"), b"price")
            topics = [(await everything.get(timeout=5)).topic for _ in range(4)]
            # mg2's command never reaches mg1; the site's 4-level topics all do
            expected = [cmd("mg1", "setpoint"), topic("mg2", "action"), topic("mg2", "telemetry"),
                        topic(OPERATOR, "price")]
            assert sorted(topics) == sorted(expected)
            await op.publish(topic(OPERATOR, "status"), b"sentinel")
            assert await only_sentinel(everything, topic(OPERATOR, "status")) == [topic(OPERATOR, "status")]

    run_async(scenario())


def test_nobody_takes_over_another_identitys_session(site: Site) -> None:
    """The broker replaces the client id by the username: mg2 connecting with mg1's client id is just mg2."""
    creds = site.files.credentials

    async def scenario() -> None:
        async with creds.broker("mg1", site.url, client_id=f"heron-{SITE}-mg1") as mg1, \
                creds.broker(OPERATOR, site.url) as op:
            commands = await mg1.subscribe(cmd("mg1", "+"))
            for stolen_id in (f"heron-{SITE}-mg1", "mg1"):
                async with raw_client(site.broker.port, client_id=stolen_id, username="mg2",
                                      password=creds.user("mg2").password, tls=creds.tls_options("mg2")) as attacker:
                    # a takeover would have disconnected mg1 before the attacker's CONNACK; mg1 still gets this
                    await op.publish(cmd("mg1", "setpoint"), stolen_id.encode())
                    assert (await commands.get(timeout=5)).payload == stolen_id.encode()
                    assert mg1.connected and mg1.reconnects == 0
                    assert not attacker.disconnected.is_set()
            assert mg1.connected and mg1.reconnects == 0

    run_async(scenario())


def test_oversized_packets_are_dropped_and_their_sender_disconnected(site: Site) -> None:
    creds = site.files.credentials

    async def scenario() -> None:
        async with creds.broker("mg1", site.url) as mg1, creds.broker(OPERATOR, site.url) as op:
            watch = await mg1.subscribe(f"heron/{SITE}/+/+")
            with pytest.raises(ValueError, match="over the limit"):  # MqttBroker refuses to send it at all
                await op.publish(topic(OPERATOR, "price"), bytes(MAX_PACKET_BYTES))
            async with raw_client(site.broker.port, client_id="big", username="mg2",
                                  password=creds.user("mg2").password, tls=creds.tls_options("mg2")) as attacker:
                attacker.client.publish(topic("mg2", "telemetry"), bytes(1_000_000), qos=1)
                await attacker.wait_disconnected()  # the broker hung up on it (packet too large)
            await op.publish(topic(OPERATOR, "price"), b"sentinel")
            assert await only_sentinel(watch, topic(OPERATOR, "price")) == [topic(OPERATOR, "price")]
            assert mg1.connected and op.connected and mg1.reconnects == 0 and mg1.oversized == 0

    run_async(scenario())


@paho_handshake_leak
def test_the_certificate_decides_the_identity(cert_site: Site) -> None:
    """With require_certificate the client certificate's CN is the username: mg1's password with mg2's
    certificate is mg2, and a certificate alone is enough."""
    site = cert_site
    creds = site.files.credentials
    mg1_password = creds.user("mg1").password

    async def scenario() -> None:
        async with creds.broker(OPERATOR, site.url) as op:
            watch = await op.subscribe(f"heron/{SITE}/+/+")
            mixed = MqttBroker(site.url, username="mg1", password=mg1_password, tls=creds.tls_options("mg2"))
            async with mixed:
                for forbidden in (topic("mg1", "telemetry"), topic("mg1", "status")):
                    with pytest.raises(BrokerError, match="Not authorized"):
                        await mixed.publish(forbidden, b"as mg1?")
                await mixed.publish(topic("mg2", "telemetry"), b"as mg2")  # what mg2's certificate may write
                assert await only_sentinel(watch, topic("mg2", "telemetry")) == [topic("mg2", "telemetry")]
            cert_only = MqttBroker(site.url, tls=creds.tls_options("mg3"))  # no username, no password: it is mg3
            async with cert_only:
                await cert_only.publish(topic("mg3", "telemetry"), b"as mg3")
                assert await only_sentinel(watch, topic("mg3", "telemetry")) == [topic("mg3", "telemetry")]

    run_async(scenario())
    no_cert = MqttBroker(site.url, username="mg1", password=mg1_password, tls=TlsOptions(ca_file=creds.ca_file),
                         request_timeout_s=3)
    with pytest.raises(BrokerError):
        run_async(connect_and_close(no_cert))
    # the server's certificate (same CA, serverAuth only) is no client identity
    server_cert = TlsOptions(ca_file=creds.ca_file, cert_file=str(site.files.directory / "server.crt"),
                             key_file=str(site.files.directory / "server.key"))
    with pytest.raises(BrokerError):
        run_async(connect_and_close(MqttBroker(site.url, tls=server_cert, request_timeout_s=3)))
    gc.collect()


def test_server_certificate_names_localhost_and_the_loopback_ip(site: Site) -> None:
    creds = site.files.credentials
    by_name = site.url.replace("127.0.0.1", "localhost")
    run_async(_status_round_trip(creds.broker("mg3", by_name), "mg3"))


# ---------------------------------------------------------------------------------------------------------
# the read-only monitor, and the generated files started as a field engineer does (root, user mosquitto)
# ---------------------------------------------------------------------------------------------------------

MONITOR = "monitor"


@pytest.fixture(scope="module")
def monitor_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The site of the ``site`` fixture plus the read-only user ``monitor``, on its own Mosquitto."""
    yield from _serve(tmp_path_factory, "monitor_site", monitor=MONITOR)


def test_the_monitor_reads_the_whole_site_and_writes_nothing(monitor_site: Site) -> None:
    site = monitor_site
    creds = site.files.credentials
    assert creds.monitor == MONITOR
    assert creds.user(MONITOR).command_key is None and creds.user(MONITOR).command_keys == {}

    async def scenario() -> None:
        async with creds.broker(MONITOR, site.url) as monitor, creds.broker("mg1", site.url) as mg1, \
                creds.broker("mg2", site.url) as mg2, creds.broker(OPERATOR, site.url) as op:
            everything = await monitor.subscribe(f"heron/{SITE}/#")
            watch = await mg2.subscribe("#")  # mg2 reads the site's 4-level topics and its own commands
            said = [(mg1, topic("mg1", "telemetry")), (mg1, topic("mg1", "status")), (op, topic(OPERATOR, "price")),
                    (op, cmd("mg1", "setpoint")), (op, cmd("mg2", "setpoint")), (mg2, topic("mg2", "market"))]
            for who, where in said:
                await who.publish(where, b"said")
            # everything the site says reaches the monitor, every agent's commands included
            assert sorted([(await everything.get(timeout=5)).topic for _ in said]) == sorted(w for _, w in said)
            assert sorted([(await watch.get(timeout=5)).topic for _ in range(5)]) == sorted(
                w for _, w in said if w != cmd("mg1", "setpoint"))
            forbidden = [topic(MONITOR, "status"), topic(MONITOR, "telemetry"), topic("mg2", "telemetry"),
                         topic(OPERATOR, "price"), topic(PLANT, "clock"), cmd("mg2", "setpoint"),
                         f"heron/{SITE}/{MONITOR}/x/y", "elsewhere/x", f"heron/other/{MONITOR}/status"]
            for where in forbidden:
                await monitor.publish(where, b"from the monitor", qos=0)  # silently dropped
            for where in forbidden:
                with pytest.raises(BrokerError, match="Not authorized"):
                    await monitor.publish(where, b"from the monitor")  # QoS 1: refused in the PUBACK
            # the last refusal was acknowledged after the broker handled every earlier packet of the monitor, so a
            # forwarded one would already sit before this sentinel in mg2's stream
            await op.publish(topic(OPERATOR, "status"), b"sentinel")
            assert await only_sentinel(watch, topic(OPERATOR, "status")) == [topic(OPERATOR, "status")]
            assert await only_sentinel(everything, topic(OPERATOR, "status")) == [topic(OPERATOR, "status")]

    run_async(scenario())


def _uid_of(pid: int) -> int:
    """The real uid of a running process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def _mosquitto_account() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("mosquitto")
    except KeyError:
        return None


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or _mosquitto_account() is None
                    or not Path("/proc/self/status").exists(),
                    reason="needs root, a 'mosquitto' user and /proc: mosquitto started by root drops to that user")
def test_the_generated_site_starts_as_documented_under_the_mosquitto_user(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/edge.md, step by step: 'heron-edge broker-config ... --self-signed-ca' run by root, then
    'mosquitto -c DIR/mosquitto.conf' started by root. Mosquitto drops to user mosquitto before it opens
    passwd, acl and server.key: the generator gave them to it, so the broker starts and enforces the site."""
    require_mosquitto()
    account = _mosquitto_account()
    assert account is not None
    base = Path(tempfile.mkdtemp(prefix="heron-field-site-"))  # not pytest's tmp dir: user mosquitto must enter it
    try:
        os.chmod(base, 0o711)
        out, port = base / "site", free_port()
        assert main(["broker-config", "--site", SITE, "--agents", "mg1,mg2", "--out", str(out), "--self-signed-ca",
                     "--port", str(port), "--bind", "127.0.0.1"]) == 0
        printed = capsys.readouterr().out
        assert "owner mosquitto (mode 0600)" in printed and f"run: sudo mosquitto -c {out / 'mosquitto.conf'}" in printed
        conf = (out / "mosquitto.conf").read_text()
        assert not any(line.startswith("user ") for line in conf.splitlines())  # mosquitto's own default user
        for name in ("passwd", "acl", "server.key"):
            info = (out / name).stat()
            assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (account.pw_uid, account.pw_gid, 0o600), name
        for secret in ("credentials.json", "ca.key", "mg1.key", f"{MONITOR}.key"):  # not the broker's business
            info = (out / secret).stat()
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o600), secret
        info = out.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, account.pw_gid, 0o750)
        creds = load_credentials(out / "credentials.json")
        with running_site_mosquitto(out / "mosquitto.conf", port=port) as broker:
            assert broker.pid is not None and _uid_of(broker.pid) == account.pw_uid  # it dropped to user mosquitto

            async def scenario() -> None:
                async with creds.broker(MONITOR, broker.url) as monitor, creds.broker("mg1", broker.url) as mg1:
                    watch = await monitor.subscribe(f"heron/{SITE}/#")
                    await mg1.publish(topic("mg1", "telemetry"), b"hello")
                    assert (await watch.get(timeout=5)).topic == topic("mg1", "telemetry")
                    with pytest.raises(BrokerError, match="Not authorized"):
                        await mg1.publish(topic("mg2", "telemetry"), b"forged")
                    with pytest.raises(BrokerError, match="Not authorized"):
                        await monitor.publish(topic(MONITOR, "status"), b"online")

            run_async(scenario())
    finally:
        shutil.rmtree(base, ignore_errors=True)
