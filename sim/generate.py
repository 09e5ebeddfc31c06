"""Scenario generator: N IEEE 13 microgrids on the IEEE 34 or IEEE 123 feeder, sized so the power flow converges.

A feeder carries only so much: full-size microgrids (the shipped ``ieee34_3x13`` ones, about 1 MW peak
load, 0.5 MW / 2 MWh battery, 0.66 MW generator, 0.1 MW PV and wind) stop converging past a dozen on
IEEE 34 even near the substation, and anywhere along it, under the hardest setpoints (every battery charging
flat out at the peak), past one or two. The generator keeps the *total* microgrid size at most ``capacity`` full-size microgrids of the
feeder (:data:`CAPACITY`): with ``N <= capacity`` every microgrid is full size, beyond that every rating
(loads, devices, PoC transformer) is scaled by ``capacity / N``. The seed picks where each microgrid
connects (spread evenly over the feeder's buses in a shuffled order), which regional profiles drive it,
and varies its PV and wind ratings by up to 25 %.
"""
from __future__ import annotations

import random
from typing import Literal

from sim.errors import ScenarioError
from sim.ieee123 import IEEE123_ATTACH_BUSES
from sim.networks import IEEE34_LINES
from sim.scenario import Scenario

__all__ = ["CAPACITY", "MAX_MICROGRIDS", "FeederName", "generate_scenario", "scenario_toml"]

FeederName = Literal["ieee34", "ieee123"]
MAX_MICROGRIDS = 5000
# Full-size microgrid equivalents each feeder carries with its power flow converging across the year,
# whatever the agents do (checked by tests/sim/test_generate.py).
CAPACITY: dict[FeederName, float] = {"ieee34": 1.5, "ieee123": 3.0}
# Peak feeder load of each feeder alone (MW), for the substation rating.
_FEEDER_PEAK_MW: dict[FeederName, float] = {"ieee34": 1.77, "ieee123": 3.49}
_MICROGRID_PEAK_MW = 3.466 * 0.3  # IEEE 13 loads at the full-size load scale
_IEEE34_ATTACH = tuple(sorted({n for a, b, _, _ in IEEE34_LINES for n in (a, b)} - {"800", "888", "890"}))
_REGIONS = (("load_pge", "solar_np15", "wind_np15"), ("load_sce", "solar_sp15", "wind_sp15"),
            ("load_sdge", "solar_zp26", "wind_zp26"))


def generate_scenario(feeder: FeederName, microgrids: int, *, seed: int = 0) -> Scenario:
    """A scenario with ``microgrids`` microgrids ``mg1..mgN`` on ``feeder``, reproducible from ``seed``."""
    if feeder not in CAPACITY:
        raise ScenarioError(f"unknown feeder {feeder!r}: use ieee34 or ieee123")
    if not 1 <= microgrids <= MAX_MICROGRIDS:
        raise ScenarioError(f"number of microgrids must be in 1..{MAX_MICROGRIDS}, got {microgrids}")
    rng = random.Random(f"{feeder}:{microgrids}:{seed}")
    scale = min(1.0, CAPACITY[feeder] / microgrids)
    buses = list(_IEEE34_ATTACH if feeder == "ieee34" else IEEE123_ATTACH_BUSES)
    rng.shuffle(buses)
    names = [f"mg{k + 1}" for k in range(microgrids)]
    mgs = []
    for name in names:
        load, solar, wind = rng.choice(_REGIONS)
        mgs.append({
            "name": name, "load_profile": load, "solar_profile": solar, "wind_profile": wind,
            "pv_mw": round(0.1 * scale * rng.uniform(0.75, 1.25), 6),
            "wind_mw": round(0.1 * scale * rng.uniform(0.75, 1.25), 6),
            "battery": {"capacity_mwh": round(2.0 * scale, 6), "p_max_mw": round(0.5 * scale, 6)},
            "generator": {"p_max_mw": round(0.66 * scale, 6), "ramp_mw_per_h": round(0.33 * scale, 6)},
        })
    total_peak = _FEEDER_PEAK_MW[feeder] + microgrids * scale * _MICROGRID_PEAK_MW
    network: dict[str, object] = {
        "kind": "ieee34_3x13" if feeder == "ieee34" else "ieee123_13",
        "attach_buses": {name: buses[k % len(buses)] for k, name in enumerate(names)},
        "load_scale": round(0.3 * scale, 9), "poc_mva": round(2.5 * scale, 9),
    }
    return Scenario.model_validate({
        "name": f"{feeder}_{microgrids}mg_seed{seed}",
        "network": network,
        "microgrids": mgs,
        "export_price_ratio": 0.5,
        "feeder_head_rating_mva": round(max(2.5, 0.5 * total_peak), 3),
    })


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + " }"
    raise ScenarioError(f"cannot write {type(v).__name__} to TOML")


def scenario_toml(scenario: Scenario, *, header: str = "") -> str:
    """The scenario as a TOML file :func:`sim.scenario.load_scenario` reads back to an equal Scenario."""
    data = scenario.model_dump(mode="json", exclude_defaults=True)
    data["network"] = {"kind": scenario.network.kind, **data.get("network", {})}  # the discriminator, always
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    tables: dict[str, dict[str, object]] = {}
    for key, value in data.items():
        if key == "microgrids":
            continue
        if isinstance(value, dict):
            tables[key] = value
        else:
            lines.append(f"{key} = {_value(value)}")
    for key, table in tables.items():
        lines += ["", f"[{key}]"] + [f"{k} = {_value(v)}" for k, v in table.items()]
    for mg in data.get("microgrids", []):
        lines += ["", "[[microgrids]]"]
        nested = {k: v for k, v in mg.items() if isinstance(v, dict)}
        lines += [f"{k} = {_value(v)}" for k, v in mg.items() if k not in nested]
        lines += [f"{k} = {_value(v)}" for k, v in nested.items()]
    return "\n".join(lines) + "\n"
