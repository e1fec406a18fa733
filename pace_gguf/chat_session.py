"""Saved chat sessions (chat's /save and /load): a conversation and the model's context, kept on disk.

PATH is llama.cpp's own session file (llama_state_save_file: the tokens in the context, the KV
cache and, in pace-gguf's build, the AMB banks); PATH.json holds the conversation, the identity
of the model and context it belongs to, and PATH's sha256, so that a damaged, truncated or
mismatched pair is refused before llama.cpp reads it.

    status = save_session(llm, path, messages)   # PaceError if it cannot be written
    messages = load_session(llm, path)           # PaceError, conversation and context unchanged, if refused
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
from pathlib import Path

from . import _llama_cpp_compat as compat
from . import _native, amb
from .atomic_files import publish, temp_paths
from .errors import PaceError
from .interrupts import deferred
from .paths import sha256_file

SESSION_FORMAT = "pace-gguf chat session"
SESSION_VERSION = 1


def save_session(llm, path: Path, messages: list[dict]) -> str:
    """Save `messages` and `llm`'s context as the pair PATH, PATH.json, each renamed into place
    whole. Returns a status line that says what was saved."""
    path = Path(path)
    if path.is_dir():
        raise PaceError(f"{path}: is a folder; give a file name, such as {path / 'chat.session'}")
    if not path.parent.is_dir():
        raise PaceError(f"{path}: its folder does not exist")
    tokens = compat.held_tokens(llm)
    try:
        with temp_paths(path, 2) as (state_tmp, sidecar_tmp):
            with deferred():  # llama.cpp logs through a Python callback (see interrupts)
                api = _native_api()
                saved = api.llama_state_save_file(compat.context_pointer(llm), os.fsencode(state_tmp),
                                                  (api.llama_token * len(tokens))(*tokens), len(tokens))
            if not saved:
                raise PaceError(f"{path}: llama.cpp could not write the session (disk full?)")
            session = {"format": SESSION_FORMAT, "version": SESSION_VERSION, "identity": _session_identity(llm),
                       "sha256": sha256_file(state_tmp), "messages": messages}
            sidecar_tmp.write_text(json.dumps(session, ensure_ascii=False, indent=1), encoding="utf-8")
            publish(state_tmp, path)
            publish(sidecar_tmp, _sidecar(path))
    except OSError as exc:
        raise PaceError(f"{path}: cannot save the session there: {exc.strerror or exc}") from None
    return f"saved {len(messages)} messages and {len(tokens)} tokens of context to {path} and {_sidecar(path).name}"


def load_session(llm, path: Path) -> list[dict]:
    """The saved conversation, its context loaded into `llm`. Refused (conversation and context
    unchanged) unless the pair is intact and belongs to this model and context."""
    path = Path(path)
    session = _read_session(path)
    differences = _identity_differences(session["identity"], _session_identity(llm))
    if differences:
        raise PaceError(f"{path}: saved with another setup: {'; '.join(differences)}")
    if sha256_file(path) != session["sha256"]:
        raise PaceError(f"{path}: damaged or incomplete (it does not match {_sidecar(path).name}); not loaded")
    _load_context(llm, path)
    return session["messages"]


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _session_identity(llm) -> dict:
    """What a saved context needs to be loaded into: the same model, library, context size and AMB."""
    model = Path(llm.model_path)
    identity = {"model": model.name, "model size": model.stat().st_size, "build": llm.build_id,
                "n_ctx": llm._capacity,  # the size asked for: llama.cpp rounds it up (300 -> 512)
                "AMB": dataclasses.asdict(llm.pace) if llm.amb_enabled else "off"}
    return json.loads(json.dumps(identity))  # as it reads back from JSON (tuples become lists)


def _identity_differences(saved: dict, ours: dict) -> list[str]:
    differences = []
    for key, value in ours.items():
        theirs = saved.get(key)
        if isinstance(theirs, dict) and isinstance(value, dict):  # the AMB on in both: which settings differ
            differences += [f"AMB {k} {_shown(theirs.get(k))} (this chat: {_shown(v)})"
                            for k, v in value.items() if theirs.get(k) != v]
        elif theirs != value:
            differences.append(f"{key} {_shown(theirs)} (this chat: {_shown(value)})")
    return differences


def _shown(value) -> str:
    if isinstance(value, dict):
        return "on"
    return f"{value:.6g}" if isinstance(value, float) else str(value)  # AMB floats are float32: 0.2 is 0.200000003


def _read_session(path: Path) -> dict:
    """PATH.json, checked; PATH must exist beside it."""
    sidecar = _sidecar(path)
    if path.is_dir() or not path.exists():
        raise PaceError(f"{path}: {'is a folder' if path.is_dir() else 'no such file'}; give the PATH used with /save")
    try:
        session = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PaceError(f"{sidecar}: no such file (a saved session is two files, {path.name} and {sidecar.name})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PaceError(f"{sidecar}: not a pace-gguf chat session: {exc}") from None
    if not (isinstance(session, dict) and session.get("format") == SESSION_FORMAT
            and isinstance(session.get("identity"), dict) and isinstance(session.get("sha256"), str)
            and _is_conversation(session.get("messages"))):
        raise PaceError(f"{sidecar}: not a pace-gguf chat session (or a damaged one)")
    if session.get("version") != SESSION_VERSION:
        raise PaceError(f"{sidecar}: a session of format version {session.get('version')}; this pace-gguf reads {SESSION_VERSION}")
    return session


def _is_conversation(messages) -> bool:
    return isinstance(messages, list) and all(
        isinstance(m, dict) and set(m) == {"role", "content"} and m["role"] in ("system", "user", "assistant")
        and isinstance(m["content"], str) for m in messages)


def _load_context(llm, path: Path) -> None:
    """Load llama.cpp's session file and tell llama-cpp-python which tokens the context now holds
    (as its Llama.load_state does), so the next answer reuses them."""
    api = _native_api()
    capacity = llm._capacity
    tokens, count = (api.llama_token * capacity)(), ctypes.c_size_t(0)
    error_before = amb.last_error()
    with deferred():
        loaded = api.llama_state_load_file(compat.context_pointer(llm), os.fsencode(path), tokens, capacity, ctypes.byref(count))
    if not loaded:
        # llama.cpp may have read part of the state before it failed: empty the context (KV cache
        # and AMB banks); the next answer evaluates the conversation again.
        compat.clear_context(llm)
        reason = amb.last_error() if amb.last_error() != error_before else "it does not match this context"
        raise PaceError(f"{path}: llama.cpp could not load it ({reason}); the conversation is kept, its context will be recomputed")
    compat.set_held_tokens(llm, tokens[:count.value])  # without logits: they are not part of the session


def _native_api():
    return _native.llama_cpp_module().llama_cpp
