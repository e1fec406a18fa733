"""The Vulkan build (cpp/build_vulkan.py), when this machine has one: every layer offloaded to a
Vulkan device (a GPU, or Mesa's software driver lavapipe on a CPU-only machine), with the AMB on,
against the installed CPU build. Today the AMB op has no Vulkan kernel, so the scheduler runs it on
the CPU next to its bank; these tests hold that path to the CPU build's answer and case counts.

Marked `vulkan`; they skip unless cpp/build_vulkan.py has built the library into the user cache
(the build needs Vulkan headers 1.3.261+, see its --help), so a plain CI machine skips them.
"""

import importlib.util
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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


def _answer_and_cases(run_cli, env: dict | None, n_gpu_layers: int) -> tuple[str, dict[int, tuple[int, int, int]]]:
    result = run_cli("chat", "--prompt", PROMPT, "--temperature", "0", "--max-tokens", "16", "--amb-layers", "12,26",
                     "--stats", "--n-gpu-layers", str(n_gpu_layers), env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    cases = {int(m[1]): (int(m[2]), int(m[3]), int(m[4])) for m in STATS.finditer(result.stderr)}
    assert set(cases) == {12, 26}, result.stderr[-3000:]
    return result.stdout, cases


def test_vulkan_build_sees_a_vulkan_device_where_the_amb_runs_on_the_cpu(run_cli):
    result = run_cli("info", env=VULKAN_ENV)
    assert result.returncode == 0, result.stderr
    backends = next(line for line in result.stdout.splitlines() if line.startswith("backends"))
    assert "Vulkan" in backends, result.stdout
    device = next((line for line in result.stdout.splitlines() if line.strip().startswith("Vulkan0")), None)
    assert device is not None and "AMB runs on the CPU" in device, result.stdout


def test_all_layers_on_vulkan_with_the_amb_on_match_the_cpu_build(run_cli, default_model_path):
    cpu_text, cpu_cases = _answer_and_cases(run_cli, None, 0)
    vk_text, vk_cases = _answer_and_cases(run_cli, VULKAN_ENV, -1)
    assert ANSWER in cpu_text and ANSWER in vk_text, (cpu_text, vk_text)
    for layer in (12, 26):
        # the same tokens pass through each bank; Vulkan's kernels round differently from the CPU's,
        # so a token near a threshold may change case (seen: 1 of 58 at layer 26 on lavapipe)
        total = sum(cpu_cases[layer])
        assert sum(vk_cases[layer]) == total, (layer, cpu_cases, vk_cases)
        changed = sum(abs(a - b) for a, b in zip(vk_cases[layer], cpu_cases[layer])) // 2
        assert changed <= max(2, 0.02 * total), (layer, cpu_cases, vk_cases)
