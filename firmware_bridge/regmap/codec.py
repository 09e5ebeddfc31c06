"""Register words to values and back, for one map point: type, word and byte order, scale, offset, sentinels."""
from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from firmware_bridge.errors import EncodingError
from firmware_bridge.regmap.schema import MapDevice, Point

__all__ = ["decode", "encode", "raw_words"]

_FORMATS = {"u16": "H", "i16": "h", "u32": "I", "i32": "i", "u64": "Q", "i64": "q", "f32": "f", "f64": "d"}


def _orders(point: Point, device: MapDevice) -> tuple[str, str]:
    return point.word_order or device.word_order, point.byte_order or device.byte_order


def _to_bytes(words: Sequence[int], point: Point, device: MapDevice) -> bytes:
    """The point's words as big-endian bytes, high word first, whatever order the device uses."""
    word_order, byte_order = _orders(point, device)
    ordered = list(words) if word_order == "big" or point.type == "string" else list(reversed(words))
    data = struct.pack(f">{len(ordered)}H", *ordered)
    if byte_order == "little":
        data = b"".join(data[i + 1 : i + 2] + data[i : i + 1] for i in range(0, len(data), 2))
    return data


def _from_bytes(data: bytes, point: Point, device: MapDevice) -> list[int]:
    """The inverse of ``_to_bytes``: the words to put on the wire."""
    word_order, byte_order = _orders(point, device)
    if byte_order == "little":
        data = b"".join(data[i + 1 : i + 2] + data[i : i + 1] for i in range(0, len(data), 2))
    words = list(struct.unpack(f">{len(data) // 2}H", data))
    return words if word_order == "big" or point.type == "string" else list(reversed(words))


def decode(point: Point, device: MapDevice, words: Sequence[int], scale_power: int = 0) -> float | str | None:
    """The point's value from its ``size`` words (bits for a coil / discrete input); None when the raw value is a
    'not implemented' sentinel or a NaN. ``scale_power``: the value of its scale register (10**power)."""
    if point.type == "bool":
        return float(bool(words[0]))
    data = _to_bytes(words, point, device)
    if point.type == "string":
        return data.split(b"\x00", 1)[0].decode("latin-1").strip()
    pattern = int.from_bytes(data, "big")
    mask = (1 << (8 * len(data))) - 1
    if any((s & mask) == pattern for s in point.not_implemented):
        return None
    raw = struct.unpack(">" + _FORMATS[point.type], data)[0]
    if isinstance(raw, float) and not math.isfinite(raw):
        return None
    return float(raw) * point.scale * 10.0**scale_power + point.offset


def encode(point: Point, device: MapDevice, value: float | str, scale_power: int = 0) -> list[int]:
    """The words (bits) that hold ``value``; EncodingError when it does not fit the point's type at its scale."""
    if point.type == "bool":
        return [1 if value else 0]
    if point.type == "string":
        text = str(value).encode("latin-1", errors="replace")[: 2 * point.size]
        return _from_bytes(text.ljust(2 * point.size, b"\x00"), point, device)
    number = float(value)
    if not math.isfinite(number):
        raise EncodingError(f"{point.name}: {value!r} is not finite")
    raw = (number - point.offset) / (point.scale * 10.0**scale_power)
    fmt = _FORMATS[point.type]
    if point.type in ("f32", "f64"):
        data = struct.pack(">" + fmt, raw)
    else:
        whole = round(raw)
        bits = 8 * struct.calcsize(fmt)
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if point.type.startswith("i") else (0, (1 << bits) - 1)
        if not low <= whole <= high:
            raise EncodingError(f"{point.name}: {value} is raw {whole}, outside {point.type}")
        data = struct.pack(">" + fmt, whole)
    return _from_bytes(data, point, device)


def raw_words(words: Sequence[int]) -> str:
    """``0x4170 0x0000``: words for messages."""
    return " ".join(f"{w:#06x}" for w in words)
