"""Peak memory of pace-gguf by context size, with the AMB off, on 2 layers and on every layer, next to
the prediction of `pace-gguf estimate`.

    PYTHONPATH=. .venv/bin/python benchmarks/memory.py [--models smollm2 gemma3-270m] [--n-ctx N ...] [--quick]

Each point is a fresh process (so peaks don't mix): pace_gguf.Llama(model, n_ctx=N, pace=...) with
llama-cpp-python's defaults (n_batch = n_ubatch = 512, f16 KV cache, memory-mapped weights) reads
a prompt of --fill (0.9) x N random token ids, then reports its peak resident memory (VmHWM).
The estimate is pace_gguf.estimate.estimate for the same run (the context holding that prompt).
2 layers = pace_gguf.amb.default_layers. Writes benchmarks/results/memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import report

HERE = Path(__file__).resolve()
RESULT_MARK = "RESULT "  # the child's answer line; llama.cpp may print other lines
# Context sizes per model, up to its training context (SmolLM2 8k, Gemma 3 270M 32k).
CONTEXTS = {"smollm2": [2048, 8192], "gemma3-270m": [2048, 8192, 32768]}
OTHER_CONTEXTS = [2048, 8192]  # models named by path or another registry name
QUICK_CONTEXTS = [512]


def child(spec: dict) -> int:
    from pace_gguf import Llama  # noqa: PLC0415

    llm = Llama(model_path=spec["model"], n_ctx=spec["n_ctx"], n_threads=spec["threads"],
                n_threads_batch=spec["threads"], pace=spec["pace"], verbose=False)
    start = time.perf_counter()
    llm.eval(report.random_prompt(spec["tokens"], llm.n_vocab()))
    seconds = time.perf_counter() - start
    result = {"peak_rss_mib": report.peak_rss_mib(), "prefill_s": seconds, "bank_mib": llm.amb_memory_bytes / 2**20}
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


def configurations(n_layer: int) -> dict:
    """label -> Llama's pace= (the same dict goes to the estimate)."""
    from pace_gguf.amb import default_layers  # noqa: PLC0415

    return {"off": {"enabled": False}, "2 layers": {"layers": list(default_layers(n_layer))},
            "all layers": {"layers": list(range(n_layer))}}


def measure(spec: dict) -> dict:
    result = subprocess.run([sys.executable, str(HERE), "--child", json.dumps(spec)], capture_output=True, text=True)
    answers = [line[len(RESULT_MARK):] for line in result.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if result.returncode or not answers:
        raise SystemExit(f"n_ctx {spec['n_ctx']}, pace {spec['pace']} failed:\n{result.stderr[-3000:]}")
    return json.loads(answers[-1])


def bench_model(name: str, contexts: list[int], args) -> list[dict]:
    from pace_gguf.estimate import estimate, read_shape  # noqa: PLC0415

    path = report.model_path(name)
    rows = []
    for n_ctx in contexts:
        tokens = int(args.fill * n_ctx)
        for label, pace in configurations(read_shape(path).n_layer).items():
            spec = {"model": str(path), "n_ctx": n_ctx, "tokens": tokens, "pace": pace, "threads": args.threads}
            predicted = estimate(path, n_ctx, pace=pace, tokens=tokens).total / 2**20
            rows.append({"model": name, "file": path.name, "n_ctx": n_ctx, "tokens": tokens, "config": label,
                         "amb_layers": pace.get("layers"), **measure(spec), "estimate_mib": predicted})
    return rows


def columns() -> dict:
    return {
        "model": lambda r: r["model"], "n_ctx": lambda r: str(r["n_ctx"]), "prompt tokens": lambda r: str(r["tokens"]),
        "AMB": lambda r: r["config"], "peak RSS MiB": lambda r: f"{r['peak_rss_mib']:.0f}",
        "estimate MiB": lambda r: f"{r['estimate_mib']:.0f}",
        "estimate / measured": lambda r: f"{r['estimate_mib'] / r['peak_rss_mib']:.2f}",
        "bank MiB": lambda r: f"{r['bank_mib']:.1f}",
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(CONTEXTS),
                        help=f"short names ({', '.join(report.MODELS)}), registry names or GGUF paths")
    parser.add_argument("--n-ctx", type=int, nargs="+", default=None,
                        help="context sizes for every model (default: "
                        + "; ".join(f"{m} {' '.join(map(str, c))}" for m, c in CONTEXTS.items())
                        + f"; other models {' '.join(map(str, OTHER_CONTEXTS))})")
    parser.add_argument("--fill", type=float, default=0.9, help="prompt length as a fraction of n_ctx (default 0.9)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads (default: all cores)")
    parser.add_argument("--quick", action="store_true", help=f"smoke check: n_ctx {QUICK_CONTEXTS} only")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n_ctx = QUICK_CONTEXTS
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    rows = [r for name in args.models for r in bench_model(name, args.n_ctx or CONTEXTS.get(name, OTHER_CONTEXTS), args)]
    notes = [f"prompt: {args.fill:g} x n_ctx random token ids; llama-cpp-python's defaults otherwise "
             "(n_batch = n_ubatch = 512, f16 KV cache, no flash attention); peak RSS: VmHWM of a fresh process per "
             "row, loading included; estimate: pace_gguf.estimate.estimate of the same run."]
    notes += list(dict.fromkeys(f"{r['model']}: 2 layers = {r['amb_layers']}" for r in rows if r["config"] == "2 layers"))
    params = {"models": args.models, "n_ctx": sorted({r["n_ctx"] for r in rows}), "fill": args.fill,
              "threads": args.threads, "prompt_text": "random token ids"}
    report.write_report("memory", "Peak memory by context size, AMB off and on", rows, columns(), params, notes,
                        args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
