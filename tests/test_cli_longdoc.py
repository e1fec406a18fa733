"""`pace-gguf ask` / `summarize` through real subprocesses: files, piped stdin, --json, and bad
inputs (one error line, non-zero exit, no traceback, nothing on stdout)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

FACT = "Note: the door code is 4817."
QUESTION = "What is the door code?"
SMALL = ("--n-ctx", "1024", "--max-tokens", "24", "--no-progress")


def test_ask_a_file(run_cli, tmp_path):
    doc = tmp_path / "notes.md"
    doc.write_text(f"# Office\n\nThe printer is on the second floor.\n\n{FACT}\n")
    result = run_cli("ask", str(doc), "-q", QUESTION, *SMALL)
    assert result.returncode == 0, result.stderr
    assert "4817" in result.stdout
    assert "strategy direct" in result.stderr and "document" in result.stderr


def test_ask_stdin_as_json_with_the_amb(run_cli):
    result = run_cli("ask", "-", "-q", QUESTION, "--json", "--amb-layers", "12,26", *SMALL, input=f"{FACT}\n")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert "4817" in out["text"]
    assert out["strategy"] == "direct" and out["documents"] == ["<stdin>"]
    assert out["amb_enabled"] is True and set(out["amb_stats"]) == {"12", "26"}
    assert out["tokens_read"] > out["document_tokens"] > 0 and out["prefill"]["tokens_per_second"] > 0


def test_summarize_with_a_strategy(run_cli, tmp_path, long_document):
    doc = tmp_path / "long.txt"
    doc.write_text(long_document(1500))
    result = run_cli("summarize", str(doc), "--strategy", "map-reduce", "--length", "short", "--json", *SMALL)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["strategy"] == "map-reduce" and out["text"]
    assert [c["stage"] for c in out["chunks"]].count("map") >= 2


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p / "missing.txt", "no such file"),
        (lambda p: p, "folder"),
        (lambda p: (p / "empty.txt", (p / "empty.txt").write_text(""))[0], "empty"),
        (lambda p: (p / "blob.bin", (p / "blob.bin").write_bytes(bytes(range(256)) * 8))[0], "binary"),
    ],
    ids=["missing", "folder", "empty", "binary"],
)
def test_bad_inputs(run_cli, assert_one_line_error, tmp_path, make, fragment):
    result = run_cli("ask", str(make(tmp_path)), "-q", QUESTION, *SMALL)
    assert_one_line_error(result, fragment)
    assert result.stdout == ""


def test_too_long_for_the_error_strategy(run_cli, assert_one_line_error, tmp_path, long_document):
    doc = tmp_path / "long.txt"
    doc.write_text(long_document(3000))
    result = run_cli("ask", str(doc), "-q", QUESTION, "--strategy", "error", *SMALL)
    assert_one_line_error(result, "tokens", "needs a context of")
    assert result.stdout == ""


def test_empty_question_and_bad_options(run_cli, assert_one_line_error, tmp_path):
    doc = tmp_path / "a.txt"
    doc.write_text(FACT)
    assert_one_line_error(run_cli("ask", str(doc), "-q", " ", *SMALL), "question")
    bad = run_cli("ask", str(doc), "-q", QUESTION, "--strategy", "fastest")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr and "Traceback" not in bad.stderr
