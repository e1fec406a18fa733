"""Cost of the `stream` strategy: reading speed of one document read `direct` (the whole text in a
context that holds it) and `stream` (a small window that evicts old positions, the AMB banks kept),
AMB off and on, measured side by side in one run (interleaved repetitions, median).

    .venv/bin/python benchmarks/stream_reading.py [--tokens 6000] [--window-ctx 2048] [--reps 3]

Reading only: each run generates one token, so the numbers are prefill tokens per second (the
evictions' K-shifts included). The text is generated filler (no test data needed). Prints a table
and writes benchmarks/results/stream_reading.json. Read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
from pathlib import Path

import report
from pace_gguf import Llama, machine
from pace_gguf.registry import DEFAULT_MODEL, pull

RESULTS = Path(__file__).resolve().parent / "results" / "stream_reading.json"
WORDS = ("the a river town market morning people walked along old stone bridge while merchants sold bread fish "
         "and cloth under bright sky children played near water farmers carried baskets").split()
AMB_LAYERS = (12, 26)


def filler(n_paragraphs: int) -> str:
    rng = random.Random(0)
    sentence = lambda: " ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "."  # noqa: E731
    return "\n\n".join(" ".join(sentence() for _ in range(5)) for _ in range(n_paragraphs))


def read_once(llm: Llama, text: str, strategy: str, amb: bool) -> dict:
    llm.configure_pace({"layers": AMB_LAYERS} if amb else False)
    result = llm.summarize(text, strategy=strategy, max_tokens=1)
    return {"tokens_read": result.tokens_read, "seconds": result.prefill.seconds,
            "tokens_per_second": result.prefill.tokens_per_second, "evictions": result.evictions}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=6000, help="document length (approximate)")
    parser.add_argument("--window-ctx", type=int, default=2048, help="n_ctx of the stream runs")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    model = str(pull(DEFAULT_MODEL))
    text = filler(args.tokens // 68)
    direct = Llama(model_path=model, n_ctx=args.tokens + 1024, n_threads=args.threads, verbose=False)
    stream = Llama(model_path=model, n_ctx=args.window_ctx, n_threads=args.threads, verbose=False)
    setups = {("direct", False): direct, ("direct", True): direct, ("stream", False): stream, ("stream", True): stream}
    runs: dict = {key: [] for key in setups}
    for _ in range(args.reps):
        for (strategy, amb), llm in setups.items():
            runs[(strategy, amb)].append(read_once(llm, text, strategy, amb))

    base = statistics.median(r["tokens_per_second"] for r in runs[("direct", False)])
    rows = []
    for (strategy, amb), results in runs.items():
        speed = statistics.median(r["tokens_per_second"] for r in results)
        ratios = [r["tokens_per_second"] / d["tokens_per_second"] for r, d in zip(results, runs[("direct", False)])]
        rows.append({"strategy": strategy, "amb": amb, "n_ctx": setups[(strategy, amb)].n_ctx(),
                     "tokens_read": results[0]["tokens_read"], "evictions": results[0]["evictions"],
                     "tokens_per_second": speed, "relative_to_direct_amb_off": statistics.median(ratios),
                     "relative_range": [min(ratios), max(ratios)], "runs": results})

    print(f"{'strategy':<8} {'AMB':<4} {'n_ctx':>6} {'read':>6} {'evictions':>9} {'tok/s':>8} {'vs direct':>10}")
    for r in rows:
        lo, hi = r["relative_range"]
        print(f"{r['strategy']:<8} {'on' if r['amb'] else 'off':<4} {r['n_ctx']:>6} {r['tokens_read']:>6} "
              f"{r['evictions']:>9} {r['tokens_per_second']:>8.1f} {r['relative_to_direct_amb_off']:>6.3f} "
              f"({lo:.2f}-{hi:.2f})")
    meta = {**machine.describe(), "model": DEFAULT_MODEL, "threads": args.threads, "reps": args.reps,
            "direct_amb_off_tokens_per_second": base, "amb_layers": list(AMB_LAYERS), "command": report.command_line()}
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
