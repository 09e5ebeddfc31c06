"""Register maps: a bad map is refused in one line naming the file, the point and the field; values decode and
encode in every type, word and byte order, with scale, offset, scale registers and 'not implemented' sentinels;
reads are batched per table into as few requests as the map allows."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge.regmap import MapError, load_map, parse_map, plan_reads, shipped_maps
from firmware_bridge.regmap.codec import decode, encode
from firmware_bridge.regmap.schema import MapDevice, Point

_GOOD = """[device]
vendor = "Acme"
model = "M1"

[[points]]
name = "power"
role = "meter.p_w"
table = "input"
address = 10
type = "f32"
"""


def _with_point(tmp_path: Path, lines: str, name: str = "bad.toml") -> Path:
    path = tmp_path / name
    path.write_text(_GOOD + "\n[[points]]\nname = \"target\"\n" + lines)
    return path


BAD: list[tuple[str, str, str]] = [  # (the point's other lines, the field named, words of the reason)
    ('address = 1\ntype = "float"\n', "type", "u16"),
    ('address = 1\ntype = "f32"\naccess = "rw"\n', "min", "write limits"),
    ('address = 1\nrole = "meter.p_kw"\n', "role", "not one of"),
    ('address = 1\nscale_register = "nowhere"\n', "scale_register", "no point"),
    ('address = 1\ntype = "string"\n', "length", "length"),
    ('address = 1\ntable = "holding"\ntype = "bool"\n', "type", "coil"),
    ('address = 1\ncolour = "red"\n', "colour", "unknown field"),
    ('address = 1\ntype = "f32"\naccess = "rw"\nmin = 0\nmax = 1\nwrite_function = 6\n', "write_function", "one register"),
    ('address = 70000\n', "address", "less than or equal"),
    ('address = 1\ntable = "input"\naccess = "rw"\nmin = 0\nmax = 1\n', "access", "read-only"),
    ('address = 1\nrole = "battery.p_set_w"\n', "access", "command"),
    ('address = 1\nscale = 0\n', "scale", "not be 0"),
    ('address = 1\ntype = "u16"\naccess = "rw"\nmin = 5\nmax = 1\n', "min", "above max"),
]


@pytest.mark.parametrize(("lines", "field", "reason"), BAD)
def test_a_bad_point_is_refused_in_one_line_naming_file_point_and_field(tmp_path: Path, lines: str, field: str,
                                                                          reason: str) -> None:
    path = _with_point(tmp_path, lines)
    with pytest.raises(MapError) as err:
        load_map(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: point target: {field}: "), message
    assert reason in message


@pytest.mark.parametrize(("text", "expected"), [
    (_GOOD + '\n[[points]]\nname = "power"\naddress = 2\n', "point power: name: used twice"),
    (_GOOD + '\n[[points]]\nname = "other"\nrole = "meter.p_w"\naddress = 2\n', "role: meter.p_w is fed by power"),
    (_GOOD.replace('vendor = "Acme"\n', ""), "device.vendor: Field required"),
    ("points = []\n[device]\nvendor = 'a'\nmodel = 'b'\n", "points: List should have at least 1 item"),
    ("not toml = = 1", "not valid TOML"),
])
def test_a_bad_map_names_what_is_wrong(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "map.toml"
    path.write_text(text)
    with pytest.raises(MapError, match=expected) as err:
        load_map(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_unknown_shipped_name_lists_the_shipped_maps() -> None:
    with pytest.raises(MapError, match="no shipped map 'acme-x1'.*eastron-sdm630"):
        load_map("acme-x1")
    assert {"eastron-sdm630", "carlo-gavazzi-em24", "victron-gx-ess", "deepsea-dse7320"} <= set(shipped_maps())


def test_every_shipped_map_cites_its_vendor_document() -> None:
    for name in shipped_maps():
        regmap = load_map(name)
        text = (Path(regmap.source)).read_text()
        assert text.startswith("# ") and "Source:" in text.split("[device]")[0], name
        assert regmap.device.document, name


_DEVICE = MapDevice(vendor="v", model="m")


def _point(**fields: Any) -> Point:
    return Point(name="p", address=0, **fields)


@pytest.mark.parametrize(("fields", "words", "value"), [
    ({"type": "u16"}, [0xFFFE], 65534.0),
    ({"type": "i16"}, [0xFFFE], -2.0),
    ({"type": "u32"}, [0x0001, 0x0002], 65538.0),
    ({"type": "i32", "word_order": "little"}, [0x9E58, 0xFFFF], -25000.0),
    ({"type": "u64"}, [0, 0, 1, 0], 65536.0),
    ({"type": "i64", "word_order": "little"}, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], -1.0),
    ({"type": "f32"}, list(struct.unpack(">2H", struct.pack(">f", 1.5))), 1.5),
    ({"type": "f32", "word_order": "little"}, list(struct.unpack(">2H", struct.pack(">f", 1.5)))[::-1], 1.5),
    ({"type": "f32", "byte_order": "little"}, list(struct.unpack("<2H", struct.pack(">f", 1.5))), 1.5),
    ({"type": "f64"}, list(struct.unpack(">4H", struct.pack(">d", -0.1))), -0.1),
    ({"type": "u16", "scale": 0.1, "offset": -40.0}, [650], 25.0),
    ({"type": "i16", "scale": -10.0}, [0xFF06], 2500.0),
])
def test_decode_and_encode_round_trip(fields: dict[str, Any], words: list[int], value: float) -> None:
    point = _point(**fields)
    assert decode(point, _DEVICE, words) == pytest.approx(value)
    assert encode(point, _DEVICE, value) == words


def test_sentinels_nan_strings_and_scale_registers() -> None:
    assert decode(_point(type="i16", not_implemented=[0x8000]), _DEVICE, [0x8000]) is None
    assert decode(_point(type="i16", not_implemented=[-1]), _DEVICE, [0xFFFF]) is None  # either spelling
    assert decode(_point(type="f32"), _DEVICE, [0x7FC0, 0]) is None  # NaN
    text = _point(type="string", length=3)
    assert decode(text, _DEVICE, encode(text, _DEVICE, "SDM630")) == "SDM630"
    assert decode(_point(type="u16"), _DEVICE, [1234], scale_power=-2) == pytest.approx(12.34)
    assert encode(_point(type="i16"), _DEVICE, -1234.0, scale_power=1) == [(-123) & 0xFFFF]
    from firmware_bridge.errors import EncodingError

    with pytest.raises(EncodingError, match="outside u16"):
        encode(_point(type="u16"), _DEVICE, 70000.0)


def test_reads_are_batched_per_table_within_max_read_and_max_gap() -> None:
    def regmap(gap: int, most: int = 125) -> Any:
        points = [{"name": f"h{a}", "table": "holding", "address": a, "type": "u32"} for a in (0, 2, 4, 10, 200)]
        points += [{"name": f"i{a}", "table": "input", "address": a, "type": "f32"} for a in (0, 2)]
        points += [{"name": "c5", "table": "coil", "address": 5, "type": "bool"},
                   {"name": "c7", "table": "coil", "address": 7, "type": "bool"}]
        return parse_map({"device": {"vendor": "v", "model": "m", "max_gap": gap, "max_read": most},
                          "points": points}, source="test")

    tight = regmap(0)
    assert plan_reads(tight.points, tight).requests == (
        ("holding", 0, 6), ("holding", 10, 2), ("holding", 200, 2), ("input", 0, 4), ("coil", 5, 1), ("coil", 7, 1))
    loose = regmap(10)
    assert plan_reads(loose.points, loose).requests == (
        ("holding", 0, 12), ("holding", 200, 2), ("input", 0, 4), ("coil", 5, 3))
    small = regmap(10, most=4)
    assert plan_reads(small.points, small).requests[:3] == (("holding", 0, 4), ("holding", 4, 2), ("holding", 10, 2))
