"""firmware_bridge stands alone: no heron_edge, no sim, and pysunspec2 only in tests."""
from __future__ import annotations

import subprocess
import sys


def test_firmware_bridge_imports_neither_heron_edge_nor_sim_nor_pysunspec2() -> None:
    code = (
        "import sys, firmware_bridge, firmware_bridge.emulator, firmware_bridge.client\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('heron_edge', 'sim', 'sunspec2')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
