"""`pace-gguf estimate` and pace_gguf.estimate: the memory a run needs, from the GGUF header.

Checked against the real thing: the AMB bytes against what the C library allocates, the compute
graph formula against llama.cpp's own reserve sizes, and the whole estimate against the peak RSS of
a real process that loads the default model and fills its context.
"""

from __future__ import annotations

import ctypes
import json
import re
import subprocess
import sys
from contextlib import contextmanager

import gguf
import pytest
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

from pace_gguf import estimate as est
from pace_gguf.amb import PaceConfig, PaceConfigError, PaceMetadataWarning
from pace_gguf.errors import ModelFileError

MiB = 2**20
T = gguf.GGUFValueType


@pytest.fixture(scope="module")
def shape(default_model_path):
    return est.read_shape(default_model_path)


# --- the header and the formula pieces -----------------------------------------------------------------


def test_header_shape_of_the_default_model(shape, default_model_path):
    # SmolLM2-135M: 30 layers of 9 heads (3 KV heads) of 64, n_ff 1536, 49152 tokens, 8k context
    assert (shape.architecture, shape.n_layer, shape.n_embd, shape.n_ctx_train) == ("llama", 30, 576, 8192)
    assert (set(shape.n_head), set(shape.n_head_kv), shape.head_dim_k, shape.head_dim_v) == ({9}, {3}, 64, 64)
    assert (set(shape.n_ff), shape.n_vocab, shape.n_merges) == ({1536}, 49152, 48900)
    # the tensor data: header and data together are the whole file
    assert shape.header_bytes + shape.weights <= default_model_path.stat().st_size < shape.header_bytes + shape.weights + 32 * 272


def test_context_is_padded_like_llama_cpp():
    assert [est.context_cells(n) for n in (1, 256, 257, 1000, 2048)] == [256, 256, 512, 1024, 2048]


def test_kv_cache_bytes(shape):
    # llama.cpp logs "KV buffer size = 45.00 MiB" for this model at n_ctx 2048: 30 layers x 2048 cells
    # x (64 + 64) x 3 heads x 2 bytes
    assert est.kv_cache_bytes(shape, 2048) == 30 * 2048 * 128 * 3 * 2 == 45 * MiB
    # per-layer KV heads; a layer without KV heads has no cache
    mixed = _replace(shape, n_layer=3, n_head_kv=[8, 0, 2], head_dim_k=128, head_dim_v=64)
    assert est.kv_cache_bytes(mixed, 512) == 512 * (128 + 64) * (8 + 0 + 2) * 2


def _replace(shape, **changes):
    import dataclasses

    return dataclasses.replace(shape, **changes)


@pytest.mark.slow
@pytest.mark.parametrize("pace", [
    {"layers": (12, 26)},
    {"layers": tuple(range(30)), "bank_size": 7, "granularity": "prompt", "chunk": 33},
    {"layers": (0,), "bank_size": 4096},
])
def test_amb_bytes_equal_what_the_c_library_allocates(default_model_path, shape, pace):
    from pace_gguf import Llama

    n_ctx = 1000  # not a multiple of 256: the case log is sized by the padded context
    llm = Llama(model_path=str(default_model_path), n_ctx=n_ctx, verbose=False, pace=pace)
    assert llm.amb_memory_bytes > 0
    assert est.estimate(default_model_path, n_ctx, pace=pace).amb_banks == llm.amb_memory_bytes
    assert est.amb_bytes(llm.pace, shape, est.context_cells(n_ctx)) == llm.amb_memory_bytes
    assert est.amb_bytes(PaceConfig(), shape, 1024) == 0


@contextmanager
def _llama_log_captured():
    """llama.cpp's log lines, collected while the block runs (the previous callback restored after),
    through pace-gguf's own declarations of llama_log_get/set (llama-cpp-python's stay as they are)."""
    from pace_gguf import _bindings

    c = _bindings.api()
    lines = []
    callback = _bindings.LOG_CALLBACK(lambda level, text, user_data: lines.append(text.decode(errors="replace")))
    old_cb, old_ud = ctypes.c_void_p(), ctypes.c_void_p()
    c.llama_log_get(ctypes.byref(old_cb), ctypes.byref(old_ud))
    c.llama_log_set(ctypes.cast(callback, ctypes.c_void_p), None)
    try:
        yield lines
    finally:
        c.llama_log_set(old_cb, old_ud)


@pytest.mark.slow
def test_graph_formula_matches_llama_cpps_reserve(default_model_path, shape):
    """llama.cpp's own compute-buffer size, from a metadata-only model (no_alloc: nothing allocated),
    against the formula, for the one logit row llama-cpp-python asks for and for n_batch rows."""
    from pace_gguf import _native

    lcpp = _native.llama_cpp_module()
    lc = lcpp.llama_cpp
    params = lc.llama_model_default_params()
    params.no_alloc, params.load_mode = True, 0
    with _llama_log_captured():
        model = lc.llama_model_load_from_file(str(default_model_path).encode(), params)
    assert model
    try:
        for n_ctx, n_ubatch, n_outputs in [(512, 512, 1), (2048, 512, 1), (8192, 512, 1), (2048, 128, 1),
                                           (256, 256, 1), (1024, 512, 512)]:
            cparams = lc.llama_context_default_params()
            cparams.n_ctx, cparams.n_batch, cparams.n_ubatch, cparams.n_outputs_max = n_ctx, 512, n_ubatch, n_outputs
            cparams.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as llama-cpp-python's Llama
            with _llama_log_captured() as lines:
                ctx = lc.llama_init_from_model(model, cparams)
            assert ctx
            lc.llama_free(ctx)
            sizes = [float(m.group(1)) for line in lines if (m := re.search(r"CPU compute buffer size = +([\d.]+) MiB", line))]
            formula = est.graph_bytes(shape, n_ctx, n_ctx, n_outputs, n_ubatch=n_ubatch) / MiB
            assert formula == pytest.approx(sizes[-1], rel=0.01, abs=0.02), (n_ctx, n_ubatch, n_outputs)
    finally:
        lc.llama_model_free(model)


# --- against a real process ------------------------------------------------------------------------------

# The peak RSS of this process: VmHWM, the high-water mark of its own memory. Not getrusage's
# ru_maxrss, which Linux carries over from the parent that spawned the process (pytest, hundreds of
# MiB once torch is imported).
_PEAK_RSS = "int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024"

# Loads the model as Llama does for `chat`, evaluates n_tokens of filler (so the KV cache and the
# compute buffers are really touched) and prints the process's peak RSS.
_MEASURE = r"""
import json, sys
from pace_gguf import Llama
path, n_ctx, n_tokens, pace = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=2, verbose=False, pace=pace)
filler = b"The quick brown fox jumps over the lazy dog near the river bank. " * (n_tokens // 8 + 1)
tokens = llm.tokenize(filler)[:n_tokens]
assert len(tokens) == n_tokens
llm.eval(tokens)
print(json.dumps({"peak_rss": PEAK_RSS, "amb_bytes": llm.amb_memory_bytes}))
""".replace("PEAK_RSS", _PEAK_RSS)


def _measure(model_path, tmp_path, n_ctx, n_tokens, pace=None) -> dict:
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(model_path), str(n_ctx), str(n_tokens), json.dumps(pace)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


ALL_LAYERS_BIG_BANK = {"layers": list(range(30)), "bank_size": 1000}


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM, and the baseline measured on Linux")


@pytest.mark.slow
@linux_only
@pytest.mark.parametrize(("n_ctx", "n_tokens", "pace"), [
    (2048, 2040, None),  # the context full: the worst case the CLI reports
    (8192, 512, None),  # a long context, one ubatch in it: the KV cache dominates
    (512, 64, ALL_LAYERS_BIG_BANK),  # 30 banks of 1000 slots: the AMB dominates
], ids=["2048-full", "8192-partial", "amb-all-layers"])
def test_estimate_agrees_with_peak_rss(default_model_path, tmp_path, n_ctx, n_tokens, pace):
    measured = _measure(default_model_path, tmp_path, n_ctx, n_tokens, pace)
    e = est.estimate(default_model_path, n_ctx, pace=pace, tokens=n_tokens)
    if n_tokens > n_ctx - 256:  # attention spans the whole (256-padded) context: the CLI's worst case
        assert e.total == est.estimate(default_model_path, n_ctx, pace=pace).total
    print(f"n_ctx {n_ctx}, {n_tokens} tokens, AMB {bool(pace)}: estimate {e.total / MiB:.1f} MiB, "
          f"peak RSS {measured['peak_rss'] / MiB:.1f} MiB")
    assert e.amb_banks == measured["amb_bytes"]
    assert e.total == pytest.approx(measured["peak_rss"], rel=0.15)
    if pace:  # the banks are a large part: leaving them out would miss by far more than 15%
        assert e.amb_banks > 0.3 * e.total


@linux_only
def test_baseline_constant_is_what_a_fresh_process_holds(tmp_path):
    """BASELINE_BYTES against a fresh measurement here (within 25%: other Pythons and numpys differ)."""
    code = f"from pace_gguf import Llama, _native; _native.native_library(); print({_PEAK_RSS})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert est.BASELINE_BYTES == pytest.approx(int(result.stdout), rel=0.25)


# --- settings, input errors ---------------------------------------------------------------------------


def test_amb_flags_and_context_beyond_training(default_model_path):
    e = est.estimate(default_model_path, 16384, pace={"layers": (12, 26), "bank_size": 50})
    assert (e.amb.enabled, e.amb.layers, e.amb.bank_size) == (True, (12, 26), 50)
    assert e.amb_banks > 0 and e.n_ctx == 16384
    assert any("beyond the model's training context (8192)" in note for note in e.notes)
    with pytest.raises(PaceConfigError, match="layer 40 is out of range"):
        est.estimate(default_model_path, 2048, pace={"layers": (40,)})


def test_bad_model_files(tmp_path, default_model_path, copy_file):
    with pytest.raises(ModelFileError, match="not found"):
        est.estimate(tmp_path / "missing.gguf", 2048)
    foreign = tmp_path / "foreign.gguf"
    foreign.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        est.estimate(foreign, 2048)
    with pytest.raises(ModelFileError, match="truncated"):
        est.estimate(copy_file(default_model_path, nbytes=2_000_000), 2048)


def _with_pace_keys(src, dst, **pace):
    """Copy `src` to `dst` with pace.amb.<name> keys (type, value[, description, array item type]),
    written by gguf-py's own gguf_new_metadata (as tests/test_amb_metadata.py does)."""
    reader = gguf.GGUFReader(src, "r")
    arch = reader.get_field("general.architecture").contents()
    new = {f"pace.amb.{name}": MetadataDetails(*spec) for name, spec in pace.items()}
    item_types = {key: d.sub_type for key, d in new.items() if d.sub_type is not None}

    class Writer(gguf.GGUFWriter):
        def add_key_value(self, key, val, vtype, sub_type=None):
            super().add_key_value(key, val, vtype, sub_type or item_types.get(key))

    copy_with_new_metadata(reader, Writer(dst, arch=arch, endianess=reader.endianess), new, remove_metadata=[])
    return dst


@pytest.mark.slow
def test_the_models_pace_keys_with_flags_over_them(default_model_path, tmp_path):
    path = _with_pace_keys(default_model_path, tmp_path / "amb.gguf", enabled=(T.BOOL, True),
                           layers=(T.ARRAY, [12, 26], "", T.INT32), bank_size=(T.INT32, 32))
    e = est.estimate(path, 1024)
    assert (e.amb.enabled, e.amb.layers, e.amb.bank_size) == (True, (12, 26), 32)
    assert e.amb_banks == est.amb_bytes(e.amb, est.read_shape(path), 1024) > 0
    assert est.estimate(path, 1024, pace={"enabled": False}).amb_banks == 0
    assert est.estimate(path, 1024, pace={"bank_size": 64}).amb.layers == (12, 26)

    bad = _with_pace_keys(default_model_path, tmp_path / "bad.gguf", bank_size=(T.UINT64, 2**32 + 100))
    with pytest.raises(PaceConfigError, match="int32 range"):
        est.estimate(bad, 1024)  # the model's own settings are asked for: they must be valid
    with pytest.warns(PaceMetadataWarning):
        assert est.estimate(bad, 1024, pace={"layers": (3,)}).amb.layers == (3,)


# --- the command line -----------------------------------------------------------------------------------


def test_cli_table_and_json(run_cli):
    table = run_cli("estimate", "--n-ctx", "2048", "--amb-layers", "12,26")
    assert table.returncode == 0, table.stderr
    out = table.stdout
    for row in ("weights", "KV cache", "AMB banks", "compute buffers", "process baseline", "total (RAM)"):
        assert re.search(rf"^{re.escape(row)} +[\d,]+\.\d$", out, re.M), out
    assert re.search(r"^KV cache +45\.0$", out, re.M) and "AMB on layers 12,26" in out
    assert re.search(r"^fits: needs [\d,.]+ MiB of RAM, [\d,.]+ MiB available$", out, re.M), out

    result = run_cli("estimate", "smollm2-135m-instruct", "--n-ctx", "2048", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    parts = ("weights", "kv_cache", "amb_banks", "compute", "model_metadata", "python_arrays", "baseline")
    assert data["total"] == sum(data[k] for k in parts)
    assert (data["n_ctx"], data["kv_cache"], data["amb_banks"], data["fits"]) == (2048, 45 * MiB, 0, True)


def test_cli_does_not_fit_and_notes(run_cli):
    result = run_cli("estimate", "--n-ctx", "1000000000", "--n-gpu-layers", "5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("does not fit: needs ")
    assert any("beyond the model's training context" in line for line in lines)
    assert any("no GPU backend is compiled" in line for line in lines)  # this machine's build is CPU-only


@pytest.mark.parametrize(("args", "fragment"), [
    (["/nonexistent/model.gguf"], "model file not found"),
    (["no-such-model"], "neither an existing file nor a known model name"),
    (["--amb-layers", "40"], "layer 40 is out of range"),
    (["smollm2-135m-instruct", "-m", "other.gguf"], "two models given"),
])
def test_cli_bad_input_gives_one_line(run_cli, assert_one_line_error, args, fragment):
    assert_one_line_error(run_cli("estimate", *args), fragment)


def test_gpu_placement_follows_llama_cpps_layer_assignment(shape):
    """The split with --n-gpu-layers (computed here for a GPU that this CPU-only machine lacks)."""
    gpu = est.Device("GPU0", free=8 * 2**30, total=8 * 2**30)
    none = est._placement(shape, 10, None)  # no GPU backend: everything stays on the host
    assert (none.host_weights, none.gpu_weights, none.gpu_layers) == (shape.weights, 0, 0)
    # 10: the output layer and the last 9 layers (llama.cpp's i_gpu_start = n_layer + 1 - 10)
    ten = est._placement(shape, 10, gpu)
    assert ten.gpu_kv_layers == list(range(21, 30)) and ten.gpu_layers == 10
    last9 = sum(shape.layer_weights[21:])
    # SmolLM2 ties its output to the token embeddings: llama.cpp copies them to the GPU
    assert shape.tied_output_weights == 49152 * 576 * 34 // 32  # token_embd.weight, q8_0
    assert ten.gpu_weights == last9 + shape.output_weights + shape.tied_output_weights
    assert ten.host_weights == shape.weights - last9 - shape.output_weights
    everything = est._placement(shape, -1, gpu)
    assert everything.gpu_kv_layers == list(range(30)) and everything.host_weights == shape.input_weights


def test_report_with_offloaded_layers_and_the_verdicts(default_model_path):
    import dataclasses

    cpu = est.estimate(default_model_path, 2048)
    on_gpu = dataclasses.replace(cpu, gpu=est.Device("GPU0", free=100 * MiB, total=8192 * MiB), gpu_layers=10,
                                 gpu_weights=20 * MiB, gpu_kv_cache=15 * MiB, gpu_compute=98 * MiB)
    text = est.report(on_gpu)
    assert re.search(r"^total \(GPU\) +133\.0$", text, re.M), text
    assert text.splitlines()[-1].startswith("does not fit: ") and "GPU0 (10 layers): needs 133.0 MiB, 100.0 MiB free" in text
    assert (on_gpu.fits_ram, on_gpu.fits_gpu, on_gpu.fits) == (True, False, False)
    short_of_ram = dataclasses.replace(cpu, ram_available=cpu.total - 1)
    assert not short_of_ram.fits and est.verdict(short_of_ram).startswith("does not fit")
    unknown = dataclasses.replace(cpu, ram_available=None)
    assert unknown.fits and est.verdict(unknown).startswith("cannot tell whether it fits")


@pytest.mark.slow
def test_estimate_leaves_llama_cpp_pythons_log_functions_alone(default_model_path, tmp_path):
    """An estimate that reads the model's pace.amb.* keys (a metadata-only load, log silenced) must
    leave llama-cpp-python's declarations of llama_log_get/set as they were: the quantizer's log
    capture, which passes them llama-cpp-python's callback type, then still works in this process."""
    from pace_gguf._native import llama_cpp_module
    from pace_gguf.convert.quantize import _LogCapture

    path = _with_pace_keys(default_model_path, tmp_path / "amb.gguf", enabled=(T.BOOL, True),
                           layers=(T.ARRAY, [3], "", T.INT32))
    assert est.estimate(path, 512).amb.layers == (3,)
    lc = llama_cpp_module().llama_cpp
    params = lc.llama_model_default_params()
    params.no_alloc, params.load_mode = True, 0
    with _LogCapture(lc, show_progress=False) as log:  # ctypes.ArgumentError with a clobbered declaration
        model = lc.llama_model_load_from_file(str(default_model_path).encode(), params)
    assert model
    lc.llama_model_free(model)
    assert any(b"llama_model_loader" in line for line in log.lines)  # llama.cpp's log reached the capture
