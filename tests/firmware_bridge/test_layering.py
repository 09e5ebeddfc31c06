"""firmware_bridge stands alone: no heron_edge, no sim; of pysunspec2 only its model definitions (the JSON files in
the ``sunspec2`` package), never its blocking Modbus client or its device classes."""
from __future__ import annotations

import subprocess
import sys


def test_firmware_bridge_imports_neither_heron_edge_nor_sim_nor_pysunspec2_io() -> None:
    code = (
        "import sys, firmware_bridge, firmware_bridge.emulator, firmware_bridge.client\n"
        "from firmware_bridge.sunspec import load_model\n"
        "load_model(704).layout(); load_model(160).layout(30)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('heron_edge', 'sim', 'sunspec2')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['sunspec2']"  # the package, for its models/json directory: nothing else
