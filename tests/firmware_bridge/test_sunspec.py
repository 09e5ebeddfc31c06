"""Register codec, model definitions (pysunspec2's JSON, laid out as pysunspec2 lays them out), device images."""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import sunspec2  # pysunspec2: its model JSON is our definition; its own layout code is the reference here
import sunspec2.device

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
    load_model,
    model_ids,
    to_raw,
)


def _sunspec_json(model_id: int) -> dict:
    path = Path(sunspec2.__file__).parent / "models" / "json" / f"model_{model_id}.json"
    return json.loads(path.read_text())


def test_every_model_pysunspec2_ships_is_defined() -> None:
    ids = model_ids()
    assert len(ids) >= 100 and {1, 103, 123, 124, 160, 203, 213, 701, 704, 713, 802} <= set(ids)
    points = sum(len(load_model(m).layout(counts={g.name: 1 for g in load_model(m).group.groups}).points) for m in ids)
    assert points > 3000  # every point, repeating groups once each
    with pytest.raises(KeyError, match="no SunSpec definition of model 9999"):
        load_model(9999)


def _their_offsets(model: object) -> dict[str, int]:
    """pysunspec2's own layout: every point (groups flattened as ours are) and its offset."""
    out: dict[str, int] = {}

    def walk(group: object, prefix: str, top: bool) -> None:
        for name, point in group.points.items():  # type: ignore[attr-defined]
            if not (top and name in ("ID", "L")):
                out[prefix + name] = point.offset
        for gname, sub in group.groups.items():  # type: ignore[attr-defined]
            if isinstance(sub, list):
                for i, g in enumerate(sub):
                    walk(g, f"{prefix}{gname}[{i + 1}].", False)
            else:
                walk(sub, f"{prefix}{gname}.", False)

    walk(model, "", True)
    return out


@pytest.mark.parametrize("model_id", model_ids())
def test_layouts_match_pysunspec2_including_repeating_groups(model_id: int) -> None:
    """Two instances of every repeating group: counts given by name, written to count points, or (legacy
    groups) implied by L; pysunspec2 lays the same registers out and must find every point at our offset."""
    spec = load_model(model_id)

    def groups(g: object) -> list:
        return [*g.groups, *(x for sub in g.groups for x in groups(sub))]  # type: ignore[attr-defined]

    counts = {g.name: 2 for g in groups(spec.group) if g.count is not None}
    layout = spec.layout(counts=counts)
    image = SunSpecImage([layout])
    view = image[model_id]
    for g in groups(spec.group):  # counts held by points: the device says them
        if isinstance(g.count, str):
            view.set_raw(g.count, 2)
    regs = image.registers[view.start : view.start + layout.length + 2]
    ours = {p.name: p.offset for p in layout.points}
    theirs = _their_offsets(sunspec2.device.Model(model_id=model_id, model_len=layout.length,
                                                  data=b"".join(r.to_bytes(2, "big") for r in regs)))
    assert ours == theirs
    # and from the registers alone (count points, or L for legacy groups) we find the same layout
    assert spec.layout(layout.length, registers=regs) == layout


@pytest.mark.parametrize("model_id", [1, 103, 123, 124, 203, 213, 701, 704, 802])
def test_points_carry_the_definition(model_id: int) -> None:
    spec = _sunspec_json(model_id)
    layout = load_model(model_id).layout()
    for p in spec["group"]["points"][2:]:
        ours = layout.point(p["name"])
        assert ours.type == p["type"] and ours.rw == (p.get("access") == "RW")
        assert ours.mandatory == (p.get("mandatory") == "M")
        assert ours.units == (p.get("units").strip() or None if p.get("units") else None)
        assert dict(ours.symbols) == {s["name"]: s["value"] for s in p.get("symbols", [])}
        assert (ours.sf is None) == (p.get("sf") is None)
    assert layout.length == sum(p.size for p in layout.points)


def test_symbols_scale_factors_and_groups() -> None:
    ctl = load_model(704).layout()
    assert ctl.point("WSetMod").symbol("WATTS") == 1 and ctl.point("WSetMod").symbol_name(0) == "W_MAX_PCT"
    assert ctl.point("WSet").sf == "WSet_SF" and ctl.point("PFWInj.PF").sf == "PF_SF"
    mppt = load_model(160).layout(counts={"module": 3})
    assert mppt.point("module[3].DCW").sf == "DCW_SF"  # a module's point scaled by the model's factor
    assert load_model(160).layout(mppt.length).point("module[3].DCA").offset == mppt.point("module[3].DCA").offset
    legacy = load_model(160).layout(8)  # L = 8: the fixed part only, no module
    assert not any(p.name.startswith("module[") for p in legacy.points)


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
    models = {m: load_model(m).layout() for m in (1, 701, 713)}
    image = SunSpecImage(models.values())
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
    partial = ModelView(models[701], image.registers[start : start + 12], length=10)
    assert partial.value("W") is None  # W_SF lies outside the 12 registers read
    assert partial.raw("ACType") is None


def test_points_in_accepts_only_whole_points() -> None:
    ctl = load_model(704).layout()
    image = SunSpecImage([ctl])
    wset = ctl.point("WSet")
    address = image.base + image[704].start + wset.offset
    assert [p.name for _, p in image.points_in(address, 2) or []] == ["WSet"]
    assert image.points_in(address + 1, 1) is None  # half of an int32
    assert image.points_in(address, 1) is None
    assert image.points_in(image.base, 2) is None  # the 'SunS' marker
    assert image.points_in(image.base + image[704].start, 1) is None  # the model id


def test_float_points_and_their_sentinel() -> None:
    point = P("W", 2, "float32")
    regs = encode_point(point, -1234.5)
    assert regs == list(struct.unpack(">2H", struct.pack(">f", -1234.5)))
    assert decode_point(point, regs) == -1234.5
    assert encode_point(point, None) == [0x7FC0, 0x0000] and decode_point(point, [0x7FC0, 0]) is None
    assert decode_point(point, encode_point(point, math.nan)) is None
    wide = P("E", 2, "float64")
    assert decode_point(wide, encode_point(wide, 1e12 + 0.25)) == 1e12 + 0.25
    meter = SunSpecImage([load_model(213).layout()])[213]
    meter.set_value("W", -3300.0)
    assert meter.value("W") == -3300.0 and meter.value("WphA") is None


def test_accumulators_and_counts() -> None:
    assert decode_point(P("WH", 2, "acc32"), [0, 0]) is None  # 0 is 'not implemented' for accumulators
    assert decode_point(P("WH", 2, "acc32"), [0, 7]) == 7
    assert decode_point(P("N", 2, "count"), [0xFFFF]) is None
