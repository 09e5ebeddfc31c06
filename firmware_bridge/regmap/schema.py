"""A register map in TOML, validated: what a device that does not speak SunSpec exposes, point by point.

    [device]
    vendor = "Eastron"
    model = "SDM630"
    word_order = "big"        # default of every point: high word first
    [[points]]
    name = "total_power"
    role = "meter.p_w"        # the role field it feeds (ROLE_FIELDS), none for a point read only by the probe
    table = "input"           # holding | input | coil | discrete
    address = 52              # protocol address (0-based; a manual's 30053 is input register 52)
    type = "f32"              # u16 i16 u32 i32 u64 i64 f32 f64 string bool
    units = "W"

A value is ``raw * scale * 10**scale_register + offset``; a raw value equal to ``not_implemented`` (or a NaN
float) reads as None. Writable points (``access = "rw"``) carry ``min`` / ``max`` (a write is clamped to them)
and the function that writes them (``write_function`` 6 or 16).
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from firmware_bridge.capabilities import PowerLimits, Role
from firmware_bridge.errors import ConfigurationError
from firmware_bridge.link import Table

__all__ = ["MAPS_DIR", "READ_FIELDS", "REQUIRED", "ROLE_FIELDS", "WRITE_FIELDS", "MapDevice", "MapError", "Point", "PointType",
           "RegisterMap", "Table", "load_map", "parse_map", "shipped_maps"]

MAPS_DIR = Path(__file__).parent / "maps"
"""The shipped maps, one ``vendor-model.toml`` each."""

PointType = Literal["u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "string", "bool"]

READ_FIELDS: dict[Role, tuple[str, ...]] = {
    "battery": ("p_w", "q_var", "v_v", "hz", "soc_pct", "energy_available_wh"),
    "generator": ("p_w", "q_var", "v_v", "hz"),
    "pv": ("p_w", "q_var", "v_v", "hz", "dc_w"),
    "wind": ("p_w", "q_var", "v_v", "hz", "dc_w"),
    "meter": ("p_w", "q_var", "v_v", "hz", "phase_a_w", "phase_b_w", "phase_c_w"),
}
"""What a map point can feed per role: the fields of ``firmware_bridge.Telemetry`` (a SunSpec device's reading), in
its units and signs: p_w + injected (a meter: + imported from the grid), var, V line to line, Hz, %, Wh, W."""
WRITE_FIELDS: dict[Role, tuple[str, ...]] = {
    "battery": ("p_set_w",), "generator": ("p_set_w",), "pv": ("p_limit_w",), "wind": ("p_limit_w",), "meter": (),
}
"""What a writable point can take per role: p_set_w, the active power commanded (W, + discharge / output, the
SunSpec device's ``battery_power`` / ``power``); p_limit_w, an output cap (W, the ``curtailment``)."""
ROLE_FIELDS: frozenset[str] = frozenset(f"{role}.{name}" for role, names in READ_FIELDS.items() for name in
                                        (*names, *WRITE_FIELDS[role]))
REQUIRED: dict[Role, tuple[str, ...]] = {
    "battery": ("p_w", "soc_pct", "p_set_w"),
    "generator": ("p_w", "p_set_w"),
    "pv": ("p_w", "p_limit_w"),
    "wind": ("p_w", "p_limit_w"),
    "meter": ("p_w",),
}
"""What a map must have to fill a role (as a SunSpec device needs its capabilities); the write limits of the
role's command point are the role's power limits."""

_REGISTERS = {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "u64": 4, "i64": 4, "f32": 2, "f64": 4, "bool": 1}
_NAME = r"^[a-z][a-z0-9_]*$"


class MapError(ConfigurationError):
    """A register map that cannot be used; the message names the file, the point and the field, on one line."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MapDevice(_Model):
    """The ``[device]`` table: identity, defaults of every point, and how reads are batched.

    max_read: the most registers one request may ask for (125 by the standard; some devices take fewer).
    max_gap: two points this many unneeded registers apart or less are read in one request (0: only adjacent ones;
    raise it for devices that answer unused addresses). unit_id: the unit id the device answers by default."""

    vendor: str = Field(min_length=1)
    model: str = Field(min_length=1)
    document: str = Field("", description="the vendor document the map follows")
    unit_id: int = Field(1, ge=0, le=255)
    word_order: Literal["big", "little"] = "big"
    byte_order: Literal["big", "little"] = "big"
    max_read: int = Field(125, ge=1, le=125)
    max_gap: int = Field(0, ge=0, le=124)


class Point(_Model):
    """One value of the device (see the module docstring); ``size`` registers (bits, in a coil or discrete table)
    from ``address`` of ``table``."""

    name: str = Field(pattern=_NAME)
    role: str | None = None
    table: Table = "holding"
    address: int = Field(ge=0, le=0xFFFF)
    type: PointType = "u16"
    length: int | None = Field(None, ge=1, le=123, description="registers of a string")
    word_order: Literal["big", "little"] | None = None
    byte_order: Literal["big", "little"] | None = None
    scale: float = Field(1.0, description="value = raw * scale (* 10**scale_register) + offset")
    offset: float = 0.0
    scale_register: str | None = Field(None, pattern=_NAME, description="a point holding a power of ten (SunSpec's _SF)")
    not_implemented: list[int] = Field(default_factory=list, description="raw values that mean 'not implemented'")
    access: Literal["r", "rw", "w"] = "r"
    min: float | None = None
    max: float | None = None
    write_function: Literal[6, 16] = 16
    units: str = ""
    description: str = ""
    example: float | str | None = Field(None, description="a plausible value, what `heron-edge emulate` serves")

    @field_validator("not_implemented", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("must not be 0")
        return value

    @field_validator("role")
    @classmethod
    def _known_role(cls, value: str | None) -> str | None:
        if value is not None and value not in ROLE_FIELDS:
            raise ValueError(f"{value!r} is not one of {', '.join(sorted(ROLE_FIELDS))}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Point:
        bits = self.table in ("coil", "discrete")
        if bits and self.type != "bool":
            raise ValueError(f"type: a {self.table} holds one bit: type 'bool', not {self.type!r}")
        if not bits and self.type == "bool":
            raise ValueError(f"type: 'bool' is for coil / discrete tables, not {self.table}")
        if self.type == "string" and self.length is None:
            raise ValueError("length: a string needs its length in registers")
        if self.type != "string" and self.length is not None:
            raise ValueError("length: only a string has a length")
        if self.address + self.size > 0x10000:
            raise ValueError(f"address: {self.address} + {self.size} registers pass 65535")
        writable = self.access != "r"
        if writable and self.table in ("input", "discrete"):
            raise ValueError(f"access: the {self.table} table is read-only")
        if writable and self.type not in ("string", "bool") and (self.min is None or self.max is None):
            raise ValueError("min: a writable number needs write limits min and max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min: {self.min} is above max {self.max}")
        if self.write_function == 6 and self.size != 1:
            raise ValueError(f"write_function: 6 writes one register; a {self.type} takes {self.size}")
        if self.role is not None:
            role, _, field = self.role.partition(".")
            if field in WRITE_FIELDS[role] and not writable:  # type: ignore[index]
                raise ValueError(f"access: {self.role} is a command: access 'rw' or 'w'")
            if field not in WRITE_FIELDS[role] and self.access == "w":  # type: ignore[index]
                raise ValueError(f"access: {self.role} is read: access 'r' or 'rw'")
        return self

    @property
    def size(self) -> int:
        """Registers (or bits) it spans."""
        return self.length if self.type == "string" and self.length is not None else _REGISTERS[self.type]

    @property
    def readable(self) -> bool:
        return self.access != "w"

    @property
    def writable(self) -> bool:
        return self.access != "r"

    def clamp(self, value: float) -> float:
        """``value`` within the write limits."""
        low = self.min if self.min is not None else value
        high = self.max if self.max is not None else value
        return min(max(value, low), high)

    def where(self) -> str:
        """``input 52 (f32)``: where it sits, for messages."""
        return f"{self.table} {self.address} ({self.type})"


class RegisterMap(_Model):
    """A whole map: the device table and its points. ``source`` is the file it came from (for messages)."""

    device: MapDevice
    points: list[Point] = Field(min_length=1)
    source: str = Field("", exclude=True)

    @model_validator(mode="after")
    def _cross_checks(self) -> RegisterMap:
        seen: dict[str, Point] = {}
        roles: dict[str, str] = {}
        for point in self.points:
            if point.name in seen:
                raise ValueError(f"point {point.name}: name: used twice")
            seen[point.name] = point
            if point.role is not None:
                if point.role in roles:
                    raise ValueError(f"point {point.name}: role: {point.role} is fed by {roles[point.role]} already")
                roles[point.role] = point.name
        for point in self.points:
            if point.scale_register is not None:
                sf = seen.get(point.scale_register)
                if sf is None:
                    raise ValueError(f"point {point.name}: scale_register: no point {point.scale_register!r}")
                if sf.type not in ("i16", "u16") or not sf.readable:
                    raise ValueError(f"point {point.name}: scale_register: {sf.name} must be a readable i16 / u16")
        return self

    @property
    def name(self) -> str:
        """``eastron-sdm630``: the file's stem, or vendor-model."""
        return Path(self.source).stem if self.source else f"{self.device.vendor}-{self.device.model}".lower()

    def point(self, name: str) -> Point:
        """The point called ``name``; KeyError naming the map when there is none."""
        for point in self.points:
            if point.name == name:
                return point
        raise KeyError(f"{self.name}: no point {name!r}")

    def feeding(self, role_field: str) -> Point | None:
        """The point that feeds ``role.field`` (None: the map has none)."""
        return next((p for p in self.points if p.role == role_field), None)

    def missing(self, role: Role) -> list[str]:
        """The role fields the map lacks to fill ``role`` (empty: it fills it)."""
        return [f"{role}.{f}" for f in REQUIRED[role] if self.feeding(f"{role}.{f}") is None]

    @property
    def fillable_roles(self) -> list[Role]:
        """Every role the map can fill."""
        return [role for role in REQUIRED if not self.missing(role)]

    def limits(self, role: Role) -> PowerLimits | None:
        """The role's active-power range: the write limits of its command point (W)."""
        command = next((self.feeding(f"{role}.{f}") for f in WRITE_FIELDS[role]), None)
        if command is None or command.min is None or command.max is None:
            return None
        return PowerLimits(min(command.min, 0.0), max(command.max, 0.0))


def _point_names(data: Any) -> list[str]:
    points = data.get("points") if isinstance(data, dict) else None
    if not isinstance(points, list):
        return []
    return [str(p.get("name", f"#{i}")) if isinstance(p, dict) else f"#{i}" for i, p in enumerate(points)]


def _one_line(text: str) -> str:
    return " ".join(re.sub(r"For further information visit \S+", "", text).split())


def parse_map(data: Any, *, source: str) -> RegisterMap:
    """Validate a map given as Python data; MapError names ``source``, the point and the field."""
    if not isinstance(data, dict):
        raise MapError(f"{source}: a register map is a TOML table with [device] and [[points]]")
    names = _point_names(data)
    try:
        return RegisterMap.model_validate({**data, "source": source})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "points" and isinstance(loc[1], int):
            name = names[loc[1]] if loc[1] < len(names) else f"#{loc[1]}"
            field = ".".join(str(p) for p in loc[2:])
            message = err["msg"].removeprefix("Value error, ")
            if not field and ": " in message:  # a check across the point's fields names the field first
                field, message = message.split(": ", 1)
            where = f"point {name}: {field or 'point'}: "
        elif loc:
            where = f"{'.'.join(str(p) for p in loc)}: "
            message = err["msg"].removeprefix("Value error, ")
        else:
            message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise MapError(_one_line(f"{source}: {where}{message}{more}")) from None


def shipped_maps() -> list[str]:
    """The names of the shipped maps (``vendor-model``)."""
    return sorted(p.stem for p in MAPS_DIR.glob("*.toml"))


def load_map(name_or_path: str | Path) -> RegisterMap:
    """A shipped map by name (``eastron-sdm630``) or a TOML file by path; MapError on any problem, one line."""
    text = str(name_or_path)
    path = Path(text)
    if not path.suffix and not path.exists() and re.fullmatch(r"[a-z0-9][a-z0-9_-]*", text):
        path = MAPS_DIR / f"{text}.toml"
        if not path.is_file():
            raise MapError(f"no shipped map {text!r} (shipped: {', '.join(shipped_maps())}; or give a file path)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MapError(f"{path}: cannot read the register map: {exc.strerror or exc}") from None
    if len(raw) > 1 << 20:
        raise MapError(f"{path}: larger than 1 MiB; not a register map")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise MapError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise MapError(f"{path}: not valid TOML: {exc}") from None
    return parse_map(data, source=str(path))
