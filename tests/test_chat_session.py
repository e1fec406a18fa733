"""`pace-gguf chat`'s /file, /save and /load: real CLI processes with piped stdin, the real default
model at temperature 0. Answers are checked for a planted fact only (see tests/test_cli.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

pytestmark = pytest.mark.slow  # real model, real subprocesses

FACT = "Note: the door code is 4817.\n"
QUESTION = "What is the door code?"
ANSWER = "4817"
CHAT = ("chat", "--temperature", "0", "--max-tokens", "32")


def repl_errors(result) -> list[str]:
    """The REPL's error lines: each bad command gets one, and the REPL goes on (exit status 0)."""
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("pace-gguf: ")]


def script(*lines: str) -> str:
    return "".join(f"{line}\n" for line in lines) + "/exit\n"


def test_file_puts_the_document_in_the_conversation(run_cli, default_model_path, tmp_path):
    (tmp_path / "notes.txt").write_text(FACT)
    result = run_cli(*CHAT, "--n-ctx", "512", input=script(f"/file {tmp_path / 'notes.txt'}", QUESTION))
    assert repl_errors(result) == []
    assert "(added " in result.stderr
    assert ANSWER in result.stdout


def test_bad_files_and_commands_get_one_line_each(run_cli, default_model_path, tmp_path):
    (tmp_path / "big.txt").write_text(FACT * 100)  # about 1000 tokens: more than --n-ctx 256 holds
    (tmp_path / "model.gguf").write_bytes(b"GGUF\x03\0\0\0" + bytes(64))
    result = run_cli(*CHAT, "--n-ctx", "256", input=script(
        f"/file {tmp_path / 'missing.txt'}",
        f"/file {tmp_path / 'big.txt'}",
        f"/file {tmp_path}",
        f"/file {tmp_path / 'model.gguf'}",
        "/file",
        "/file -",  # stdin is the conversation itself
        "/frobnicate",
        "word " * 300,  # a question beyond the context
        f"{FACT}{QUESTION}",  # the REPL still answers, and none of the above is in the conversation
    ))
    errors = repl_errors(result)
    assert len(errors) == 8, result.stderr
    for error, fragments in zip(errors, [("missing.txt", "no such file"), ("big.txt", "tokens", "free", "not added"),
                                         ("is a folder",), ("model.gguf", "binary"), ("usage: /file PATH",),
                                         ("reads a file",), ("unknown command /frobnicate",),
                                         ("does not fit in the context",)]):
        for fragment in fragments:
            assert fragment in error, error
    assert ANSWER in result.stdout


def _save_a_session(run_cli, folder, *options: str):
    (folder / "notes.txt").write_text(FACT)
    session = folder / "chat.session"
    result = run_cli(*CHAT, "--n-ctx", "512", *options,
                     input=script(f"/file {folder / 'notes.txt'}", QUESTION, f"/save {session}"))
    assert repl_errors(result) == []
    assert ANSWER in result.stdout
    # two files, each renamed into place whole: no temp files left behind
    assert sorted(os.listdir(folder)) == ["chat.session", "chat.session.json", "notes.txt"]
    return session


def _copy(session, name: str, state: bytes | None = None, sidecar: str | None = None):
    """A copy of the saved pair under `name`, its state file and/or sidecar replaced."""
    copy = session.with_name(name)
    copy.write_bytes(session.read_bytes() if state is None else state)
    copy.with_name(name + ".json").write_text(sidecar if sidecar is not None else session.with_name(session.name + ".json").read_text())
    return copy


def test_save_then_load_continues_the_conversation(run_cli, tmp_path):
    session = _save_a_session(run_cli, tmp_path)
    state = session.read_bytes()
    sidecar = json.loads(session.with_name(session.name + ".json").read_text())
    assert sidecar["messages"][-1]["role"] == "assistant"
    (tmp_path / "notes.txt").unlink()  # what the new process learns, it learns from the session

    truncated = _copy(session, "truncated", state=state[: len(state) // 2])
    flipped = bytearray(state)
    flipped[len(state) // 2] ^= 0xFF
    corrupt = _copy(session, "corrupt", state=bytes(flipped))
    bad_sidecar = _copy(session, "bad-sidecar", sidecar="{not json")
    no_sidecar = tmp_path / "no-sidecar"
    shutil.copyfile(session, no_sidecar)
    # a truncated state whose sidecar vouches for it: llama.cpp itself refuses it, mid-way
    cut = state[: len(state) // 2]
    vouched = _copy(session, "vouched", state=cut,
                    sidecar=json.dumps({**sidecar, "sha256": hashlib.sha256(cut).hexdigest()}))

    result = run_cli(*CHAT, "--n-ctx", "512", "--verbose", input=script(
        f"/load {tmp_path / 'missing'}", f"/load {truncated}", f"/load {corrupt}", f"/load {bad_sidecar}",
        f"/load {no_sidecar}", f"/load {vouched}",
        f"/load {session}", QUESTION,
    ))
    errors = repl_errors(result)
    assert len(errors) == 6, errors
    for error, fragment in zip(errors, ["no such file", "damaged or incomplete", "damaged or incomplete",
                                        "not a pace-gguf chat session", "no-sidecar.json: no such file",
                                        "llama.cpp could not load it"]):
        assert fragment in error, error
    assert "(loaded " in result.stderr
    assert ANSWER in result.stdout
    # llama-cpp-python was told which tokens the loaded context holds: the answer reused them
    assert "prefix-match hit" in result.stderr


def test_load_refuses_a_session_of_another_setup(run_cli, tmp_path):
    session = _save_a_session(run_cli, tmp_path)
    result = run_cli(*CHAT, "--n-ctx", "384", "--amb-layers", "12", input=script(f"/load {session}"))
    errors = repl_errors(result)
    assert len(errors) == 1, errors
    for fragment in ("saved with another setup", "n_ctx 512 (this chat: 384)", "AMB off (this chat: on)"):
        assert fragment in errors[0], errors[0]
    assert "(loaded " not in result.stderr
