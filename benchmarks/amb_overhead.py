"""Cost of the Activation Memory Bank: prompt processing and generation speed with AMB off, on 2
layers and on every layer, measured side by side in one run (interleaved repetitions, median).

    .venv/bin/python benchmarks/amb_overhead.py [--models smollm2 qwen2-0.5b-shape] [--reps 5]

Models: the default SmolLM2-135M-Instruct (Q4_1) and a random-weight model with Qwen2-0.5B shapes
(F16 GGUF, generated once into the cache: throughput depends on shapes, not on weight values).
Prints a table and writes benchmarks/results/amb_overhead.json. Machines here are shared and noisy:
read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from pace_gguf import Llama
from pace_gguf._native import llama_cpp_module
from pace_gguf.paths import cache_dir
from pace_gguf.registry import DEFAULT_MODEL, pull

RESULTS = Path(__file__).resolve().parent / "results" / "amb_overhead.json"
QWEN2_05B_SHAPE = dict(hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2)


def model_path(name: str) -> Path:
    if name == "smollm2":
        return pull(DEFAULT_MODEL)
    if name == "qwen2-0.5b-shape":
        from pace_gguf.convert.tiny import tiny_gguf  # needs torch/transformers: only for this model

        folder = cache_dir() / "bench" / "qwen2-0.5b-shape"
        existing = sorted(folder.glob("*.gguf"))
        return existing[0] if existing else tiny_gguf("qwen2", folder, outtype="f16", **QWEN2_05B_SHAPE)
    raise SystemExit(f"unknown model {name!r}")


def configurations(n_layer: int) -> dict[str, dict | None]:
    mid = n_layer // 2
    return {"off": None, "2 layers": {"layers": (mid - 1, n_layer - 3)}, "all layers": {"layers": tuple(range(n_layer))}}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def generate(llm: Llama, n: int) -> None:
    """Greedy decoding, one token per llama_decode, reading only the last token's logits
    (llama-cpp-python's `scores` keeps just n_batch rows unless logits_all is set)."""
    lc = llama_cpp_module().llama_cpp
    for _ in range(n):
        last = np.ctypeslib.as_array(lc.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))
        llm.eval([int(np.argmax(last))])


def bench_model(name: str, n_prompt: int, n_ubatch: int, n_gen: int, reps: int, threads: int) -> list[dict]:
    path = model_path(name)
    probe = Llama(model_path=str(path), n_ctx=64, verbose=False)
    n_layer = int(probe.metadata[f"{probe.metadata['general.architecture']}.block_count"])
    rng = np.random.default_rng(0)
    prompt = rng.integers(100, min(probe.n_vocab(), 20000), n_prompt).tolist()
    del probe
    llms = {
        label: Llama(model_path=str(path), n_ctx=n_prompt + n_gen + 8, n_batch=n_prompt, n_ubatch=n_ubatch,
                     n_threads=threads, n_threads_batch=threads, verbose=False, pace=pace)
        for label, pace in configurations(n_layer).items()
    }
    times = {label: {"pp": [], "tg": []} for label in llms}
    labels = list(llms)
    for rep in range(reps + 1):  # rep 0 warms up caches and is discarded
        # rotate the order each repetition, so no configuration always runs first or last
        for label in labels[rep % len(labels):] + labels[: rep % len(labels)]:
            llm = llms[label]
            llm.reset()
            pp = timed(lambda: llm.eval(prompt))
            tg = timed(lambda: generate(llm, n_gen))
            if rep:
                times[label]["pp"].append(pp)
                times[label]["tg"].append(tg)
    rows = []
    for label, llm in llms.items():
        pp, tg = statistics.median(times[label]["pp"]), statistics.median(times[label]["tg"])
        # Speed relative to AMB off within the same repetition (adjacent in time, so they share the
        # machine's load), then the median and spread over repetitions.
        pp_ratios = [off / t for off, t in zip(times["off"]["pp"], times[label]["pp"])]
        tg_ratios = [off / t for off, t in zip(times["off"]["tg"], times[label]["tg"])]
        rows.append({
            "model": name, "amb": label, "layers": list(llm.pace.layers),
            "pp_tok_s": n_prompt / pp, "tg_tok_s": n_gen / tg,
            "pp_ratio": statistics.median(pp_ratios), "tg_ratio": statistics.median(tg_ratios),
            "pp_ratio_range": [min(pp_ratios), max(pp_ratios)], "tg_ratio_range": [min(tg_ratios), max(tg_ratios)],
            "bank_mib": llm.amb_memory_bytes / 2**20,
            "pp_s": times[label]["pp"], "tg_s": times[label]["tg"],
        })
    return rows


def print_table(rows: list[dict]) -> None:
    head = (f"{'model':<18} {'AMB':<11} {'pp tok/s':>9} {'pp vs off (min-max)':>20} "
            f"{'tg tok/s':>9} {'tg vs off (min-max)':>20} {'bank MiB':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        pp_span = "{:.3f} ({:.2f}-{:.2f})".format(r["pp_ratio"], *r["pp_ratio_range"])
        tg_span = "{:.3f} ({:.2f}-{:.2f})".format(r["tg_ratio"], *r["tg_ratio_range"])
        print(f"{r['model']:<18} {r['amb']:<11} {r['pp_tok_s']:>9.1f} {pp_span:>20} "
              f"{r['tg_tok_s']:>9.1f} {tg_span:>20} {r['bank_mib']:>9.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "qwen2-0.5b-shape"])
    parser.add_argument("--n-prompt", type=int, default=1024)
    parser.add_argument("--n-ubatch", type=int, default=256,
                        help="prompt ubatch: all but the first read a bank filled by the earlier ones")
    parser.add_argument("--n-gen", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    rows = [row for name in args.models for row in bench_model(name, args.n_prompt, args.n_ubatch, args.n_gen, args.reps, args.threads)]
    print_table(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
            "n_prompt": args.n_prompt, "n_ubatch": args.n_ubatch, "n_gen": args.n_gen, "reps": args.reps}
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
