"""llama.cpp's test-backend-ops with pace-gguf's GGML_OP_AMB cases (cpp/tests/test-backend-ops-amb.inc:
empty, half and full banks; 1 to 2048 tokens; widths up to Qwen2-7B's 18944; several sequences; both
modes) on every device of the package's build that runs the op, against the CPU backend. On a
CPU-only build that device is a loopback `pace-gguf rpc-server`; cpp/backend_ops.py builds the tool
in the package's build folder (about a minute the first time) and starts the server.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_every_amb_case_passes_on_an_rpc_server_against_the_cpu():
    result = subprocess.run([sys.executable, str(ROOT / "cpp" / "backend_ops.py"), "--rpc"],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert re.search(r"Backend \d+/\d+: RPC0", result.stdout), result.stdout[-3000:]
    passed = re.search(r"^\s*(\d+)/(\d+) tests passed", result.stdout, re.M)
    assert passed and passed[1] == passed[2] and int(passed[2]) >= 30, result.stdout[-3000:]
    for case in ("n_ff=18944,n_tokens=2048", "fill=0", "fill=2", "n_seq=3", "mode=1"):
        assert case in result.stdout, case
