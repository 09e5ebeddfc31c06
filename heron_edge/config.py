"""Validated configuration of the ``MultiAgentMicrogrids`` environment (a dict or this pydantic model)."""
from __future__ import annotations

import math
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from heron_edge.brokers.impaired import ImpairmentConfig
from heron_edge.coordination import ProtocolName
from heron_edge.errors import ConfigError


class EnvConfig(BaseModel):
    """What the environment runs: the scenario, the mode and the episode layout.

    centralized: True = one loop with full global observations and direct calls; False = every agent
    runs behind a ProxyAgent and exchanges messages over ``message_broker`` (an InMemoryBroker when
    omitted) and observes only local state plus received messages.

    site: the topic namespace (``heron/{site}/...``). Left out (None), every environment instance takes its
    own, :func:`default_site` (``sim-`` and 8 random hex digits), so two environments on one broker never
    hear each other; give one to meet other processes (gateways, a logger) on a known namespace.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    centralized: bool = True
    message_broker: Any = Field(None, description="a heron_edge.brokers.Broker; distributed mode only")
    max_episode_steps: int = Field(24, gt=0)
    scenario: str | Path | Any = Field("ieee34_3x13", description="a shipped scenario name, a TOML path or a sim.scenario.Scenario")
    train: bool = Field(True, description="True: episodes start on a random day of 2023; False: walk 2024 day by day")
    share_reward: bool = Field(False, description="every agent receives the mean of all agents' rewards")
    site: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$",
                             description="MQTT topic namespace in distributed mode; None: a fresh one per environment")
    step_timeout_s: float = Field(5.0, gt=0, description="distributed mode: the longest a step waits for messages")
    protocol: ProtocolName | list[ProtocolName] | None = Field(
        None, description="coordination: one of, or one vertical plus one horizontal of, setpoint, price_signal, p2p_trading, consensus")
    protocol_options: dict[ProtocolName, dict[str, Any]] = Field(
        default_factory=dict, description="per protocol, its configuration (see heron_edge.protocols)")
    observation: Literal["global", "local"] | None = Field(
        None, description="global: the full state and a one-hot (centralized only); local: exactly what a distributed "
        "agent sees, in either mode; None: global when centralized, local when distributed")
    normalize: bool = Field(False, description="divide every observation entry by its microgrid's rating "
                            "(heron_edge.observations.feature_scales), so one policy fits microgrids of different sizes")
    initial_soc: Literal["scenario", "random"] = Field(
        "scenario", description="each episode's starting state of charge: the scenario's soc_init, or uniform in "
        "[soc_min, soc_max] per battery from the seeded generator (training); reset(options={'soc': ...}) overrides")
    terminal_energy_value: float | Literal["mean_price"] | None = Field(
        None, description="at the episode's last step each agent's reward gains the change of its battery's "
        "deliverable energy (MWh, from the first step to the last) times this value (USD/MWh; 'mean_price': the "
        "mean hourly price of the episode's steps), so draining is not free; None: no terminal value")
    impairment: ImpairmentConfig | None = Field(
        None, description="distributed mode: loss, latency_s, jitter_s, duplicate, reorder, seed, deadline_s and per "
        "topic kind 'kinds' (heron_edge.brokers.impaired) applied to every message; lost and late counts in infos")

    site_graph: Literal["feeder", "ring"] | dict[str, list[str]] = Field(
        "feeder", description="whose telemetry each agent observes (neighbour aggregates): 'feeder', the microgrids "
        "before and after it in the scenario's order along the feeder; 'ring'; or a mapping agent -> neighbours "
        "(heron_edge.site_graph)")

    @model_validator(mode="after")
    def _broker_only_when_distributed(self) -> EnvConfig:
        if self.centralized and self.message_broker is not None:
            raise ValueError("message_broker is only used when centralized is False")
        if self.centralized and self.impairment is not None:
            raise ValueError("impairment acts on messages: it needs centralized False")
        if not self.centralized and self.observation == "global":
            raise ValueError("observation 'global' needs centralized True: a distributed agent sees local observations")
        if isinstance(self.terminal_energy_value, float) and not math.isfinite(self.terminal_energy_value):
            raise ValueError("terminal_energy_value must be finite")
        return self

    @property
    def observation_kind(self) -> Literal["global", "local"]:
        """The observation actually given: ``observation``, or by mode when it is None."""
        if self.observation is not None:
            return self.observation
        return "global" if self.centralized else "local"


def default_site() -> str:
    """A fresh topic namespace, ``sim-`` and 8 random hex digits: each environment instance its own."""
    return f"sim-{secrets.token_hex(4)}"


def parse_config(config: EnvConfig | dict[str, Any] | None) -> EnvConfig:
    """An EnvConfig from a dict (or as is), raising ConfigError that names every bad key."""
    if isinstance(config, EnvConfig):
        return config
    try:
        return EnvConfig.model_validate(config or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: "
            f"{'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid MultiAgentMicrogrids config: {problems}") from exc
