"""The `pace-gguf` command: info, pull, chat, and one clear line for every kind of bad input."""

import pytest

pytestmark = pytest.mark.slow  # real model, real subprocesses

# README command 1's prompt (tests/test_readme.py keeps them equal). The answer is in the question,
# and its tokens lead by 1.6 logits or more with AVX2 and with plain x86-64 kernels, AMB on or off
# (README, Builds); "Which city is the capital of France?" led by 0.03 and answers "Le Grand
# Château..." with plain x86-64 kernels and on AMX.
PROMPT = "Note: the door code is 4817. What is the door code?"
ANSWER = "4817"


def test_info_shows_patched_build(run_cli):
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    assert "pace-gguf 0.1.0 llama.cpp b11312 patches" in result.stdout
    assert "CPU" in result.stdout


def test_pull_prints_cached_path(run_cli, default_model_path):
    result = run_cli("pull")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(default_model_path)


def test_chat_answers_the_readme_prompt(run_cli, default_model_path):
    result = run_cli("chat", "--prompt", PROMPT, "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert ANSWER in result.stdout


def test_chat_repl_reset_and_exit(run_cli, default_model_path):
    script = f"{PROMPT}\n/reset\n/exit\nthis line is never read\n"
    result = run_cli("chat", "--temperature", "0", "--max-tokens", "48", input=script)
    assert result.returncode == 0, result.stderr
    assert ANSWER in result.stdout
    assert "(conversation cleared)" in result.stderr


def test_missing_model_path(run_cli, assert_one_line_error, tmp_path):
    assert_one_line_error(run_cli("chat", "-m", str(tmp_path / "missing.gguf"), "-p", "hi"), "not found")


def test_non_gguf_file(run_cli, assert_one_line_error, tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"PK\x03\x04 not a model")
    assert_one_line_error(run_cli("chat", "-m", str(bogus), "-p", "hi"), "not a GGUF file")


def test_truncated_gguf(run_cli, assert_one_line_error, default_model_path, copy_file):
    cut = copy_file(default_model_path, nbytes=default_model_path.stat().st_size - 1000)
    assert_one_line_error(run_cli("chat", "-m", str(cut), "-p", "hi"), "truncated")


def test_unknown_registry_name(run_cli, assert_one_line_error):
    assert_one_line_error(run_cli("pull", "no-such-model"), "unknown model name")
    assert_one_line_error(run_cli("chat", "-m", "no-such-model", "-p", "hi"), "neither an existing file")


def test_invalid_parameter_is_a_usage_error(run_cli):
    result = run_cli("chat", "--temperature", "-1", "-p", "hi")
    assert result.returncode == 2
    assert "must be >= 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_chat_with_amb_prints_stats(run_cli, default_model_path):
    result = run_cli("chat", "--prompt", PROMPT, "--temperature", "0", "--amb-layers", "12,26", "--stats")
    assert result.returncode == 0, result.stderr
    assert ANSWER in result.stdout
    for layer in (12, 26):
        line = next(l for l in result.stderr.splitlines() if l.strip().startswith(f"layer {layer}:"))
        slots = int(line.split("slots ")[1].split("/")[0])
        assert slots > 0, line


def test_bad_amb_settings_are_one_line_errors(run_cli, assert_one_line_error):
    assert_one_line_error(run_cli("chat", "-p", "hi", "--amb-layers", "12,99"), "layer 99 is out of range")
    bad_mode = run_cli("chat", "-p", "hi", "--amb-layers", "12", "--amb-mode", "legacy")  # argparse's choices
    assert bad_mode.returncode == 2 and "invalid choice: 'legacy'" in bad_mode.stderr, bad_mode.stderr
    assert "Traceback" not in bad_mode.stderr
    assert_one_line_error(run_cli("chat", "-p", "hi", "--amb"), "no layers")


@pytest.mark.parametrize("words", [200, 400])  # beyond the n_ctx asked for / beyond llama.cpp's rounded-up context
def test_prompt_beyond_the_context_is_a_clear_error(run_cli, assert_one_line_error, default_model_path, words):
    long_prompt = "word " * words
    assert_one_line_error(run_cli("chat", "--n-ctx", "128", "-p", long_prompt), "fit in the context")
