"""SetpointProtocol: allocation rule, both forms agree, loss -> last valid setpoint -> fallback."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heron_edge.brokers import InMemoryBroker
from heron_edge.errors import ActionError, ConfigError
from heron_edge.messages import SetpointBody, command_topic, make_envelope
from heron_edge.protocols import Link, SetpointProtocol, SetpointResult, tracking_error
from tests.conftest import run_async
from tests.protocols.conftest import Transport

MGS = ("mg1", "mg2", "mg3")


def test_allocation_shares_the_limit_in_proportion_to_need() -> None:
    proto = SetpointProtocol({"import_limit_mw": 3.0})
    assert proto.allocate(np.array([1.0, 0.5, -1.0])).tolist() == [1.0, 0.5, -1.0]  # fits
    assert proto.allocate(np.array([4.0, 2.0, -1.0])).tolist() == [2.0, 1.0, -1.0]  # 3 MW shared 2:1
    credited = SetpointProtocol({"import_limit_mw": 3.0, "credit_exports": True})
    assert credited.allocate(np.array([4.0, 2.0, -1.0])).tolist() == pytest.approx([8 / 3, 4 / 3, -1.0])
    with pytest.raises(ActionError):
        proto.allocate(np.array([np.nan, 1.0, 1.0]))
    with pytest.raises(ConfigError):
        SetpointProtocol({"import_limit_mw": -1.0})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-10.0, 10.0), min_size=1, max_size=8), st.floats(0.1, 20.0), st.booleans())
def test_allocation_never_exceeds_the_headroom_nor_any_need(needs: list[float], limit: float, credit: bool) -> None:
    proto = SetpointProtocol({"import_limit_mw": limit, "credit_exports": credit})
    n = np.array(needs)
    sp = proto.allocate(n)
    headroom = limit - (n[n <= 0].sum() if credit else 0.0)
    assert sp[n > 0].sum() <= headroom * (1 + 1e-12) + 1e-12
    assert (sp[n > 0] <= n[n > 0] + 1e-12).all() and (sp[n > 0] >= 0).all()
    assert np.array_equal(sp[n <= 0], n[n <= 0])


def test_tracking_error_is_actual_minus_setpoint() -> None:
    assert tracking_error(np.array([1.0, -0.5]), np.array([1.2, -0.5])).tolist() == pytest.approx([0.2, 0.0])
    with pytest.raises(ActionError):
        tracking_error(np.ones(2), np.ones(3))


def test_distributed_setpoints_equal_the_direct_assignment(transport: Transport) -> None:
    proto = SetpointProtocol({"import_limit_mw": 2.5})
    needs = np.array([[3.0, 1.0, -0.5], [0.5, 0.2, 0.1], [-1.0, 4.0, 1.0]])  # three steps

    async def main() -> list[list[SetpointResult]]:
        async with transport.links(("operator", *MGS)) as links:
            await asyncio.gather(*(proto.prepare(links[m], "microgrid") for m in MGS))
            out = []
            for step, row in enumerate(needs):
                for link in links.values():
                    link.step = step
                _, *received = await asyncio.gather(proto.operator(links["operator"], row, MGS),
                                                    *(proto.receive(links[m]) for m in MGS))
                out.append(received)
            return out

    for row, received in zip(needs, run_async(main())):
        assert [r.source for r in received] == ["message"] * 3
        assert [r.p_mw for r in received] == proto.allocate(row).tolist()  # bit-identical


def test_lost_setpoint_falls_back_to_the_last_valid_one_then_to_the_fallback() -> None:
    proto = SetpointProtocol({"import_limit_mw": 5.0, "ttl_s": 0.3, "fallback_mw": 0.0})

    async def main() -> tuple[list[SetpointResult], float, Link]:
        async with InMemoryBroker() as broker:
            op = Link(broker, site="s", agent_id="operator")
            mg = Link(broker, site="s", agent_id="mg1", timeout_s=0.05)
            await proto.prepare(mg, "microgrid")
            first = await asyncio.gather(proto.operator(op, np.array([1.5]), ["mg1"]), proto.receive(mg))
            t0 = time.perf_counter()
            mg.step = op.step = 1  # the operator's message of step 1 is lost
            lost = await proto.receive(mg)
            elapsed = time.perf_counter() - t0
            await asyncio.sleep(0.3)  # the last setpoint expires
            mg.step = 2
            expired = await proto.receive(mg)
            return [first[1], lost, expired], elapsed, mg

    (first, lost, expired), elapsed, mg = run_async(main())
    assert first == SetpointResult(1.5, "message", 0)
    assert lost == SetpointResult(1.5, "last", 0) and elapsed < 0.5
    assert expired == SetpointResult(0.0, "fallback", None)
    assert mg.stats.timeouts == 2


def test_stale_malformed_expired_and_foreign_setpoints_are_never_applied() -> None:
    proto = SetpointProtocol({"import_limit_mw": 5.0})

    async def main() -> tuple[SetpointResult, Link]:
        async with InMemoryBroker() as broker:
            mg = Link(broker, site="s", agent_id="mg1", step=3, timeout_s=0.1)
            await proto.prepare(mg, "microgrid")
            topic = command_topic("s", "mg1", "setpoint")
            await broker.publish(topic, b"\xff garbage")
            await broker.publish(topic, make_envelope("operator", SetpointBody(p_mw=-9.0), step=2))  # older step
            await broker.publish(topic, make_envelope("operator", SetpointBody(p_mw=-8.0), step=3, ttl_s=-1.0))
            await broker.publish(topic, make_envelope("intruder", SetpointBody(p_mw=-7.0), step=3))
            await broker.publish(topic, make_envelope("operator", SetpointBody(p_mw=-1.25), step=3, recipient="mg1"))
            return await proto.receive(mg), mg

    result, mg = run_async(main())
    assert result == SetpointResult(1.25, "message", 3)
    assert mg.stats.rejected["not_json"] == 1 and mg.stats.rejected["expired"] == 1
    assert mg.stats.stale == 1 and mg.stats.ignored == 1
