"""What the AMB costs: prompt processing (ppN) and generation (tgN) speed with the AMB off, on 2 layers
and on every layer, each run in a fresh process, configurations interleaved; ratios on/off.

    PYTHONPATH=. .venv/bin/python benchmarks/amb_overhead.py [--models smollm2] [--reps 6]
    PYTHONPATH=. .venv/bin/python benchmarks/amb_overhead.py --n-gpu-layers -1 --prompts 512 8192 --n-gen 128 \
        --models smollm2 qwen2-7b-random   # the GPU benchmark
    PYTHONPATH=. .venv/bin/python benchmarks/amb_overhead.py --composed   # + the AMB composed from ggml ops

A run loads the model into a new process (so no run inherits another's caches, heap or thread pool),
warms it up with a short decode, then times each prompt from an empty context (llama_decode calls of
n_batch tokens) and n_gen greedy tokens after the first prompt (with the AMB on, a filled bank).
--composed adds each "on" configuration again with the AMB composed from standard ggml ops
(PACE_AMB_IMPL=composed: the path of backends without a kernel) and writes amb_overhead_composed.*.
Prompts are random token ids (speed depends on shapes, not on the text). Repetition r runs every
configuration once, in an order rotated by r, so that none always runs first; a ratio compares the
two configurations of the same repetition. Writes benchmarks/results/amb_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import report
from throughput import WARMUP_TOKENS, amb_layers, greedy, rotated, timed

HERE = Path(__file__).resolve()
CONFIGS = ("off", "2 layers", "all layers")  # the first is the reference of the ratios
COMPOSED = ", composed"  # suffix of a configuration run with PACE_AMB_IMPL=composed


# --- one run, in its own process ----------------------------------------------------------------------------------


def one_run(spec: dict) -> dict:
    """Seconds of each prompt from an empty context and of spec["n_gen"] tokens after the first."""
    from pace_gguf import _llama_cpp_compat as compat  # noqa: PLC0415
    from pace_gguf import amb  # noqa: PLC0415
    from pace_gguf._native import llama_cpp_module  # noqa: PLC0415

    llama_cpp = llama_cpp_module()

    if spec["label"].endswith(COMPOSED):
        os.environ["PACE_AMB_IMPL"] = "composed"  # read when the AMB is configured
    llm = llama_cpp.Llama(model_path=spec["model"], verbose=False, **spec["params"])
    if spec["layers"] is not None:
        amb.set_config(compat.context_pointer(llm), amb.PaceConfig(enabled=True, layers=tuple(spec["layers"])))
    prompt = report.random_prompt(max(spec["prompts"]), llm.n_vocab())
    llm.eval(prompt[:WARMUP_TOKENS])  # first decodes touch buffers and pages: not part of any timing
    greedy(llama_cpp, llm, 2)
    seconds = {}
    for i, n in enumerate(spec["prompts"]):
        compat.clear_context(llm)  # empty KV cache and banks
        seconds[f"pp{n}"] = timed(lambda: llm.eval(prompt[:n]))
        if i == 0:
            seconds[f"tg{spec['n_gen']}"] = timed(lambda: greedy(llama_cpp, llm, spec["n_gen"]))
    llm.close()
    return seconds


def run_in_process(spec: dict) -> dict:
    result = subprocess.run([sys.executable, str(HERE), "--one", json.dumps(spec)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"run {spec['label']!r} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- the parent -----------------------------------------------------------------------------------------------------


def bench_model(name: str, args) -> list[dict]:
    from pace_gguf.estimate import read_shape  # noqa: PLC0415  (reads the GGUF header only)

    path = report.model_path(name)
    layers = {k: v for k, v in amb_layers(read_shape(path).n_layer).items() if k in args.configs}
    if args.composed:
        layers.update({k + COMPOSED: v for k, v in list(layers.items()) if v is not None})
    seconds = {label: [] for label in layers}
    for rep in range(args.reps):
        for label in rotated(list(layers), rep):
            spec = {"model": str(path), "label": label, "layers": layers[label], "params": args.params,
                    "prompts": args.prompts, "n_gen": args.n_gen}
            seconds[label].append(run_in_process(spec))
            print(f"{name} rep {rep + 1}/{args.reps} {label}: "
                  + ", ".join(f"{t} {s:.2f} s" for t, s in seconds[label][-1].items()), file=sys.stderr)
    return [row(name, path, label, layers[label], seconds) for label in layers]


def row(name: str, path: Path, label: str, layers, seconds: dict) -> dict:
    """Tokens/s (median over repetitions) and speed relative to "off" in each repetition: median, min, max."""
    tests = list(seconds[label][0])
    mine = {t: [rep[t] for rep in seconds[label]] for t in tests}
    off = {t: [rep[t] for rep in seconds["off"]] for t in tests}
    ratios = {t: [o / m for o, m in zip(off[t], mine[t])] for t in tests}
    return {
        "model": name, "file": path.name, "config": label, "amb_layers": layers,
        "tok_s": {t: int(t[2:]) / statistics.median(mine[t]) for t in tests},
        "vs_off": {t: [statistics.median(r), min(r), max(r)] for t, r in ratios.items()},
        "seconds": mine,
    }


def columns(tests: list[str]) -> dict:
    cols = {"model": lambda r: r["model"], "config": lambda r: r["config"]}
    cols.update({f"{t} tok/s": (lambda r, t=t: f"{r['tok_s'][t]:.1f}") for t in tests})
    cols.update({f"{t} on/off": (lambda r, t=t: "1" if r["config"] == "off" else report.ratio_text(*r["vs_off"][t]))
                 for t in tests})
    return cols


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2"],
                        help=f"short names ({', '.join(report.MODELS)}), qwen2-7b-random (a shape-true random "
                        "Qwen2-7B at Q4_K_M, benchmarks/shape_true.py), registry names or GGUF paths")
    parser.add_argument("--prompts", nargs="+", type=int, default=[1024], help="prompt lengths (default 1024); "
                        "generation follows the first")
    parser.add_argument("--n-gen", type=int, default=64, help="generated tokens (default 64)")
    parser.add_argument("--reps", type=int, default=6, help="repetitions (default 6)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS,
                        help="configurations (default: all; 'off' is always run)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads (default: all cores)")
    parser.add_argument("--n-ubatch", type=int, default=512, help="n_batch and n_ubatch (default 512)")
    parser.add_argument("--n-gpu-layers", type=int, default=0, help="layers offloaded to a GPU (-1: all; default 0)")
    parser.add_argument("--flash-attn", action="store_true", help="flash attention (default off)")
    parser.add_argument("--composed", action="store_true",
                        help="also run each AMB configuration composed from ggml ops (PACE_AMB_IMPL=composed)")
    parser.add_argument("--quick", action="store_true", help="smoke check: a 64-token prompt, 8 tokens, 1 rep")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.n_gen, args.reps = [64], 8, 1
    if "off" not in args.configs:
        args.configs.insert(0, "off")
    n_ctx = max(max(args.prompts), args.prompts[0] + args.n_gen) + WARMUP_TOKENS
    args.params = {"n_ctx": n_ctx, "n_batch": args.n_ubatch, "n_ubatch": args.n_ubatch, "n_threads": args.threads,
                   "n_threads_batch": args.threads, "flash_attn": args.flash_attn, "n_gpu_layers": args.n_gpu_layers}
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(one_run(json.loads(args.one))))
        return 0
    rows = [r for name in args.models for r in bench_model(name, args)]
    tests = list(rows[0]["tok_s"])
    params = {"models": args.models, "prompts": args.prompts, "n_gen": args.n_gen, "reps": args.reps,
              "threads": args.threads, "n_ubatch": args.n_ubatch, "n_gpu_layers": args.n_gpu_layers,
              "flash_attn": args.flash_attn, "prompt_text": "random token ids", "process_per_run": True}
    notes = [f"{tests[-1]}: greedy tokens after the {args.prompts[0]}-token prompt; on/off: speed relative to the AMB "
             f"off in the same repetition, median (min-max) of {args.reps}; every run in a fresh process; "
             f"{args.threads} thread{'s' * (args.threads != 1)}, n_batch = n_ubatch = {args.n_ubatch}, "
             f"n_gpu_layers {args.n_gpu_layers}, flash attention {'on' if args.flash_attn else 'off'}."]
    notes += [f"{r['model']}: 2 layers = {r['amb_layers']}" for r in rows if r["config"] == "2 layers"]
    if args.composed:
        notes.append('"composed": the AMB composed from standard ggml ops (PACE_AMB_IMPL=composed), the path of '
                     "backends without a GGML_OP_AMB kernel; the others use the kernel.")
    report.write_report("amb_overhead_composed" if args.composed else "amb_overhead",
                        "What the AMB costs: speed with the AMB on relative to off", rows, columns(tests), params, notes,
                        args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
