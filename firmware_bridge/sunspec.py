"""SunSpec register images: point and model definitions as data, the register codec, and device maps.

A SunSpec device map starts at holding register 40000 with the marker 'SunS' (0x5375 0x6E53),
followed by models laid end to end (each: model id, length L, then L registers of points) and the
end marker (id 0xFFFF, L 0). Point offsets below count from the model's first register (the id),
so the first point after ID and L is at offset 2, as in the SunSpec JSON model definitions.

Values travel as integers: ``value = raw * 10**sf`` where ``sf`` is the signed int16 in the point's
scale-factor point. Every type has a 'not implemented' sentinel (0x8000 for int16, 0xFFFF for
uint16, 0x80000000 for int32, ...); we decode it to ``None`` and encode ``None`` as it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

__all__ = [
    "BASE_ADDRESS",
    "END_MODEL_ID",
    "SUNS_MARKER",
    "ModelDef",
    "ModelLocation",
    "ModelView",
    "P",
    "PointDef",
    "PointType",
    "SunSpecImage",
    "decode_point",
    "encode_point",
    "fit_scale_factor",
    "from_raw",
    "iter_chain",
    "not_implemented",
    "raw_range",
    "to_raw",
]

BASE_ADDRESS = 40000
"""Protocol (0-based) address of the 'SunS' marker; Modbus documentation often writes it 40001."""
SUNS_MARKER = (0x5375, 0x6E53)  # b"SunS"
END_MODEL_ID = 0xFFFF

PointType = Literal[
    "int16", "uint16", "acc16", "enum16", "bitfield16", "count", "sunssf", "pad",
    "int32", "uint32", "acc32", "enum32", "bitfield32",
    "int64", "uint64", "acc64",
    "string",
]


class _TypeInfo(NamedTuple):
    size: int  # registers
    signed: bool
    sentinel: int  # the 'not implemented' raw value, as the unsigned register content


_TYPES: dict[str, _TypeInfo] = {
    "int16": _TypeInfo(1, True, 0x8000),
    "uint16": _TypeInfo(1, False, 0xFFFF),
    "acc16": _TypeInfo(1, False, 0),
    "enum16": _TypeInfo(1, False, 0xFFFF),
    "bitfield16": _TypeInfo(1, False, 0xFFFF),
    "count": _TypeInfo(1, False, 0xFFFF),
    "sunssf": _TypeInfo(1, True, 0x8000),
    "pad": _TypeInfo(1, False, 0x8000),
    "int32": _TypeInfo(2, True, 0x8000_0000),
    "uint32": _TypeInfo(2, False, 0xFFFF_FFFF),
    "acc32": _TypeInfo(2, False, 0),
    "enum32": _TypeInfo(2, False, 0xFFFF_FFFF),
    "bitfield32": _TypeInfo(2, False, 0xFFFF_FFFF),
    "int64": _TypeInfo(4, True, 0x8000_0000_0000_0000),
    "uint64": _TypeInfo(4, False, 0xFFFF_FFFF_FFFF_FFFF),
    "acc64": _TypeInfo(4, False, 0),
    "string": _TypeInfo(0, False, 0),  # size comes from the point definition
}


@dataclass(frozen=True, slots=True)
class PointDef:
    """One point of a model: name, offset from the model id register, type, size in registers,
    the name of its scale-factor point (or None), writability and units."""

    name: str
    offset: int
    type: PointType
    size: int
    sf: str | None = None
    rw: bool = False
    units: str | None = None


def P(
    name: str,
    offset: int,
    type: PointType,
    *,
    size: int | None = None,
    sf: str | None = None,
    rw: bool = False,
    units: str | None = None,
) -> PointDef:
    """Build a PointDef; ``size`` is needed only for strings (other types know their size)."""
    if type not in _TYPES:
        raise ValueError(f"point {name}: unknown SunSpec type {type!r}")
    if type == "string":
        if not size:
            raise ValueError(f"point {name}: a string needs a size in registers")
    else:
        if size is not None and size != _TYPES[type].size:
            raise ValueError(f"point {name}: {type} has size {_TYPES[type].size}, not {size}")
        size = _TYPES[type].size
    return PointDef(name, offset, type, size, sf, rw, units)


@dataclass(frozen=True)
class ModelDef:
    """A SunSpec model: id, name and its points. ``length`` is L (registers after ID and L)."""

    id: int
    name: str
    points: tuple[PointDef, ...]
    points_by_name: dict[str, PointDef] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        offset = 2
        by_name: dict[str, PointDef] = {}
        for point in self.points:
            if point.offset != offset:
                raise ValueError(f"model {self.id}: {point.name} at offset {point.offset}, expected {offset}")
            if point.name in by_name or point.name in ("ID", "L"):
                raise ValueError(f"model {self.id}: duplicate point {point.name}")
            by_name[point.name] = point
            offset += point.size
        for point in self.points:
            if point.sf is not None and (point.sf not in by_name or by_name[point.sf].type != "sunssf"):
                raise ValueError(f"model {self.id}: {point.name} names {point.sf!r}, not a sunssf point here")
        object.__setattr__(self, "points_by_name", by_name)

    @property
    def length(self) -> int:
        """L: the model's registers after ID and L."""
        last = self.points[-1]
        return last.offset + last.size - 2

    def point(self, name: str) -> PointDef:
        """The point called ``name``; KeyError names the model when there is none."""
        try:
            return self.points_by_name[name]
        except KeyError:
            raise KeyError(f"model {self.id} ({self.name}) has no point {name!r}") from None


# --------------------------------------------------------------------------- codec


def not_implemented(ptype: PointType, size: int = 1) -> list[int]:
    """The registers of a 'not implemented' value of this type."""
    if ptype == "string":
        return [0] * size
    info = _TYPES[ptype]
    return _int_to_regs(info.sentinel, info.size)


def raw_range(ptype: PointType) -> tuple[int, int]:
    """Smallest and largest implemented raw integer of a type (its sentinel excluded)."""
    info = _TYPES[ptype]
    bits = 16 * info.size
    if info.signed:
        return -(1 << (bits - 1)) + 1, (1 << (bits - 1)) - 1
    if info.sentinel == 0:  # accumulators: 0 means 'not implemented', the range wraps
        return 0, (1 << bits) - 1
    return 0, (1 << bits) - 2


def _int_to_regs(value: int, size: int) -> list[int]:
    return [(value >> (16 * (size - 1 - i))) & 0xFFFF for i in range(size)]


def _regs_to_int(regs: Sequence[int]) -> int:
    value = 0
    for reg in regs:
        value = (value << 16) | reg
    return value


def encode_point(point: PointDef, raw: int | str | None) -> list[int]:
    """Registers for a raw (unscaled) value; ``None`` encodes the type's 'not implemented' sentinel."""
    if raw is None:
        return not_implemented(point.type, point.size)
    if point.type == "string":
        if not isinstance(raw, str):
            raise TypeError(f"{point.name}: a string point needs str, got {type(raw).__name__}")
        data = raw.encode("utf-8")[: 2 * point.size].ljust(2 * point.size, b"\0")
        return [(data[i] << 8) | data[i + 1] for i in range(0, len(data), 2)]
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise TypeError(f"{point.name}: raw value must be int, got {type(raw).__name__}")
    low, high = raw_range(point.type)
    if not low <= raw <= high:
        raise ValueError(f"{point.name}: raw {raw} outside {point.type} range [{low}, {high}]")
    info = _TYPES[point.type]
    return _int_to_regs(raw & ((1 << (16 * info.size)) - 1), info.size)


def decode_point(point: PointDef, regs: Sequence[int]) -> int | str | None:
    """Raw value from a point's registers; ``None`` when it holds the 'not implemented' sentinel."""
    if point.type == "string":
        data = b"".join(reg.to_bytes(2, "big") for reg in regs[: point.size])
        text = data.rstrip(b"\0").decode("utf-8", errors="replace")
        return text or None
    info = _TYPES[point.type]
    value = _regs_to_int(regs[: info.size])
    if value == info.sentinel:
        return None
    if info.signed and value >= 1 << (16 * info.size - 1):
        value -= 1 << (16 * info.size)
    return value


def from_raw(raw: int | None, sf: int | None) -> float | None:
    """Engineering value ``raw * 10**sf``; None if either is not implemented."""
    if raw is None:
        return None
    if sf is None:
        return None
    return raw / 10**-sf if sf < 0 else float(raw * 10**sf)


def to_raw(value: float, sf: int, ptype: PointType) -> int:
    """Raw integer for an engineering value at scale factor ``sf``; ValueError if not finite or out of range."""
    if not math.isfinite(value):
        raise ValueError(f"value {value!r} is not finite")
    raw = round(value / 10.0**sf)
    low, high = raw_range(ptype)
    if not low <= raw <= high:
        raise ValueError(f"{value} at sf {sf} is raw {raw}, outside {ptype} range [{low}, {high}]")
    return raw


def fit_scale_factor(max_abs: float, ptype: PointType, *, finest: int = 0) -> int:
    """The finest scale factor >= ``finest`` at which ``max_abs`` still fits in ``ptype``."""
    _, high = raw_range(ptype)
    sf = finest
    while abs(max_abs) / 10.0**sf > high:
        sf += 1
        if sf > 10:
            raise ValueError(f"{max_abs} does not fit in {ptype} at any scale factor")
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

    def raw(self, name: str) -> int | str | None:
        """The point's raw value (None if not implemented or absent)."""
        point = self.model.points_by_name.get(name) or self.model.point(name)
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

    def sf(self, name: str) -> int | None:
        """The scale factor that applies to point ``name`` (None if it has none or it is not implemented)."""
        point = self.model.point(name)
        if point.sf is None:
            return None
        raw = self.raw(point.sf)
        return raw if isinstance(raw, int) else None

    def value(self, name: str) -> float | None:
        """The engineering value (scaled when the point has a scale factor); None if not implemented."""
        point = self.model.point(name)
        raw = self.raw(name)
        if raw is None or isinstance(raw, str):
            return None
        if point.sf is None:
            return float(raw)
        return from_raw(raw, self.sf(name))

    def text(self, name: str) -> str | None:
        """A string point's text (None if not implemented)."""
        raw = self.raw(name)
        return raw if isinstance(raw, str) else None

    def set_raw(self, name: str, raw: int | str | None) -> None:
        """Store a raw value (None stores the 'not implemented' sentinel)."""
        point = self.model.point(name)
        begin = self.start + point.offset
        self.regs[begin : begin + point.size] = encode_point(point, raw)

    def value_setter(self, name: str) -> Callable[[float | None], None]:
        """A fast setter for point ``name`` that binds its scale factor now (it must stay fixed).

        For hot paths (the emulator refreshes measurements on every read); same checks as set_value.
        """
        point = self.model.point(name)
        sf = 0 if point.sf is None else self.sf(name)
        if sf is None:
            raise ValueError(f"{name}: scale factor {point.sf} is not implemented")
        regs, begin, size = self.regs, self.start + point.offset, point.size
        low, high = raw_range(point.type)
        mask = (1 << (16 * size)) - 1
        sentinel = not_implemented(point.type, size)
        step = 10.0**sf

        def set_value(value: float | None) -> None:
            if value is None:
                regs[begin : begin + size] = sentinel
                return
            if not math.isfinite(value):
                raise ValueError(f"{name}: {value!r} is not finite")
            raw = round(value / step)
            if not low <= raw <= high:
                raise ValueError(f"{name}: {value} at sf {sf} is outside {point.type} range")
            if size == 1:
                regs[begin] = raw & 0xFFFF
            else:
                regs[begin : begin + size] = _int_to_regs(raw & mask, size)

        return set_value

    def set_value(self, name: str, value: float | None) -> None:
        """Store an engineering value, scaled by the point's current scale factor."""
        point = self.model.point(name)
        if value is None:
            self.set_raw(name, None)
            return
        if point.sf is None:
            self.set_raw(name, to_raw(value, 0, point.type))
            return
        sf = self.sf(name)
        if sf is None:
            raise ValueError(f"{name}: scale factor {point.sf} is not implemented, cannot store {value}")
        self.set_raw(name, to_raw(value, sf, point.type))


class ModelLocation(NamedTuple):
    """Where a model sits in a device map: id, address of its ID register, and L."""

    model_id: int
    address: int
    length: int


def iter_chain(regs: Sequence[int], base: int = BASE_ADDRESS) -> Iterator[ModelLocation]:
    """Walk an in-memory device map (``regs[0]`` is at ``base``) and yield its models."""
    if tuple(regs[:2]) != SUNS_MARKER:
        raise ValueError("no 'SunS' marker")
    index = 2
    while index + 1 < len(regs):
        model_id, length = regs[index], regs[index + 1]
        if model_id == END_MODEL_ID:
            return
        yield ModelLocation(model_id, base + index, length)
        index += 2 + length
    raise ValueError("model chain runs past the image without an end marker")


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
                raise ValueError(f"model {model.id} twice in one image")
            start = len(self.registers)
            self.registers += [model.id, model.length]
            for point in model.points:
                self.registers += not_implemented(point.type, point.size)
            self.views[model.id] = ModelView(model, self.registers, start)
            self.locations.append(ModelLocation(model.id, base + start, model.length))
        self.registers += [END_MODEL_ID, 0]
        if base + len(self.registers) > 0x10000:
            raise ValueError("image does not fit below register 65536")
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
