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


def test_library_code_never_imports_the_cli_verbs() -> None:
    """``heron_edge.commands`` sits on top: agents, protocols, runtime and the env never import it (not even lazily)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "heron_edge"
    offenders = []
    for path in root.rglob("*.py"):
        if path.parts[-2] == "commands" or path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n.startswith("heron_edge.commands")]
    assert not offenders, offenders
