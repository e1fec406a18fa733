"""llama.cpp's test-backend-ops with pace-gguf's GGML_OP_AMB cases (cpp/tests/test-backend-ops-amb.inc:
empty, half and full banks; 1 to 2048 tokens; widths up to Qwen2-7B's 18944; several sequences; both
modes) on every device of the package's build that runs the op, against the CPU backend. On a
CPU-only build that device is a loopback `pace-gguf rpc-server`; cpp/backend_ops.py builds the tool
in the package's build folder (about a minute the first time) and starts the server.
"""

import pytest

pytestmark = pytest.mark.slow


def test_every_amb_case_passes_on_an_rpc_server_against_the_cpu(assert_every_amb_case_passes):
    assert_every_amb_case_passes("RPC0", "--rpc")
