"""The Vulkan build (cpp/build_vulkan.py), when this machine has one: every layer offloaded to a
Vulkan device (a GPU, or Mesa's software driver lavapipe on a CPU-only machine), with the AMB on.
The op runs on the device with its bank in device memory (cpp/src/vulkan/amb.comp): held to the CPU
op by test-backend-ops, to the CPU build's answer and case counts end to end, and its banks through
the host's save/reset/load path.

Marked `vulkan`; they skip unless cpp/build_vulkan.py has built the library into the user cache
(the build needs Vulkan headers 1.3.261+, see its --help), so a plain CI machine skips them.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "cpp"))
from device_check import composed_tool  # noqa: E402
PROMPT = "Note: the door code is 4817. What is the door code?"  # the README's prompt (tests/test_cli.py)
ANSWER = "4817"
STATS = re.compile(r"layer (\d+): slots \d+/\d+, high (\d+), mid (\d+), low (\d+)")


def _vulkan_lib_dir() -> Path | None:
    spec = importlib.util.spec_from_file_location("build_vulkan", ROOT / "cpp" / "build_vulkan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lib = next(iter(sorted(module.default_build_dir().glob("bin/libllama.*"))), None)
    return lib.parent if lib else None


LIB_DIR = _vulkan_lib_dir()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.vulkan,
    pytest.mark.skipif(LIB_DIR is None, reason="no Vulkan build in the user cache (python cpp/build_vulkan.py)"),
]
# lavapipe is a CPU-type device, which ggml-vulkan skips unless it is asked for; a real GPU is device 0 too
VULKAN_ENV = {"PACE_GGUF_LIB_DIR": str(LIB_DIR), "GGML_VK_VISIBLE_DEVICES": os.environ.get("GGML_VK_VISIBLE_DEVICES", "0")}


def _chat(run_cli, env: dict | None, n_gpu_layers: int, *extra: str):
    result = run_cli("chat", "--prompt", PROMPT, "--temperature", "0", "--max-tokens", "16", "--amb-layers", "12,26",
                     "--stats", "--n-gpu-layers", str(n_gpu_layers), *extra, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    cases = {int(m[1]): (int(m[2]), int(m[3]), int(m[4])) for m in STATS.finditer(result.stderr)}
    assert set(cases) == {12, 26}, result.stderr[-3000:]
    return result, cases


def test_vulkan_build_sees_a_vulkan_device_where_the_amb_runs(run_cli):
    result = run_cli("info", env=VULKAN_ENV)
    assert result.returncode == 0, result.stderr
    backends = next(line for line in result.stdout.splitlines() if line.startswith("backends"))
    assert "Vulkan" in backends, result.stdout
    device = next((line for line in result.stdout.splitlines() if line.strip().startswith("Vulkan0")), None)
    assert device is not None and "AMB runs here" in device, result.stdout


@pytest.mark.parametrize(("tokens", "seqs", "mode", "fill", "chunk", "span"),
                         [(1, 1, "code", 50, 1024, -1), (64, 3, "paper", 100, 1024, -1), (512, 1, "code", 0, 1024, -1),
                          (512, 2, "paper", 50, 1024, -1), (512, 1, "code", 50, 128, -1), (300, 2, "code", 50, 80, 70),
                          (64, 1, "paper", 100, 1024, 1000)])
def test_the_composed_graph_on_the_vulkan_device_equals_the_fused_op_on_the_cpu(monkeypatch, tokens, seqs, mode, fill, chunk,
                                                                               span):
    """Also a ubatch stored in four chunks, and prompt spans (rows pending, full chunks stored): the
    settings whose big stores lavapipe's loop budget keeps the Vulkan kernel from."""
    assert (LIB_DIR.parent / "pace-amb-composed").exists(), "cpp/build_vulkan.py builds pace-amb-composed"
    for name, value in VULKAN_ENV.items():  # the tool's process inherits them (lavapipe is asked for by number)
        monkeypatch.setenv(name, value)
    run = composed_tool(LIB_DIR.parent, "Vulkan0", "composed", 1536, tokens, seqs, mode, fill, reps=1, chunk=chunk, span=span)
    assert run["ok"], run["tail"]  # every case label, counter, usage, valid flag and pending count equal
    # lavapipe's f32 matrix products round differently from the CPU's (seen: up to 4.3e-4)
    diffs = [run["rows_rel_diff"], run["keys_rel_diff"], run["values_rel_diff"]]
    if span >= 0:
        assert run["pending_keys_diff"] == 0, run  # copied rows
        diffs.append(run["pending_values_diff"])
    assert max(diffs) <= 2e-3, run


def test_the_device_check_script_on_the_vulkan_device(tmp_path):
    """cpp/device_check.py, the first script of a GPU session, on lavapipe."""
    result = subprocess.run(["python3", str(ROOT / "cpp" / "device_check.py"), "--build-dir", str(LIB_DIR.parent),
                             "--device", "Vulkan0", "--quick", "--out", str(tmp_path)], capture_output=True, text=True,
                            timeout=1800, env=dict(os.environ, **VULKAN_ENV))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"on Vulkan0: (\d+)/\1 passed", result.stdout), result.stdout
    for row in ("| fused | 1536 | 1 | 1 | 1024 | - | yes |", "| composed | 1536 | 64 | 3 | 1024 | - | yes |",
                "| composed | 1536 | 300 | 2 | 80 | 70 pending | yes |"):
        assert row in result.stdout, result.stdout


def test_every_amb_case_passes_on_the_vulkan_device_against_the_cpu(assert_every_amb_case_passes):
    assert_every_amb_case_passes("Vulkan0", "--build-dir", str(LIB_DIR.parent), env=VULKAN_ENV, timeout=3600)


@pytest.mark.parametrize(("granularity", "impl"), [("ubatch", "fused"), ("prompt", "fused"), ("ubatch", "composed"),
                                                  ("prompt", "composed")])
def test_all_layers_on_vulkan_with_the_amb_on_match_the_cpu_build(run_cli, default_model_path, granularity, impl):
    """impl: the AMB as ggml-vulkan's GGML_OP_AMB kernel, or composed from standard ggml ops (the path of
    backends without a kernel, PACE_AMB_IMPL=composed), both against the CPU build's fused op."""
    extra = ("--amb-granularity", granularity)
    cpu, cpu_cases = _chat(run_cli, None, 0, *extra)
    # ubatch: ggml-vulkan's per-op timings name every op it ran on the device: the AMB op, or the
    # composed graph's top_k and cumsum, which nothing else in the model uses.
    # (On lavapipe prompt granularity's 1,024-row flush exceeds the driver's loop budget, so the
    # kernel leaves those banks on the CPU; the perf logger also aborts in ggml-vulkan on such split
    # graphs. The composed graph has no such limit: it keeps them on the device.)
    timings = {"GGML_VK_PERF_LOGGER": "1"} if granularity == "ubatch" or impl == "composed" else {}
    vk, vk_cases = _chat(run_cli, dict(VULKAN_ENV, PACE_AMB_IMPL=impl, **timings), -1, *extra)
    assert ANSWER in cpu.stdout and ANSWER in vk.stdout, (cpu.stdout, vk.stdout)
    for op in ({"fused": ("AMB",), "composed": ("TOP_K", "CUMSUM")}[impl] if timings else ()):
        assert re.search(rf"^{op}\b.*: \d+ x", vk.stderr, re.M), (op, vk.stderr[-3000:])  # e.g. "TOP_K K=5 (100,31,1,1): 2 x"
    if impl == "composed":
        assert not re.search(r"^AMB: \d+ x", vk.stderr, re.M), vk.stderr[-3000:]
    for layer in (12, 26):
        # the same tokens pass through each bank; Vulkan's kernels round differently from the CPU's,
        # so a token near a threshold may change case (seen: 1 of 58 at layer 26 on lavapipe)
        total = sum(cpu_cases[layer])
        assert sum(vk_cases[layer]) == total, (layer, cpu_cases, vk_cases)
        changed = sum(abs(a - b) for a, b in zip(vk_cases[layer], cpu_cases[layer])) // 2
        assert changed <= max(2, 0.02 * total), (layer, cpu_cases, vk_cases)


BANKS_ON_THE_DEVICE = """
import sys
import numpy as np
from pace_gguf import Llama

llm = Llama(sys.argv[1], n_ctx=512, n_threads=1, n_gpu_layers=-1, verbose=False, pace={"layers": (12, 26)})
tokens = llm.tokenize(b"Note: the door code is 4817. What is the door code?")
llm.eval(tokens)
llm.eval(tokens[:5])  # a second decode: it retrieves from what the first one stored
state, bank, stats = llm.save_state(), llm.amb_bank(26), llm.memory_stats()
assert stats[26].slots_used > 0 and np.isfinite(bank["keys"]).all()
llm.reset_memory()
assert llm.memory_stats()[26].slots_used == 0
llm.load_state(state)
assert all(np.array_equal(bank[k], llm.amb_bank(26)[k]) for k in bank)
assert llm.memory_stats() == stats, (llm.memory_stats(), stats)
print("banks on the device: saved, reset and restored", stats[26].slots_used)
"""


def test_banks_on_the_device_survive_save_reset_load(run_python, default_model_path):
    stdout = run_python(BANKS_ON_THE_DEVICE, str(default_model_path), env=VULKAN_ENV, timeout=900)
    assert "banks on the device" in stdout
