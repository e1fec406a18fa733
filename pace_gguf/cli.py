"""The `pace-gguf` command line: info, pull, chat (with the AMB flags), convert and reorder.

Every user-fixable problem (PaceError) is printed as one `pace-gguf: error: ...` line with exit
status 1; argparse reports usage errors with status 2. Ctrl-C ends with status 130, SIGTERM and
SIGHUP with 128 + the signal number (temp files removed either way), and a reader that closes
the output pipe early with 141, quietly, like a Unix tool killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from . import __version__, registry
from .cli_args import add_amb_args, add_model_args, load_llama, non_negative_float, positive_int, probability, progress_line
from .convert import cli as convert_cli
from .errors import PaceError
from .interrupts import Terminated, termination_raises


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


def _repl(llm, args: argparse.Namespace) -> None:
    print("pace-gguf chat: /reset clears the conversation, /exit (or Ctrl-D) quits.", file=sys.stderr)
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
        if line == "/reset":
            messages = _initial_messages(args)
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        messages.append({"role": "assistant", "content": _stream_reply(llm, messages, args)})
        if args.stats:
            _print_stats(llm)


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
