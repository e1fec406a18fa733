"""The benchmark runners, each in --quick mode on the default model, writing into a temporary results
folder: the JSON names the machine, CPU features and build, holds the expected rows, and the
markdown report exists. One thread each: on shared cores, llama.cpp's spinning threads make
multi-threaded runs crawl, and only the plumbing is checked here, not speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real model; throughput also builds stock llama.cpp once (minutes)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MACHINE_KEYS = {"cpu_model", "logical_cpus", "cpu_features", "build_id", "pace_gguf", "llama_cpp_python", "date",
                "command"}


def run_quick(name: str, out: Path, *extra: str, report_name: str | None = None) -> dict:
    import pace_gguf  # noqa: PLC0415

    # the runners import the same pace_gguf as the tests (installed, or the checkout on PYTHONPATH)
    env = dict(os.environ, PYTHONPATH=str(Path(pace_gguf.__file__).resolve().parents[1]))
    command = [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick", "--models", "smollm2", "--threads", "1",
               "--out", str(out), *extra]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=out, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report_name = report_name or name
    assert (out / f"{report_name}.md").read_text().startswith("# ")
    report = json.loads((out / f"{report_name}.json").read_text())
    assert MACHINE_KEYS <= set(report["meta"]), set(report["meta"])
    assert report["meta"]["cpu_features"] and report["meta"]["build_id"].startswith("pace-gguf")
    return report


def test_throughput(tmp_path):
    report = run_quick("throughput", tmp_path)
    rows = {r["config"]: r for r in report["rows"]}
    assert list(rows) == ["stock", "off", "2 layers", "all layers"]
    assert report["meta"]["stock_library"] != report["meta"]["library"]
    for r in rows.values():
        assert set(r["tok_s"]) == {"pp64", "pp256", "tg16"} and min(r["tok_s"].values()) > 0
    assert rows["2 layers"]["amb_layers"] == [12, 26]
    assert rows["off"]["bank_mib"] == 0 < rows["2 layers"]["bank_mib"] < rows["all layers"]["bank_mib"]


def test_memory(tmp_path):
    report = run_quick("memory", tmp_path)
    assert [(r["n_ctx"], r["config"]) for r in report["rows"]] == [(512, "off"), (512, "2 layers"), (512, "all layers")]
    for r in report["rows"]:
        assert r["peak_rss_mib"] > 50 and r["estimate_mib"] > 50
    assert report["rows"][0]["bank_mib"] == 0 < report["rows"][1]["bank_mib"]


def test_vs_transformers(tmp_path):
    for module in ("torch", "transformers", "gguf"):
        pytest.importorskip(module)
    report = run_quick("vs_transformers", tmp_path)
    got = {(r["engine"], r["weights"], bool(r["amb_layers"])) for r in report["rows"]}
    setups = {("transformers", "fp32 (dequantized Q4_1)"), ("pace-gguf", "F32 GGUF"), ("pace-gguf", "Q4_1 GGUF")}
    assert got == {(*s, amb) for s in setups for amb in (False, True)}
    for r in report["rows"]:
        assert r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0 and r["peak_rss_mib"] > 50


def test_amb_overhead(tmp_path):
    report = run_quick("amb_overhead", tmp_path)
    rows = {r["config"]: r for r in report["rows"]}
    assert list(rows) == ["off", "2 layers", "all layers"]
    assert report["meta"]["process_per_run"] is True
    for r in rows.values():
        assert set(r["tok_s"]) == {"pp64", "tg8"} and min(r["tok_s"].values()) > 0
        assert len(r["seconds"]["pp64"]) == 1  # --quick: one repetition
    assert rows["2 layers"]["amb_layers"] == [12, 26] and rows["off"]["amb_layers"] is None
    assert rows["off"]["vs_off"]["tg8"] == [1.0, 1.0, 1.0]


def test_amb_overhead_with_the_composed_graph(tmp_path):
    report = run_quick("amb_overhead", tmp_path, "--composed", "--configs", "off", "2 layers",
                       report_name="amb_overhead_composed")
    rows = {r["config"]: r for r in report["rows"]}
    assert list(rows) == ["off", "2 layers", "2 layers, composed"]
    assert rows["2 layers, composed"]["amb_layers"] == rows["2 layers"]["amb_layers"] == [12, 26]
    assert min(rows["2 layers, composed"]["tok_s"].values()) > 0


def test_shape_true_model_has_q4_k_m_types_and_loads(tmp_path):
    """benchmarks/shape_true.py: Qwen2-7B's shapes and Q4_K_M's types (read back with gguf-py), and
    llama.cpp loads it and decodes with the AMB on (finite activations: the bank takes rows)."""
    gguf = pytest.importorskip("gguf")
    sys.path.insert(0, str(BENCHMARKS))
    import shape_true  # noqa: PLC0415

    path = shape_true.write("qwen2-7b", tmp_path / "q.gguf", layers=1)
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    Q = gguf.GGMLQuantizationType
    assert tensors["blk.0.ffn_gate.weight"].shape.tolist() == [3584, 18944]
    assert tensors["blk.0.ffn_gate.weight"].tensor_type == Q.Q4_K
    assert tensors["blk.0.ffn_down.weight"].tensor_type == Q.Q6_K  # first eighth of the layers: more bits
    assert tensors["output.weight"].tensor_type == Q.Q6_K and tensors["blk.0.attn_q.bias"].tensor_type == Q.F32
    from pace_gguf import Llama  # noqa: PLC0415

    llm = Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False, pace={"layers": (0,)})
    try:
        llm.eval(llm.tokenize(b"a shape-true model"))
        stats = llm.memory_stats()[0]
        assert stats.slots_used > 0, stats
    finally:
        llm.close()
