"""`pace-gguf chat` under bad input and interruption: one clear line and a non-zero exit, never a
traceback, never a hang. Real CLI processes, the real default model, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

pytestmark = pytest.mark.slow  # real model, real subprocesses

STORY = ("--prompt", "Write a long story about a dragon.", "--temperature", "0")


def _no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr


def _spawn(cli_command: list[str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(cli_command + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[bytes, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running {timeout} s after the signal: {err.decode(errors='replace')[-2000:]}")
    return out, err.decode(errors="replace")


def _assert_interrupted(proc: subprocess.Popen, err: str) -> None:
    assert proc.returncode == 130, err[-2000:]
    _no_traceback(err)
    assert "pace-gguf: interrupted" in err.splitlines(), err[-2000:]


def test_fifo_as_model_is_refused_without_opening_it(run_cli, assert_one_line_error, tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    # opening a FIFO for reading blocks until a writer appears
    assert_one_line_error(run_cli("chat", "-m", str(fifo), "-p", "hi", timeout=30), "not a regular file")


def test_closed_stdout_is_one_error_line(cli_command):
    result = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *cli_command, "chat", "-p", "hi"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    _no_traceback(result.stderr)
    assert "pace-gguf: error: standard output is closed" in result.stderr.splitlines()[-1]


def test_closed_stdin_does_not_matter_with_prompt(cli_command, default_model_path):
    result = subprocess.run(["sh", "-c", 'exec "$@" <&-', "sh", *cli_command, "chat", *STORY, "--max-tokens", "8"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    _no_traceback(result.stderr)
    assert result.stdout.strip()


def test_closed_stdin_in_the_repl_is_one_error_line(cli_command, assert_one_line_error):
    result = subprocess.run(["sh", "-c", 'exec "$@" <&-', "sh", *cli_command, "chat"],
                            capture_output=True, text=True, timeout=120)
    assert_one_line_error(result, "standard input is closed")


def test_reader_closing_the_pipe_ends_quietly(cli_command, default_model_path):
    """`pace-gguf chat ... | head -c 5`: the reader goes away mid-answer; exit like a Unix tool
    killed by SIGPIPE (status 141), with nothing on stderr."""
    proc = _spawn(cli_command, "chat", *STORY, "--max-tokens", "64")
    assert len(proc.stdout.read(5)) == 5
    proc.stdout.close()
    err = proc.stderr.read().decode(errors="replace")
    assert proc.wait(timeout=120) == 141, err
    _no_traceback(err)
    assert err.strip() == "", err


def test_prompt_that_is_not_utf8_is_one_error_line(run_cli, assert_one_line_error):
    # "\udcff" is how Python decodes the byte 0xff of argv; subprocess encodes it back to 0xff
    assert_one_line_error(run_cli("chat", "-p", "caf\udcff"), "--prompt is not valid UTF-8")


def test_repl_line_that_is_not_utf8_is_refused_and_the_chat_goes_on(cli_command, default_model_path):
    result = subprocess.run(cli_command + ["chat"], input=b"caf\xff\n/exit\n", capture_output=True, timeout=120)
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 0, err
    _no_traceback(err)
    assert "pace-gguf: that line is not valid UTF-8 text; type it again" in err.splitlines()


def test_context_too_large_to_create_says_so(run_cli, assert_one_line_error, default_model_path):
    result = run_cli("chat", "--n-ctx", "10000000", "-p", "hi")
    assert_one_line_error(result, "could not create a context of 10000000 tokens", "smaller n_ctx (--n-ctx")
    assert "could not load" not in result.stderr


def test_answer_running_out_of_context_says_so_and_keeps_the_partial_answer(run_cli, assert_one_line_error,
                                                                           default_model_path):
    result = run_cli("chat", "--n-ctx", "64", "--max-tokens", "512", *STORY)
    assert_one_line_error(result, "the answer ran out of context after", "--n-ctx", "--max-tokens")
    assert "tokens do not fit" not in result.stderr
    assert result.stdout.strip() and result.stdout.endswith("\n")   # streamed part kept, line ended


def test_ctrl_c_during_generation(cli_command, default_model_path):
    proc = _spawn(cli_command, "chat", *STORY, "--max-tokens", "400")
    assert proc.stdout.read(1)                       # the answer is being generated
    proc.send_signal(signal.SIGINT)
    out, err = _finish(proc)
    _assert_interrupted(proc, err)


def test_ctrl_c_during_prefill(cli_command, default_model_path):
    """With --verbose, llama.cpp logs every graph through llama-cpp-python's Python callback, the
    place where a KeyboardInterrupt used to be swallowed (and the run went on to the end)."""
    # one thread and 6000 prompt tokens: seconds of prefill even on a fast machine
    proc = _spawn(cli_command, "chat", "--verbose", "--threads", "1", "--n-ctx", "8192", "--max-tokens", "16",
                  "--temperature", "0", "--prompt", "word " * 6000 + "\nHow many words?")
    for line in proc.stderr:                        # the context exists: the prompt is next
        if line.startswith(b"llama_context"):
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    out, err = _finish(proc)
    _assert_interrupted(proc, err)
    assert out == b""                               # interrupted before the answer began
    assert time.monotonic() - t0 < 30
