"""Throughput of stock llama.cpp and of pace-gguf with the AMB off, on 2 layers and on every layer:
prompt processing (pp) and generation (tg) speed, measured side by side (interleaved repetitions,
medians, ratios to stock).

    PYTHONPATH=. .venv/bin/python benchmarks/throughput.py [--models smollm2 gemma3-270m] [--reps 3] [--quick]

Stock is llama.cpp built from the same pinned source without pace-gguf's patches
(cpp/build_stock.py). llama-cpp-python binds one libllama per process, so each library gets a
long-lived worker process running this same file (`--worker`): one with LLAMA_CPP_LIB_PATH at the
stock build, one at pace-gguf's. Both read one JSON command per line and answer timings, so both
sides are measured by identical code, with plain llama_cpp.Llama contexts of identical settings.

Per model and repetition, each configuration in turn (the order rotates between repetitions, so
none always runs first): ppN = one prompt of N tokens into an empty context, in n_batch-token
llama_decode calls; tgN = N greedy tokens, one llama_decode each, after the short prompt (with the
AMB on, a filled bank). Prompts are random token ids (speed depends on shapes, not on the text).
2 layers = pace_gguf.amb.default_layers. Writes benchmarks/results/throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import report

HERE = Path(__file__).resolve()
CONFIGS = ("stock", "off", "2 layers", "all layers")  # the first is the reference of the ratios
WARMUP_TOKENS = 32


# --- the worker (runs in its own process, bound to one libllama) ----------------------------------------------


def greedy(llama_cpp, llm, n: int) -> None:
    """n greedy tokens, one llama_decode each, reading only the last token's logits (llama-cpp-python's
    `scores` keeps logits only with logits_all)."""
    import numpy as np  # noqa: PLC0415

    from pace_gguf import _llama_cpp_compat as compat  # noqa: PLC0415  (loads no library)

    n_vocab = llm.n_vocab()
    for _ in range(n):
        last = llama_cpp.llama_get_logits_ith(compat.context_pointer(llm), -1)
        llm.eval([int(np.argmax(np.ctypeslib.as_array(last, shape=(n_vocab,))))])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Bench:
    """The worker's state: contexts by configuration label, on one model."""

    def __init__(self):
        import llama_cpp  # noqa: PLC0415  (binds the libllama of LLAMA_CPP_LIB_PATH)

        from pace_gguf import _llama_cpp_compat as compat  # noqa: PLC0415

        self.llama_cpp, self.compat = llama_cpp, compat
        self.is_pace = hasattr(compat.shared_library(llama_cpp), "llama_pace_version")
        self.contexts, self.prompt = {}, []

    def info(self) -> dict:
        self.llama_cpp.llama_backend_init()
        return {"library": self.compat.shared_library(self.llama_cpp)._name, "pace": self.is_pace,
                "system_info": self.llama_cpp.llama_print_system_info().decode(errors="replace").strip()}

    def load(self, model: str, contexts: dict, params: dict, n_prompt: int) -> dict:
        """One context per label; `contexts`: label -> AMB layers (None: off)."""
        self.close()
        for label, layers in contexts.items():
            llm = self.llama_cpp.Llama(model_path=model, verbose=False, **params)
            if layers is not None:
                from pace_gguf import amb  # noqa: PLC0415  (only in pace-gguf's worker)

                amb.set_config(self.compat.context_pointer(llm), amb.PaceConfig(enabled=True, layers=tuple(layers)))
            self.contexts[label] = llm
        self.prompt = report.random_prompt(n_prompt, llm.n_vocab())
        for label in contexts:  # first decodes touch buffers and pages: not part of any timing
            self.run(label, [WARMUP_TOKENS], 2)
        return {"bank_bytes": {label: self._bank_bytes(llm) for label, llm in self.contexts.items()}}

    def _bank_bytes(self, llm) -> int:
        if not self.is_pace:
            return 0
        from pace_gguf import amb  # noqa: PLC0415

        return amb.memory_size(self.compat.context_pointer(llm))

    def run(self, label: str, prompts: list[int], n_gen: int) -> dict:
        """Seconds of each prompt length from an empty context, and of n_gen tokens after the first."""
        llm, seconds, generation = self.contexts[label], {}, {}
        for i, n in enumerate(prompts):
            self.compat.clear_context(llm)  # empty KV cache and banks
            seconds[f"pp{n}"] = timed(lambda: llm.eval(self.prompt[:n]))
            if i == 0:
                generation[f"tg{n_gen}"] = timed(lambda: greedy(self.llama_cpp, llm, n_gen))
        return {**seconds, **generation}

    def close(self) -> None:
        for llm in self.contexts.values():
            llm.close()
        self.contexts = {}


def worker() -> int:
    """Answer one JSON line per command line on stdin: {"op": "info" | "load" | "run" | "quit", ...}."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything native code prints goes to stderr, not into the replies
    bench = Bench()
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        if op == "quit":
            break
        try:
            reply = getattr(bench, op)(**command)
        except Exception as exc:  # noqa: BLE001  (the parent reports it)
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
    bench.close()
    return 0


# --- the parent -------------------------------------------------------------------------------------------------


class Worker:
    """A worker process bound to the libllama in lib_dir."""

    def __init__(self, name: str, lib_dir: str):
        self.name, self.log = name, tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, str(HERE), "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=dict(os.environ, LLAMA_CPP_LIB_PATH=lib_dir))

    def ask(self, op: str, **args):
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        reply = json.loads(line) if line else {"error": "worker exited"}
        if "error" in reply:
            self.log.seek(0)
            raise SystemExit(f"{self.name} worker, {op}: {reply['error']}\n{self.log.read()[-2000:]}")
        return reply

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # a worker that died has told its story already
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def stock_lib_dir() -> str:
    """The stock build's library folder (built on first use, minutes; then about a second)."""
    result = subprocess.run([sys.executable, str(HERE.parents[1] / "cpp" / "build_stock.py")],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"cpp/build_stock.py failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


def amb_layers(n_layer: int) -> dict:
    """pace-gguf's configurations: label -> AMB layers (None: off)."""
    from pace_gguf.amb import default_layers  # noqa: PLC0415

    return {"off": None, "2 layers": list(default_layers(n_layer)), "all layers": list(range(n_layer))}


def rotated(items, k: int) -> list:
    k %= len(items)
    return list(items[k:]) + list(items[:k])


def bench_model(name: str, workers: dict, args) -> list[dict]:
    from pace_gguf.estimate import read_shape  # noqa: PLC0415  (reads the GGUF header only)

    path = report.model_path(name)
    layers = {"stock": None, **amb_layers(read_shape(path).n_layer)}
    banks = {}
    for side, labels in (("stock", CONFIGS[:1]), ("ours", CONFIGS[1:])):
        reply = workers[side].ask("load", model=str(path), contexts={k: layers[k] for k in labels},
                                  params=args.params, n_prompt=max(args.prompts))
        banks.update(reply["bank_bytes"])
    seconds = {label: [] for label in CONFIGS}
    for rep in range(args.reps):
        for label in rotated(CONFIGS, rep):
            side = "stock" if label == "stock" else "ours"
            seconds[label].append(workers[side].ask("run", label=label, prompts=args.prompts, n_gen=args.n_gen))
    return [row(name, path, label, layers[label], seconds, banks[label]) for label in CONFIGS]


def row(name: str, path: Path, label: str, layers, seconds: dict, bank_bytes: int) -> dict:
    """Tokens/s (median over repetitions) and speed relative to stock within each repetition
    (adjacent in time, so both share the machine's load): median, min, max."""
    tests = list(seconds[label][0])
    per_test = {t: [rep[t] for rep in seconds[label]] for t in tests}
    stock = {t: [rep[t] for rep in seconds["stock"]] for t in tests}
    ratios = {t: [s / c for s, c in zip(stock[t], per_test[t])] for t in tests}
    return {
        "model": name, "file": path.name, "config": label, "amb_layers": layers,
        "tok_s": {t: int(t[2:]) / statistics.median(per_test[t]) for t in tests},
        "vs_stock": {t: [statistics.median(r), min(r), max(r)] for t, r in ratios.items()},
        "seconds": per_test, "bank_mib": bank_bytes / 2**20,
    }


def columns(tests: list[str]) -> dict:
    cols = {"model": lambda r: r["model"], "config": lambda r: r["config"]}
    cols.update({f"{t} tok/s": (lambda r, t=t: f"{r['tok_s'][t]:.1f}") for t in tests})
    cols.update({f"{t} vs stock": (lambda r, t=t: "1" if r["config"] == "stock" else report.ratio_text(*r["vs_stock"][t]))
                 for t in tests})
    cols["bank MiB"] = lambda r: "" if r["config"] == "stock" else f"{r['bank_mib']:.1f}"
    return cols


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "gemma3-270m"],
                        help=f"short names ({', '.join(report.MODELS)}), registry names or GGUF paths")
    parser.add_argument("--prompts", nargs=2, type=int, default=[512, 4096], metavar=("SHORT", "LONG"),
                        help="prompt lengths (default 512 4096); generation follows the short one")
    parser.add_argument("--n-gen", type=int, default=128, help="generated tokens (default 128)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads (default: all cores)")
    parser.add_argument("--n-ubatch", type=int, default=512, help="n_batch and n_ubatch (default 512)")
    parser.add_argument("--flash-attn", action="store_true", help="flash attention (default off, "
                        "llama-cpp-python's default)")
    parser.add_argument("--quick", action="store_true", help="smoke check: 64/256-token prompts, 16 tokens, 1 rep")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.n_gen, args.reps = [64, 256], 16, 1
    # one context size for every configuration: the long prompt, or the short one and the generation
    n_ctx = max(args.prompts[1], args.prompts[0] + args.n_gen) + WARMUP_TOKENS
    args.params = {"n_ctx": n_ctx, "n_batch": args.n_ubatch, "n_ubatch": args.n_ubatch, "n_threads": args.threads,
                   "n_threads_batch": args.threads, "flash_attn": args.flash_attn}
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker()
    from pace_gguf.paths import lib_dir  # noqa: PLC0415

    workers = {"stock": Worker("stock", stock_lib_dir()), "ours": Worker("pace-gguf", str(lib_dir()))}
    try:
        info = {side: w.ask("info") for side, w in workers.items()}
        if info["stock"]["pace"] or not info["ours"]["pace"]:
            raise SystemExit(f"wrong libraries bound: {info}")
        rows = [r for name in args.models for r in bench_model(name, workers, args)]
    finally:
        for w in workers.values():
            w.close()
    tests = list(rows[0]["tok_s"])
    params = {"models": args.models, "prompts": args.prompts, "n_gen": args.n_gen, "reps": args.reps,
              "threads": args.threads, "n_ctx": args.params["n_ctx"], "n_batch": args.n_ubatch,
              "n_ubatch": args.n_ubatch, "flash_attn": args.flash_attn, "prompt_text": "random token ids",
              "stock_library": info["stock"]["library"], "stock_cpu_features": info["stock"]["system_info"],
              "library": info["ours"]["library"]}
    notes = [f"{tests[-1]}: greedy tokens after the {args.prompts[0]}-token prompt; ratios: speed relative to stock "
             f"in the same repetition, median (min-max) of {args.reps}; 2 layers: pace_gguf.amb.default_layers; "
             f"{args.threads} thread{'s' * (args.threads != 1)}, n_batch = n_ubatch = {args.n_ubatch}, flash attention "
             f"{'on' if args.flash_attn else 'off'}, n_ctx {args.params['n_ctx']} for every configuration."]
    notes += [f"{r['model']}: 2 layers = {r['amb_layers']}" for r in rows if r["config"] == "2 layers"]
    report.write_report("throughput", "Throughput: stock llama.cpp vs pace-gguf (AMB off, 2 layers, all layers)",
                        rows, columns(tests), params, notes, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
