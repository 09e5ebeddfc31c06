"""IEEE 123 node test feeder (4.16 kV), balanced positive-sequence equivalent, with IEEE 13 microgrids.

Source: IEEE PES Distribution System Analysis Subcommittee, "IEEE 123 Node Test Feeder" (Kersting):
line segment data, the twelve line configurations' impedance (ohm/mile) and susceptance (microsiemens/mile)
matrices, spot loads, shunt capacitors, the four step-voltage regulators (settings and the published
final taps), switches and transformer XFM-1. The balanced equivalent follows :mod:`sim.networks`
(``Z1 = Zs - Zm`` over the phases present, ``B1 = Bs - Bm``; loads summed over phases, constant
power). Closed switches join their two buses (13-152, 18-135, 60-160, 61-610's switch, 97-197,
149-150's regulator output); normally open ones (54-94, 151-300, 250-251, 300-350, 450-451, 95-195)
are left out with the buses only they reach. Each regulator is a ratio-tap transformer (0.625 % a
step, load side) driven by :mod:`sim.regulators` from the published relay settings; the published
per-phase final taps (1: 7/7/7, 2: -1, 3: 0/-1, 4: 8/1/5) become one tap each, rounded means, as
the starting position. The published data give no time delays: 30 s for the substation regulator,
45 s for the three downstream ones.
"""
from __future__ import annotations

import math

import pandapower as pp

from sim.errors import ScenarioError
from sim.networks import (
    F_HZ,
    FT_KM,
    MILE_KM,
    REGULATOR_STEP_PERCENT,
    BuiltNetwork,
    Regulator,
    add_ieee13_microgrids,
)
from sim.regulators import RegulatorSettings

__all__ = ["IEEE123_ATTACH_BUSES", "IEEE123_LINES", "ieee123_13"]

# Configurations: per-phase self impedance (ohm/mile) and susceptance (uS/mile) of the phases present,
# mutual impedance and susceptance between them (published matrices, phases a, b, c).
_RAW: dict[str, tuple[list[complex], list[complex], list[float], list[float]]] = {
    "1": ([0.4576 + 1.0780j, 0.4666 + 1.0482j, 0.4615 + 1.0651j], [0.1560 + 0.5017j, 0.1535 + 0.3849j, 0.1580 + 0.4236j],
          [5.6765, 5.9809, 5.3971], [-1.8319, -0.6982, -1.1645]),
    "2": ([0.4666 + 1.0482j, 0.4615 + 1.0651j, 0.4576 + 1.0780j], [0.1580 + 0.4236j, 0.1560 + 0.5017j, 0.1535 + 0.3849j],
          [5.9809, 5.3971, 5.6765], [-1.1645, -1.8319, -0.6982]),
    "3": ([0.4615 + 1.0651j, 0.4576 + 1.0780j, 0.4666 + 1.0482j], [0.1535 + 0.3849j, 0.1580 + 0.4236j, 0.1560 + 0.5017j],
          [5.3971, 5.6765, 5.9809], [-0.6982, -1.1645, -1.8319]),
    "4": ([0.4615 + 1.0651j, 0.4666 + 1.0482j, 0.4576 + 1.0780j], [0.1580 + 0.4236j, 0.1535 + 0.3849j, 0.1560 + 0.5017j],
          [5.3971, 5.9809, 5.6765], [-1.1645, -0.6982, -1.8319]),
    "5": ([0.4666 + 1.0482j, 0.4576 + 1.0780j, 0.4615 + 1.0651j], [0.1560 + 0.5017j, 0.1580 + 0.4236j, 0.1535 + 0.3849j],
          [5.9809, 5.6765, 5.3971], [-1.8319, -1.1645, -0.6982]),
    "6": ([0.4576 + 1.0780j, 0.4615 + 1.0651j, 0.4666 + 1.0482j], [0.1535 + 0.3849j, 0.1560 + 0.5017j, 0.1580 + 0.4236j],
          [5.6765, 5.3971, 5.9809], [-0.6982, -1.8319, -1.1645]),
    "7": ([0.4576 + 1.0780j, 0.4615 + 1.0651j], [0.1535 + 0.3849j], [5.1154, 5.1704], [-1.0549]),
    "8": ([0.4576 + 1.0780j, 0.4615 + 1.0651j], [0.1535 + 0.3849j], [5.1154, 5.1704], [-1.0549]),
    "9": ([1.3292 + 1.3475j], [], [4.5193], []),
    "10": ([1.3292 + 1.3475j], [], [4.5193], []),
    "11": ([1.3292 + 1.3475j], [], [4.5193], []),
    "12": ([1.5209 + 0.7521j, 1.5329 + 0.7162j, 1.5209 + 0.7521j], [0.5198 + 0.2775j, 0.4924 + 0.2157j, 0.5198 + 0.2775j],
           [67.2242, 67.2242, 67.2242], [0.0, 0.0, 0.0]),
}
# Ampacity (A) of each configuration's phase conductor: 336,400 26/7 ACSR (1-8), 1/0 ACSR (9-11), 1/0 AA cable (12).
_AMPACITY = {**{str(c): 530.0 for c in range(1, 9)}, **{str(c): 230.0 for c in range(9, 13)}}


def _positive_sequence(cfg: str) -> tuple[float, float, float]:
    """(R1, X1) ohm/mile and B1 uS/mile of a configuration."""
    z_self, z_mutual, b_self, b_mutual = _RAW[cfg]
    z1 = sum(z_self) / len(z_self) - (sum(z_mutual) / len(z_mutual) if z_mutual else 0j)
    b1 = sum(b_self) / len(b_self) - (sum(b_mutual) / len(b_mutual) if b_mutual else 0.0)
    return z1.real, z1.imag, b1


# Line segments (from, to, length ft, configuration), after joining the closed switches' buses.
IEEE123_LINES: list[tuple[str, str, int, str]] = [
    ("1", "2", 175, "10"), ("1", "3", 250, "11"), ("1", "7", 300, "1"), ("3", "4", 200, "11"), ("3", "5", 325, "11"),
    ("5", "6", 250, "11"), ("7", "8", 200, "1"), ("8", "12", 225, "10"), ("8", "9", 225, "9"), ("8", "13", 300, "1"),
    ("9r", "14", 425, "9"), ("13", "34", 150, "11"), ("13", "18", 825, "2"), ("14", "11", 250, "9"),
    ("14", "10", 250, "9"), ("15", "16", 375, "11"), ("15", "17", 350, "11"), ("18", "19", 250, "9"),
    ("18", "21", 300, "2"), ("19", "20", 325, "9"), ("21", "22", 525, "10"), ("21", "23", 250, "2"),
    ("23", "24", 550, "11"), ("23", "25", 275, "2"), ("25r", "26", 350, "7"), ("25", "28", 200, "2"),
    ("26", "27", 275, "7"), ("26", "31", 225, "11"), ("27", "33", 500, "9"), ("28", "29", 300, "2"),
    ("29", "30", 350, "2"), ("30", "250", 200, "2"), ("31", "32", 300, "11"), ("34", "15", 100, "11"),
    ("35", "36", 650, "8"), ("35", "40", 250, "1"), ("36", "37", 300, "9"), ("36", "38", 250, "10"),
    ("38", "39", 325, "10"), ("40", "41", 325, "11"), ("40", "42", 250, "1"), ("42", "43", 500, "10"),
    ("42", "44", 200, "1"), ("44", "45", 200, "9"), ("44", "47", 250, "1"), ("45", "46", 300, "9"),
    ("47", "48", 150, "4"), ("47", "49", 250, "4"), ("49", "50", 250, "4"), ("50", "51", 250, "4"),
    ("51", "151", 500, "4"), ("52", "53", 200, "1"), ("53", "54", 125, "1"), ("54", "55", 275, "1"),
    ("54", "57", 350, "3"), ("55", "56", 275, "1"), ("57", "58", 250, "10"), ("57", "60", 750, "3"),
    ("58", "59", 250, "10"), ("60", "61", 550, "5"), ("60", "62", 250, "12"), ("160r", "67", 350, "6"),
    ("62", "63", 175, "12"), ("63", "64", 350, "12"), ("64", "65", 425, "12"), ("65", "66", 325, "12"),
    ("67", "68", 200, "9"), ("67", "72", 275, "3"), ("67", "97", 250, "3"), ("68", "69", 275, "9"),
    ("69", "70", 325, "9"), ("70", "71", 275, "9"), ("72", "73", 275, "11"), ("72", "76", 200, "3"),
    ("73", "74", 350, "11"), ("74", "75", 400, "11"), ("76", "77", 400, "6"), ("76", "86", 700, "3"),
    ("77", "78", 100, "6"), ("78", "79", 225, "6"), ("78", "80", 475, "6"), ("80", "81", 475, "6"),
    ("81", "82", 250, "6"), ("81", "84", 675, "11"), ("82", "83", 250, "6"), ("84", "85", 475, "11"),
    ("86", "87", 450, "6"), ("87", "88", 175, "9"), ("87", "89", 275, "6"), ("89", "90", 225, "10"),
    ("89", "91", 225, "6"), ("91", "92", 300, "11"), ("91", "93", 225, "6"), ("93", "94", 275, "9"),
    ("93", "95", 300, "6"), ("95", "96", 200, "10"), ("97", "98", 275, "3"), ("97", "101", 250, "3"),
    ("98", "99", 550, "3"), ("99", "100", 300, "3"), ("100", "450", 800, "3"), ("101", "102", 225, "11"),
    ("101", "105", 275, "3"), ("102", "103", 325, "11"), ("103", "104", 700, "11"), ("105", "106", 225, "10"),
    ("105", "108", 325, "3"), ("106", "107", 575, "10"), ("108", "109", 450, "9"), ("108", "300", 1000, "3"),
    ("109", "110", 300, "9"), ("110", "111", 575, "9"), ("110", "112", 125, "9"), ("112", "113", 525, "9"),
    ("113", "114", 325, "9"), ("18", "35", 375, "4"), ("149", "1", 400, "1"), ("13", "52", 400, "1"),
]
# Regulators (source bus, regulated bus, published relay settings, starting tap). The regulated side
# ``9r``, ``25r`` and ``160r`` is the regulator's output, where the published line to 14, 26 and 67 starts.
_REGULATORS: list[tuple[str, str, RegulatorSettings, int]] = [
    ("150", "149", RegulatorSettings(name="reg1", band_center_v=120.0, bandwidth_v=2.0, time_delay_s=30.0,
                                     pt_ratio=20.0, ct_primary_a=700.0, r_v=3.0, x_v=7.5,
                                     step_percent=REGULATOR_STEP_PERCENT), 7),
    ("9", "9r", RegulatorSettings(name="reg2", band_center_v=120.0, bandwidth_v=2.0, time_delay_s=45.0,
                                  pt_ratio=20.0, ct_primary_a=50.0, r_v=0.4, x_v=0.4,
                                  step_percent=REGULATOR_STEP_PERCENT), -1),
    ("25", "25r", RegulatorSettings(name="reg3", band_center_v=120.0, bandwidth_v=1.0, time_delay_s=45.0,
                                    pt_ratio=20.0, ct_primary_a=50.0, r_v=0.4, x_v=0.4,
                                    step_percent=REGULATOR_STEP_PERCENT), 0),
    ("60", "160r", RegulatorSettings(name="reg4", band_center_v=124.0, bandwidth_v=2.0, time_delay_s=45.0,
                                     pt_ratio=20.0, ct_primary_a=300.0, r_v=0.7333, x_v=1.7667,
                                     step_percent=REGULATOR_STEP_PERCENT), 5),
]
# Spot loads kW, kvar (sum over phases; the published Y/D and PQ/I/Z models all become constant power).
IEEE123_SPOT_LOADS: dict[str, tuple[float, float]] = {
    "1": (40, 20), "2": (20, 10), "4": (40, 20), "5": (20, 10), "6": (40, 20), "7": (20, 10), "9": (40, 20),
    "10": (20, 10), "11": (40, 20), "12": (20, 10), "16": (40, 20), "17": (20, 10), "19": (40, 20),
    "20": (40, 20), "22": (40, 20), "24": (40, 20), "28": (40, 20), "29": (40, 20), "30": (40, 20),
    "31": (20, 10), "32": (20, 10), "33": (40, 20), "34": (40, 20), "35": (40, 20), "37": (40, 20),
    "38": (20, 10), "39": (20, 10), "41": (20, 10), "42": (20, 10), "43": (40, 20), "45": (20, 10),
    "46": (20, 10), "47": (105, 75), "48": (210, 150), "49": (140, 95), "50": (40, 20), "51": (20, 10),
    "52": (40, 20), "53": (40, 20), "55": (20, 10), "56": (20, 10), "58": (20, 10), "59": (20, 10),
    "60": (20, 10), "62": (40, 20), "63": (40, 20), "64": (75, 35), "65": (140, 100), "66": (75, 35),
    "68": (20, 10), "69": (40, 20), "70": (20, 10), "71": (40, 20), "73": (40, 20), "74": (40, 20),
    "75": (40, 20), "76": (245, 180), "77": (40, 20), "79": (40, 20), "80": (40, 20), "82": (40, 20),
    "83": (20, 10), "84": (20, 10), "85": (40, 20), "86": (20, 10), "87": (40, 20), "88": (40, 20),
    "90": (40, 20), "92": (40, 20), "94": (40, 20), "95": (20, 10), "96": (20, 10), "98": (40, 20),
    "99": (40, 20), "100": (40, 20), "102": (20, 10), "103": (40, 20), "104": (40, 20), "106": (40, 20),
    "107": (40, 20), "109": (40, 20), "111": (20, 10), "112": (20, 10), "113": (40, 20), "114": (20, 10),
}
IEEE123_CAPACITORS_KVAR = {"83": 600, "88": 50, "90": 50, "92": 50}
# Buses on the three-phase trunk (configurations 1-6 and 12) where a microgrid may connect.
_THREE_PHASE = {str(c) for c in range(1, 7)} | {"12"}
IEEE123_ATTACH_BUSES: tuple[str, ...] = tuple(sorted(
    {n for a, b, _, c in IEEE123_LINES if c in _THREE_PHASE for n in (a, b)} - {"9r", "25r", "160r"}, key=int))


def ieee123_13(*, attach_buses: list[str], microgrid_names: list[str], load_scale: float,
               feeder_load_scale: float = 1.0, source_vm_pu: float = 1.0, poc_mva: float = 2.5) -> BuiltNetwork:
    """IEEE 123 feeder (4.16 kV, 5 MVA substation) with one IEEE 13 microgrid (4.16 kV, through a
    4.16/4.16 kV PoC transformer) at each of ``attach_buses`` (buses of the three-phase trunk)."""
    if len(attach_buses) != len(microgrid_names):
        raise ScenarioError("attach_buses and microgrid names must have the same length")
    unknown = sorted({b for b in attach_buses if b not in IEEE123_ATTACH_BUSES})
    if unknown:
        raise ScenarioError(f"attach buses {unknown[:10]} are not three-phase buses of the IEEE 123 feeder "
                            f"(use one of {', '.join(IEEE123_ATTACH_BUSES)})")
    net = pp.create_empty_network(name="ieee123_13", f_hz=F_HZ, sn_mva=1.0)
    names = sorted({n for a, b, _, _ in IEEE123_LINES for n in (a, b)} | {"150", "610"})
    ids = pp.create_buses(net, len(names), vn_kv=[0.48 if n == "610" else 4.16 for n in names], name=names,
                          zone="feeder")
    bus_of = {n: int(i) for n, i in zip(names, ids, strict=True)}
    pp.create_ext_grid(net, bus_of["150"], vm_pu=source_vm_pu, name="substation")
    seq = [_positive_sequence(c) for _, _, _, c in IEEE123_LINES]
    pp.create_lines_from_parameters(
        net, [bus_of[a] for a, _, _, _ in IEEE123_LINES], [bus_of[b] for _, b, _, _ in IEEE123_LINES],
        length_km=[ft * FT_KM for _, _, ft, _ in IEEE123_LINES], r_ohm_per_km=[r / MILE_KM for r, _, _ in seq],
        x_ohm_per_km=[x / MILE_KM for _, x, _ in seq],
        c_nf_per_km=[b / MILE_KM / (2 * math.pi * F_HZ) * 1e3 for _, _, b in seq],
        max_i_ka=[_AMPACITY[c] / 1000.0 for _, _, _, c in IEEE123_LINES],
        name=[f"{a}-{b}" for a, b, _, _ in IEEE123_LINES])
    regulators = []
    for a, b, settings, tap in _REGULATORS:
        trafo = pp.create_transformer_from_parameters(
            net, bus_of[a], bus_of[b], sn_mva=5.0, vn_hv_kv=4.16, vn_lv_kv=4.16, vk_percent=0.1, vkr_percent=0.01,
            pfe_kw=0.0, i0_percent=0.0, name=settings.name, tap_side="lv", tap_neutral=0, tap_min=settings.tap_min,
            tap_max=settings.tap_max, tap_step_percent=settings.step_percent, tap_pos=tap, tap_step_degree=0.0,
            tap_changer_type="Ratio")
        regulators.append(Regulator(trafo=int(trafo), settings=settings))
    pp.create_transformer_from_parameters(  # XFM-1: 150 kVA, 4.16/0.48 kV, R 1.27 %, X 2.72 %
        net, bus_of["61"], bus_of["610"], sn_mva=0.15, vn_hv_kv=4.16, vn_lv_kv=0.48,
        vk_percent=math.hypot(1.27, 2.72), vkr_percent=1.27, pfe_kw=0.0, i0_percent=0.0, name="xfm1")
    loads = sorted(IEEE123_SPOT_LOADS.items(), key=lambda kv: int(kv[0]))
    pp.create_loads(net, [bus_of[n] for n, _ in loads], p_mw=[p * 1e-3 * feeder_load_scale for _, (p, _) in loads],
                    q_mvar=[q * 1e-3 * feeder_load_scale for _, (_, q) in loads], name=[f"load{n}" for n, _ in loads])
    caps = list(IEEE123_CAPACITORS_KVAR.items())
    pp.create_shunts(net, [bus_of[n] for n, _ in caps], q_mvar=[-kvar * 1e-3 for _, kvar in caps], p_mw=0.0,
                     name=[f"cap{n}" for n, _ in caps])
    zones = add_ieee13_microgrids(net, microgrid_names, [bus_of[b] for b in attach_buses], load_scale, poc_mva,
                                  hv_kv=4.16)
    return BuiltNetwork(net=net, zones=zones, regulators=regulators)
