"""Does CE reordering change quantization error? Perplexity and KL divergence on real weights.

SmolLM2-135M-Instruct (the default model: a Q4_1 GGUF from pace_gguf.registry.pull()) is
dequantized to an F16 GGUF by llama.cpp, CE-reordered (64 experts) as F16, and both the plain and
the CE F16 are quantized to Q8_0 and Q4_K_M with llama.cpp's quantize API (pace_gguf.convert).
Each model is run by pace_gguf.Llama (AMB off) on the first N chunks of a public-domain text
(tinyshakespeare), scored like llama-perplexity (each chunk of n_ctx tokens starts with BOS; the
second half of the chunk is scored). Reported per model: perplexity, mean KL divergence
KL(P_F16 || P_model) per scored token, and how often the top token equals the F16 model's; for CE
vs no CE the paired per-token KLD difference with its standard error (tokens are correlated, so
the error bars are optimistic).

CAVEAT, printed with the results: the F16 reference is the dequantized Q4_1 release, so every
tensor already lies on a 4-bit grid of 32-element blocks aligned with the ORIGINAL column order.
Without CE, re-quantization to Q8_0/Q4_K_M meets those same block boundaries; CE moves ffn_down's
columns across blocks. This favours "no CE" and is not a property of a real F16 checkpoint.

    python benchmarks/ce_quant_quality.py [--chunks 16] [--ctx 512] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEXT = Path("/work/shared/data/haystack/tinyshakespeare.txt")
QUANTS = ("Q8_0", "Q4_K_M")
EXPERTS = 64


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


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


def evaluate(models: dict[str, Path], text: str, n_ctx: int, n_chunks: int, threads: int) -> dict:
    from pace_gguf import Llama

    llms = {name: Llama(model_path=str(p), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
                        n_threads=threads, seed=0) for name, p in models.items()}
    ref = llms["F16"]
    tokens = ref.tokenize(text.encode(), add_bos=False, special=False)
    bos = ref.token_bos()
    n_chunks = min(n_chunks, len(tokens) // n_ctx)
    first = n_ctx // 2
    nll = {name: [] for name in llms}
    kld = {name: [] for name in llms if name != "F16"}
    top = {name: [] for name in llms if name != "F16"}
    for c in range(n_chunks):
        chunk = tokens[c * n_ctx:(c + 1) * n_ctx]
        chunk = [bos] + chunk[1:]
        targets = np.array(chunk[first + 1:])
        logp = {}
        for name, llm in llms.items():
            llm.reset()
            llm.eval(chunk)
            lp = log_softmax(np.array(llm.scores[first:n_ctx - 1]))
            nll[name].append(-lp[np.arange(len(targets)), targets])
            logp[name] = lp
        p_ref = np.exp(logp["F16"])
        for name in kld:
            kld[name].append((p_ref * (logp["F16"] - logp[name])).sum(axis=1))
            top[name].append(logp[name].argmax(1) == logp["F16"].argmax(1))
        print(f"chunk {c + 1}/{n_chunks}", file=sys.stderr, flush=True)
    rows = []
    for name in llms:
        v = np.concatenate(nll[name])
        mean, se = v.mean(), v.std(ddof=1) / np.sqrt(v.size)
        row = {"model": name, "tokens_scored": int(v.size), "ppl": float(np.exp(mean)),
               "ppl_se": float(np.exp(mean) * se)}
        if name in kld:
            k = np.concatenate(kld[name])
            row.update(kld_mean=float(k.mean()), kld_se=float(k.std(ddof=1) / np.sqrt(k.size)),
                       kld_p99=float(np.quantile(k, 0.99)), same_top=float(np.concatenate(top[name]).mean()))
        rows.append(row)
    pairs = []
    for q in QUANTS:
        d = np.concatenate(kld[f"{q}+CE"]) - np.concatenate(kld[q])
        dn = np.concatenate(nll[f"{q}+CE"]) - np.concatenate(nll[q])
        pairs.append({"quant": q, "kld_ce_minus_plain": float(d.mean()),
                      "kld_diff_se": float(d.std(ddof=1) / np.sqrt(d.size)),
                      "kld_ratio_ce_over_plain": float(np.concatenate(kld[f"{q}+CE"]).mean()
                                                       / np.concatenate(kld[q]).mean()),
                      "nll_ce_minus_plain": float(dn.mean()), "nll_diff_se": float(dn.std(ddof=1) / np.sqrt(dn.size))})
    for llm in llms.values():
        llm.close()
    return {"rows": rows, "pairs": pairs, "n_chunks": n_chunks, "n_ctx": n_ctx, "text_tokens": len(tokens)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text", type=Path, default=TEXT)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "ce_quant_quality.json")
    args = ap.parse_args()
    if not args.text.is_file():
        print(f"SKIPPED: the public-domain text {args.text} is absent (pass --text FILE)")
        return 0
    with tempfile.TemporaryDirectory(prefix="ce-quant-") as tmp:
        models = make_models(Path(tmp), args.threads)
        t0 = time.perf_counter()
        res = evaluate(models, args.text.read_text(encoding="utf-8"), args.ctx, args.chunks, args.threads)
    res.update(model="SmolLM2-135M-Instruct (registry Q4_1, dequantized to F16)", experts=EXPERTS,
               text=str(args.text), eval_seconds=round(time.perf_counter() - t0, 1), threads=args.threads,
               machine=platform.machine(), caveat=(
                   "the F16 reference is the dequantized Q4_1 release: its weights sit on 32-element "
                   "blocks aligned with the original column order, which favours re-quantization without CE"))
    print(f"\nSmolLM2-135M-Instruct, {res['n_chunks']} chunks x {res['n_ctx']} tokens of {args.text.name} "
          f"(second half of each chunk scored, {res['rows'][0]['tokens_scored']} tokens)\n")
    print("| model | perplexity | mean KLD vs F16 | KLD p99 | same top token |")
    print("|---|---|---|---|---|")
    for r in res["rows"]:
        k = (f"{r['kld_mean']:.5f} ± {r['kld_se']:.5f} | {r['kld_p99']:.4f} | {100 * r['same_top']:.1f}%"
             if "kld_mean" in r else "- | - | -")
        print(f"| {r['model']} | {r['ppl']:.3f} ± {r['ppl_se']:.3f} | {k} |")
    print("\n| quant | KLD(CE) - KLD(no CE) | KLD ratio CE/no CE | NLL(CE) - NLL(no CE) |")
    print("|---|---|---|---|")
    for p in res["pairs"]:
        print(f"| {p['quant']} | {p['kld_ce_minus_plain']:+.5f} ± {p['kld_diff_se']:.5f} | "
              f"{p['kld_ratio_ce_over_plain']:.3f} | {p['nll_ce_minus_plain']:+.5f} ± {p['nll_diff_se']:.5f} |")
    print(f"\ncaveat: {res['caveat']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
