"""The gateway side imports without the simulator; sim never imports heron_edge or firmware_bridge."""
from __future__ import annotations

import subprocess
import sys


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_gateway_side_does_not_import_the_simulator() -> None:
    modules = imported_after("import heron_edge.agents, heron_edge.brokers, heron_edge.messages, heron_edge.coordination")
    heavy = {m for m in modules if m.split(".")[0] in {"pandapower", "lightsim2grid", "pandas", "gymnasium", "pettingzoo",
                                                       "matplotlib"} or m in {"sim.plant", "sim.powerflow", "sim.networks"}}
    assert not heavy, sorted(heavy)


def test_sim_imports_nothing_of_ours_but_itself() -> None:
    modules = imported_after("import sim.plant")
    assert not {m for m in modules if m.split(".")[0] in {"heron_edge", "firmware_bridge"}}
