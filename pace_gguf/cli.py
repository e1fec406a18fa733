"""The `pace-gguf` command line: info, pull, chat (with the AMB flags), convert and reorder.

Every user-fixable problem (PaceError) is printed as one `pace-gguf: error: ...` line with exit
status 1; argparse reports usage errors with status 2. Ctrl-C ends with status 130, SIGTERM and
SIGHUP with 128 + the signal number (temp files removed either way), and a reader that closes
the output pipe early with 141, quietly, like a Unix tool killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from pathlib import Path

from . import __version__, registry
from .cli_args import (add_amb_args, add_model_args, add_model_argument, load_llama, model_name, non_negative_float,
                       port_number, positive_int, probability, progress_line)
from . import chat_session, cli_longdoc
from .convert import cli as convert_cli
from .eval import cli as eval_cli
from .documents import read_path
from .errors import ContextOverflowError, PaceError
from .interrupts import Terminated, termination_raises


# --- info ------------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from . import _native, paths, rpc  # noqa: PLC0415

    llama_cpp = _native.llama_cpp_module()
    backends = _native.compiled_backends()  # before any server adds its own registry
    if args.rpc:
        rpc.add_servers(args.rpc)
    rows = [
        ("pace-gguf", __version__),
        ("llama-cpp-python", llama_cpp.__version__),
        ("build id", _native.build_id()),
        ("library", _native.loaded_library_path()),
        ("backends", ", ".join(backends)),
        ("devices", ""),
        *((f"  {d['name']}", device_line(d)) for d in _native.devices()),
        # llama_print_system_info(): the instruction sets this ggml was compiled for and uses
        ("cpu features", _native.system_info()),
        ("cache", str(paths.cache_dir())),
        ("models", str(paths.models_dir())),
        ("default model", registry.DEFAULT_MODEL),
        ("registry models", ", ".join(sorted(registry.MODELS))),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}".rstrip())
    return 0


def device_line(device: dict) -> str:
    """One device for `info`: what it is, and where an AMB layer placed on it runs its op."""
    memory = f", {device['memory_total'] / 2**30:.1f} GiB" if device["memory_total"] else ""
    where = {"kernel": "runs here", "composed": "runs here, composed from ggml ops",
             "cpu": "runs on the CPU (bank in host memory)"}[device["amb"]]
    return f"{device['type']}, {device['description']}{memory}; AMB {where}"


# --- rpc-server ------------------------------------------------------------------------------------


def cmd_rpc_server(args: argparse.Namespace) -> int:
    from . import rpc  # noqa: PLC0415

    rpc.serve(args.host, args.port, args.threads, args.cache, on_start=lambda: progress_line(
        f"rpc-server on {args.host}:{args.port} (llama.cpp's rpc-server on pace-gguf's ggml; Ctrl-C stops)"))
    return 1  # unreachable: serve() replaces this process or raises


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


# /save and /load: the session files are pace_gguf.chat_session's; the REPL prints what happened

def _save_session(llm, args: argparse.Namespace, messages: list[dict], path: Path) -> list[dict]:
    print(f"({chat_session.save_session(llm, path, messages)})", file=sys.stderr)
    return messages


def _load_session(llm, args: argparse.Namespace, messages: list[dict], path: Path) -> list[dict]:
    loaded = chat_session.load_session(llm, path)
    print(f"(loaded {path}: {len(loaded)} messages, {llm.n_tokens} tokens of context)", file=sys.stderr)
    return loaded


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

    name = model_name(args) or registry.DEFAULT_MODEL
    registry.resolve_model(name, progress=progress_line)  # a download says so
    if args.rpc:  # the servers' memory counts as a GPU's, as llama.cpp places layers on them
        from . import rpc  # noqa: PLC0415

        rpc.add_servers(args.rpc)
    result = estimate.estimate(name, args.n_ctx, pace=pace_changes(args), n_gpu_layers=args.n_gpu_layers)
    print(json.dumps(estimate.to_json(result), indent=2) if args.json else estimate.report(result))
    return 0


# --- serve -----------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from . import server  # noqa: PLC0415 (the optional server extra: imported only to serve)

    args.model = model_name(args)
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

    p = sub.add_parser("info", help="versions, build id of the loaded library, backends and devices (and whether "
                       "the AMB runs on each), cache paths")
    p.add_argument("--rpc", default=None, metavar="HOST:PORT,...", help="list these `pace-gguf rpc-server`s' devices too")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "rpc-server", help="serve this machine's CPU to other machines' pace-gguf (llama.cpp's RPC backend)",
        description="Runs llama.cpp's rpc-server built on pace-gguf's ggml, whose CPU backend runs the AMB: "
        "another machine's `pace-gguf chat --rpc HOST:PORT --n-gpu-layers N` places layers here, AMB banks "
        "included. The protocol has no authentication or encryption: keep it on 127.0.0.1 or a private network.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=50052, help="port (default 50052, llama.cpp's)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: half the cores)")
    p.add_argument("--cache", action="store_true", help="cache received tensors on disk (llama.cpp's --cache)")
    p.set_defaults(func=cmd_rpc_server)

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
    add_model_argument(p)
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the estimate as JSON (bytes)")
    add_amb_args(p, stats=False)
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser(
        "serve", help="OpenAI-compatible HTTP server (llama-cpp-python's), AMB settable per request",
        description="llama-cpp-python's OpenAI-compatible server (/v1/chat/completions, /v1/completions, streaming) "
        "on pace-gguf's runtime. The AMB flags set the server's defaults; a request may carry \"pace\": {...} "
        "(e.g. {\"layers\": [12, 26]}) or true/false for its own. One request is answered at a time; the others wait.")
    add_model_argument(p)
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="port to listen on (default 8000; 0: a free one, printed)")
    add_amb_args(p, stats=False)
    p.set_defaults(func=cmd_serve)
    cli_longdoc.register(sub)
    eval_cli.register(sub)
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
