"""SetpointProtocol (vertical): the operator gives each microgrid an exchange setpoint.

The setpoint is the active power exchanged at the microgrid's point of connection, in MW,
**+ = import** from the feeder. Allocation rule (:meth:`SetpointProtocol.allocate`), from each
microgrid's need (forecast net load, MW, + = needs import):

- a microgrid with a surplus (need <= 0) gets its need as setpoint (it exports its surplus);
- the importers share the headroom ``H = import_limit_mw`` (plus the exports when
  ``credit_exports``): if their needs fit, each gets its need, otherwise each gets
  ``need_i * H / sum(importer needs)`` (proportional to need). So ``sum(imports) <= H``.

Distributed: the operator sends one ``setpoint`` message per microgrid on
``heron/{site}/{mg}/cmd/setpoint`` with an expiry of ``ttl_s``. On the wire ``p_mw`` keeps the
message model's convention, generation positive, i.e. the power the microgrid injects into the
feeder: ``p_mw = -setpoint``. The microgrid's :meth:`~SetpointProtocol.receive` returns, in order
of preference: this step's setpoint; else (lost or late) the last one received while it has not
expired; else ``fallback_mw`` (default 0 MW: no exchange). An expired message is rejected at decode.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from heron_edge.errors import ActionError, ConfigError
from heron_edge.messages import SetpointBody, command_topic
from heron_edge.protocols.base import Link, ProtocolConfig, load_config

log = logging.getLogger(__name__)

__all__ = ["SetpointConfig", "SetpointProtocol", "SetpointResult", "tracking_error"]

SetpointRole = Literal["operator", "microgrid"]
_MEMORY_KEY = "setpoint.last"


class SetpointConfig(ProtocolConfig):
    """Parameters of :class:`SetpointProtocol`."""

    import_limit_mw: float = Field(default=1.5, gt=0.0, description="Feeder-head import limit shared by the microgrids, MW.")
    credit_exports: bool = Field(default=False, description="Count microgrid exports as extra import headroom.")
    fallback_mw: float = Field(default=0.0, description="Setpoint used when no valid one is known, MW (+ = import).")
    operator_id: str = Field(default="operator", min_length=1, description="Agent id of the operator (the only accepted sender).")


@dataclass(frozen=True)
class SetpointResult:
    """What a microgrid applies: ``p_mw`` (+ = import), where it came from, and the step it was issued for
    (None for the fallback)."""

    p_mw: float
    source: Literal["message", "last", "fallback"]
    issued_step: int | None


def tracking_error(setpoint_mw: np.ndarray, actual_mw: np.ndarray) -> np.ndarray:
    """Per microgrid ``actual - setpoint`` at the point of connection, MW (+ = imported more than asked)."""
    sp = np.asarray(setpoint_mw, dtype=float)
    act = np.asarray(actual_mw, dtype=float)
    if sp.shape != act.shape:
        raise ActionError(f"setpoint shape {sp.shape} != actual shape {act.shape}")
    error: np.ndarray = act - sp
    return error


class SetpointProtocol:
    """Vertical setpoint protocol: :meth:`allocate` (centralized), :meth:`operator` and
    :meth:`receive` (distributed roles)."""

    def __init__(self, config: SetpointConfig | Mapping[str, Any]) -> None:
        self.config: SetpointConfig = load_config(SetpointConfig, config)

    def __repr__(self) -> str:
        return f"SetpointProtocol({self.config!r})"

    # -- centralized --------------------------------------------------------------------------
    def allocate(self, needs_mw: np.ndarray) -> np.ndarray:
        """Exchange setpoints (MW, + = import) from needs (MW, + = deficit), by the rule above."""
        needs = np.asarray(needs_mw, dtype=float)
        if needs.ndim != 1 or not np.isfinite(needs).all():
            raise ActionError(f"needs_mw must be a finite 1-d array, got shape {needs.shape}")
        setpoints = needs.copy()
        importers = needs > 0.0
        headroom = self.config.import_limit_mw
        if self.config.credit_exports:
            headroom -= float(needs[~importers].sum())
        total = float(needs[importers].sum())
        if total > headroom:
            setpoints[importers] = needs[importers] * (headroom / total)
        return setpoints

    # -- distributed --------------------------------------------------------------------------
    async def prepare(self, link: Link, role: SetpointRole) -> None:
        """Subscribe what ``role`` listens to (call once per Link before the first step)."""
        if role == "microgrid":
            await link.subscribe(command_topic(link.site, link.agent_id, "setpoint"))
        elif role != "operator":
            raise ConfigError(f"unknown setpoint role {role!r}")

    async def operator(self, link: Link, needs_mw: np.ndarray, agent_ids: Sequence[str]) -> np.ndarray:
        """Allocate and send one setpoint message per microgrid; returns the setpoints (MW, + = import)."""
        setpoints = self.allocate(needs_mw)
        if len(agent_ids) != setpoints.shape[0]:
            raise ActionError(f"{setpoints.shape[0]} needs for {len(agent_ids)} microgrids")
        await asyncio.gather(*(
            link.send(command_topic(link.site, mg, "setpoint"), SetpointBody(p_mw=-float(sp)),
                      recipient=mg, ttl_s=self.config.ttl_s)
            for mg, sp in zip(agent_ids, setpoints, strict=True)))
        return setpoints

    async def receive(self, link: Link) -> SetpointResult:
        """This step's setpoint for ``link.agent_id``, or the documented fallback after ``link.timeout_s``."""
        env = await link.receive(command_topic(link.site, link.agent_id, "setpoint"), SetpointBody,
                                 deadline=link.deadline(), senders=(self.config.operator_id,),
                                 accept=lambda e: e.recipient in (None, link.agent_id))
        if env is not None:
            assert isinstance(env.body, SetpointBody)
            result = SetpointResult(p_mw=-env.body.p_mw, source="message", issued_step=env.step)
            link.memory[_MEMORY_KEY] = (result, env.expires)
            return result
        link.stats.timeouts += 1
        last = link.memory.get(_MEMORY_KEY)
        if last is not None:
            result, expires = last
            if expires is None or expires >= time.time():
                log.warning("%s: no setpoint for step %d; using the one of step %s", link.agent_id, link.step,
                            result.issued_step)
                return SetpointResult(p_mw=result.p_mw, source="last", issued_step=result.issued_step)
        log.warning("%s: no setpoint for step %d; using the fallback %s MW", link.agent_id, link.step,
                    self.config.fallback_mw)
        return SetpointResult(p_mw=self.config.fallback_mw, source="fallback", issued_step=None)
