"""llama.cpp's RPC backend with the AMB: a real `pace-gguf rpc-server` on 127.0.0.1 (a free port,
stopped after the module) takes every layer of the default model, AMB banks included, and the answer
and per-layer case counts equal the CPU run's (same build, same kernels: bit-identical arithmetic).
Unreachable servers and servers of another protocol version are clear errors, never the abort the
RPC backend itself would raise.
"""

import contextlib
import json
import re
import socket
import struct
import subprocess
import threading
import time

import pytest

PROMPT = "Note: the door code is 4817. What is the door code?"  # the README's prompt (tests/test_cli.py)
STATS = re.compile(r"layer (\d+): slots (\d+)/\d+, high (\d+), mid (\d+), low (\d+)")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _running_server(cli_command, log_path):
    """HOST:PORT of a pace-gguf rpc-server on 127.0.0.1 (one thread: the client's keep the other core)."""
    from pace_gguf import rpc

    endpoint = f"127.0.0.1:{_free_port()}"
    with open(log_path, "w+") as log:
        proc = subprocess.Popen(cli_command + ["rpc-server", "--port", endpoint.rpartition(":")[2], "--threads", "1"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    rpc.server_protocol(endpoint, timeout=2)
                    break
                except rpc.RpcError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        pytest.fail(f"the rpc-server did not start:\n{log.read()[-2000:]}")
                    time.sleep(0.2)
            yield endpoint
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def rpc_servers(tmp_path_factory, cli_command):
    """Two running servers (two machines' worth, on loopback)."""
    folder = tmp_path_factory.mktemp("rpc")
    with _running_server(cli_command, folder / "a.log") as a, _running_server(cli_command, folder / "b.log") as b:
        yield a, b


@pytest.fixture(scope="module")
def rpc_server(rpc_servers):
    return rpc_servers[0]


def _chat(run_cli, *extra: str):
    result = run_cli("chat", "--prompt", PROMPT, "--temperature", "0", "--max-tokens", "16", "--amb-layers", "12,26",
                     "--stats", "--threads", "1", *extra, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = {int(m[1]): tuple(map(int, m.groups()[1:])) for m in STATS.finditer(result.stderr)}
    assert set(stats) == {12, 26}, result.stderr[-3000:]
    return result, stats


def test_info_lists_the_server_and_that_the_amb_runs_there(run_cli, rpc_server):
    result = run_cli("info", "--rpc", rpc_server)
    assert result.returncode == 0, result.stderr
    line = next((line for line in result.stdout.splitlines() if line.strip().startswith("RPC0")), None)
    assert line is not None, result.stdout
    assert rpc_server in line and "AMB runs here" in line, line


def test_all_layers_on_an_rpc_server_match_the_cpu_run(run_cli, rpc_server, default_model_path):
    cpu, cpu_stats = _chat(run_cli)
    remote, remote_stats = _chat(run_cli, "--rpc", rpc_server, "--n-gpu-layers", "-1", "--verbose")
    assert "4817" in cpu.stdout
    assert remote.stdout == cpu.stdout
    assert remote_stats == cpu_stats, (cpu_stats, remote_stats)
    # every layer, and the banks with them, on the server: the op ran there, updating its bank in place
    assert re.search(r"layer\s+26 assigned to device RPC0", remote.stderr), remote.stderr[-3000:]
    assert re.search(r"pace AMB bank .* in RPC0\[", remote.stderr), remote.stderr[-3000:]


def test_layers_spread_over_two_servers_match_the_cpu_run(run_cli, rpc_servers, default_model_path):
    cpu, cpu_stats = _chat(run_cli)
    remote, remote_stats = _chat(run_cli, "--rpc", ",".join(rpc_servers), "--n-gpu-layers", "-1", "--verbose")
    assert remote.stdout == cpu.stdout
    assert remote_stats == cpu_stats, (cpu_stats, remote_stats)
    # llama.cpp splits the layers by the servers' free memory: layer 12's bank on one, 26's on the other
    devices = {int(il): dev for il, dev in re.findall(r"layer\s+(\d+) assigned to device (RPC\d)", remote.stderr)}
    assert {devices[12], devices[26]} == {"RPC0", "RPC1"}, devices
    assert len(re.findall(r"pace AMB bank .* in RPC\d\[", remote.stderr)) == 2, remote.stderr[-3000:]


def test_an_unreachable_server_is_a_clear_error(run_cli, assert_one_line_error):
    endpoint = f"127.0.0.1:{_free_port()}"  # nothing listens there
    result = run_cli("chat", "--prompt", "hi", "--max-tokens", "4", "--rpc", endpoint, "--n-gpu-layers", "-1")
    assert_one_line_error(result, endpoint, "no answer", "pace-gguf rpc-server")


@pytest.mark.parametrize("endpoint, says", [("localhost", "HOST:PORT"), ("127.0.0.1:0", "HOST:PORT"),
                                            ("[::1]:50052", "IPv4 only")])
def test_a_malformed_endpoint_is_a_clear_error(run_cli, assert_one_line_error, endpoint, says):
    result = run_cli("chat", "--prompt", "hi", "--max-tokens", "4", "--rpc", endpoint, "--n-gpu-layers", "-1")
    assert_one_line_error(result, endpoint, says)


def test_a_server_of_another_protocol_version_is_refused(run_cli, assert_one_line_error):
    """A listener that answers the handshake as upstream llama.cpp's rpc-server does (protocol 7.0.0),
    which pace-gguf's RPC backend would abort on. This tests pace-gguf's check, not the runtime."""
    listener = socket.create_server(("127.0.0.1", 0))
    endpoint = f"127.0.0.1:{listener.getsockname()[1]}"

    def answer():
        conn, _ = listener.accept()
        with conn:
            conn.recv(1 + 8 + 24)
            conn.sendall(struct.pack("<Q", 28) + bytes([7, 0, 0, 0]) + bytes(24))

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        result = run_cli("chat", "--prompt", "hi", "--max-tokens", "4", "--rpc", endpoint, "--n-gpu-layers", "-1")
    finally:
        listener.close()
    assert_one_line_error(result, endpoint, "protocol 7.0.0", "pace-gguf rpc-server")


BANKS_ON_A_SERVER = """
import sys
import numpy as np
from pace_gguf import Llama

endpoint, model = sys.argv[1], sys.argv[2]
options = dict(n_ctx=512, n_threads=1, verbose=False, pace={"layers": (12, 26)})
remote = Llama(model, rpc_servers=endpoint, n_gpu_layers=-1, **options)
local = Llama(model, **options)
tokens = remote.tokenize(b"Note: the door code is 4817. What is the door code?")
for llm in (remote, local):
    llm.eval(tokens)
    llm.eval(tokens[:5])  # a second decode: it retrieves from what the first one stored
for layer in (12, 26):  # the same kernels on the same kind of CPU: the same bits
    a, b = remote.amb_bank(layer), local.amb_bank(layer)
    assert all(np.array_equal(a[k], b[k]) for k in a), layer
state, bank, stats = remote.save_state(), remote.amb_bank(26), remote.memory_stats()
remote.reset_memory()
assert remote.memory_stats()[26].slots_used == 0
remote.load_state(state)
assert all(np.array_equal(bank[k], remote.amb_bank(26)[k]) for k in bank)
assert remote.memory_stats() == stats, (remote.memory_stats(), stats)
print("banks on the server: equal to the CPU's, saved, reset and restored", stats[26].slots_used)
"""


def test_banks_on_a_server_match_the_cpu_and_survive_save_reset_load(run_python, rpc_server, default_model_path):
    """Through the Python API (Llama(rpc_servers=...)), in a process of its own: servers, once added,
    stay for the process. Every host access to a bank on a server goes through ggml's tensor API."""
    assert "banks on the server" in run_python(BANKS_ON_A_SERVER, rpc_server, str(default_model_path))


def test_estimate_puts_the_banks_of_offloaded_layers_on_the_server(run_cli, rpc_server):
    result = run_cli("estimate", "--rpc", rpc_server, "--n-gpu-layers", "-1", "--amb-layers", "12,26", "--json")
    assert result.returncode == 0, result.stderr
    e = json.loads(result.stdout)
    assert e["gpu"]["name"] == "RPC0" and e["gpu"]["runs_amb"] is True
    assert e["amb_banks"] == 0 < e["gpu_amb_banks"]


def test_a_server_on_a_busy_port_is_a_clear_error(run_cli, assert_one_line_error):
    """llama.cpp's rpc-server exits with status 0 when it cannot listen; pace-gguf checks first."""
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = run_cli("rpc-server", "--port", str(port), timeout=60)
    assert_one_line_error(result, f"127.0.0.1:{port}", "cannot listen")
