"""SunSpec register images: model definitions (read at run time from pysunspec2's model JSON), the
register codec, model layouts, views over registers and whole device maps.

A SunSpec device map starts at a base address (40000 by convention, 0 or 50000 on some devices) with
the marker 'SunS' (0x5375 0x6E53), followed by models laid end to end (each: model id, length L,
then L registers of points) and the end marker (id 0xFFFF, L 0). Point offsets count from the
model's first register (the id), so the first point after ID and L is at offset 2, as in the SunSpec
JSON model definitions.

Definitions: :func:`load_model` reads ``model_<id>.json`` from the installed ``sunspec2`` package
(pysunspec2, the SunSpec Alliance's own definitions: every model, with its groups, scale factors,
access, enumerations and units). Only the JSON files are read: pysunspec2's blocking Modbus client
is never imported. A definition (:class:`ModelSpec`) becomes a concrete :class:`ModelDef` (every
point at its offset) by :meth:`ModelSpec.layout`, which instantiates repeating groups: a group with
a fixed count, one whose count is a point of the model (``NCrv``), or a legacy one that repeats to
fill the model's length L. Points are named as in pysunspec2: ``W``; a point of a non-repeating
group ``PFWInj.PF``; of a repeating group ``module[1].DCW`` (1-based).

Values travel as integers: ``value = raw * 10**sf`` where ``sf`` is either a constant or the signed
int16 held by the point's scale-factor point (searched in the point's own group, then at the top of
the model, as pysunspec2 does). Float types (float32, float64) carry their value directly. Every
type has a 'not implemented' sentinel (0x8000 for int16, 0xFFFF for uint16, 0x80000000 for int32,
0 for accumulators and addresses, a quiet NaN for floats, ...); we decode it to ``None`` and encode
``None`` as it.
"""
from __future__ import annotations

import functools
import json
import math
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableSequence, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, NamedTuple, cast

from firmware_bridge.errors import EncodingError, SunSpecDefinitionError

__all__ = [
    "BASE_ADDRESS",
    "BASE_ADDRESSES",
    "END_MODEL_ID",
    "SUNS_MARKER",
    "GroupSpec",
    "ModelDef",
    "ModelLocation",
    "ModelSpec",
    "ModelView",
    "P",
    "PointDef",
    "PointSpec",
    "PointType",
    "SunSpecImage",
    "decode_point",
    "encode_point",
    "fit_scale_factor",
    "from_raw",
    "iter_chain",
    "load_model",
    "model_ids",
    "not_implemented",
    "raw_range",
    "to_raw",
]

BASE_ADDRESS = 40000
"""Protocol (0-based) address of the 'SunS' marker; Modbus documentation often writes it 40001."""
BASE_ADDRESSES = (40000, 0, 50000)
"""Where devices put the 'SunS' marker, in the order a scan tries them (SunSpec's own list)."""
SUNS_MARKER = (0x5375, 0x6E53)  # b"SunS"
END_MODEL_ID = 0xFFFF

PointType = Literal[
    "int16", "uint16", "acc16", "enum16", "bitfield16", "count", "sunssf", "pad",
    "int32", "uint32", "acc32", "enum32", "bitfield32", "ipaddr",
    "int64", "uint64", "acc64", "eui48", "ipv6addr",
    "float32", "float64",
    "string",
]


class _TypeInfo(NamedTuple):
    size: int  # registers (0: strings, sized by their definition)
    kind: Literal["int", "float", "str"]
    signed: bool
    sentinel: int  # the 'not implemented' raw value, as the unsigned register content


_TYPES: dict[str, _TypeInfo] = {
    "int16": _TypeInfo(1, "int", True, 0x8000),
    "uint16": _TypeInfo(1, "int", False, 0xFFFF),
    "acc16": _TypeInfo(1, "int", False, 0),
    "enum16": _TypeInfo(1, "int", False, 0xFFFF),
    "bitfield16": _TypeInfo(1, "int", False, 0xFFFF),
    "count": _TypeInfo(1, "int", False, 0xFFFF),
    "sunssf": _TypeInfo(1, "int", True, 0x8000),
    "pad": _TypeInfo(1, "int", False, 0x8000),
    "int32": _TypeInfo(2, "int", True, 0x8000_0000),
    "uint32": _TypeInfo(2, "int", False, 0xFFFF_FFFF),
    "acc32": _TypeInfo(2, "int", False, 0),
    "enum32": _TypeInfo(2, "int", False, 0xFFFF_FFFF),
    "bitfield32": _TypeInfo(2, "int", False, 0xFFFF_FFFF),
    "ipaddr": _TypeInfo(2, "int", False, 0),
    "int64": _TypeInfo(4, "int", True, 0x8000_0000_0000_0000),
    "uint64": _TypeInfo(4, "int", False, 0xFFFF_FFFF_FFFF_FFFF),
    "acc64": _TypeInfo(4, "int", False, 0),
    "eui48": _TypeInfo(4, "int", False, 0),
    "ipv6addr": _TypeInfo(8, "int", False, 0),
    "float32": _TypeInfo(2, "float", False, 0x7FC0_0000),
    "float64": _TypeInfo(4, "float", False, 0x7FF8_0000_0000_0000),
    "string": _TypeInfo(0, "str", False, 0),  # size comes from the point definition
}

Raw = int | float | str | None
"""A point's raw content: an integer (unscaled), a float (float types), text, or None (not implemented)."""


# --------------------------------------------------------------------------- definitions


@dataclass(frozen=True, slots=True)
class PointDef:
    """One point of a laid-out model: its name (``W``, ``PFWInj.PF``, ``module[1].DCW``), offset from the
    model's ID register, type, size in registers, scale factor (the name of its scale-factor point in this
    layout, a constant, or None), writability, units, enumeration / bit symbols, and whether the SunSpec
    definition makes it mandatory or static."""

    name: str
    offset: int
    type: PointType
    size: int
    sf: str | int | None = None
    rw: bool = False
    units: str | None = None
    symbols: tuple[tuple[str, int], ...] = ()
    mandatory: bool = False
    static: bool = False
    label: str | None = None

    def symbol(self, name: str) -> int:
        """The value of the enumeration symbol ``name`` (KeyError naming the point when there is none)."""
        for symbol, value in self.symbols:
            if symbol == name:
                return value
        raise KeyError(f"point {self.name} has no symbol {name!r}")

    def symbol_name(self, value: int) -> str | None:
        """The symbol of an enumeration value (None when the definition has none for it)."""
        return next((symbol for symbol, v in self.symbols if v == value), None)


def P(
    name: str,
    offset: int,
    type: PointType,
    *,
    size: int | None = None,
    sf: str | int | None = None,
    rw: bool = False,
    units: str | None = None,
) -> PointDef:
    """Build a PointDef by hand (tests, ad-hoc maps); ``size`` is needed only for strings."""
    if type not in _TYPES:
        raise SunSpecDefinitionError(f"point {name}: unknown SunSpec type {type!r}")
    if type == "string":
        if not size:
            raise SunSpecDefinitionError(f"point {name}: a string needs a size in registers")
    else:
        if size is not None and size != _TYPES[type].size:
            raise SunSpecDefinitionError(f"point {name}: {type} has size {_TYPES[type].size}, not {size}")
        size = _TYPES[type].size
    return PointDef(name, offset, type, size, sf, rw, units)


@dataclass(frozen=True)
class ModelDef:
    """A SunSpec model laid out: id, name and its points at their offsets. ``length`` is L (registers after
    ID and L). Build one with :meth:`ModelSpec.layout` (or by hand from :func:`P` points)."""

    id: int
    name: str
    points: tuple[PointDef, ...]
    label: str | None = None
    points_by_name: dict[str, PointDef] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        offset = 2
        by_name: dict[str, PointDef] = {}
        for point in self.points:
            if point.offset != offset:
                raise SunSpecDefinitionError(f"model {self.id}: {point.name} at offset {point.offset}, expected {offset}")
            if point.name in by_name or point.name in ("ID", "L"):
                raise SunSpecDefinitionError(f"model {self.id}: duplicate point {point.name}")
            by_name[point.name] = point
            offset += point.size
        for point in self.points:
            if isinstance(point.sf, str) and (point.sf not in by_name or by_name[point.sf].type != "sunssf"):
                raise SunSpecDefinitionError(f"model {self.id}: {point.name} names {point.sf!r}, not a sunssf point here")
        object.__setattr__(self, "points_by_name", by_name)

    @property
    def length(self) -> int:
        """L: the model's registers after ID and L."""
        if not self.points:
            return 0
        last = self.points[-1]
        return last.offset + last.size - 2

    def point(self, name: str) -> PointDef:
        """The point called ``name``; KeyError names the model when there is none."""
        try:
            return self.points_by_name[name]
        except KeyError:
            raise KeyError(f"model {self.id} ({self.name}) has no point {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.points_by_name


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One point as the JSON definition gives it (no offset yet): see :class:`PointDef`."""

    name: str
    type: PointType
    size: int
    sf: str | int | None
    rw: bool
    units: str | None
    symbols: tuple[tuple[str, int], ...]
    mandatory: bool
    static: bool
    label: str | None


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A group of a definition. ``count``: None (once, not repeated), an int > 0 (that many times), 0 (a legacy
    repeating group: as many as fit in the model's length), or the name of the point holding the count."""

    name: str
    count: int | str | None
    points: tuple[PointSpec, ...]
    groups: tuple[GroupSpec, ...]

    @property
    def repeating(self) -> bool:
        return self.count is not None or any(g.repeating for g in self.groups)

    def fixed_size(self) -> int | None:
        """Registers of one instance, None when it holds a repeating group (its size depends on counts)."""
        if any(g.count is not None for g in self.groups):
            return None
        inner = [g.fixed_size() for g in self.groups]
        if any(s is None for s in inner):
            return None
        return sum(p.size for p in self.points) + sum(cast(int, s) for s in inner)


@dataclass(frozen=True)
class ModelSpec:
    """A model's definition from pysunspec2's JSON: id, name, label, description and its top-level group."""

    id: int
    name: str
    label: str | None
    description: str | None
    group: GroupSpec

    @property
    def repeating(self) -> bool:
        """Whether the layout depends on counts (repeating groups)."""
        return any(g.count is not None or g.repeating for g in self.group.groups)

    def layout(self, length: int | None = None, *, counts: Mapping[str, int] | None = None,
               registers: Sequence[int] | None = None) -> ModelDef:
        """The model laid out. Repeating groups take their count from ``counts`` (by group name, e.g.
        ``{"module": 2}``), else from ``registers`` (the model's registers, ID first: a count point's value),
        else, for a legacy group (count 0), from ``length`` (L) as pysunspec2 does; none of them: 0 instances.
        Without repeating groups neither is needed, and the result is cached."""
        if not self.repeating:
            return _fixed_layout(self)
        return _lay_out(self, length, counts or {}, registers)


def _point_spec(data: Mapping[str, Any]) -> PointSpec:
    ptype = str(data["type"])
    if ptype not in _TYPES:
        raise SunSpecDefinitionError(f"point {data.get('name')}: unknown SunSpec type {ptype!r}")
    size = int(data["size"]) if ptype == "string" else _TYPES[ptype].size
    if ptype != "string" and "size" in data and int(data["size"]) != size:
        raise SunSpecDefinitionError(f"point {data['name']}: {ptype} of size {data['size']}")
    sf_raw = data.get("sf")
    sf: str | int | None
    if sf_raw is None or sf_raw == "":
        sf = None
    elif isinstance(sf_raw, int):
        sf = sf_raw
    else:
        try:
            sf = int(str(sf_raw), 0)
        except ValueError:
            sf = str(sf_raw)
    symbols = tuple((str(s["name"]), int(s["value"])) for s in data.get("symbols", ()))
    return PointSpec(
        name=str(data["name"]), type=cast(PointType, ptype), size=size, sf=sf, rw=data.get("access", "R") == "RW",
        units=(str(data["units"]).strip() or None) if data.get("units") is not None else None, symbols=symbols,
        mandatory=data.get("mandatory", "O") == "M", static=data.get("static", "D") == "S",
        label=str(data["label"]) if data.get("label") else None)


def _group_spec(data: Mapping[str, Any]) -> GroupSpec:
    count_raw = data.get("count")
    count: int | str | None
    if count_raw is None:
        count = None
    else:
        try:
            count = int(count_raw)
        except (TypeError, ValueError):
            count = str(count_raw)
    return GroupSpec(name=str(data["name"]), count=count,
                     points=tuple(_point_spec(p) for p in data.get("points", ())),
                     groups=tuple(_group_spec(g) for g in data.get("groups", ())))


def _models_dir() -> Any:
    return resources.files("sunspec2") / "models" / "json"


@functools.cache
def model_ids() -> tuple[int, ...]:
    """Every model id pysunspec2 defines (its ``models/json/model_<id>.json`` files), ascending."""
    ids = []
    for entry in _models_dir().iterdir():
        name = entry.name
        if name.startswith("model_") and name.endswith(".json"):
            try:
                ids.append(int(name[len("model_"):-len(".json")]))
            except ValueError:
                continue
    return tuple(sorted(ids))


@functools.cache
def load_model(model_id: int) -> ModelSpec:
    """The definition of model ``model_id`` from pysunspec2's JSON; KeyError when pysunspec2 has none."""
    path = _models_dir() / f"model_{int(model_id)}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyError(f"no SunSpec definition of model {model_id} (pysunspec2 ships {len(model_ids())} models)") from None
    top = _group_spec(data["group"])
    if [p.name for p in top.points[:2]] != ["ID", "L"]:
        raise SunSpecDefinitionError(f"model {model_id}: the definition does not start with ID, L")
    group = data["group"]
    return ModelSpec(id=int(data["id"]), name=top.name, label=group.get("label"), description=group.get("desc"),
                     group=GroupSpec(top.name, None, top.points[2:], top.groups))


_FIXED: dict[int, ModelDef] = {}


def _fixed_layout(spec: ModelSpec) -> ModelDef:
    layout = _FIXED.get(spec.id)
    if layout is None:
        layout = _FIXED[spec.id] = _lay_out(spec, None, {}, None)
    return layout


def _lay_out(spec: ModelSpec, length: int | None, counts: Mapping[str, int], registers: Sequence[int] | None) -> ModelDef:
    points: list[PointDef] = []
    top_names: dict[str, str] = {}

    def count_point_value(full_name: str) -> int:
        if registers is None:
            return 0
        point = next((p for p in points if p.name == full_name), None)
        if point is None or point.offset + point.size > len(registers):
            return 0
        raw = decode_point(point, registers[point.offset : point.offset + point.size])
        return raw if isinstance(raw, int) else 0

    def lay(group: GroupSpec, prefix: str, offset: int, top: bool) -> int:
        local = {p.name: prefix + p.name for p in group.points}
        if top:
            top_names.update(local)
        for p in group.points:
            sf = p.sf
            if isinstance(sf, str):
                sf = local.get(sf) or top_names.get(sf) or sf
            points.append(PointDef(prefix + p.name, offset, p.type, p.size, sf, p.rw, p.units, p.symbols, p.mandatory,
                                   p.static, p.label))
            offset += p.size
        for sub in group.groups:
            if sub.count is None:
                offset = lay(sub, f"{prefix}{sub.name}.", offset, False)
                continue
            if sub.name in counts:
                n = int(counts[sub.name])
            elif isinstance(sub.count, str):
                n = count_point_value(local.get(sub.count) or top_names.get(sub.count) or sub.count)
            elif sub.count > 0:
                n = sub.count
            else:  # legacy: as many as fit in L after what is laid out so far
                size = sub.fixed_size()
                n = 0 if length is None or not size else max(0, (length + 2 - offset) // size)
            for i in range(1, max(n, 0) + 1):
                offset = lay(sub, f"{prefix}{sub.name}[{i}].", offset, False)
        return offset

    lay(spec.group, "", 2, True)
    return ModelDef(spec.id, spec.name, tuple(points), spec.label)


# --------------------------------------------------------------------------- codec


def not_implemented(ptype: PointType, size: int = 1) -> list[int]:
    """The registers of a 'not implemented' value of this type."""
    if ptype == "string":
        return [0] * size
    info = _TYPES[ptype]
    return _int_to_regs(info.sentinel, info.size)


def raw_range(ptype: PointType) -> tuple[int, int]:
    """Smallest and largest implemented raw integer of an integer type (its sentinel excluded)."""
    info = _TYPES[ptype]
    if info.kind != "int":
        raise SunSpecDefinitionError(f"{ptype} is not an integer type")
    bits = 16 * info.size
    if info.signed:
        return -(1 << (bits - 1)) + 1, (1 << (bits - 1)) - 1
    if info.sentinel == 0:  # accumulators, addresses: 0 means 'not implemented', the range starts at 1
        return 0, (1 << bits) - 1
    return 0, (1 << bits) - 2


def _int_to_regs(value: int, size: int) -> list[int]:
    return [(value >> (16 * (size - 1 - i))) & 0xFFFF for i in range(size)]


def _regs_to_int(regs: Sequence[int]) -> int:
    value = 0
    for reg in regs:
        value = (value << 16) | reg
    return value


def encode_point(point: PointDef, raw: Raw) -> list[int]:
    """Registers for a raw (unscaled) value; ``None`` encodes the type's 'not implemented' sentinel."""
    if raw is None:
        return not_implemented(point.type, point.size)
    info = _TYPES[point.type]
    if info.kind == "str":
        if not isinstance(raw, str):
            raise TypeError(f"{point.name}: a string point needs str, got {type(raw).__name__}")
        data = raw.encode("utf-8")[: 2 * point.size].ljust(2 * point.size, b"\0")
        return [(data[i] << 8) | data[i + 1] for i in range(0, len(data), 2)]
    if info.kind == "float":
        if isinstance(raw, (bool, str)) or not isinstance(raw, (int, float)):
            raise TypeError(f"{point.name}: a float point needs a number, got {type(raw).__name__}")
        if math.isnan(raw):
            return not_implemented(point.type)
        data = struct.pack(">f" if info.size == 2 else ">d", float(raw))
        return list(struct.unpack(f">{info.size}H", data))
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise TypeError(f"{point.name}: raw value must be int, got {type(raw).__name__}")
    low, high = raw_range(point.type)
    if not low <= raw <= high:
        raise EncodingError(f"{point.name}: raw {raw} outside {point.type} range [{low}, {high}]")
    return _int_to_regs(raw & ((1 << (16 * info.size)) - 1), info.size)


def decode_point(point: PointDef, regs: Sequence[int]) -> Raw:
    """Raw value from a point's registers; ``None`` when it holds the 'not implemented' sentinel."""
    info = _TYPES[point.type]
    if info.kind == "str":
        data = b"".join(reg.to_bytes(2, "big") for reg in regs[: point.size])
        text = data.split(b"\0", 1)[0].decode("utf-8", errors="replace").rstrip()
        return text or None
    if info.kind == "float":
        value = struct.unpack(">f" if info.size == 2 else ">d", struct.pack(f">{info.size}H", *regs[: info.size]))[0]
        return None if math.isnan(value) else float(value)
    value = _regs_to_int(regs[: info.size])
    if value == info.sentinel:
        return None
    if info.signed and value >= 1 << (16 * info.size - 1):
        value -= 1 << (16 * info.size)
    return value


def from_raw(raw: int | float | None, sf: int | None) -> float | None:
    """Engineering value ``raw * 10**sf``; None if either is not implemented."""
    if raw is None or sf is None:
        return None
    return raw / 10**-sf if sf < 0 else float(raw * 10**sf)


def to_raw(value: float, sf: int, ptype: PointType) -> int:
    """Raw integer for an engineering value at scale factor ``sf``; ValueError if not finite or out of range."""
    if not math.isfinite(value):
        raise EncodingError(f"value {value!r} is not finite")
    raw = round(value / 10.0**sf)
    low, high = raw_range(ptype)
    if not low <= raw <= high:
        raise EncodingError(f"{value} at sf {sf} is raw {raw}, outside {ptype} range [{low}, {high}]")
    return raw


def fit_scale_factor(max_abs: float, ptype: PointType, *, finest: int = 0) -> int:
    """The finest scale factor >= ``finest`` at which ``max_abs`` still fits in ``ptype``."""
    _, high = raw_range(ptype)
    sf = finest
    while abs(max_abs) / 10.0**sf > high:
        sf += 1
        if sf > 10:
            raise EncodingError(f"{max_abs} does not fit in {ptype} at any scale factor")
    return sf


# --------------------------------------------------------------------------- views and images


class ModelView:
    """Typed access to one model's registers inside a register list (a device image or a read).

    ``regs[start]`` is the model's ID register. Points beyond ``length`` (a device may ship a
    shorter model) read as not implemented.
    """

    __slots__ = ("length", "model", "regs", "start")

    def __init__(self, model: ModelDef, regs: MutableSequence[int], start: int = 0, length: int | None = None) -> None:
        self.model = model
        self.regs = regs
        self.start = start
        self.length = model.length if length is None else length

    def raw(self, name: str) -> Raw:
        """The point's raw value (None if not implemented or absent)."""
        point = self.model.points_by_name.get(name) or self.model.point(name)
        return self._raw(point)

    def _raw(self, point: PointDef) -> Raw:
        if point.offset + point.size > self.length + 2:
            return None
        begin = self.start + point.offset
        if point.size == 1 and point.type != "string":  # the common case, without slicing
            value = self.regs[begin]
            info = _TYPES[point.type]
            if value == info.sentinel:
                return None
            return value - 0x10000 if info.signed and value >= 0x8000 else value
        return decode_point(point, self.regs[begin : begin + point.size])

    def implemented(self, name: str) -> bool:
        """Whether the point exists in this model and holds a value (not the 'not implemented' sentinel)."""
        return name in self.model.points_by_name and self.raw(name) is not None

    def sf(self, name: str) -> int | None:
        """The scale factor that applies to point ``name`` (None if it has none or it is not implemented)."""
        sf = self.model.point(name).sf
        if sf is None or isinstance(sf, int):
            return sf
        raw = self.raw(sf)
        return raw if isinstance(raw, int) else None

    def value(self, name: str) -> float | None:
        """The engineering value (scaled when the point has a scale factor); None if not implemented."""
        by_name = self.model.points_by_name
        point = by_name.get(name) or self.model.point(name)
        raw = self._raw(point)
        if raw is None or isinstance(raw, str):
            return None
        sf = point.sf
        if sf is None or isinstance(raw, float):
            return float(raw)
        if isinstance(sf, str):
            sf_raw = self._raw(by_name[sf])
            sf = sf_raw if isinstance(sf_raw, int) else None
        return from_raw(raw, sf)

    def text(self, name: str) -> str | None:
        """A string point's text (None if not implemented)."""
        raw = self.raw(name)
        return raw if isinstance(raw, str) else None

    def set_raw(self, name: str, raw: Raw) -> None:
        """Store a raw value (None stores the 'not implemented' sentinel)."""
        point = self.model.point(name)
        begin = self.start + point.offset
        self.regs[begin : begin + point.size] = encode_point(point, raw)

    def registers_for(self, name: str, value: float | None) -> list[int]:
        """The registers that would hold engineering ``value`` at the point's current scale factor (what
        :meth:`set_value` stores; a client builds its writes with it)."""
        point = self.model.point(name)
        if value is None:
            return not_implemented(point.type, point.size)
        if _TYPES[point.type].kind == "float":
            return encode_point(point, float(value))
        sf = 0 if point.sf is None else self.sf(name)
        if sf is None:
            raise SunSpecDefinitionError(f"{name}: scale factor {point.sf} is not implemented")
        return encode_point(point, to_raw(value, sf, point.type))

    def value_setter(self, name: str) -> Callable[[float | None], None]:
        """A fast setter for point ``name`` that binds its scale factor now (it must stay fixed).

        For hot paths (the emulator refreshes measurements on every read); same checks as set_value.
        """
        point = self.model.point(name)
        regs, begin, size = self.regs, self.start + point.offset, point.size
        sentinel = not_implemented(point.type, size)
        if _TYPES[point.type].kind == "float":
            pack = struct.Struct(">f" if size == 2 else ">d").pack
            unpack = struct.Struct(f">{size}H").unpack

            def set_float(value: float | None) -> None:
                regs[begin : begin + size] = sentinel if value is None or value != value else unpack(pack(value))

            return set_float
        sf = 0 if point.sf is None else self.sf(name)
        if sf is None:
            raise SunSpecDefinitionError(f"{name}: scale factor {point.sf} is not implemented")
        low, high = raw_range(point.type)
        mask = (1 << (16 * size)) - 1
        step = 10.0**sf

        def set_value(value: float | None) -> None:
            if value is None:
                regs[begin : begin + size] = sentinel
                return
            if not math.isfinite(value):
                raise EncodingError(f"{name}: {value!r} is not finite")
            raw = round(value / step)
            if not low <= raw <= high:
                raise EncodingError(f"{name}: {value} at sf {sf} is outside {point.type} range")
            if size == 1:
                regs[begin] = raw & 0xFFFF
            else:
                regs[begin : begin + size] = _int_to_regs(raw & mask, size)

        return set_value

    def values_setter(self, names: Sequence[str]) -> Callable[[Sequence[float | None]], None]:
        """One fast setter for several points at once (``values`` in the order of ``names``), binding their scale
        factors now, as :meth:`value_setter` does for one; runs of adjacent float32 points are packed together."""
        regs = self.regs
        ints: list[tuple[int, int, float, int, int, int, list[int]]] = []  # index, begin, step, low, high, size, sentinel
        floats: list[tuple[int, int]] = []  # index, begin (float32 only: adjacent runs are packed at once)
        others: list[tuple[int, Callable[[float | None], None]]] = []
        for i, name in enumerate(names):
            point = self.model.point(name)
            info = _TYPES[point.type]
            begin = self.start + point.offset
            if point.type == "float32":
                floats.append((i, begin))
            elif info.kind == "int":
                sf = 0 if point.sf is None else self.sf(name)
                if sf is None:
                    raise SunSpecDefinitionError(f"{name}: scale factor {point.sf} is not implemented")
                low, high = raw_range(point.type)
                ints.append((i, begin, 10.0**sf, low, high, point.size, not_implemented(point.type, point.size)))
            else:
                others.append((i, self.value_setter(name)))
        runs: list[tuple[int, list[int]]] = []
        for i, begin in sorted(floats, key=lambda f: f[1]):  # (start register, value indexes): adjacent float32s
            if runs and runs[-1][0] + 2 * len(runs[-1][1]) == begin:
                runs[-1][1].append(i)
            else:
                runs.append((begin, [i]))
        packed = [(begin, idx, struct.Struct(f">{len(idx)}f").pack, struct.Struct(f">{2 * len(idx)}H").unpack,
                   begin + 2 * len(idx)) for begin, idx in runs]
        nan = math.nan

        def set_values(values: Sequence[float | None]) -> None:
            for i, begin, step, low, high, size, sentinel in ints:
                value = values[i]
                if value is None:
                    regs[begin : begin + size] = sentinel
                    continue
                raw = round(value / step)
                if not low <= raw <= high:
                    raise EncodingError(f"{names[i]}: {value} at step {step} is outside its range")
                if size == 1:
                    regs[begin] = raw & 0xFFFF
                else:
                    regs[begin : begin + size] = _int_to_regs(raw & ((1 << (16 * size)) - 1), size)
            for begin, idx, pack, unpack, end in packed:
                regs[begin:end] = unpack(pack(*[nan if (v := values[i]) is None else v for i in idx]))
            for i, setter in others:
                setter(values[i])

        return set_values

    def set_value(self, name: str, value: float | None) -> None:
        """Store an engineering value, scaled by the point's current scale factor."""
        point = self.model.point(name)
        begin = self.start + point.offset
        self.regs[begin : begin + point.size] = self.registers_for(name, value)

    def address(self, name: str, base: int = 0) -> int:
        """Protocol address of point ``name`` when the model's ID register is at ``base``."""
        return base + self.model.point(name).offset


class ModelLocation(NamedTuple):
    """Where a model sits in a device map: id, address of its ID register, and L."""

    model_id: int
    address: int
    length: int


def iter_chain(regs: Sequence[int], base: int = BASE_ADDRESS) -> Iterator[ModelLocation]:
    """Walk an in-memory device map (``regs[0]`` is at ``base``) and yield its models."""
    if tuple(regs[:2]) != SUNS_MARKER:
        raise SunSpecDefinitionError("no 'SunS' marker")
    index = 2
    while index + 1 < len(regs):
        model_id, length = regs[index], regs[index + 1]
        if model_id == END_MODEL_ID:
            return
        yield ModelLocation(model_id, base + index, length)
        index += 2 + length
    raise SunSpecDefinitionError("model chain runs past the image without an end marker")


class SunSpecImage:
    """A whole device map as one flat register list: 'SunS', the models in order, the end marker.

    Every point starts out 'not implemented'; the owner fills in what the device supports.
    """

    def __init__(self, models: Iterable[ModelDef], *, base: int = BASE_ADDRESS) -> None:
        self.base = base
        self.registers: list[int] = list(SUNS_MARKER)
        self.views: dict[int, ModelView] = {}
        self.locations: list[ModelLocation] = []
        for model in models:
            if model.id in self.views:
                raise SunSpecDefinitionError(f"model {model.id} twice in one image")
            start = len(self.registers)
            self.registers += [model.id, model.length]
            for point in model.points:
                self.registers += not_implemented(point.type, point.size)
            self.views[model.id] = ModelView(model, self.registers, start)
            self.locations.append(ModelLocation(model.id, base + start, model.length))
        self.registers += [END_MODEL_ID, 0]
        if base + len(self.registers) > 0x10000:
            raise EncodingError("image does not fit below register 65536")
        self._owner: list[tuple[int, PointDef] | None] = [None] * len(self.registers)
        for model_id, view in self.views.items():
            for point in view.model.points:
                for i in range(point.size):
                    self._owner[view.start + point.offset + i] = (model_id, point)

    def __getitem__(self, model_id: int) -> ModelView:
        return self.views[model_id]

    def __contains__(self, model_id: object) -> bool:
        return model_id in self.views

    @property
    def end(self) -> int:
        """One past the last address of the image."""
        return self.base + len(self.registers)

    def address(self, model_id: int, point: str) -> int:
        """Protocol address of a point of a model in this image."""
        view = self.views[model_id]
        return self.base + view.start + view.model.point(point).offset

    def points_in(self, address: int, count: int) -> list[tuple[int, PointDef]] | None:
        """The (model id, point) pairs a register range covers exactly, in order.

        None when the range starts or ends inside a point, or touches a register that belongs to no
        point (the marker, ID, L or the end marker): such a write is not allowed.
        """
        begin = address - self.base
        if begin < 0 or begin + count > len(self.registers) or count < 1:
            return None
        found: list[tuple[int, PointDef]] = []
        index = begin
        while index < begin + count:
            owner = self._owner[index]
            if owner is None:
                return None
            model_id, point = owner
            point_start = self.views[model_id].start + point.offset
            if point_start != index or index + point.size > begin + count:
                return None
            found.append(owner)
            index += point.size
        return found
