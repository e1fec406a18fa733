"""The AMB composed from standard ggml ops (cpp/src/ggml-amb-composed.cpp): the path of GPU backends
without a GGML_OP_AMB kernel (Metal, SYCL, ...), held to the fused op on the CPU, the oracle: one op
at a time over a grid of banks, ubatches, sequences, modes, store chunks and prompt spans
(cpp/tests/amb-composed.cpp), then in the model.

PACE_AMB_IMPL=composed makes every AMB layer use the composed graph, on the CPU too, where every other
op of the model is the same as in the fused run. The composed graph reduces its sums in another order
than the fused op, so the two agree within rounding. The first AMB layer sees bit-identical rows in
both runs (no layer before it differs), so there the case of every position and the banks agree
(rows to a relative 1e-4). Later AMB layers see rows that already differ by that rounding: a row
whose largest similarity lies within it of a threshold may change case (one did at layer 26, its
similarity 0.25006 against a threshold of 0.25) and then the banks part ways; there the check is the
share of equal cases and the counts, as for the Vulkan kernel.
"""

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "cpp"))
from backend_ops import package_build_dir  # noqa: E402
from device_check import composed_tool  # noqa: E402

pytestmark = pytest.mark.slow

LAYERS = (12, 26)
QUESTION = "\n\nQuestion: what is the door code? Answer: The door code is"


@pytest.fixture(scope="module")
def build_dir():
    """The package's build folder, with pace-amb-composed built there (EXCLUDE_FROM_ALL)."""
    build = package_build_dir()
    subprocess.run(["cmake", "--build", str(build), "--target", "pace-amb-composed"], check=True, capture_output=True)
    return build


GRID = [("1536", tokens, seqs, mode, fill) for tokens, (seqs, mode), fill in
        itertools.product(("1", "7", "64", "512"), (("1", "code"), ("3", "paper")), ("0", "3", "50", "100"))]
GRID += [("18944", tokens, "1", "code", "50") for tokens in ("1", "512")]


@pytest.mark.parametrize(("n_ff", "tokens", "seqs", "mode", "fill"), GRID)
def test_one_op_of_the_composed_graph_equals_the_fused_op(build_dir, n_ff, tokens, seqs, mode, fill):
    """Empty, nearly empty (fewer valid slots than neighbours), half full and full banks (replacement by
    usage, ties to the lower slot); 1 to 512 rows, some of no sequence; one or three sequences."""
    run = composed_tool(build_dir, "CPU", "composed", n_ff, tokens, seqs, mode, fill, reps=1)
    assert run["ok"], run["tail"]  # every case label, counter, usage and valid flag equal
    assert max(run["rows_rel_diff"], run["keys_rel_diff"], run["values_rel_diff"]) <= 1e-5, run


# (tokens, seqs, mode, fill, chunk, span): more rows per sequence than a chunk (up to 8 chunks, each
# stored against the bank the one before left); prompt spans: rows retrieve against a snapshot unlike
# the live bank and join `span` pending rows, each full chunk is stored, the rest stays pending.
CHUNKS = [(200, 1, "code", 50, 64, -1), (512, 3, "paper", 100, 100, -1), (512, 1, "code", 0, 64, -1),
          (64, 1, "code", 50, 1024, 0), (64, 1, "code", 50, 80, 30), (64, 2, "code", 50, 80, 70),
          (300, 2, "code", 50, 80, 70), (1, 1, "code", 50, 80, 79), (512, 1, "paper", 100, 1024, 600),
          (7, 3, "code", 0, 80, 10)]


@pytest.mark.parametrize(("tokens", "seqs", "mode", "fill", "chunk", "span"), CHUNKS)
def test_store_chunks_and_prompt_spans_of_the_composed_graph_equal_the_fused_op(build_dir, tokens, seqs, mode, fill, chunk,
                                                                                 span):
    run = composed_tool(build_dir, "CPU", "composed", 1536, tokens, seqs, mode, fill, reps=1, chunk=chunk, span=span)
    assert run["ok"], run["tail"]  # labels, counters, usage, valid flags and pending counts equal
    diffs = [run["rows_rel_diff"], run["keys_rel_diff"], run["values_rel_diff"]]
    if span >= 0:
        # keys are copied rows; values the enhanced rows, within rounding of values of magnitude ~1
        assert run["pending_keys_diff"] == 0, run
        diffs.append(run["pending_values_diff"])
    assert max(diffs) <= 1e-5, run


def test_a_span_stores_what_it_should(build_dir):
    """The counts the comparison above relies on: sequence 0's 70 pending rows and 150 new ones (the
    even rows of 300) fill two chunks of 80 and leave 60 pending; 79 + 1 fill one and leave none."""
    assert composed_tool(build_dir, "CPU", "composed", 1536, 300, 2, reps=1, chunk=80, span=70)["pending_after"] == 60
    assert composed_tool(build_dir, "CPU", "composed", 1536, 1, 1, reps=1, chunk=80, span=79)["pending_after"] == 0


def test_the_device_check_script_on_the_cpu(build_dir, tmp_path):
    """cpp/device_check.py, the first script of a GPU session, here on the CPU device (the composed
    graph against the fused op; test-backend-ops has no other device to compare here)."""
    result = subprocess.run([sys.executable, str(ROOT / "cpp" / "device_check.py"), "--build-dir", str(package_build_dir()),
                             "--device", "CPU", "--quick", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "device_check.json").read_text())
    runs = report["pace_amb_composed"]
    assert {(r["impl"], r["ok"]) for r in runs} == {("fused", True), ("composed", True)}, runs
    assert all(r["nodes"] > 100 for r in runs if r["impl"] == "composed") and "skipped" in report["test_backend_ops"]


@pytest.fixture(scope="module")
def document(long_document):
    # about 900 tokens: two ubatches of 512, banks of 100 slots filled and then replaced by usage
    return long_document(900, fact="Note: the door code is 4817.", where=0.3) + QUESTION


def _run(monkeypatch, model_path, impl: str, text: str, n_batch: int = 512, verbose: bool = False, **pace):
    from pace_gguf import Llama

    monkeypatch.setenv("PACE_AMB_IMPL", impl)
    llm = Llama(model_path=str(model_path), n_ctx=2048, n_batch=n_batch, n_threads=2, verbose=verbose,
                pace={"layers": LAYERS, **pace})
    answer = llm.create_completion(text, max_tokens=8, temperature=0)["choices"][0]["text"]
    result = {"answer": answer, "n_tokens": llm.n_tokens,
              "cases": {il: llm.amb_cases(il) for il in LAYERS},
              "banks": {il: llm.amb_bank(il) for il in LAYERS},
              "stats": llm.memory_stats()}
    llm.close()
    return result


def _assert_agree(fused, composed, min_share=0.98):
    assert composed["n_tokens"] == fused["n_tokens"]
    first = LAYERS[0]
    for il in LAYERS:
        f, c = fused["cases"][il], composed["cases"][il]
        assert len(f) == len(c) == fused["n_tokens"]
        assert (f >= 0).all() and (c >= 0).all()  # every position logged, in both
        share = np.mean(f == c)
        assert share == 1.0 if il == first else share >= min_share, (il, np.flatnonzero(f != c))
        fs, cs = fused["stats"][il], composed["stats"][il]
        assert abs(fs.high - cs.high) + abs(fs.mid - cs.mid) + abs(fs.low - cs.low) <= 2 * (1 - min_share) * len(f)
    fb, cb = fused["banks"][first], composed["banks"][first]
    assert fb["valid"].all()  # the banks filled up: replacement by usage ran
    np.testing.assert_array_equal(cb["usage"], fb["usage"])
    np.testing.assert_array_equal(cb["valid"], fb["valid"])
    for part in ("keys", "values"):
        np.testing.assert_allclose(cb[part], fb[part], rtol=0, atol=1e-4 * np.abs(fb[part]).max(), err_msg=part)


def test_the_composed_graph_gives_the_fused_ops_answer_cases_and_banks(monkeypatch, default_model_path, document):
    fused = _run(monkeypatch, default_model_path, "fused", document)
    composed = _run(monkeypatch, default_model_path, "composed", document)
    assert "4817" in fused["answer"] and "4817" in composed["answer"]
    _assert_agree(fused, composed)
    # all three cases met, in both layers: the comparison covers more than the identity case
    for il in LAYERS:
        assert set(np.unique(fused["cases"][il])) == {0, 1, 2}, il


@pytest.mark.parametrize(("granularity", "chunk"), [("prompt", 256), ("ubatch", 256)])
def test_store_chunks_across_and_within_ubatches_too(monkeypatch, capfd, default_model_path, document, granularity, chunk):
    """Prompt granularity (one decode of the whole prompt: n_batch 1024, two ubatches of up to 512):
    the 900-token prompt retrieves against the snapshot taken before it, and its rows go through
    `pend`, three full chunks of 256 stored in-graph (two in the first ubatch), the rest by the host's
    flush. Ubatch granularity: each ubatch stored in two chunks of 256."""
    runs = {}
    for impl in ("fused", "composed"):
        capfd.readouterr()
        runs[impl] = _run(monkeypatch, default_model_path, impl, document, n_batch=1024, verbose=True,
                          granularity=granularity, chunk=chunk)
        placed = re.findall(r"pace AMB layer (\d+): composed from ggml ops", capfd.readouterr().err)
        assert placed == ([str(il) for il in LAYERS] if impl == "composed" else []), placed  # the graph covers these settings
    _assert_agree(runs["fused"], runs["composed"])


def test_paper_mode_too(monkeypatch, default_model_path, document):
    fused = _run(monkeypatch, default_model_path, "fused", document, mode="paper")
    composed = _run(monkeypatch, default_model_path, "composed", document, mode="paper")
    _assert_agree(fused, composed)


def test_two_sequences_in_one_ubatch(monkeypatch, default_model_path, raw_context):
    """One AMB layer, so that every row it sees is the same in both runs: each sequence's cases equal
    and its bank equal within rounding. (The logits after it differ a little more: the next layers'
    matrix products quantize their activations to 8 bits, where a rounding may cross a step.)"""
    from pace_gguf import Llama

    layer = 26
    llm = Llama(model_path=str(default_model_path), n_ctx=512, verbose=False)
    docs = [llm.tokenize(d.encode(), add_bos=False) for d in (
        "Lighthouses guide ships along rocky coasts, and their keepers log every passing vessel by name, day "
        "and hour, in books that fill the shelves of the tower.",
        "A sourdough starter needs flour, water and patience; bakers feed it every single day, keep it warm, "
        "and watch it rise and fall like a slow tide in the jar.")]
    n = min(len(d) for d in docs)
    half = n // 2
    runs = {}
    for impl in ("fused", "composed"):
        monkeypatch.setenv("PACE_AMB_IMPL", impl)
        ctx = raw_context(llm, (layer,))
        logits = [ctx.decode([(s, p, docs[s][p]) for p in part for s in (0, 1)])  # interleaved in one ubatch
                  for part in (range(half), range(half, n))]
        runs[impl] = {"logits": np.concatenate(logits), "cases": [ctx.cases(s, n)[layer] for s in (0, 1)],
                      "banks": [ctx.bank(layer, s) for s in (0, 1)]}
        ctx.close()
    fused, composed = runs["fused"], runs["composed"]
    for s in (0, 1):
        np.testing.assert_array_equal(composed["cases"][s], fused["cases"][s])
        assert (fused["cases"][s][half:] > 0).any()  # the second half met the bank the first half filled
        fb, cb = fused["banks"][s], composed["banks"][s]
        np.testing.assert_array_equal(cb["usage"], fb["usage"])
        np.testing.assert_array_equal(cb["valid"], fb["valid"])
        for part in ("keys", "values"):
            np.testing.assert_allclose(cb[part], fb[part], rtol=0, atol=1e-4 * np.abs(fb[part]).max(), err_msg=part)
    assert np.mean(composed["logits"].argmax(axis=1) == fused["logits"].argmax(axis=1)) >= 0.9


def test_the_composed_graph_on_every_layer_fits_the_graph(run_cli):
    """About 200 nodes per AMB layer: llama.cpp's graph makes room for them (graph_max_nodes)."""
    every = ",".join(str(il) for il in range(30))  # SmolLM2-135M's 30 layers
    runs = {}
    for impl in ("fused", "composed"):
        result = run_cli("chat", "--prompt", "Note: the door code is 4817. What is the door code?", "--temperature", "0",
                         "--max-tokens", "12", "--amb-layers", every, "--stats", env={"PACE_AMB_IMPL": impl})
        assert result.returncode == 0, result.stderr[-3000:]
        runs[impl] = result
    assert "4817" in runs["fused"].stdout and "4817" in runs["composed"].stdout
    first = re.compile(r"layer 0: slots \d+/\d+, high \d+, mid \d+, low \d+")  # rows alike in both runs
    assert first.search(runs["composed"].stderr)[0] == first.search(runs["fused"].stderr)[0]


def test_info_says_how_the_amb_runs(run_cli):
    result = run_cli("info", env={"PACE_AMB_IMPL": "composed"})
    assert result.returncode == 0, result.stderr
    cpu = next(line for line in result.stdout.splitlines() if line.strip().startswith("CPU"))
    assert "AMB runs here, composed from ggml ops" in cpu, result.stdout


def test_an_unknown_implementation_is_a_clear_error(run_cli, assert_one_line_error):
    result = run_cli("chat", "--prompt", "hi", "--max-tokens", "1", "--amb-layers", "12", env={"PACE_AMB_IMPL": "gpu"})
    assert_one_line_error(result, "PACE_AMB_IMPL must be auto, fused or composed")
