"""The `pace-gguf` command line: info, pull, chat (with the AMB flags), convert and reorder.

Every user-fixable problem (PaceError) is printed as one `pace-gguf: error: ...` line with exit
status 1; argparse reports usage errors with status 2. Ctrl-C ends with status 130, SIGTERM and
SIGHUP with 128 + the signal number (temp files removed either way), and a reader that closes
the output pipe early with 141, quietly, like a Unix tool killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import re
import signal
import sys
from pathlib import Path

from . import __version__, _native, amb, registry
from .cli_args import add_amb_args, add_model_args, load_llama, non_negative_float, positive_int, probability, progress_line
from . import cli_longdoc
from .convert import cli as convert_cli
from .documents import read_path
from .errors import ContextOverflowError, PaceError
from .interrupts import Terminated, deferred, termination_raises
from .paths import sha256_file


# --- info ------------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from . import _native, paths  # noqa: PLC0415

    llama_cpp = _native.llama_cpp_module()
    rows = [
        ("pace-gguf", __version__),
        ("llama-cpp-python", llama_cpp.__version__),
        ("build id", _native.build_id()),
        ("library", _native.loaded_library_path()),
        ("backends", ", ".join(_native.compiled_backends())),
        # llama_print_system_info(): the instruction sets this ggml was compiled for and uses
        ("cpu features", _native.system_info()),
        ("cache", str(paths.cache_dir())),
        ("models", str(paths.models_dir())),
        ("default model", registry.DEFAULT_MODEL),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


# --- pull ------------------------------------------------------------------------------------------


def cmd_pull(args: argparse.Namespace) -> int:
    print(registry.pull(args.name, progress=progress_line))
    return 0


# --- chat ------------------------------------------------------------------------------------------


def _print_stats(llm) -> None:
    if not llm.amb_enabled:
        print("AMB is off (no statistics)", file=sys.stderr)
        return
    print(f"AMB ({llm.pace.mode} mode, bank memory {llm.amb_memory_bytes / 2**20:.2f} MiB):", file=sys.stderr)
    for stats in llm.memory_stats().values():
        print(f"  {stats}", file=sys.stderr)


def _stream_reply(llm, messages: list[dict], args: argparse.Namespace) -> str:
    """Print the assistant's answer as it is generated and return it whole."""
    chunks = llm.create_chat_completion(
        messages=messages,
        stream=True,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    parts = []
    try:
        for chunk in chunks:
            piece = chunk["choices"][0]["delta"].get("content") or ""
            parts.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:
        sys.stdout.write("\n")  # also when it stops early: an error message must not follow on the same line
    return "".join(parts)


def _initial_messages(args: argparse.Namespace) -> list[dict]:
    return [{"role": "system", "content": args.system}] if args.system else []


def _check_utf8(text: str | None, what: str) -> None:
    """Bytes that are not UTF-8 (in argv, or typed) arrive as lone surrogates; llama.cpp takes UTF-8."""
    try:
        (text or "").encode("utf-8")
    except UnicodeEncodeError:
        raise PaceError(f"{what} is not valid UTF-8 text") from None


# --- the chat REPL: questions, and /commands ---------------------------------------------------------

REPL_GREETING = ("pace-gguf chat: /file PATH adds a file, /save PATH and /load PATH keep a session, "
                 "/reset clears the conversation, /help, /exit (or Ctrl-D) quits.")
REPL_HELP = """\
  /file PATH   add a file (text, Markdown, code or PDF) to the conversation, then ask about it
  /save PATH   save the conversation and the model's context (the files PATH and PATH.json)
  /load PATH   continue a saved session (same model, --n-ctx and AMB settings)
  /reset       clear the conversation
  /help        this list
  /exit        quit (also Ctrl-D)"""
_COMMAND = re.compile(r"/([A-Za-z]+)(?:\s+(.*))?")  # "/usr/bin/env?" is a question, not a command


def _repl(llm, args: argparse.Namespace) -> None:
    print(REPL_GREETING, file=sys.stderr)
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")  # a line that is not UTF-8 is refused below, not fatal
    messages = _initial_messages(args)
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            print()
            return
        try:
            _check_utf8(line, "that line")
        except PaceError as exc:
            print(f"pace-gguf: {exc}; type it again", file=sys.stderr)
            continue
        if line == "/exit":
            return
        try:
            messages = _repl_step(llm, args, messages, line)
        except PaceError as exc:  # a bad file or session, a question that does not fit: say so, go on
            print(f"pace-gguf: {exc}", file=sys.stderr)


def _repl_step(llm, args: argparse.Namespace, messages: list[dict], line: str) -> list[dict]:
    """The conversation after one line. On a PaceError the caller keeps the conversation it had."""
    command = _COMMAND.fullmatch(line)
    if command is None:
        return _answer(llm, args, messages, line) if line else messages
    name, argument = command.group(1), (command.group(2) or "").strip()
    if name == "reset":
        print("(conversation cleared)", file=sys.stderr)
        return _initial_messages(args)
    if name == "help":
        print(REPL_HELP, file=sys.stderr)
        return messages
    with_path = {"file": _add_file, "save": _save_session, "load": _load_session}
    if name not in with_path:
        raise PaceError(f"unknown command /{name}; /help lists the commands")
    if not argument:
        raise PaceError(f"usage: /{name} PATH")
    return with_path[name](llm, args, messages, _path_argument(argument))


def _path_argument(argument: str) -> Path:
    if len(argument) > 1 and argument[0] == argument[-1] and argument[0] in "'\"":
        argument = argument[1:-1]  # a path pasted in quotes
    return Path(argument).expanduser()


def _answer(llm, args: argparse.Namespace, messages: list[dict], question: str) -> list[dict]:
    turn = _with_user_message(messages, question)
    reply = _stream_reply(llm, turn, args)  # a ContextOverflowError leaves the conversation as it was
    if args.stats:
        _print_stats(llm)
    return turn + [{"role": "assistant", "content": reply}]


def _with_user_message(messages: list[dict], content: str) -> list[dict]:
    """The conversation with `content` from the user. It joins a user message that has no answer yet
    (a /file): some chat templates refuse two user turns in a row."""
    if messages and messages[-1]["role"] == "user":
        return messages[:-1] + [{"role": "user", "content": f"{messages[-1]['content']}\n\n{content}"}]
    return messages + [{"role": "user", "content": content}]


# Tokens a chat template adds around each message (ChatML's markers and role name take 5): the
# conversation's size is estimated from its messages, rather than rendered through the template.
_MESSAGE_OVERHEAD = 8


def _token_count(llm, text: str) -> int:
    return len(llm.tokenize(text.encode("utf-8"), add_bos=False))


def _conversation_tokens(llm, messages: list[dict]) -> int:
    return sum(_token_count(llm, m["content"]) + _MESSAGE_OVERHEAD for m in messages) + _MESSAGE_OVERHEAD


def _add_file(llm, args: argparse.Namespace, messages: list[dict], path: Path) -> list[dict]:
    if str(path) == "-":  # read_path's name for stdin, which here is the conversation itself
        raise PaceError("/file reads a file; to add one named -, write ./-")
    document = read_path(path)
    content = f"Here is the file {document.name}:\n\n{document.text}"
    needed, in_use = _token_count(llm, content), _conversation_tokens(llm, messages)
    free = llm._capacity - in_use - args.max_tokens
    if needed > free:
        raise ContextOverflowError(
            f"{document.name} takes {needed} tokens, and only {max(free, 0)} of the context's {llm._capacity} are free "
            f"(the conversation takes about {in_use}, the answer up to --max-tokens {args.max_tokens}); not added. "
            "Use a larger --n-ctx, or /reset first"
        )
    print(f"(added {document.name}: {needed} tokens; now ask about it)", file=sys.stderr)
    return _with_user_message(messages, content)


# --- chat sessions: /save and /load ----------------------------------------------------------------
#
# PATH is llama.cpp's own session file (llama_state_save_file: the tokens in the context, the KV
# cache and, in pace-gguf's build, the AMB banks); PATH.json holds the conversation, the identity
# of the model and context it belongs to, and PATH's sha256, so that a damaged, truncated or
# mismatched pair is refused before llama.cpp reads it.

SESSION_FORMAT = "pace-gguf chat session"
SESSION_VERSION = 1


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


def _save_session(llm, args: argparse.Namespace, messages: list[dict], path: Path) -> list[dict]:
    from .convert.pipeline import _publish, _temp_paths  # noqa: PLC0415 (hidden temp files, atomic rename)

    if path.is_dir():
        raise PaceError(f"{path}: is a folder; give a file name, such as {path / 'chat.session'}")
    if not path.parent.is_dir():
        raise PaceError(f"{path}: its folder does not exist")
    tokens = llm.input_ids[:llm.n_tokens].tolist()
    try:
        with _temp_paths(path, 2) as (state_tmp, sidecar_tmp):
            with deferred():  # llama.cpp logs through a Python callback (see interrupts)
                saved = _native_api().llama_state_save_file(
                    llm._ctx.ctx, os.fsencode(state_tmp), (_native_api().llama_token * len(tokens))(*tokens), len(tokens))
            if not saved:
                raise PaceError(f"{path}: llama.cpp could not write the session (disk full?)")
            session = {"format": SESSION_FORMAT, "version": SESSION_VERSION, "identity": _session_identity(llm),
                       "sha256": sha256_file(state_tmp), "messages": messages}
            sidecar_tmp.write_text(json.dumps(session, ensure_ascii=False, indent=1), encoding="utf-8")
            _publish(state_tmp, path)
            _publish(sidecar_tmp, _sidecar(path))
    except OSError as exc:
        raise PaceError(f"{path}: cannot save the session there: {exc.strerror or exc}") from None
    print(f"(saved {len(messages)} messages and {len(tokens)} tokens of context to {path} and {_sidecar(path).name})",
          file=sys.stderr)
    return messages


def _load_session(llm, args: argparse.Namespace, messages: list[dict], path: Path) -> list[dict]:
    """The saved conversation, its context loaded into `llm`. Refused (conversation and context
    unchanged) unless the pair is intact and belongs to this model and context."""
    session = _read_session(path)
    differences = _identity_differences(session["identity"], _session_identity(llm))
    if differences:
        raise PaceError(f"{path}: saved with another setup: {'; '.join(differences)}")
    if sha256_file(path) != session["sha256"]:
        raise PaceError(f"{path}: damaged or incomplete (it does not match {_sidecar(path).name}); not loaded")
    _load_context(llm, path)
    print(f"(loaded {path}: {len(session['messages'])} messages, {llm.n_tokens} tokens of context)", file=sys.stderr)
    return session["messages"]


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
        loaded = api.llama_state_load_file(llm._ctx.ctx, os.fsencode(path), tokens, capacity, ctypes.byref(count))
    if not loaded:
        # llama.cpp may have read part of the state before it failed: empty the context (KV cache
        # and AMB banks); the next answer evaluates the conversation again.
        llm._ctx.kv_cache_clear()
        llm.n_tokens = 0
        reason = amb.last_error() if amb.last_error() != error_before else "it does not match this context"
        raise PaceError(f"{path}: llama.cpp could not load it ({reason}); the conversation is kept, its context will be recomputed")
    llm.input_ids[:count.value] = tokens[:count.value]
    llm.n_tokens = count.value
    llm._requires_eval = True  # the logits of the last token are not part of the session


def _native_api():
    return _native.llama_cpp_module().llama_cpp


def _check_chat_input(args: argparse.Namespace) -> None:
    """What would otherwise fail only after the model is loaded, with a traceback."""
    _check_utf8(args.prompt, "--prompt")
    _check_utf8(args.system, "--system")
    if sys.stdout is None:
        raise PaceError("standard output is closed: there is nowhere to print the answer")
    if args.prompt is None and sys.stdin is None:
        raise PaceError("standard input is closed: give --prompt, or type or pipe in the conversation")


def cmd_chat(args: argparse.Namespace) -> int:
    _check_chat_input(args)
    llm = load_llama(args)
    if args.prompt is not None:
        _stream_reply(llm, _initial_messages(args) + [{"role": "user", "content": args.prompt}], args)
        if args.stats:
            _print_stats(llm)
    else:
        _repl(llm, args)
    return 0


# --- estimate --------------------------------------------------------------------------------------


def cmd_estimate(args: argparse.Namespace) -> int:
    from . import estimate  # noqa: PLC0415
    from .cli_args import pace_changes  # noqa: PLC0415

    if args.model_name and args.model and args.model_name != args.model:
        raise PaceError(f"two models given ({args.model_name} and -m {args.model}): give one")
    name = args.model or args.model_name
    path = registry.resolve_model(name, progress=progress_line)
    result = estimate.estimate(path, args.n_ctx, pace=pace_changes(args), n_gpu_layers=args.n_gpu_layers,
                               model_name=name or registry.DEFAULT_MODEL)
    print(json.dumps(estimate.to_json(result), indent=2) if args.json else estimate.report(result))
    return 0


# --- serve -----------------------------------------------------------------------------------------


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 0..65535, got {text}")
    return value


def cmd_serve(args: argparse.Namespace) -> int:
    from . import server  # noqa: PLC0415 (the optional server extra: imported only to serve)

    if args.model_name and args.model and args.model_name != args.model:
        raise PaceError(f"two models given ({args.model_name} and -m {args.model}): give one")
    args.model = args.model or args.model_name
    name = args.model or registry.DEFAULT_MODEL
    sock = server.listen(args.host, args.port)  # before loading: a busy port is reported at once
    llm = load_llama(args)
    app = server.create_app(llm, name)
    url = server.base_url(sock)
    progress_line(f"serving {name} at {url} (OpenAI API; Ctrl-C stops)")
    print(url, flush=True)  # stdout: the address alone, for scripts (with --port 0 the port is chosen here)
    server.run(app, sock, verbose=args.verbose)
    return 0


# --- argument parsing ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pace-gguf", description="PaceLLM on the llama.cpp / GGUF runtime")
    parser.add_argument("--version", action="version", version=f"pace-gguf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, build id of the loaded library, backends, cache paths")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("pull", help="fetch a registry model into the cache and print its path")
    p.add_argument("name", nargs="?", default=registry.DEFAULT_MODEL,
                   help=f"one of: {', '.join(sorted(registry.MODELS))} (default: {registry.DEFAULT_MODEL})")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("chat", help="chat with a model (one answer with --prompt, else a REPL)")
    add_model_args(p)
    p.add_argument("-p", "--prompt", default=None, help="answer this once and exit")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--temperature", type=non_negative_float, default=0.7)
    p.add_argument("--top-p", type=probability, default=0.95)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--max-tokens", type=positive_int, default=512)
    add_amb_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser(
        "estimate", help="memory a run needs (weights, KV cache, AMB banks, compute) and whether it fits",
        description="The memory `chat` with the same options would need, read from the GGUF header without "
        "loading the weights: one row per component (MiB), and whether the total fits the available RAM (and, "
        "with --n-gpu-layers on a GPU build, the GPU's free memory). Options that only matter to a run "
        "(--threads, --seed) are accepted, so a chat command line can be reused.")
    p.add_argument("model_name", nargs="?", default=None, metavar="MODEL", help="registry name or GGUF path (same as -m)")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the estimate as JSON (bytes)")
    add_amb_args(p, stats=False)
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser(
        "serve", help="OpenAI-compatible HTTP server (llama-cpp-python's), AMB settable per request",
        description="llama-cpp-python's OpenAI-compatible server (/v1/chat/completions, /v1/completions, streaming) "
        "on pace-gguf's runtime. The AMB flags set the server's defaults; a request may carry \"pace\": {...} "
        "(e.g. {\"layers\": [12, 26]}) or true/false for its own. One request is answered at a time; the others wait.")
    p.add_argument("model_name", nargs="?", default=None, metavar="MODEL", help="registry name or GGUF path (same as -m)")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="port to listen on (default 8000; 0: a free one, printed)")
    add_amb_args(p, stats=False)
    p.set_defaults(func=cmd_serve)
    cli_longdoc.register(sub)
    convert_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with termination_raises():  # SIGTERM/SIGHUP unwind like Ctrl-C, so temp files are removed
            return args.func(args)
    except PaceError as exc:
        print(f"pace-gguf: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\npace-gguf: interrupted", file=sys.stderr)  # after the ^C the terminal echoed
        return 130
    except Terminated as exc:
        print(f"\npace-gguf: terminated ({exc})", file=sys.stderr)
        return 128 + exc.signum
    except BrokenPipeError:
        # The reader of the output went away (`pace-gguf chat ... | head`): end quietly, with the
        # status of a Unix tool killed by SIGPIPE. stdout goes to /dev/null so that flushing it
        # at exit does not report the broken pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
