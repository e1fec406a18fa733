"""Does CE reordering change quantization error? Perplexity and KL divergence on real weights.

SmolLM2-135M-Instruct (the default model: a Q4_1 GGUF from pace_gguf.registry.pull()) is
dequantized to an F16 GGUF by llama.cpp, CE-reordered (64 experts) as F16, and both the plain and
the CE F16 are quantized to Q8_0 and Q4_K_M with llama.cpp's quantize API (pace_gguf.convert).
llama.cpp's own llama-perplexity (stock, pinned source, built by cpp/build_tools.py) measures
them: the F16 model's logits on the first N chunks of a text are saved (--kl-divergence-base),
then each quantized model gets perplexity, KL divergence KL(P_F16 || P_model) per token and how
often its top token is the F16 model's (--kl-divergence), as llama-perplexity prints them.

CAVEAT, printed with the results: the F16 reference is the dequantized Q4_1 release, so every
tensor already lies on a 4-bit grid of 32-element blocks aligned with the ORIGINAL column order.
Without CE, re-quantization to Q8_0/Q4_K_M meets those same block boundaries; CE moves ffn_down's
columns across blocks. This favours "no CE" and is not a property of a real F16 checkpoint.

    python benchmarks/ce_quant_quality.py --text FILE [--chunks 16] [--ctx 512] [--json PATH]

FILE: any long plain text, e.g. tinyshakespeare.txt from the evaluation data (../shared/data).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "cpp"))
from build_tools import build_tools  # noqa: E402

import report  # noqa: E402  (benchmarks/report.py)

QUANTS = ("Q8_0", "Q4_K_M")
EXPERTS = 64
# llama-perplexity's summary lines (tools/perplexity/perplexity.cpp) -> result key; a "± e" after the
# number goes to <key>_se
SUMMARY = {"Mean PPL(Q)": "ppl", "Mean    KLD": "kld_mean", "99.0%   KLD": "kld_p99", "Same top p": "same_top"}


def make_models(work: Path, threads: int) -> dict[str, Path]:
    from pace_gguf.convert.pipeline import ConvertOptions, convert
    from pace_gguf.convert.quantize import quantize
    from pace_gguf.registry import pull

    src = pull()
    f16 = work / "smollm2-f16.gguf"
    t0 = time.perf_counter()
    quantize(src, f16, "F16", allow_requantize=True, nthread=threads, show_progress=False)
    print(f"dequantized {src.name} -> F16 in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    ce_f16 = work / "smollm2-f16-ce.gguf"
    s = convert(f16, ce_f16, ConvertOptions(quant="F16", experts=EXPERTS, progress=False, threads=threads))
    print(f"CE (K={EXPERTS}) on F16 in {s.seconds:.1f} s", file=sys.stderr)
    models = {"F16": f16}
    for q in QUANTS:
        for tag, base in (("", f16), ("+CE", ce_f16)):
            out = work / f"smollm2-{q}{tag}.gguf"
            # experts=0: quantize as is (the CE file keeps its pace.ce.* keys and its order)
            convert(base, out, ConvertOptions(quant=q, experts=0, progress=False, threads=threads))
            models[f"{q}{tag}"] = out
    return models


def perplexity(tool: Path, model: Path, args: list[str], threads: int) -> str:
    cmd = [str(tool), "-m", str(model), "-t", str(threads), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return done.stdout + done.stderr


def parse_summary(log: str) -> dict:
    """The KL-divergence summary llama-perplexity prints, as numbers (percentages as fractions)."""
    row = {}
    for label, key in SUMMARY.items():
        match = re.search(re.escape(label) + r"\s*:\s*([-\d.]+)(?:\s*±\s*([-\d.]+))?", log)
        if match is None:
            raise SystemExit(f"llama-perplexity printed no '{label}' line")
        scale = 0.01 if key == "same_top" else 1.0
        row[key] = float(match.group(1)) * scale
        if match.group(2) is not None:
            row[key + "_se"] = float(match.group(2)) * scale
    return row


def evaluate(models: dict[str, Path], text: Path, n_ctx: int, n_chunks: int, threads: int, work: Path) -> dict:
    tool = build_tools(["llama-perplexity"])[0]
    base = work / "f16.kld"
    common = ["-f", str(text), "-c", str(n_ctx), "--chunks", str(n_chunks)]
    perplexity(tool, models["F16"], [*common, "--kl-divergence-base", str(base)], threads)
    rows = []
    for name, path in models.items():
        if name != "F16":
            log = perplexity(tool, path, [*common, "--kl-divergence-base", str(base), "--kl-divergence"], threads)
            rows.append({"model": name, **parse_summary(log)})
            print(f"{name}: done", file=sys.stderr, flush=True)
    by_name = {r["model"]: r for r in rows}
    pairs = [{"quant": q, "kld_ratio_ce_over_plain": by_name[f"{q}+CE"]["kld_mean"] / by_name[q]["kld_mean"],
              "kld_ce_minus_plain": by_name[f"{q}+CE"]["kld_mean"] - by_name[q]["kld_mean"],
              # the two means come from the same tokens, so this (independent errors) is an upper bound
              "kld_diff_se_bound": (by_name[f"{q}+CE"]["kld_mean_se"] ** 2 + by_name[q]["kld_mean_se"] ** 2) ** 0.5}
             for q in QUANTS]
    return {"rows": rows, "pairs": pairs, "n_chunks": n_chunks, "n_ctx": n_ctx, "tool": "llama-perplexity (stock, pinned)"}


CAVEAT = ("the F16 reference is the dequantized Q4_1 release: its weights sit on 32-element blocks aligned "
          "with the original column order, which favours re-quantization without CE")
COLUMNS = {
    "model": lambda r: r["model"],
    "perplexity": lambda r: f"{r['ppl']:.3f} ± {r['ppl_se']:.3f}",
    "mean KLD vs F16": lambda r: f"{r['kld_mean']:.5f} ± {r['kld_mean_se']:.5f}",
    "KLD p99": lambda r: f"{r['kld_p99']:.4f}",
    "same top token": lambda r: f"{100 * r['same_top']:.1f}%",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text", type=Path, required=True, help="a long plain text (the perplexity corpus)")
    args = ap.parse_args()
    if not args.text.is_file():
        ap.error(f"--text {args.text}: no such file")
    with tempfile.TemporaryDirectory(prefix="ce-quant-") as tmp:
        models = make_models(Path(tmp), args.threads)
        t0 = time.perf_counter()
        res = evaluate(models, args.text, args.ctx, args.chunks, args.threads, Path(tmp))
    notes = [f"{p['quant']}: KLD(CE) - KLD(no CE) = {p['kld_ce_minus_plain']:+.5f} (± at most "
             f"{p['kld_diff_se_bound']:.5f}), ratio CE/no CE {p['kld_ratio_ce_over_plain']:.3f}" for p in res["pairs"]]
    notes += [f"{res['n_chunks']} chunks x {res['n_ctx']} tokens of {args.text.name}, measured by llama-perplexity "
              "(stock, pinned source) against the F16 model's logits", f"caveat: {CAVEAT}"]
    params = {"model": "SmolLM2-135M-Instruct (registry Q4_1, dequantized to F16)", "experts": EXPERTS,
              "text": args.text.name, "n_chunks": res["n_chunks"], "n_ctx": res["n_ctx"], "threads": args.threads,
              "pairs": res["pairs"], "eval_seconds": round(time.perf_counter() - t0, 1), "caveat": CAVEAT}
    report.write_report("ce_quant_quality", "CE and quantization error (SmolLM2-135M)", res["rows"], COLUMNS, params,
                        notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
