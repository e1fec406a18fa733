"""`pace-gguf convert` / `reorder` under interruption and bad --amb-* values: Ctrl-C and SIGTERM
stop the work (llama.cpp's quantizer included) and remove every temp file; SIGKILL never leaves a
file at OUT, and the temp files it leaves are removed by the next run; invalid AMB settings are
refused, by the runtime's own rules, before any work starts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

# --- interruption (real CLI processes and signals) ---------------------------------------------

# `reorder --requantize` of the default model starts with llama.cpp's quantizer (dequantizing the
# Q4_1 file to F32, seconds on one thread): the signals below land while it runs.
_DEQUANTIZING = b"--requantize: dequantizing"


def _start_requantize(cli_command, model, out):
    proc = subprocess.Popen(cli_command + ["reorder", str(model), "-o", str(out), "--requantize", "--threads", "1",
                                           "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    for line in proc.stderr:
        seen += line
        if _DEQUANTIZING in line:
            time.sleep(1.0)                          # llama.cpp's quantizer is running now
            return proc, seen
    pytest.fail(f"the run ended before quantizing: {seen.decode(errors='replace')}")


def _finish(proc, seen: bytes, timeout: float = 120) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"still running {timeout} s after the signal")
    err = (seen + err).decode(errors="replace")
    assert "Traceback" not in err and "Exception ignored" not in err, err
    return err


@pytest.fixture
def out_dir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


def _error_lines(capsys, *argv) -> tuple[int, list[str], str]:
    """In process, like test_convert_errors: exit status, the `pace-gguf: error:` lines, all stderr."""
    from pace_gguf.cli import main

    code = main(list(argv) + ["--no-progress"])
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.startswith("pace-gguf: error:")], err


@pytest.mark.slow
@pytest.mark.parametrize("sig, status, message", [
    (signal.SIGINT, 130, "pace-gguf: interrupted"),
    (signal.SIGTERM, 143, "pace-gguf: terminated (SIGTERM)"),
])
def test_signal_during_quantization_stops_it_and_removes_everything(sig, status, message, cli_command,
                                                                     default_model_path, out_dir):
    """Ctrl-C used to be swallowed by the quantizer's log callback (the run went on and succeeded);
    SIGTERM used to kill the process with its temp files left behind."""
    proc, seen = _start_requantize(cli_command, default_model_path, out_dir / "o.gguf")
    proc.send_signal(sig)
    t0 = time.monotonic()
    err = _finish(proc, seen)
    assert proc.returncode == status, err
    assert message in err.splitlines(), err
    assert time.monotonic() - t0 < 20                # stopped, not run to the end
    assert list(out_dir.iterdir()) == []


def _sizes(folder):
    return {p.name: p.stat().st_size for p in folder.iterdir()}


@pytest.mark.slow
def test_sigkill_leaves_no_output_and_the_next_run_removes_its_temp_files(cli_command, default_model_path,
                                                                          out_dir, run_cli):
    proc, _ = _start_requantize(cli_command, default_model_path, out_dir / "o.gguf")
    proc.kill()                                      # cannot be caught: nothing is cleaned up now
    proc.communicate()
    left = _sizes(out_dir)
    assert left and "o.gguf" not in left             # temp files only, never a partial OUT
    assert all(f"-{proc.pid}-" in name for name in left), left   # named by their owner
    time.sleep(1.0)
    assert _sizes(out_dir) == left                   # llama.cpp's quantizer died with its parent

    # A temp file of a process that is still running must survive the cleanup.
    live = out_dir / next(iter(left)).replace(f"-{proc.pid}-", f"-{os.getpid()}-")
    live.write_bytes(b"in use")
    # Any later run that writes to this folder removes the dead run's files, even one that
    # then fails on its input (a quantized file without --requantize).
    result = run_cli("reorder", str(default_model_path), "-o", str(out_dir / "other.gguf"), "--no-progress")
    assert result.returncode == 1, result.stderr
    assert sorted(_sizes(out_dir)) == [live.name]


@pytest.mark.slow
def test_sigterm_during_upstream_conversion_stops_the_converter_process(cli_command, tiny_hf, out_dir):
    """llama.cpp's convert_hf_to_gguf.py runs in a child process: it must end with us, not go on
    writing a temp file after we are gone."""
    proc = subprocess.Popen(cli_command + ["convert", str(tiny_hf("qwen2")), "-o", str(out_dir / "o.gguf"),
                                           "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    for line in proc.stderr:
        seen += line
        if b"convert_hf_to_gguf.py" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    err = _finish(proc, seen)
    assert proc.returncode == 143, err
    time.sleep(3.0)                                  # an orphaned converter would write by now
    assert list(out_dir.iterdir()) == []


# --- non-regular files --------------------------------------------------------------------------

@pytest.mark.slow
def test_fifo_among_the_weights_is_refused_without_opening_it(run_cli, assert_one_line_error, tiny_hf, tmp_path):
    hf = tmp_path / "hf"
    shutil.copytree(tiny_hf("qwen2"), hf)
    (hf / "model.safetensors").unlink()
    os.mkfifo(hf / "model.safetensors")              # reading it would block until a writer appears
    assert_one_line_error(run_cli("convert", str(hf), "-o", str(tmp_path / "o.gguf"), timeout=60),
                          "model.safetensors is not a regular file")


@pytest.mark.parametrize("command, needle", [
    ("convert", "is neither a Hugging Face model folder nor a regular (GGUF) file"),
    ("reorder", "model.gguf is not a regular file"),
])
def test_fifo_as_input_is_refused(command, needle, capsys, tmp_path):
    os.mkfifo(tmp_path / "model.gguf")
    code, lines, err = _error_lines(capsys, command, str(tmp_path / "model.gguf"), "-o", str(tmp_path / "o.gguf"))
    assert code == 1 and len(lines) == 1, err
    assert needle in lines[0], lines[0]


# --- --amb-* validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("flags, needle", [
    (["--amb-layers", "1", "--amb-bank-size", "0"], "bank_size"),
    (["--amb-layers", "1", "--amb-bank-size", "5000"], "bank_size"),
    (["--amb-layers", "1", "--amb-bank-size", "99999999999"], "bank_size"),
    (["--amb-layers", "2"], "layer 2 is out of range: the model has layers 0..1"),
    (["--amb-layers", "1,1"], "layer 1 is listed twice"),
    (["--amb-layers", "4294967308"], "layers"),
    (["--amb-layers", "1", "--amb-theta-high", "1.5"], "theta_high"),
    (["--amb-layers", "1", "--amb-theta-low", "0.8", "--amb-theta-high", "0.5"], "theta_low"),
    (["--amb-layers", "1", "--amb-alpha", "nan"], "alpha"),
    (["--amb-layers", "1", "--amb-chunk", "0"], "chunk"),
    (["--amb-layers", "1", "--amb-topk", "0"], "topk"),
    (["--amb-layers", "1", "--amb-w-high", "1e39"], "w_high"),     # not a finite float32
    (["--amb-enabled"], "no layers"),
])
def test_invalid_amb_settings_are_refused_before_any_work(flags, needle, capsys, tiny_hf, out_dir):
    """The layer count comes from config.json: nothing is converted before the check."""
    code, lines, err = _error_lines(capsys, "convert", str(tiny_hf("qwen2")), "-o", str(out_dir / "o.gguf"), *flags)
    assert code == 1 and len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert "convert_hf_to_gguf.py" not in err        # refused before llama.cpp's converter started
    assert list(out_dir.iterdir()) == []


def test_amb_layers_are_checked_against_a_gguf_inputs_layer_count(capsys, tiny_f32, out_dir):
    code, lines, err = _error_lines(capsys, "convert", str(tiny_f32("qwen2", 0)), "-o", str(out_dir / "o.gguf"),
                                    "--quant", "F32", "--amb-layers", "0,2")
    assert code == 1 and len(lines) == 1, err
    assert "layer 2 is out of range: the model has layers 0..1" in lines[0], lines[0]
    assert list(out_dir.iterdir()) == []
