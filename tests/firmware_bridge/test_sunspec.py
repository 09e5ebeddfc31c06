"""Register codec, model tables (checked against pysunspec2's JSON models), and device images."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import sunspec2  # pysunspec2, a test dependency: the reference for every point

from firmware_bridge.sunspec import (
    BASE_ADDRESS,
    END_MODEL_ID,
    SUNS_MARKER,
    ModelDef,
    ModelView,
    P,
    SunSpecImage,
    decode_point,
    encode_point,
    fit_scale_factor,
    from_raw,
    iter_chain,
    to_raw,
)
from firmware_bridge.sunspec_models import MODELS


def _sunspec_json(model_id: int) -> dict:
    path = Path(sunspec2.__file__).parent / "models" / "json" / f"model_{model_id}.json"
    return json.loads(path.read_text())


def _flatten(group: dict, prefix: str, offset: int, out: list[tuple[str, int, str, int, str | None, bool]]) -> int:
    for point in group.get("points", []):
        size = point.get("size", 1)
        if point["name"] not in ("ID", "L"):
            out.append((prefix + point["name"], offset, point["type"], size, point.get("sf"), point.get("access") == "RW"))
        offset += size
    for sub in group.get("groups", []):
        offset = _flatten(sub, prefix + sub["name"] + ".", offset, out)
    return offset


@pytest.mark.parametrize("model_id", sorted(MODELS))
def test_model_tables_match_the_sunspec_json_models(model_id: int) -> None:
    spec = _sunspec_json(model_id)
    expected: list[tuple[str, int, str, int, str | None, bool]] = []
    total = _flatten(spec["group"], "", 0, expected)
    model = MODELS[model_id]
    ours = [(p.name, p.offset, p.type, p.size, p.sf, p.rw) for p in model.points]
    assert ours == expected
    assert model.length == total - 2


@pytest.mark.parametrize(
    ("ptype", "raw", "regs"),
    [
        ("int16", -2, [0xFFFE]),
        ("int16", 32767, [0x7FFF]),
        ("uint16", 65534, [0xFFFE]),
        ("int32", -5000, [0xFFFF, 0xEC78]),
        ("uint32", 0x12345678, [0x1234, 0x5678]),
        ("uint64", 2**40 + 7, [0x0000, 0x0100, 0x0000, 0x0007]),
        ("sunssf", -3, [0xFFFD]),
        ("enum16", 3, [3]),
    ],
)
def test_encode_decode_round_trip(ptype: str, raw: int, regs: list[int]) -> None:
    point = P("X", 2, ptype)  # type: ignore[arg-type]
    assert encode_point(point, raw) == regs
    assert decode_point(point, regs) == raw


@pytest.mark.parametrize(
    ("ptype", "sentinel"),
    [
        ("int16", [0x8000]),
        ("uint16", [0xFFFF]),
        ("enum16", [0xFFFF]),
        ("bitfield32", [0xFFFF, 0xFFFF]),
        ("sunssf", [0x8000]),
        ("int32", [0x8000, 0x0000]),
        ("uint32", [0xFFFF, 0xFFFF]),
        ("uint64", [0xFFFF] * 4),
    ],
)
def test_not_implemented_sentinels(ptype: str, sentinel: list[int]) -> None:
    point = P("X", 2, ptype)  # type: ignore[arg-type]
    assert encode_point(point, None) == sentinel
    assert decode_point(point, sentinel) is None


def test_a_sentinel_is_never_encoded_from_a_value() -> None:
    with pytest.raises(ValueError):
        encode_point(P("X", 2, "int16"), -32768)
    with pytest.raises(ValueError):
        encode_point(P("X", 2, "uint16"), 0xFFFF)
    with pytest.raises(ValueError):
        encode_point(P("X", 2, "int32"), -(2**31))


def test_strings_pad_with_nul_and_empty_is_not_implemented() -> None:
    point = P("Mn", 2, "string", size=4)
    regs = encode_point(point, "SunS")
    assert regs == [0x5375, 0x6E53, 0, 0]
    assert decode_point(point, regs) == "SunS"
    assert decode_point(point, [0, 0, 0, 0]) is None
    assert decode_point(point, encode_point(point, "much too long for it")) == "much too"


def test_scale_factors() -> None:
    assert from_raw(2309, -1) == pytest.approx(230.9)
    assert from_raw(12, 3) == 12000.0
    assert from_raw(5, None) is None and from_raw(None, 0) is None
    assert to_raw(230.94, -1, "uint16") == 2309
    assert to_raw(-5000.0, 0, "int32") == -5000
    with pytest.raises(ValueError):
        to_raw(70000.0, 0, "int16")
    with pytest.raises(ValueError):
        to_raw(math.nan, 0, "int16")
    assert fit_scale_factor(5000, "int16") == 0
    assert fit_scale_factor(100_000, "int16") == 1
    assert fit_scale_factor(100_000, "uint16") == 1
    assert fit_scale_factor(440.0, "uint16", finest=-1) == -1
    assert fit_scale_factor(50_000.0, "uint16", finest=-2) == 0


def test_model_definition_is_checked() -> None:
    with pytest.raises(ValueError, match="offset"):
        ModelDef(9, "gap", (P("A", 2, "uint16"), P("B", 4, "uint16")))
    with pytest.raises(ValueError, match="sunssf"):
        ModelDef(9, "bad sf", (P("A", 2, "uint16", sf="A_SF"), P("A_SF", 3, "uint16")))
    with pytest.raises(ValueError):
        P("S", 2, "string")


def test_image_layout_chain_and_views() -> None:
    image = SunSpecImage([MODELS[1], MODELS[701], MODELS[713]])
    assert tuple(image.registers[:2]) == SUNS_MARKER
    assert image.registers[-2:] == [END_MODEL_ID, 0]
    chain = list(iter_chain(image.registers, BASE_ADDRESS))
    assert [(loc.model_id, loc.length) for loc in chain] == [(1, 66), (701, 153), (713, 7)]
    assert chain[0].address == BASE_ADDRESS + 2
    assert chain[1].address == BASE_ADDRESS + 2 + 68
    # everything starts 'not implemented'
    assert image[701].raw("W") is None and image[701].value("Hz") is None
    image[701].set_raw("W_SF", 1)
    image[701].set_value("W", -12340.0)
    assert image[701].raw("W") == -1234
    assert image[701].value("W") == -12340.0
    # a view over a partial read: points past its length are absent
    start = chain[1].address - BASE_ADDRESS
    partial = ModelView(MODELS[701], image.registers[start : start + 12], length=10)
    assert partial.value("W") is None  # W_SF lies outside the 12 registers read
    assert partial.raw("ACType") is None


def test_points_in_accepts_only_whole_points() -> None:
    image = SunSpecImage([MODELS[704]])
    wset = MODELS[704].point("WSet")
    address = image.base + image[704].start + wset.offset
    assert [p.name for _, p in image.points_in(address, 2) or []] == ["WSet"]
    assert image.points_in(address + 1, 1) is None  # half of an int32
    assert image.points_in(address, 1) is None
    assert image.points_in(image.base, 2) is None  # the 'SunS' marker
    assert image.points_in(image.base + image[704].start, 1) is None  # the model id
