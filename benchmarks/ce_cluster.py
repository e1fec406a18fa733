"""Benchmark CE clustering (pace_gguf.convert.ce.cluster_experts) on 2 threads.

For each gate shape (random weights, fixed seed, K=64) it runs the default method ("auction")
and the spec 3.2 backend-B baseline ("greedy", a sequential per-neuron greedy) for the same
number of iterations, each in a fresh subprocess so that the peak RSS is per run. The peak
includes the interpreter, numpy/torch imports (``rss_before_input_mib``) and the fp32 input
matrix (``input_mib``). Prints a table and writes JSON (default
benchmarks/results/ce_cluster.json). ``--baseline-iters N`` runs both for exactly N iterations.

    python benchmarks/ce_cluster.py [--shapes 1536x576,4864x896,18944x3584] [--json PATH]
"""

from __future__ import annotations

import os

THREADS = 2
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)          # before numpy is imported

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHAPES = "1536x576,4864x896,18944x3584"
NAMES = {(1536, 576): "SmolLM2-135M", (4864, 896): "Qwen2-0.5B", (18944, 3584): "Qwen2-7B"}
TARGET_S = 30.0


def run_one(d_ff: int, d_model: int, k: int, method: str, max_iter: int, tol, seed: int) -> dict:
    """One clustering in this process; returns the measurements."""
    import numpy as np
    try:
        import torch
        torch.set_num_threads(THREADS)
    except ImportError:
        pass
    sys.path.insert(0, str(ROOT))
    from pace_gguf.convert.ce import cluster_experts

    rss_before = _current_rss_mib()              # after imports, before the input exists
    gate = np.random.default_rng(seed).standard_normal((d_ff, d_model), dtype=np.float32)
    extra = {} if tol == "default" else {"tol": tol}
    res = cluster_experts(gate, k, seed=0, max_iter=max_iter, method=method, **extra)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"shape": f"{d_ff}x{d_model}", "d_ff": d_ff, "d_model": d_model, "n_experts": k,
            "method": method, "seconds": round(res.seconds, 3), "iterations": res.iterations,
            "converged": res.converged, "objective": res.objective, "max_iter": max_iter,
            "tol": tol, "peak_rss_mib": round(peak_kib / 1024, 1),
            "rss_before_input_mib": round(rss_before, 1),
            "input_mib": round(gate.nbytes / 2**20, 1), "threads": THREADS}


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def in_subprocess(**kwargs) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps(kwargs)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated d_ffxd_model")
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="seed of the random gate weights")
    p.add_argument("--baseline-iters", type=int, default=None,
                   help="run both methods for exactly this many iterations (tol off)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "ce_cluster.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(**json.loads(args.one))))
        return 0
    rows, load_start = [], os.getloadavg()
    for shape in args.shapes.split(","):
        d_ff, d_model = (int(v) for v in shape.lower().split("x"))
        common = dict(d_ff=d_ff, d_model=d_model, k=args.experts, seed=args.seed)
        if args.baseline_iters:
            iters, tol = args.baseline_iters, None
        else:
            iters, tol = args.max_iter, "default"     # cluster_experts' own stopping rule
        fast = in_subprocess(method="auction", max_iter=iters, tol=tol, **common)
        # The baseline gets the iterations the fast method used (its own stop rule: labels repeat).
        base = in_subprocess(method="greedy", max_iter=fast["iterations"], tol=None, **common)
        for row in (fast, base):
            row["model"] = NAMES.get((d_ff, d_model), "")
            rows.append(row)
            print_row(row, header=len(rows) == 1)
        fast["objective_minus_greedy"] = fast["objective"] - base["objective"]
    summary = {"rows": rows, "threads": THREADS,
               "machine": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "load_avg_at_start": load_start,
               "load_avg_at_end": os.getloadavg(),
               "target_seconds_7b": TARGET_S}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nload average (1/5/15 min) at start {load_start}, at end {summary['load_avg_at_end']}")
    print(f"wrote {args.json}")
    return 0


def print_row(row: dict, header: bool) -> None:
    if header:
        print(f"{'shape':>11} {'model':>13} {'method':>8} {'seconds':>8} {'iters':>6} "
              f"{'objective':>10} {'peak MiB':>9} {'(imports':>9} {'+input)':>8} {'threads':>7}")
    print(f"{row['shape']:>11} {row['model']:>13} {row['method']:>8} {row['seconds']:>8.2f} "
          f"{row['iterations']:>6} {row['objective']:>10.6f} {row['peak_rss_mib']:>9.1f} "
          f"{row['rss_before_input_mib']:>9.1f} {row['input_mib']:>8.1f} {row['threads']:>7}",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
