"""The gateway's configuration: one validated file (TOML, or YAML when PyYAML is installed) plus
environment variables for secrets. A bad file raises ConfigError naming every bad field."""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from firmware_bridge import ModbusDeviceConfig
from heron_edge.errors import ConfigError

if TYPE_CHECKING:
    from heron_edge.coordination import Coordination

__all__ = ["BrokerSettings", "CoordinationSettings", "CycleSettings", "DeviceSettings", "FailsafeSettings",
           "GatewayConfig", "OutboxSettings", "RulePolicySettings", "SiteBattery", "SiteGenerator", "SiteMicrogrid",
           "TlsSettings", "load_gateway_config", "parse_gateway_config"]

_ID = r"^[A-Za-z0-9_-]+$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Model):
    """TLS towards the broker (``mqtts://`` URLs): CA bundle (None: the system's), for mutual TLS a client
    certificate and key, and whether the broker's certificate must name the host of ``url`` (keep it on)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = True

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class BrokerSettings(_Model):
    """The MQTT broker. The password is never in the file: ``password_env`` names the environment variable."""

    url: str = Field(description="mqtt://host:port or mqtts://host:port")
    client_id: str | None = Field(None, description="default: heron-{site}-{agent_id}")
    username: str | None = None
    password_env: str | None = Field(None, description="environment variable that holds the password")
    tls: TlsSettings | None = None
    keepalive_s: int = Field(30, ge=1)
    reconnect_min_delay_s: float = Field(0.1, gt=0)
    reconnect_max_delay_s: float = Field(10.0, gt=0)
    allow_insecure: bool = Field(False, description="allow plaintext / unauthenticated MQTT to a non-loopback host")

    @model_validator(mode="after")
    def _password_needs_user(self) -> BrokerSettings:
        if self.password_env is not None and self.username is None:
            raise ValueError("password_env given without username")
        if self.tls is not None and not self.url.startswith("mqtts://"):
            raise ValueError("tls settings need an mqtts:// url")
        return self

    def password(self) -> str | None:
        """The password from the environment; ConfigError when the variable is missing."""
        if self.password_env is None:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise ConfigError(f"broker.password_env: environment variable {self.password_env} is not set")
        return value


class DeviceSettings(_Model):
    """The microgrid's Modbus devices. The battery is required; the others are optional.

    battery, generator, pv, wind: SunSpec devices (models 1/701/702/704, 713 for the battery);
    meter: a device serving the heron meter map (``heron_edge.runtime.meter``).
    """

    battery: ModbusDeviceConfig
    meter: ModbusDeviceConfig
    generator: ModbusDeviceConfig | None = None
    pv: ModbusDeviceConfig | None = None
    wind: ModbusDeviceConfig | None = None


class RulePolicySettings(_Model):
    """``heron_edge.policies.RulePolicy`` parameters (USD, MW); see its docstring."""

    kind: Literal["rule"] = "rule"
    round_trip_efficiency: float = Field(1.0, gt=0, le=1)
    cost_a_usd_per_mw2h: float = Field(ge=0)
    cost_b_usd_per_mwh: float
    cost_c_usd_per_h: float = Field(0.0, ge=0)
    window_steps: int = Field(24, ge=1)
    charge_quantile: float = Field(0.25, ge=0, le=1)
    discharge_quantile: float = Field(0.75, ge=0, le=1)
    min_history: int = Field(4, ge=1)


class CycleSettings(_Model):
    """When the gateway runs its cycle.

    clock="bus": one cycle per step announced on ``heron/{site}/bus/clock`` (lock-step or a real-time
    orchestrator), answered with a ``done`` clock message. clock="timer" (field): one cycle as each
    wall-clock period starts; the step is ``floor(unix time / period_s)``, so gateways and an operator
    on the same timer clock (``heron-edge operator --clock timer``) meet on it. In both, ``period_s`` is the watchdog
    tick: without a clock message for that long, a failsafe check (and, if due, a failsafe cycle) runs.
    step_timeout_s: the longest a cycle waits for this step's price and the peers' telemetry.
    """

    clock: Literal["bus", "timer"] = "timer"
    period_s: float = Field(1.0, gt=0)
    step_timeout_s: float = Field(0.5, gt=0)
    steps_per_day: int = Field(24, ge=1)
    clock_sender: str = Field("plant", pattern=_ID, description="bus clock: the only accepted announcer")


class FailsafeSettings(_Model):
    """Safe local mode (see docs/edge.md): battery holds at ``battery_mw``, the generator runs at
    ``generator_mw`` (the plant / device raises it to its minimum), and PV + wind are curtailed so
    the export stays below ``export_limit_mw`` (fully, when the load is unknown)."""

    upstream_timeout_s: float = Field(3.0, gt=0, description="no price (or clock) for this long -> failsafe")
    battery_mw: float = 0.0
    generator_mw: float = Field(0.0, ge=0)
    export_limit_mw: float = Field(0.0, ge=0)


class OutboxSettings(_Model):
    """Telemetry that cannot be published waits in a SQLite file, at most ``max_records`` (oldest dropped)."""

    path: str = "heron-outbox.sqlite"
    max_records: int = Field(10_000, ge=1)


class SiteBattery(_Model):
    """A microgrid's battery as the protocols see it: its power rating (MW)."""

    p_max_mw: float = Field(gt=0)


class SiteGenerator(_Model):
    """A microgrid's generator as the protocols see it: limits (MW) and fuel cost a p^2 + b p (USD/h)."""

    p_min_mw: float = Field(0.0, ge=0)
    p_max_mw: float = Field(ge=0)
    cost_a_usd_per_mw2h: float = Field(ge=0)
    cost_b_usd_per_mwh: float


class SiteMicrogrid(_Model):
    """One microgrid of the site (the protocols need every one: setpoint shares, consensus nodes, market)."""

    name: str = Field(pattern=_ID)
    battery: SiteBattery
    generator: SiteGenerator


class CoordinationSettings(_Model):
    """The coordination protocols this gateway takes part in (``heron_edge.coordination``), and the site data
    they need; the same names, options and numbers as the operator's (and the environment's) scenario.

    protocols: at most one vertical (setpoint, price_signal) and one horizontal (p2p_trading, consensus);
    [] = the price broadcast only. options: per protocol, e.g. ``{"setpoint": {"import_limit_mw": 1.5}}``.
    """

    protocols: list[Literal["setpoint", "price_signal", "p2p_trading", "consensus"]] = Field(default_factory=list)
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    step_minutes: float = Field(60.0, gt=0, description="the step length (minutes)")
    export_price_ratio: float = Field(1.0, ge=0, le=1, description="exports are credited at this fraction of the price")
    feeder_head_rating_mva: float = Field(2.5, gt=0, description="substation rating (the operator's congestion rule)")
    microgrids: list[SiteMicrogrid] = Field(min_length=1, description="every microgrid of the site, in agent order")

    @property
    def step_hours(self) -> float:
        return self.step_minutes / 60.0

    @model_validator(mode="after")
    def _protocols_valid(self) -> CoordinationSettings:
        if len({m.name for m in self.microgrids}) != len(self.microgrids):
            raise ValueError("microgrids: duplicate names")
        self.build()  # unknown options, two vertical protocols, a bad option value: said here, at load time
        return self

    def build(self) -> Coordination:
        """The ``Coordination`` of these settings (the same class the environment and the operator use)."""
        from heron_edge.coordination import Coordination

        try:  # Coordination reads a scenario's microgrids / step_hours / export_price_ratio: these fields mirror them
            return Coordination(cast(Any, self), list(self.protocols), dict(self.options))
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


class GatewayConfig(_Model):
    """Everything ``heron-edge agent`` needs (see examples/gateway-rpi.toml)."""

    agent_id: str = Field(pattern=_ID)
    site: str = Field(pattern=_ID)
    upstream_id: str = Field("system_operator", pattern=_ID, description="the only accepted sender of prices and commands")
    peers: list[str] = Field(default_factory=list, description="every microgrid agent of the site, in agent order")
    battery_p_max_mw: float = Field(gt=0, description="scales the normalised battery action")
    generator_p_max_mw: float = Field(0.0, ge=0, description="scales the normalised generator action (0: none)")
    broker: BrokerSettings
    devices: DeviceSettings
    policy: RulePolicySettings
    cycle: CycleSettings = CycleSettings()
    failsafe: FailsafeSettings = FailsafeSettings()
    outbox: OutboxSettings = OutboxSettings()
    status_file: str | None = Field(None, description="also write the status as JSON here every cycle")
    command_key_env: str | None = Field(None, description="environment variable holding this agent's command key "
                                        "(hex, >= 16 bytes): commands must then carry a valid HMAC")
    coordination: CoordinationSettings | None = Field(None, description="the coordination protocols (None: price only)")
    journal_file: str | None = Field(None, description="append one JSON line per completed step here (what the "
                                     "protocols said and the action taken)")

    @model_validator(mode="after")
    def _consistent(self) -> GatewayConfig:
        if self.generator_p_max_mw > 0 and self.devices.generator is None:
            raise ValueError("generator_p_max_mw > 0 needs devices.generator")
        if len(set(self.peers)) != len(self.peers):
            raise ValueError("peers has duplicates")
        if self.cycle.step_timeout_s > self.failsafe.upstream_timeout_s:
            raise ValueError("cycle.step_timeout_s must not exceed failsafe.upstream_timeout_s")
        c = self.coordination
        if c is not None:
            names = [m.name for m in c.microgrids]
            if names != self.agents:
                raise ValueError(f"coordination.microgrids {names} must list every agent in peers order {self.agents}")
            own = c.microgrids[names.index(self.agent_id)]
            if own.battery.p_max_mw != self.battery_p_max_mw or own.generator.p_max_mw != self.generator_p_max_mw:
                raise ValueError(f"coordination.microgrids[{self.agent_id}]: ratings differ from battery_p_max_mw / "
                                 "generator_p_max_mw")
        return self

    def command_key(self) -> bytes | None:
        """The command HMAC key from the environment (None when not configured); ConfigError naming the field."""
        if self.command_key_env is None:
            return None
        from heron_edge.security.auth import parse_key

        value = os.environ.get(self.command_key_env)
        if value is None:
            raise ConfigError(f"command_key_env: environment variable {self.command_key_env} is not set")
        try:
            return parse_key(value)
        except ConfigError as exc:
            raise ConfigError(f"command_key_env ({self.command_key_env}): {exc}") from None

    @property
    def agents(self) -> list[str]:
        """Every microgrid agent of the site, this one included (peers order, this one appended if missing)."""
        return self.peers if self.agent_id in self.peers else [*self.peers, self.agent_id]


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'config'}: "
        f"{'unknown field' if err['type'] == 'extra_forbidden' else err['msg']}"
        for err in exc.errors()
    )


def parse_gateway_config(data: dict[str, Any], *, source: str = "config") -> GatewayConfig:
    """Validate a mapping; ConfigError names every bad field (dotted path)."""
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid gateway config {source}: {_problems(exc)}") from exc


def load_gateway_config(path: str | Path) -> GatewayConfig:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``, needs PyYAML) file and validate it."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read gateway config {path}: {exc}") from exc
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError(f"{path}: YAML configs need PyYAML (pip install pyyaml); or use TOML") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table/mapping")
    return parse_gateway_config(data, source=str(path))
