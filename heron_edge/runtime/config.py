"""The gateway's configuration: one validated file (TOML, or YAML when PyYAML is installed) plus
environment variables for secrets. A bad file raises ConfigError naming every bad field.

Every number must be finite and within a physical range (periods and timeouts at most a day, powers at
most ``MAX_MW``): an out-of-range value is refused, never clamped. ``load_gateway_config(...,
check_paths=True)`` (what ``heron-edge agent`` does) also checks the files the gateway writes."""
from __future__ import annotations

import math
import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from firmware_bridge import ModbusDeviceConfig
from firmware_bridge.config import ModbusLinkConfig
from heron_edge.errors import ConfigError

if TYPE_CHECKING:
    from heron_edge.coordination import Coordination

__all__ = ["MAX_FILE_BYTES", "MAX_MW", "MAX_S", "BrokerSettings", "CoordinationSettings", "CycleSettings",
           "DeviceSettings", "FailsafeSettings", "ForecastSettings", "GatewayConfig", "LinkSettings",
           "MqttForecastSettings",
           "OnnxPolicySettings", "OutboxSettings", "PersistenceForecastSettings", "PolicySettings",
           "ProfileForecastSettings", "RulePolicySettings", "SiteBattery",
           "SiteGenerator", "SiteMicrogrid", "TlsSettings", "check_files", "load_gateway_config",
           "parse_gateway_config"]

_ID = r"^[A-Za-z0-9_-]+$"

MAX_S = 86_400.0
"""The longest period, timeout or delay (s): one day."""
MAX_MW = 1e4
"""The largest power (MW) or rating (MVA) a gateway config may give."""
_MAX_USD = 1e6
"""The largest cost coefficient (USD/MWh, USD/MW2h, USD/h)."""
MAX_FILE_BYTES = 1 << 20
"""A config file larger than this is refused (a gateway config is a few kB)."""
_MAX_DEPTH = 32
"""The deepest nesting of tables / lists accepted (the schema needs 5)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
    keepalive_s: int = Field(30, ge=1, le=65_535)
    reconnect_min_delay_s: float = Field(0.1, gt=0, le=MAX_S)
    reconnect_max_delay_s: float = Field(10.0, gt=0, le=MAX_S)
    allow_insecure: bool = Field(False, description="allow plaintext / unauthenticated MQTT to a non-loopback host")

    @model_validator(mode="after")
    def _password_needs_user(self) -> BrokerSettings:
        if self.password_env is not None and self.username is None:
            raise ValueError("password_env given without username")
        if self.tls is not None and not self.url.startswith("mqtts://"):
            raise ValueError("tls settings need an mqtts:// url")
        if self.reconnect_min_delay_s > self.reconnect_max_delay_s:
            raise ValueError("reconnect_min_delay_s must not exceed reconnect_max_delay_s")
        return self

    def password(self) -> str | None:
        """The password from the environment; ConfigError when the variable is missing."""
        if self.password_env is None:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise ConfigError(f"broker.password_env: environment variable {self.password_env} is not set")
        return value


class LinkSettings(ModbusLinkConfig):
    """A shared Modbus link, ``[links.NAME]``: a TCP endpoint (host, port) or an RS-485 port (transport = "rtu":
    serial_port, baudrate, parity, stopbits, bytesize), and how patiently it is used (timeout_s, retries,
    backoff_s, backoff_max_s, min_gap_s: the least idle time between two requests on the line). Devices name it
    (``link = "NAME"``) with their own ``unit_id``; however many they are, they share one connection and one request
    queue. The fields mean what they mean on a device (``firmware_bridge.ModbusDeviceConfig``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_LINK_FIELDS = tuple(LinkSettings.model_fields)
_ROLES = ("battery", "generator", "pv", "wind", "meter")


def _apply_links(data: Any) -> Any:
    """A gateway config's raw data with each device that names a ``link`` given that link's fields; ValueError for
    an undeclared link or a device that sets a link field itself."""
    if not isinstance(data, dict) or not isinstance(data.get("devices"), dict):
        return data
    links = data.get("links") or {}
    devices = dict(data["devices"])
    for role in _ROLES:
        device = devices.get(role)
        if not isinstance(device, dict) or device.get("link") is None:
            continue
        name = device["link"]
        link = links.get(name) if isinstance(links, dict) and isinstance(name, str) else None
        if not isinstance(link, dict):
            declared = ", ".join(sorted(links)) if isinstance(links, dict) and links else "none"
            raise ValueError(f"devices.{role}.link: no [links.{name}] (declared: {declared})")
        both = sorted(set(device) & set(_LINK_FIELDS))
        if both:
            raise ValueError(f"devices.{role}: {', '.join(both)}: set in [links.{name}], not on a device that names it")
        devices[role] = {**link, **device}
    return {**data, "devices": devices}


class DeviceSettings(_Model):
    """The microgrid's Modbus devices. The battery and the meter are required; the others are optional.

    battery, generator, pv, wind: SunSpec devices, each used in its role with whatever models it has (legacy
    1xx or IEEE 1547 7xx: ``firmware_bridge.capabilities``; ``heron-edge probe`` shows what a device offers);
    meter: the site meter at the point of connection, a standard one: SunSpec 201-204 / 211-214, or a register
    map (``map = "eastron-sdm630"``); its power is the exchange (+ import), its voltage the band check
    (``heron_edge.runtime.meter``). The next step's load, PV and wind come from ``[forecast]``, not from a device.
    meter_v_nom_v: the meter's nominal line-to-line voltage (V); with it the voltage outside
    [v_min_pu, v_max_pu] is the local ``violation_pu`` feature, without it that feature is 0.
    write_mismatches_to_failsafe: a device whose read-back differs from what was written this many times in a
    row is a failsafe reason (it acknowledges commands it does not hold).
    """

    battery: ModbusDeviceConfig
    meter: ModbusDeviceConfig
    generator: ModbusDeviceConfig | None = None
    pv: ModbusDeviceConfig | None = None
    wind: ModbusDeviceConfig | None = None
    meter_v_nom_v: float | None = Field(None, gt=0, le=1e6)
    v_min_pu: float = Field(0.95, gt=0, le=2)
    v_max_pu: float = Field(1.05, gt=0, le=2)
    write_mismatches_to_failsafe: int = Field(3, ge=1, le=1000)

    @model_validator(mode="after")
    def _band(self) -> DeviceSettings:
        if self.v_min_pu >= self.v_max_pu:
            raise ValueError(f"v_min_pu ({self.v_min_pu}) must be below v_max_pu ({self.v_max_pu})")
        return self


class RulePolicySettings(_Model):
    """``heron_edge.policies.RulePolicy`` parameters (USD, MW); see its docstring."""

    kind: Literal["rule"] = "rule"
    round_trip_efficiency: float = Field(1.0, gt=0, le=1)
    cost_a_usd_per_mw2h: float = Field(ge=0, le=_MAX_USD)
    cost_b_usd_per_mwh: float = Field(ge=-_MAX_USD, le=_MAX_USD)
    cost_c_usd_per_h: float = Field(0.0, ge=0, le=_MAX_USD)
    window_steps: int = Field(24, ge=1, le=100_000)
    charge_quantile: float = Field(0.25, ge=0, le=1)
    discharge_quantile: float = Field(0.75, ge=0, le=1)
    min_history: int = Field(4, ge=1, le=100_000)


class OnnxPolicySettings(_Model):
    """A policy bundle (``heron-edge train --out DIR``: ``policy.onnx`` + ``manifest.json``), run by onnxruntime
    (the ``policy`` extra). At start the gateway compares its manifest with this config (observation size and
    names, protocols, ratings) and refuses a mismatch (``heron_edge.policies.bundle.check_compatible``)."""

    kind: Literal["onnx"]
    path: str = Field(min_length=1, description="the bundle's directory")


def _policy_kind(value: Any) -> str:
    """The policy table's ``kind`` (``rule`` when left out, as before bundles existed)."""
    kind = value.get("kind", "rule") if isinstance(value, dict) else getattr(value, "kind", "rule")
    return kind if kind in ("rule", "onnx") else "rule"  # an unknown kind: the rule's Literal names it


PolicySettings = Annotated[Annotated[RulePolicySettings, Tag("rule")] | Annotated[OnnxPolicySettings, Tag("onnx")],
                           Discriminator(_policy_kind)]
"""``[policy]``: ``kind = "rule"`` (:class:`RulePolicySettings`) or ``kind = "onnx"`` (:class:`OnnxPolicySettings`)."""


class CycleSettings(_Model):
    """When the gateway runs its cycle.

    clock="bus": one cycle per step announced by ``clock_sender`` on ``heron/{site}/{clock_sender}/clock``
    (lock-step or a real-time orchestrator), answered with a ``done`` on ``heron/{site}/{agent_id}/done``;
    an announcement past ``max_step`` (SIL: the profile year's last step) is refused and counted. clock="timer" (field): one cycle as each
    wall-clock period starts; the step is ``floor(unix time / period_s)``, so gateways and an operator
    on the same timer clock (``heron-edge operator --clock timer``) meet on it. In both, ``period_s`` is the watchdog
    tick: without a clock message for that long, a failsafe check (and, if due, a failsafe cycle) runs.
    step_timeout_s: the longest a cycle waits for this step's price and the peers' telemetry.
    time_zone: the IANA zone of the data the policy was trained on (the shipped data: California local time); with
    the timer clock the hour-of-day features (and a profile forecast's step of the day) are wall-clock times there.
    A bus clock's steps are steps of the data's own year, already in its zone.
    """

    clock: Literal["bus", "timer"] = "timer"
    time_zone: str = Field("America/Los_Angeles", min_length=1, max_length=64)
    period_s: float = Field(1.0, gt=0, le=MAX_S)
    step_timeout_s: float = Field(0.5, gt=0, le=MAX_S)
    steps_per_day: int = Field(24, ge=1, le=86_400)
    clock_sender: str = Field("plant", pattern=_ID, description="bus clock: the only accepted announcer")
    max_step: int | None = Field(None, ge=0, description="bus clock: the last step an announcement may name")
    every_steps: int = Field(1, ge=1, le=86_400, description=(
        "a slower agent: a cycle only on a step at least this many after the last one it ran (a new episode or a "
        "failsafe cycle: at once); its devices hold their setpoints in between. Real time: a lock-step plant waits for "
        "every agent's done, so there keep 1"))

    @model_validator(mode="after")
    def _zone(self) -> CycleSettings:
        from heron_edge.runtime.wallclock import zone

        zone(self.time_zone)  # ValueError naming the zone
        return self


class PersistenceForecastSettings(_Model):
    """The next step as the last one was measured (``heron_edge.runtime.forecast``)."""

    kind: Literal["persistence"] = "persistence"


class ProfileForecastSettings(_Model):
    """A daily shape per series (one value per step of the day, ``cycle.steps_per_day`` values, in the time zone
    ``cycle.time_zone``; any unit: only the shape counts) scaled by the last ``window_steps`` measurements."""

    kind: Literal["profile"]
    load: list[Annotated[float, Field(ge=0, le=1e9)]] = Field(min_length=1, max_length=86_400)
    pv: list[Annotated[float, Field(ge=0, le=1e9)]] = Field(min_length=1, max_length=86_400)
    wind: list[Annotated[float, Field(ge=0, le=1e9)]] = Field(min_length=1, max_length=86_400)
    window_steps: int = Field(24, ge=1, le=100_000)

    @model_validator(mode="after")
    def _same_length(self) -> ProfileForecastSettings:
        if not len(self.load) == len(self.pv) == len(self.wind):
            raise ValueError(f"load, pv and wind need as many values each, got {len(self.load)}, {len(self.pv)}, "
                             f"{len(self.wind)}")
        return self


class MqttForecastSettings(_Model):
    """An external forecaster's ``heron/{site}/{sender}/forecast``; persistence (counted late) when a step's forecast
    is not there within ``timeout_s`` (default: ``cycle.step_timeout_s``)."""

    kind: Literal["mqtt"]
    sender: str = Field(pattern=_ID, description="the forecaster's identity (SIL: plant)")
    timeout_s: float | None = Field(None, gt=0, le=MAX_S)


def _forecast_kind(value: Any) -> str:
    kind = value.get("kind", "persistence") if isinstance(value, dict) else getattr(value, "kind", "persistence")
    return kind if kind in ("persistence", "profile", "mqtt") else "persistence"


ForecastSettings = Annotated[Annotated[PersistenceForecastSettings, Tag("persistence")]
                             | Annotated[ProfileForecastSettings, Tag("profile")]
                             | Annotated[MqttForecastSettings, Tag("mqtt")], Discriminator(_forecast_kind)]
"""``[forecast]``: ``kind = "persistence"`` (default), ``"profile"`` or ``"mqtt"``."""


class FailsafeSettings(_Model):
    """Safe local mode (see docs/edge.md): battery holds at ``battery_mw``, the generator runs at
    ``generator_mw`` (the plant / device raises it to its minimum), and PV + wind are curtailed so
    the export stays below ``export_limit_mw`` (fully, when the load is unknown)."""

    upstream_timeout_s: float = Field(3.0, gt=0, le=MAX_S, description="no price (or clock) for this long -> failsafe")
    battery_mw: float = Field(0.0, ge=-MAX_MW, le=MAX_MW, description="within +/- battery_p_max_mw")
    generator_mw: float = Field(0.0, ge=0, le=MAX_MW, description="at most generator_p_max_mw")
    export_limit_mw: float = Field(0.0, ge=0, le=MAX_MW)


class OutboxSettings(_Model):
    """Telemetry that cannot be published waits in a SQLite file, at most ``max_records`` (oldest dropped)."""

    path: str = Field("heron-outbox.sqlite", min_length=1)
    max_records: int = Field(10_000, ge=1, le=10_000_000)


class SiteBattery(_Model):
    """A microgrid's battery as the protocols see it: its power rating (MW)."""

    p_max_mw: float = Field(gt=0, le=MAX_MW)


class SiteGenerator(_Model):
    """A microgrid's generator as the protocols see it: limits (MW) and fuel cost a p^2 + b p (USD/h)."""

    p_min_mw: float = Field(0.0, ge=0, le=MAX_MW)
    p_max_mw: float = Field(ge=0, le=MAX_MW)
    cost_a_usd_per_mw2h: float = Field(ge=0, le=_MAX_USD)
    cost_b_usd_per_mwh: float = Field(ge=-_MAX_USD, le=_MAX_USD)

    @model_validator(mode="after")
    def _limits(self) -> SiteGenerator:
        if self.p_min_mw > self.p_max_mw:
            raise ValueError("p_min_mw must not exceed p_max_mw")
        return self


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
    step_minutes: float = Field(60.0, gt=0, le=1440, description="the step length (minutes)")
    export_price_ratio: float = Field(1.0, ge=0, le=1, description="exports are credited at this fraction of the price")
    feeder_head_rating_mva: float = Field(2.5, gt=0, le=MAX_MW,
                                          description="substation rating (the operator's congestion rule)")
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
        except (TypeError, ArithmeticError) as exc:  # an option of the wrong type (a list for a number, ...)
            raise ValueError(f"options: {exc}") from None


class GatewayConfig(_Model):
    """Everything ``heron-edge agent`` needs (see examples/gateway-rpi.toml)."""

    agent_id: str = Field(pattern=_ID)
    site: str = Field(pattern=_ID)
    upstream_id: str = Field("system_operator", pattern=_ID, description="the only accepted sender of prices and commands")
    peers: list[str] = Field(default_factory=list, description="every microgrid agent of the site, in agent order")
    neighbours: list[str] | None = Field(None, description="whose telemetry this agent observes (its site-graph "
                                         "neighbours, among peers); None: the agents before and after it in peers "
                                         "order (the 'feeder' site graph of heron_edge.site_graph)")
    battery_p_max_mw: float = Field(gt=0, le=MAX_MW, description="scales the normalised battery action")
    generator_p_max_mw: float = Field(0.0, ge=0, le=MAX_MW,
                                      description="scales the normalised generator action (0: none)")
    broker: BrokerSettings
    links: dict[Annotated[str, Field(pattern=_ID)], LinkSettings] = Field(
        default_factory=dict, description="shared Modbus links (RS-485 buses, TCP gateways) that devices name")
    devices: DeviceSettings
    policy: PolicySettings
    cycle: CycleSettings = CycleSettings()
    failsafe: FailsafeSettings = FailsafeSettings()
    forecast: ForecastSettings = Field(default_factory=PersistenceForecastSettings,
                                       description="where the next step's load, PV and wind come from")
    outbox: OutboxSettings = OutboxSettings()
    status_file: str | None = Field(None, min_length=1, description="also write the status as JSON here every cycle")
    command_key_env: str | None = Field(None, description="environment variable holding this agent's command key "
                                        "(hex, >= 16 bytes): commands must then carry a valid HMAC")
    coordination: CoordinationSettings | None = Field(None, description="the coordination protocols (None: price only)")
    journal_file: str | None = Field(None, min_length=1, description="append one JSON line per completed step here "
                                     "(what the protocols said and the action taken)")

    @model_validator(mode="before")
    @classmethod
    def _links(cls, data: Any) -> Any:
        return _apply_links(data)

    @model_validator(mode="after")
    def _maps(self) -> GatewayConfig:
        """Every register map loads and fills its device's role, and devices on one serial port drive it alike (said
        at load time, not at the first cycle)."""
        from firmware_bridge.regmap import MapError, load_map

        lines: dict[str, tuple[str, tuple[object, ...]]] = {}
        for role in _ROLES:
            device = getattr(self.devices, role)
            if device is None or device.transport != "rtu":
                continue
            line = (device.baudrate, device.parity, device.stopbits, device.bytesize)
            first = lines.setdefault(device.serial_port or "", (role, line))
            if first[1] != line:
                raise ValueError(f"devices.{role}: {device.serial_port} is driven as (baudrate, parity, stopbits, "
                                 f"bytesize) {line} here but {first[1]} by devices.{first[0]}; declare it once in "
                                 "[links.NAME]")
        for role in _ROLES:
            device = getattr(self.devices, role)
            if device is None or device.map is None:
                continue
            try:
                regmap = load_map(device.map)
            except MapError as exc:
                raise ValueError(f"devices.{role}.map: {exc}") from None
            if regmap.missing(role):  # type: ignore[arg-type]
                raise ValueError(f"devices.{role}.map: {regmap.name} cannot fill the {role} role: it has no point for "
                                 f"{', '.join(regmap.missing(role))}")  # type: ignore[arg-type]
        return self

    @model_validator(mode="after")
    def _consistent(self) -> GatewayConfig:
        if self.generator_p_max_mw > 0 and self.devices.generator is None:
            raise ValueError("generator_p_max_mw > 0 needs devices.generator")
        for role in ("battery", "generator", "pv", "wind"):  # a setpoint must outlive the cycle that wrote it
            device = getattr(self.devices, role)
            revert = device.setpoint_revert_s if device is not None else 0
            if device is not None and 0 < revert < self.cycle.period_s and not device.keepalive:
                raise ValueError(f"devices.{role}: setpoint_revert_s ({revert} s) is shorter than cycle.period_s "
                                 f"({self.cycle.period_s:g} s) without keepalive: the device would drop every setpoint "
                                 f"between cycles; set keepalive = true (re-written every {revert / 2:g} s) or "
                                 "setpoint_revert_s >= cycle.period_s")
        if len(set(self.peers)) != len(self.peers):
            raise ValueError("peers has duplicates")
        strangers = sorted(set(self.neighbours or ()) - set(self.agents) | ({self.agent_id} & set(self.neighbours or ())))
        if strangers:
            raise ValueError(f"neighbours {strangers} must be other agents listed in peers")
        if self.cycle.step_timeout_s > self.failsafe.upstream_timeout_s:
            raise ValueError("cycle.step_timeout_s must not exceed failsafe.upstream_timeout_s")
        if isinstance(self.forecast, ProfileForecastSettings) and len(self.forecast.load) != self.cycle.steps_per_day:
            raise ValueError(f"forecast: a profile needs cycle.steps_per_day ({self.cycle.steps_per_day}) values per "
                             f"series, got {len(self.forecast.load)}")
        f = self.failsafe
        if abs(f.battery_mw) > self.battery_p_max_mw:
            raise ValueError(f"failsafe.battery_mw ({f.battery_mw}) must be within +/- battery_p_max_mw "
                             f"({self.battery_p_max_mw})")
        if f.generator_mw > self.generator_p_max_mw:
            raise ValueError(f"failsafe.generator_mw ({f.generator_mw}) must not exceed generator_p_max_mw "
                             f"({self.generator_p_max_mw})")
        files = [(name, path) for name, path in self.written_files() if path is not None]
        for i, (name, path) in enumerate(files):
            for other, other_path in files[:i]:
                if os.path.abspath(path) == os.path.abspath(other_path):
                    raise ValueError(f"{name} and {other} are the same file ({path})")
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

    def written_files(self) -> list[tuple[str, str | None]]:
        """``(field, path)`` of every file the gateway writes (path None when not configured)."""
        return [("outbox.path", self.outbox.path), ("status_file", self.status_file), ("journal_file", self.journal_file)]

    @property
    def agents(self) -> list[str]:
        """Every microgrid agent of the site, this one included (peers order, this one appended if missing)."""
        return self.peers if self.agent_id in self.peers else [*self.peers, self.agent_id]


def _one_line(text: str) -> str:
    """``text`` on one line, without pydantic's "For further information visit <url>" trailers."""
    return " ".join(re.sub(r"For further information visit \S+", "", text).split())


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'config'}: "
        f"{'unknown field' if err['type'] == 'extra_forbidden' else err['msg']}"
        for err in exc.errors()
    )


def _raw_problems(data: Any, where: str = "", depth: int = 0) -> list[str]:
    """What no field may hold, found before the schema runs (so options and device tables are covered
    too): a NaN or infinite number, a non-string key, nesting deeper than ``_MAX_DEPTH``."""
    name = where or "config"
    if isinstance(data, float):
        return [] if math.isfinite(data) else [f"{name}: {data} is not a finite number"]
    if not isinstance(data, (dict, list, tuple)):
        return []
    if depth >= _MAX_DEPTH:
        return [f"{name}: nested more than {_MAX_DEPTH} levels deep"]
    problems: list[str] = []
    items = data.items() if isinstance(data, dict) else enumerate(data)
    for key, value in items:
        if isinstance(data, dict) and not isinstance(key, str):
            problems.append(f"{name}: key {key!r} is not a string")
            continue
        problems += _raw_problems(value, f"{where}.{key}" if where else str(key), depth + 1)
    return problems


def parse_gateway_config(data: dict[str, Any], *, source: str = "config") -> GatewayConfig:
    """Validate a mapping; ConfigError names every bad field (dotted path)."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid gateway config {source}: the top level must be a table/mapping")
    problems = _raw_problems(data)
    if problems:
        raise ConfigError(f"invalid gateway config {source}: {'; '.join(problems[:10])}")
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(f"invalid gateway config {source}: {_problems(exc)}")) from exc
    except (TypeError, ValueError, ArithmeticError, RecursionError) as exc:  # a validator tripped on a bad value
        raise ConfigError(_one_line(f"invalid gateway config {source}: {type(exc).__name__}: {exc}")) from exc


def _read_text(path: Path) -> str:
    """The file as UTF-8 text; ConfigError when unreadable, too large or not UTF-8."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read gateway config {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"gateway config {path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"gateway config {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from exc


def _parse_text(path: Path, text: str) -> Any:
    """TOML (or, by suffix, YAML) to Python data; ConfigError for a syntax error or absurd nesting."""
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError(f"{path}: YAML configs need PyYAML (pip install pyyaml); or use TOML") from exc
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from exc
        except RecursionError as exc:
            raise ConfigError(f"{path}: nested too deeply") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except RecursionError as exc:  # tomllib recurses once per nested array / inline table
        raise ConfigError(f"{path}: nested too deeply") from exc


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _check_path(field: str, value: str) -> None:
    """One file the gateway writes: its directory exists (created when missing) and is writable; the
    file, if there, is a writable regular file. ConfigError naming ``field`` and the path."""
    try:
        _check_path_unguarded(field, value)
    except OSError as exc:  # e.g. a stat refused on the way (permissions)
        raise ConfigError(f"{field}: cannot use {value}: {exc.strerror or exc}") from exc


def _check_path_unguarded(field: str, value: str) -> None:
    path = Path(value)
    parent = path.parent
    if path.is_dir():
        raise ConfigError(f"{field}: {value} is a directory, not a file")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{field}: {value} is not a regular file")
    if not parent.is_dir():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise ConfigError(f"{field}: cannot create the directory {parent} of {value}: a part of it is a file") from exc
        except OSError as exc:
            raise ConfigError(f"{field}: cannot create the directory {parent} of {value}: "
                              f"{exc.strerror or exc}") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{field}: the directory {parent} of {value} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{field}: {value} is not writable")
    if field == "outbox.path" and path.exists() and path.stat().st_size > 0:
        try:
            with open(path, "rb") as f:
                magic = f.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise ConfigError(f"{field}: cannot read {value}: {exc.strerror or exc}") from exc
        if magic != _SQLITE_MAGIC:
            raise ConfigError(f"{field}: {value} exists and is not an SQLite database")


def check_files(config: GatewayConfig) -> None:
    """Check every file the gateway writes (outbox, status, journal), creating missing directories;
    ConfigError naming the field and the path. Run at start so a bad path stops the agent at once
    instead of failing at its first write."""
    for field, value in config.written_files():
        if value is not None:
            _check_path(field, value)


def load_gateway_config(path: str | Path, *, check_paths: bool = False) -> GatewayConfig:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``, needs PyYAML) file and validate it; with
    ``check_paths`` also check (and create the directories of) the files it names. Every problem is a
    ConfigError: unreadable, not UTF-8, bad syntax, too deep, wrong type or value, bad path."""
    path = Path(path)
    data = _parse_text(path, _read_text(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table/mapping")
    config = parse_gateway_config(data, source=str(path))
    if check_paths:
        try:
            check_files(config)
        except ConfigError as exc:
            raise ConfigError(f"gateway config {path}: {exc}") from exc
    return config
