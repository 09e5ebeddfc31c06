"""pandapower networks for the scenarios: IEEE 34 feeder with three IEEE 13 microgrids, and CIGRE MV.

(The IEEE 123 feeder, built on this module's IEEE 13 microgrids, is in :mod:`sim.ieee123`.)

Source of the feeder data: IEEE PES Distribution System Analysis Subcommittee, "IEEE 34 Node Test
Feeder" and "IEEE 13 Node Test Feeder" (Kersting, 1991/2001 data sets: line segment data, line
configurations' impedance and admittance matrices in ohm and microsiemens per mile, spot and
distributed loads, shunt capacitors, transformers, regulators' final tap positions).

The published feeders are unbalanced; these are their balanced positive-sequence equivalents so one
fast single-phase-equivalent solver can run them:
- a section's series impedance is Z1 = Zs - Zm (Zs the mean self, Zm the mean mutual impedance of
  the phases present; a one-phase section has Z1 = Zs) and its shunt susceptance B1 = Bs - Bm;
- loads are the sum over phases, constant power (the published Z/I load models are not kept);
  a distributed load is split half and half between its section's end buses;
- the IEEE 34 regulators (814-850, 852-832) are ganged three-phase transformers with a ratio tap
  (0.625 % a step on the load side, +-16 steps) driven by the published relay settings
  (``IEEE34_REGULATOR_SETTINGS``: band centre, bandwidth, PT ratio, CT rating and line-drop
  compensation R, X; the published data give no time delay, see there) through ``sim.regulators``; the
  per-phase taps of the published results become one tap per regulator, acting on the positive-sequence
  voltage and current. The 671-692 switch is a 10 ft section of configuration 601. (A ratio tap, not
  vn_lv_kv off-nominal, because lightsim2grid reads taps exactly like pandapower but not an off-nominal
  rated voltage.)
- the IEEE 34 shunt capacitors are the published ones, fixed: 844 100 kvar and 848 150 kvar a phase
  (constant impedance, rated at 1 p.u.); each microgrid's (IEEE 13 675 and 611) scale with its loads.
Each microgrid is an IEEE 13 feeder whose 115/4.16 kV substation becomes a 24.9/4.16 kV point of
connection (PoC) transformer at a feeder bus; its loads are scaled by the scenario's load scale.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandapower as pp

from sim.errors import ScenarioError
from sim.regulators import RegulatorSettings

MILE_KM = 1.609344
FT_KM = 0.0003048
F_HZ = 60.0

# Line configurations: positive-sequence (R1, X1) ohm/mile and B1 microsiemens/mile (see docstring).
_CONFIGS: dict[str, tuple[float, float, float]] = {}


def _config(name: str, z_self: list[complex], z_mutual: list[complex], b_self: list[float], b_mutual: list[float]) -> None:
    zs = sum(z_self) / len(z_self)
    zm = sum(z_mutual) / len(z_mutual) if z_mutual else 0j
    bs = sum(b_self) / len(b_self)
    bm = sum(b_mutual) / len(b_mutual) if b_mutual else 0.0
    z1 = zs - zm
    _CONFIGS[name] = (z1.real, z1.imag, bs - bm)


# IEEE 34 configurations 300-304.
_config("300", [1.3368 + 1.3343j, 1.3238 + 1.3569j, 1.3294 + 1.3471j], [0.2101 + 0.5779j, 0.2130 + 0.5015j, 0.2066 + 0.4591j],
        [5.3350, 5.0979, 4.8880], [-1.5313, -0.9943, -0.6212])
_config("301", [1.9300 + 1.4115j, 1.9157 + 1.4281j, 1.9219 + 1.4209j], [0.2327 + 0.6442j, 0.2359 + 0.5691j, 0.2288 + 0.5238j],
        [5.1207, 4.9055, 4.7154], [-1.4364, -0.9402, -0.5951])
_config("302", [2.7995 + 1.4855j], [], [4.2251], [])
_config("303", [2.7995 + 1.4855j], [], [4.2251], [])
_config("304", [1.9217 + 1.4212j], [], [4.3637], [])
# IEEE 13 configurations 601-607.
_config("601", [0.3465 + 1.0179j, 0.3375 + 1.0478j, 0.3414 + 1.0348j], [0.1560 + 0.5017j, 0.1580 + 0.4236j, 0.1535 + 0.3849j],
        [6.2998, 5.9597, 5.6386], [-1.9958, -1.2595, -0.7417])
_config("602", [0.7526 + 1.1814j, 0.7475 + 1.1983j, 0.7436 + 1.2112j], [0.1580 + 0.4236j, 0.1560 + 0.5017j, 0.1535 + 0.3849j],
        [5.6990, 5.1795, 5.4246], [-1.0817, -1.6905, -0.6588])
_config("603", [1.3294 + 1.3471j, 1.3238 + 1.3569j], [0.2066 + 0.4591j], [4.7097, 4.6658], [-0.8999])
_config("604", [1.3238 + 1.3569j, 1.3294 + 1.3471j], [0.2066 + 0.4591j], [4.6658, 4.7097], [-0.8999])
_config("605", [1.3292 + 1.3475j], [], [4.5193], [])
_config("606", [0.7982 + 0.4463j, 0.7891 + 0.4041j, 0.7982 + 0.4463j], [0.3192 + 0.0328j, 0.2849 - 0.0143j, 0.3192 + 0.0328j],
        [96.8897, 96.8897, 96.8897], [0.0, 0.0, 0.0])
_config("607", [1.3425 + 0.5124j], [], [88.9912], [])

# Ampacity (A) of each configuration's phase conductor, for line loading.
_AMPACITY = {"300": 230.0, "301": 180.0, "302": 140.0, "303": 140.0, "304": 180.0,
             "601": 730.0, "602": 530.0, "603": 230.0, "604": 230.0, "605": 230.0, "606": 329.0, "607": 165.0}

# IEEE 34: (from, to, length ft, configuration). 814-850 and 852-832 are the regulators (below).
IEEE34_LINES = [
    ("800", "802", 2580, "300"), ("802", "806", 1730, "300"), ("806", "808", 32230, "300"),
    ("808", "810", 5804, "303"), ("808", "812", 37500, "300"), ("812", "814", 29730, "300"),
    ("850", "816", 310, "301"), ("816", "818", 1710, "302"), ("816", "824", 10210, "301"),
    ("818", "820", 48150, "302"), ("820", "822", 13740, "302"), ("824", "826", 3030, "303"),
    ("824", "828", 840, "301"), ("828", "830", 20440, "301"), ("830", "854", 520, "301"),
    ("832", "858", 4900, "301"), ("834", "860", 2020, "301"), ("834", "842", 280, "301"),
    ("836", "840", 860, "301"), ("836", "862", 280, "301"), ("842", "844", 1350, "301"),
    ("844", "846", 3640, "301"), ("846", "848", 530, "301"), ("854", "856", 23330, "303"),
    ("854", "852", 36830, "301"), ("858", "864", 1620, "302"), ("858", "834", 5830, "301"),
    ("860", "836", 2680, "301"), ("862", "838", 4860, "304"), ("888", "890", 10560, "300"),
]
# Regulators (from, to) and their relays' published settings (volts on the 120 V PT secondary, CT primary
# amperes, compensator R and X in volts). The published feeder data give no time delays: 30 s for the
# first regulator and 45 s for the second, downstream one (the usual coordination: the upstream unit acts
# first), and OpenDSS's default of 2 s between successive operations.
REGULATOR_STEP_PERCENT = 0.625
IEEE34_REGULATORS = [("814", "850"), ("852", "832")]
IEEE34_REGULATOR_SETTINGS = [
    RegulatorSettings(name="reg814-850", band_center_v=122.0, bandwidth_v=2.0, time_delay_s=30.0, pt_ratio=120.0,
                      ct_primary_a=100.0, r_v=2.7, x_v=1.6, step_percent=REGULATOR_STEP_PERCENT),
    RegulatorSettings(name="reg852-832", band_center_v=124.0, bandwidth_v=2.0, time_delay_s=45.0, pt_ratio=120.0,
                      ct_primary_a=100.0, r_v=2.5, x_v=1.5, step_percent=REGULATOR_STEP_PERCENT),
]
# Spot loads kW, kvar (sum over phases).
IEEE34_SPOT_LOADS = {"860": (60, 48), "840": (27, 21), "844": (405, 315), "848": (60, 48), "890": (450, 225), "830": (45, 20)}
# Distributed loads on sections (from, to): kW, kvar, half to each end.
IEEE34_DISTRIBUTED_LOADS = {
    ("802", "806"): (55, 29), ("808", "810"): (16, 8), ("818", "820"): (34, 17), ("820", "822"): (135, 70),
    ("816", "824"): (5, 2), ("824", "826"): (40, 20), ("824", "828"): (4, 2), ("828", "830"): (7, 3),
    ("854", "856"): (4, 2), ("832", "858"): (15, 7), ("858", "864"): (2, 1), ("858", "834"): (32, 17),
    ("834", "860"): (146, 73), ("860", "836"): (82, 43), ("836", "840"): (40, 20), ("862", "838"): (28, 14),
    ("842", "844"): (9, 5), ("844", "846"): (45, 23), ("846", "848"): (23, 11),
}
IEEE34_CAPACITORS_KVAR = {"844": 300, "848": 450}

IEEE13_LINES = [
    ("650", "632", 2000, "601"), ("632", "645", 500, "603"), ("632", "633", 500, "602"),
    ("645", "646", 300, "603"), ("632", "671", 2000, "601"), ("671", "684", 300, "604"),
    ("671", "680", 1000, "601"), ("671", "692", 10, "601"), ("684", "611", 300, "605"),
    ("684", "652", 800, "607"), ("692", "675", 500, "606"),
]
IEEE13_SPOT_LOADS = {"634": (400, 290), "645": (170, 125), "646": (230, 132), "652": (128, 86),
                     "671": (1155 + 100, 660 + 58), "675": (843, 462), "692": (170, 151), "611": (170, 80),
                     "632": (100, 58)}  # 632/671 carry half each of the 632-671 distributed load (200, 116)
IEEE13_CAPACITORS_KVAR = {"675": 600, "611": 100}


@dataclass
class MicrogridZone:
    """Where a microgrid sits in a network: its buses, device bus, loads and point of connection."""

    name: str
    buses: list[int]
    device_bus: int
    loads: list[int]
    poc_trafo: int | None = None  # index in net.trafo; its HV side flow is the microgrid's exchange
    poc_line: int | None = None  # alternatively a line; flow at its from-side, into the microgrid
    lines: list[int] = field(default_factory=list)
    trafos: list[int] = field(default_factory=list)  # transformers inside the zone (not the PoC), for overload


@dataclass(frozen=True)
class Regulator:
    """A voltage regulator of a network: its transformer (index in net.trafo, tap on the LV = load side) and relay."""

    trafo: int
    settings: RegulatorSettings


@dataclass
class BuiltNetwork:
    """A pandapower network plus the map from microgrids to its elements."""

    net: pp.pandapowerNet
    zones: list[MicrogridZone]
    regulators: list[Regulator] = field(default_factory=list)


def _add_line(net: pp.pandapowerNet, bus_of: dict[str, int], a: str, b: str, length_ft: float, cfg: str, prefix: str) -> int:
    r, x, b_us = _CONFIGS[cfg]
    return int(pp.create_line_from_parameters(
        net, bus_of[a], bus_of[b], length_km=length_ft * FT_KM, name=f"{prefix}{a}-{b}",
        r_ohm_per_km=r / MILE_KM, x_ohm_per_km=x / MILE_KM,
        c_nf_per_km=b_us / MILE_KM / (2 * math.pi * F_HZ) * 1e3, max_i_ka=_AMPACITY[cfg] / 1000.0,
    ))


def _add_ieee13(net: pp.pandapowerNet, name: str, feeder_bus: int, load_scale: float, poc_mva: float) -> MicrogridZone:
    names = ["650", "632", "633", "634", "645", "646", "671", "680", "684", "611", "652", "692", "675"]
    bus_of = {n: pp.create_bus(net, vn_kv=0.48 if n == "634" else 4.16, name=f"{name}.{n}", zone=name) for n in names}
    poc = pp.create_transformer_from_parameters(
        net, feeder_bus, bus_of["650"], sn_mva=poc_mva, vn_hv_kv=24.9, vn_lv_kv=4.16, vk_percent=math.hypot(1, 8),
        vkr_percent=1.0, pfe_kw=0.0, i0_percent=0.0, name=f"{name}.poc")
    xfm1 = pp.create_transformer_from_parameters(
        net, bus_of["633"], bus_of["634"], sn_mva=0.5, vn_hv_kv=4.16, vn_lv_kv=0.48, vk_percent=math.hypot(1.1, 2.0),
        vkr_percent=1.1, pfe_kw=0.0, i0_percent=0.0, name=f"{name}.xfm1")
    lines = [_add_line(net, bus_of, a, b, ft, cfg, f"{name}.") for a, b, ft, cfg in IEEE13_LINES]
    loads = [pp.create_load(net, bus_of[n], p_mw=p * 1e-3 * load_scale, q_mvar=q * 1e-3 * load_scale, name=f"{name}.load{n}")
             for n, (p, q) in IEEE13_SPOT_LOADS.items()]
    for n, kvar in IEEE13_CAPACITORS_KVAR.items():
        pp.create_shunt(net, bus_of[n], q_mvar=-kvar * 1e-3 * load_scale, p_mw=0.0, name=f"{name}.cap{n}")
    return MicrogridZone(name=name, buses=list(bus_of.values()), device_bus=bus_of["675"], loads=loads,
                         poc_trafo=poc, lines=lines, trafos=[int(xfm1)])


def add_ieee13_microgrids(net: pp.pandapowerNet, names: list[str], feeder_buses: list[int], load_scale: float,
                          poc_mva: float, hv_kv: float = 24.9) -> list[MicrogridZone]:
    """One IEEE 13 microgrid per name at each feeder bus (PoC transformer ``hv_kv``/4.16 kV), built table by
    table: the same elements in the same order as :func:`_add_ieee13` called per microgrid, at a fraction
    of the time (pandapower's per-element calls dominate once there are hundreds of microgrids)."""
    m = len(names)
    if m == 0:
        return []
    mg_buses = ["650", "632", "633", "634", "645", "646", "671", "680", "684", "611", "652", "692", "675"]
    k_bus, k_line = len(mg_buses), len(IEEE13_LINES)
    bus_ids = pp.create_buses(net, m * k_bus, vn_kv=[0.48 if b == "634" else 4.16 for _ in names for b in mg_buses],
                              name=[f"{nm}.{b}" for nm in names for b in mg_buses],
                              zone=[nm for nm in names for _ in mg_buses])
    bus = {(nm, b): int(bus_ids[i * k_bus + j]) for i, nm in enumerate(names) for j, b in enumerate(mg_buses)}
    hv, lv, sn, vhv, vlv, vk, vkr, tname = [], [], [], [], [], [], [], []
    for nm, fb in zip(names, feeder_buses, strict=True):  # per microgrid: the PoC, then xfm1 (as _add_ieee13)
        hv += [fb, bus[nm, "633"]]
        lv += [bus[nm, "650"], bus[nm, "634"]]
        sn += [poc_mva, 0.5]
        vhv += [hv_kv, 4.16]
        vlv += [4.16, 0.48]
        vk += [math.hypot(1, 8), math.hypot(1.1, 2.0)]
        vkr += [1.0, 1.1]
        tname += [f"{nm}.poc", f"{nm}.xfm1"]
    trafo_ids = pp.create_transformers_from_parameters(net, hv, lv, sn_mva=sn, vn_hv_kv=vhv, vn_lv_kv=vlv,
                                                       vkr_percent=vkr, vk_percent=vk, pfe_kw=0.0, i0_percent=0.0,
                                                       name=tname)
    cfgs = [_CONFIGS[c] for _, _, _, c in IEEE13_LINES]
    line_ids = pp.create_lines_from_parameters(
        net, [bus[nm, a] for nm in names for a, _, _, _ in IEEE13_LINES],
        [bus[nm, b] for nm in names for _, b, _, _ in IEEE13_LINES],
        length_km=[ft * FT_KM for _ in names for _, _, ft, _ in IEEE13_LINES],
        r_ohm_per_km=[r / MILE_KM for _ in names for r, _, _ in cfgs],
        x_ohm_per_km=[x / MILE_KM for _ in names for _, x, _ in cfgs],
        c_nf_per_km=[b_us / MILE_KM / (2 * math.pi * F_HZ) * 1e3 for _ in names for _, _, b_us in cfgs],
        max_i_ka=[_AMPACITY[c] / 1000.0 for _ in names for _, _, _, c in IEEE13_LINES],
        name=[f"{nm}.{a}-{b}" for nm in names for a, b, _, _ in IEEE13_LINES])
    loads = list(IEEE13_SPOT_LOADS.items())
    load_ids = pp.create_loads(net, [bus[nm, b] for nm in names for b, _ in loads],
                               p_mw=[p * 1e-3 * load_scale for _ in names for _, (p, _) in loads],
                               q_mvar=[q * 1e-3 * load_scale for _ in names for _, (_, q) in loads],
                               name=[f"{nm}.load{b}" for nm in names for b, _ in loads])
    caps = list(IEEE13_CAPACITORS_KVAR.items())
    pp.create_shunts(net, [bus[nm, b] for nm in names for b, _ in caps],
                     q_mvar=[-kvar * 1e-3 * load_scale for _ in names for _, kvar in caps], p_mw=0.0,
                     name=[f"{nm}.cap{b}" for nm in names for b, _ in caps])
    k_load = len(loads)
    return [MicrogridZone(name=nm, buses=[int(b) for b in bus_ids[i * k_bus:(i + 1) * k_bus]],
                          device_bus=bus[nm, "675"], loads=[int(x) for x in load_ids[i * k_load:(i + 1) * k_load]],
                          poc_trafo=int(trafo_ids[2 * i]), lines=[int(x) for x in line_ids[i * k_line:(i + 1) * k_line]],
                          trafos=[int(trafo_ids[2 * i + 1])])
            for i, nm in enumerate(names)]


def ieee34_3x13(*, attach_buses: list[str], microgrid_names: list[str], load_scale: float,
                feeder_load_scale: float = 1.0, source_vm_pu: float = 1.05, poc_mva: float = 2.5,
                regulator_taps: int = 8) -> BuiltNetwork:
    """IEEE 34 feeder (24.9 kV) with one IEEE 13 microgrid (4.16 kV) at each of ``attach_buses``.

    ``regulator_taps``: the regulators' tap position as built (both regulators), where automatic control starts.
    """
    if len(attach_buses) != len(microgrid_names):
        raise ScenarioError("attach_buses and microgrid names must have the same length")
    net = pp.create_empty_network(name="ieee34_3x13", f_hz=F_HZ, sn_mva=1.0)
    feeder_names = sorted({n for a, b, _, _ in IEEE34_LINES for n in (a, b)} | {"814", "850", "852", "832"})
    bus_of = {n: pp.create_bus(net, vn_kv=4.16 if n in ("888", "890") else 24.9, name=n, zone="feeder") for n in feeder_names}
    unknown = [b for b in attach_buses if b not in bus_of or b in ("888", "890")]
    if unknown:
        raise ScenarioError(f"attach buses {unknown} are not 24.9 kV buses of the IEEE 34 feeder")
    pp.create_ext_grid(net, bus_of["800"], vm_pu=source_vm_pu, name="substation")
    for a, b, ft, cfg in IEEE34_LINES:
        _add_line(net, bus_of, a, b, ft, cfg, "")
    regulators = []
    for (a, b), settings in zip(IEEE34_REGULATORS, IEEE34_REGULATOR_SETTINGS, strict=True):
        trafo = pp.create_transformer_from_parameters(
            net, bus_of[a], bus_of[b], sn_mva=2.5, vn_hv_kv=24.9, vn_lv_kv=24.9, vk_percent=0.5,
            vkr_percent=0.05, pfe_kw=0.0, i0_percent=0.0, name=f"reg{a}-{b}", tap_side="lv", tap_neutral=0,
            tap_min=-16, tap_max=16, tap_step_percent=REGULATOR_STEP_PERCENT, tap_pos=regulator_taps,
            tap_step_degree=0.0, tap_changer_type="Ratio")
        regulators.append(Regulator(trafo=int(trafo), settings=settings))
    pp.create_transformer_from_parameters(
        net, bus_of["832"], bus_of["888"], sn_mva=0.5, vn_hv_kv=24.9, vn_lv_kv=4.16, vk_percent=math.hypot(1.9, 4.08),
        vkr_percent=1.9, pfe_kw=0.0, i0_percent=0.0, name="xfm1")
    kw: dict[str, list[float]] = {}
    for n, (p, q) in IEEE34_SPOT_LOADS.items():
        kw.setdefault(n, [0.0, 0.0])
        kw[n][0] += p
        kw[n][1] += q
    for (a, b), (p, q) in IEEE34_DISTRIBUTED_LOADS.items():
        for n in (a, b):
            kw.setdefault(n, [0.0, 0.0])
            kw[n][0] += p / 2
            kw[n][1] += q / 2
    for n, (p_kw, q_kvar) in sorted(kw.items()):
        pp.create_load(net, bus_of[n], p_mw=p_kw * 1e-3 * feeder_load_scale, q_mvar=q_kvar * 1e-3 * feeder_load_scale,
                       name=f"load{n}")
    for n, kvar in IEEE34_CAPACITORS_KVAR.items():
        pp.create_shunt(net, bus_of[n], q_mvar=-kvar * 1e-3, p_mw=0.0, name=f"cap{n}")
    zones = add_ieee13_microgrids(net, microgrid_names, [bus_of[b] for b in attach_buses], load_scale, poc_mva)
    return BuiltNetwork(net=net, zones=zones, regulators=regulators)


def cigre_mv_der(*, zones: dict[str, list[int]], device_buses: dict[str, int], poc_lines: dict[str, int],
                 load_scale: float = 1.0) -> BuiltNetwork:
    """pandapower's CIGRE MV benchmark; microgrid zones are groups of its buses given by the scenario.

    The network's own DER (PV, wind, storage, CHP, fuel cells) are dropped: the scenario's devices
    replace them. The open ring switches become out-of-service lines (the same network).
    """
    import pandapower.networks as pn

    net = pn.create_cigre_network_mv(with_der=False)
    net.load[["p_mw", "q_mvar"]] *= load_scale
    # An open line switch opens its line; say so with in_service, which lightsim2grid reads (it
    # ignores switches), then drop the line switches.
    line_sw = net.switch[net.switch.et == "l"]
    net.line.loc[line_sw.element[~line_sw.closed.astype(bool)].unique(), "in_service"] = False
    net.switch = net.switch.drop(line_sw.index)
    built_zones = []
    for name, buses in zones.items():
        missing = [b for b in buses if b not in net.bus.index]
        if missing:
            raise ScenarioError(f"zone {name!r}: buses {missing} are not in the CIGRE MV network")
        if device_buses[name] not in buses:
            raise ScenarioError(f"zone {name!r}: device bus {device_buses[name]} is not one of its buses")
        if poc_lines[name] not in net.line.index:
            raise ScenarioError(f"zone {name!r}: line {poc_lines[name]} is not in the CIGRE MV network")
        loads = [int(i) for i in net.load.index[net.load.bus.isin(buses)]]
        lines = [int(i) for i in net.line.index[net.line.from_bus.isin(buses) & net.line.to_bus.isin(buses)]]
        built_zones.append(MicrogridZone(name=name, buses=list(buses), device_bus=device_buses[name], loads=loads,
                                         poc_line=poc_lines[name], lines=lines))
    return BuiltNetwork(net=net, zones=built_zones)

