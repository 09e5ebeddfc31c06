"""The generated site configuration, enforced by a real Mosquitto: authentication, TLS, per-agent ACL."""
from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from heron_edge.brokers import MqttBroker, Subscription, TlsOptions
from heron_edge.errors import BrokerError
from heron_edge.messages import (
    PriceBody, SetpointBody, TelemetryBody, agent_topic, bus_topic, command_filter, command_topic, encode,
    make_envelope,
)
from heron_edge.security import CommandRejected
from heron_edge.security.certs import make_ca
from tests.conftest import require_mosquitto, run_async
from tests.security.conftest import OPERATOR, SITE, Site

pytestmark = pytest.mark.mqtt

# paho 2.1 leaves the socket of a failed TLS handshake to the garbage collector (see tests/brokers/test_mqtt_tls.py)
paho_handshake_leak = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning", "ignore::ResourceWarning"
)


async def connect_and_close(broker: MqttBroker) -> None:
    async with broker:
        await broker.publish(agent_topic(SITE, "mg1", "telemetry"), b"x")


def test_every_user_connects_with_its_credentials(site: Site) -> None:
    creds = site.files.credentials
    for user in creds.users:
        run_async(_status_round_trip(creds.broker(user, site.url), user))


async def _status_round_trip(broker: MqttBroker, user: str) -> None:
    async with broker:
        topic = agent_topic(SITE, user, "status")
        sub = await broker.subscribe(topic)
        await broker.publish(topic, b"online")
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


async def _nothing_more(sub: Subscription, wait_s: float = 0.3) -> list[str]:
    await asyncio.sleep(wait_s)
    return [d.topic for d in sub.drain()]


def test_mg1_cannot_command_mg2_but_the_operator_can(site: Site) -> None:
    creds = site.files.credentials
    guard = creds.guard("mg2")
    signer = creds.signer()

    async def scenario() -> None:
        async with creds.broker("mg1", site.url) as mg1, creds.broker("mg2", site.url) as mg2, \
                creds.broker(OPERATOR, site.url) as op:
            commands = await mg2.subscribe(command_filter(SITE, "mg2"))
            reports = await mg2.subscribe(agent_topic(SITE, "mg1", "telemetry"))
            forged = make_envelope(OPERATOR, SetpointBody(p_mw=9.9), step=1, recipient="mg2", ttl_s=60)
            # mg1 even holds a validly signed setpoint (say, captured earlier): the broker still refuses it
            with pytest.raises(BrokerError, match="Not authorized"):
                await mg1.publish(command_topic(SITE, "mg2", "setpoint"), encode(signer.sign(forged)))
            # a sentinel mg1 may publish, sent after the forbidden one: once mg2 has it, the setpoint would have
            # arrived before it had the broker forwarded it (one publisher, one subscriber: ordered)
            await mg1.publish(agent_topic(SITE, "mg1", "telemetry"),
                              encode(make_envelope("mg1", TelemetryBody(values={"x": 1.0}), step=1)))
            assert (await reports.get(timeout=5)).topic == agent_topic(SITE, "mg1", "telemetry")
            assert commands.drain() == []
            assert await _nothing_more(commands) == []
            # the operator's signed setpoint arrives, and the guard applies it
            real = signer.sign(make_envelope(OPERATOR, SetpointBody(p_mw=0.5), step=1, recipient="mg2", ttl_s=60))
            await op.publish(command_topic(SITE, "mg2", "setpoint"), encode(real))
            delivery = await commands.get(timeout=5)
            applied = guard.check_payload(delivery.payload, topic=delivery.topic)
            assert applied.body == SetpointBody(p_mw=0.5)
            # the same bytes again (a replay by anyone who may write the topic) are refused
            await op.publish(command_topic(SITE, "mg2", "setpoint"), encode(real))
            again = await commands.get(timeout=5)
            with pytest.raises(CommandRejected) as rejected:
                guard.check_payload(again.payload, topic=again.topic)
            assert rejected.value.reason == "replay_id"

    run_async(scenario())
    assert guard.stats == {"accepted": 1, "rejected_replay_id": 1}


def test_agents_write_only_their_own_topics(site: Site) -> None:
    creds = site.files.credentials

    async def scenario() -> None:
        async with creds.broker("mg1", site.url) as mg1, creds.broker(OPERATOR, site.url) as op:
            watch = await op.subscribe(f"heron/{SITE}/+/+")
            price = encode(make_envelope("mg1", PriceBody(price_usd_per_mwh=1e6), step=1))
            for topic in [bus_topic(SITE, "price"), bus_topic(SITE, "clock"), agent_topic(SITE, "mg2", "telemetry"),
                          agent_topic(SITE, OPERATOR, "status"), f"heron/{SITE}/mg1/cmd",
                          command_topic(SITE, "mg1", "setpoint"), f"heron/{SITE}/mg1/extra/level", "elsewhere/x",
                          "heron/other_site/mg1/telemetry"]:
                with pytest.raises(BrokerError, match="Not authorized"):
                    await mg1.publish(topic, price)
            for kind in ("status", "telemetry", "action"):
                await mg1.publish(agent_topic(SITE, "mg1", kind), b"own")
            received = [(await watch.get(timeout=5)).topic for _ in range(3)]
            assert received == [agent_topic(SITE, "mg1", k) for k in ("status", "telemetry", "action")]
            assert await _nothing_more(watch) == []

    run_async(scenario())


def test_agents_read_only_what_their_protocols_need(site: Site) -> None:
    creds = site.files.credentials

    async def scenario() -> None:
        async with creds.broker("mg1", site.url) as mg1, creds.broker("mg2", site.url) as mg2, \
                creds.broker(OPERATOR, site.url) as op:
            everything = await mg1.subscribe("heron/#")  # accepted; the broker filters per message
            await op.publish(command_topic(SITE, "mg2", "setpoint"), b"for mg2 only")
            await mg2.publish(agent_topic(SITE, "mg2", "action"), b"mg2's action")
            await op.publish(command_topic(SITE, "mg1", "setpoint"), b"for mg1")
            await mg2.publish(agent_topic(SITE, "mg2", "telemetry"), b"peer telemetry")
            await op.publish(bus_topic(SITE, "price"), b"price")
            topics = [(await everything.get(timeout=5)).topic for _ in range(3)]
            # mg2's command and mg2's action never reach mg1
            expected = [command_topic(SITE, "mg1", "setpoint"), agent_topic(SITE, "mg2", "telemetry"),
                        bus_topic(SITE, "price")]
            assert sorted(topics) == sorted(expected)
            assert await _nothing_more(everything) == []

    run_async(scenario())


def test_server_certificate_names_localhost_and_the_loopback_ip(site: Site) -> None:
    creds = site.files.credentials
    by_name = site.url.replace("127.0.0.1", "localhost")
    run_async(_status_round_trip(creds.broker("mg3", by_name), "mg3"))


@paho_handshake_leak
def test_required_client_certificates(tmp_path: Path) -> None:
    """With require_certificate the password alone is not enough: the site's client certificate is needed too."""
    require_mosquitto()
    from heron_edge.security import write_broker_config
    from heron_edge.security.launch import free_port, running_site_mosquitto
    from tests.security.conftest import site_config

    port = free_port()
    files = write_broker_config(site_config(port, require_certificate=True), tmp_path, self_signed_ca=True)
    creds = files.credentials
    with running_site_mosquitto(files.conf, port=port) as proc:
        run_async(_status_round_trip(creds.broker("mg1", proc.url), "mg1"))  # certificate + password
        no_cert = MqttBroker(proc.url, username="mg1", password=creds.user("mg1").password,
                             tls=TlsOptions(ca_file=creds.ca_file), request_timeout_s=3)
        with pytest.raises(BrokerError):
            run_async(connect_and_close(no_cert))
        # a certificate alone does not replace the password (the broker has no use_identity_as_username)
        cert_only = MqttBroker(proc.url, tls=creds.tls_options("mg1"), request_timeout_s=3)
        with pytest.raises(BrokerError, match="Not authorized"):
            run_async(connect_and_close(cert_only))
    gc.collect()
