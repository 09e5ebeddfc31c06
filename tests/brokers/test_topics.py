"""MQTT topic-filter semantics of topic_matches (the one matcher InMemoryBroker uses)."""
from __future__ import annotations

import pytest

from heron_edge.brokers import topic_matches
from heron_edge.brokers.base import validate_filter, validate_topic


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/b", "a/b/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/", True),
        ("a/+", "a", False),
        ("a/+", "a/b/c", False),
        ("+/+", "/b", True),
        ("+", "a", True),
        ("+", "/a", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c/d", True),
        ("a/#", "ab", False),
        ("#", "a/b", True),
        ("#", "/", True),
        ("+/b/#", "x/b", True),
        ("+/b/#", "x/c/d", False),
        ("#", "$SYS/broker/uptime", False),
        ("+/broker/uptime", "$SYS/broker/uptime", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("$SYS/+/uptime", "$SYS/broker/uptime", True),
        ("heron/s/+/cmd/+", "heron/s/ess1/cmd/setpoint", True),
        ("heron/s/+/cmd/+", "heron/s/ess1/status", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize("bad", ["", "a/#/b", "a#", "a/b+", "+a", "a\0b"])
def test_invalid_filters(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_filter(bad)


@pytest.mark.parametrize("good", ["#", "+", "a/+/b/#", "/", "a//b", "$SYS/#"])
def test_valid_filters(good: str) -> None:
    assert validate_filter(good) == good


@pytest.mark.parametrize("bad", ["", "a/+", "a/#", "a\0"])
def test_invalid_topics(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_topic(bad)
