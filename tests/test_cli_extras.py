"""On a gateway install (no [sim] extra) the simulator entry points say what to install, not a traceback."""
from __future__ import annotations

import subprocess
import sys

HIDE_SIM = "import sys\nfor m in ('gymnasium', 'pettingzoo', 'pandapower', 'tqdm'): sys.modules[m] = None\n"


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", HIDE_SIM + code], capture_output=True, text=True, timeout=60)


def test_simulate_without_the_sim_extra_names_the_extra(tmp_path) -> None:
    done = run(f"from heron_edge.cli import main\nsys.exit(main(['simulate', '--days', '1', '--out', {str(tmp_path)!r}]))")
    assert done.returncode == 2
    assert "pip install 'heron-edge[sim]'" in done.stderr and "Traceback" not in done.stderr


def test_environment_import_without_the_sim_extra_names_the_extra() -> None:
    done = run("from heron_edge import MultiAgentMicrogrids")
    assert done.returncode == 1 and "pip install 'heron-edge[sim]'" in done.stderr
