"""pace-gguf against Hugging Face transformers running the PyTorch reference AMB: prefill and decode
speed and peak memory of the same model, AMB off and on.

    PYTHONPATH=. .venv/bin/python benchmarks/vs_transformers.py [--models smollm2 gemma3-270m] [--quick]

Rows per model, each AMB off and on (pace_gguf.amb.default_layers):
* transformers fp32: the GGUF a user runs, dequantized to float32 by transformers' GGUF reader and
  saved once as a safetensors folder in the user cache (bench/<file>-hf), loaded from there; its AMB
  is the reference's (pace_gguf.reference.hf.enable_amb).
* pace-gguf F32: the same float32 weights, converted from that folder once by
  `pace-gguf convert --quant F32 --experts 0` (bench/<file>.F32.gguf).
* pace-gguf with the quantized GGUF itself.
Every point runs in a fresh subprocess, so peak memory (VmHWM, load included) is that point's alone.
Both engines read the prompt in n_ubatch-token forwards (llama.cpp's ubatches; for the reference
AMB, ubatch granularity) and keep only the last position's logits, then decode greedily one token
per forward. Writes benchmarks/results/vs_transformers.{json,md}.
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

HERE = Path(__file__).resolve()
RESULT_MARK = "RESULT "  # the child's answer line; libraries may print other lines


class Skipped(Exception):
    """A point that cannot be measured (the reason goes into the report's notes)."""


# --- children: one measurement each -----------------------------------------------------------------------------


def measure(load, prefill, decode, spec: dict) -> dict:
    """Time load(), then per repetition (after a short warm-up) prefill(n) and decode(n)."""
    from throughput import timed  # noqa: PLC0415

    load_s = timed(load)
    prefill(32)
    decode(2)
    pp = [timed(lambda: prefill(spec["n_prompt"])) for _ in range(spec["reps"])]
    tg = []
    for _ in range(spec["reps"]):
        prefill(spec["n_prompt"])
        tg.append(timed(lambda: decode(spec["n_gen"])))
    return {"load_s": load_s, "prefill_tok_s": spec["n_prompt"] / statistics.median(pp),
            "decode_tok_s": spec["n_gen"] / statistics.median(tg), "prefill_s": pp, "decode_s": tg}


def run_transformers(spec: dict) -> dict:
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, DynamicCache  # noqa: PLC0415

    from pace_gguf.reference.hf import enable_amb, reset_memory  # noqa: PLC0415

    torch.set_num_threads(spec["threads"])
    state = {}

    def load():
        state["model"] = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32).eval()
        if spec["layers"]:
            try:
                enable_amb(state["model"], spec["layers"])
            except ValueError as exc:  # an MLP the reference cannot wrap
                raise Skipped(f"the reference AMB cannot wrap this model: {exc}") from exc

    def forward(ids):
        model = state["model"]
        logits = model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1,
                       **{cache_argument(model): state["cache"]}).logits
        state["next"] = int(torch.argmax(logits[0, -1]))

    @torch.no_grad()
    def prefill(n):
        reset_memory(state["model"])
        state["cache"] = DynamicCache(config=state["model"].config)
        prompt = spec["prompt"][:n]
        for start in range(0, n, spec["n_ubatch"]):
            forward(prompt[start:start + spec["n_ubatch"]])

    @torch.no_grad()
    def decode(n):
        for _ in range(n):
            forward([state["next"]])

    return measure(load, prefill, decode, spec)


def cache_argument(model) -> str:
    """transformers renamed forward's `past_key_values` to `cache`."""
    import inspect  # noqa: PLC0415

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def run_pace(spec: dict) -> dict:
    from pace_gguf import Llama  # noqa: PLC0415
    from pace_gguf import _llama_cpp_compat as compat  # noqa: PLC0415
    from pace_gguf._native import llama_cpp_module  # noqa: PLC0415
    from throughput import greedy  # noqa: PLC0415

    state = {}

    def load():
        state["llm"] = Llama(model_path=spec["model"], n_ctx=spec["n_prompt"] + spec["n_gen"] + 64,
                             n_batch=spec["n_ubatch"], n_ubatch=spec["n_ubatch"], n_threads=spec["threads"],
                             n_threads_batch=spec["threads"], verbose=False,
                             pace={"layers": spec["layers"]} if spec["layers"] else False)

    def prefill(n):
        compat.clear_context(state["llm"])  # empty KV cache and banks
        state["llm"].eval(spec["prompt"][:n])

    return measure(load, prefill, lambda n: greedy(llama_cpp_module().llama_cpp, state["llm"], n), spec)


def child(spec: dict) -> int:
    runner = run_transformers if spec["engine"] == "transformers" else run_pace
    try:
        result = runner(spec)
    except Skipped as exc:
        result = {"skipped": str(exc)}
    result["peak_rss_mib"] = report.peak_rss_mib()
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


def prepare(spec: dict) -> int:
    """Write the float32 safetensors folder of a GGUF (transformers' GGUF reader)."""
    import torch  # noqa: PLC0415
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint  # noqa: PLC0415

    gguf, out = Path(spec["gguf"]), Path(spec["out"])
    # from_pretrained(gguf_file=...) insists on `accelerate`; its reader underneath does not.
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model,
                                   torch_dtype=torch.float32)["tensors"]
    missing = set(model.load_state_dict(tensors, strict=False).missing_keys)
    if config.tie_word_embeddings:
        model.tie_weights()
        missing.discard("lm_head.weight")
    if missing:
        raise SystemExit(f"{gguf.name}: transformers found no weights for {sorted(missing)}")
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    os.replace(tmp, out)
    return 0


# --- the parent ---------------------------------------------------------------------------------------------------


def run_child(*args: str) -> tuple[int, str, str]:
    result = subprocess.run([sys.executable, str(HERE), *args], capture_output=True, text=True)
    return result.returncode, result.stdout, result.stderr


def dequantized(gguf: Path) -> tuple[Path | None, Path | None, list[str]]:
    """The float32 safetensors folder and F32 GGUF of `gguf` (made once, cached), or None and a note why not."""
    from pace_gguf.paths import cache_dir  # noqa: PLC0415

    bench = cache_dir() / "bench"
    folder, f32 = bench / f"{gguf.stem}-hf", bench / f"{gguf.stem}.F32.gguf"
    if not (folder / "config.json").is_file():
        print(f"dequantizing {gguf.name} with transformers into {folder} (once) ...", file=sys.stderr)
        rc, _, err = run_child("--prepare", json.dumps({"gguf": str(gguf), "out": str(folder)}))
        if rc:
            return None, None, [f"{gguf.name}: transformers could not load it: {last_line(err)}"]
    if not f32.is_file():
        print(f"converting {folder.name} to {f32.name} (once) ...", file=sys.stderr)
        convert = [sys.executable, "-m", "pace_gguf", "convert", str(folder), "-o", str(f32),
                   "--quant", "F32", "--experts", "0", "--no-progress"]
        result = subprocess.run(convert, capture_output=True, text=True)
        if result.returncode:
            return folder, None, [f"{gguf.name}: no F32 GGUF, `pace-gguf convert` failed: {last_line(result.stderr)}"]
    return folder, f32, []


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def quant_name(gguf: Path) -> str:
    """The GGUF's weight type as llama.cpp names it (general.file_type), e.g. Q4_K_M."""
    from pace_gguf._native import llama_cpp_module  # noqa: PLC0415
    from pace_gguf.gguf_file import read_gguf_header  # noqa: PLC0415

    ftype, lib = read_gguf_header(gguf).kv.get("general.file_type"), llama_cpp_module().llama_cpp
    names = [n for n in dir(lib) if n.startswith("LLAMA_FTYPE_") and getattr(lib, n) == ftype]
    return names[0].split("_", 3)[-1] if names else "quantized"


def bench_model(name: str, args) -> tuple[list[dict], list[str]]:
    from pace_gguf.amb import default_layers  # noqa: PLC0415
    from pace_gguf.estimate import read_shape  # noqa: PLC0415

    gguf = report.model_path(name)
    shape = read_shape(gguf)
    folder, f32, notes = dequantized(gguf)
    quant = quant_name(gguf)
    setups = [("transformers", f"fp32 (dequantized {quant})", folder), ("pace-gguf", "F32 GGUF", f32),
              ("pace-gguf", f"{quant} GGUF", gguf)]
    prompt = report.random_prompt(args.n_prompt, shape.n_vocab)
    rows = []
    for layers in (None, list(default_layers(shape.n_layer))):
        for engine, weights, path in setups:
            if path is None:
                continue
            spec = {"engine": engine, "model": str(path), "layers": layers, "prompt": prompt, "n_prompt": args.n_prompt,
                    "n_gen": args.n_gen, "n_ubatch": args.n_ubatch, "threads": args.threads, "reps": args.reps}
            result = measure_point(spec)
            if "skipped" in result:
                notes.append(f"{name}, {engine} {weights}, AMB {layers}: skipped, {result['skipped']}")
                continue
            rows.append({"model": name, "engine": engine, "weights": weights, "amb_layers": layers, **result})
    return rows, notes


def measure_point(spec: dict) -> dict:
    rc, out, err = run_child("--child", json.dumps(spec))
    answers = [line[len(RESULT_MARK):] for line in out.splitlines() if line.startswith(RESULT_MARK)]
    if rc or not answers:
        raise SystemExit(f"{spec['engine']} on {spec['model']} failed:\n{err[-3000:]}")
    return json.loads(answers[-1])


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row's speeds relative to transformers with the same model and AMB setting."""
    base = {(r["model"], str(r["amb_layers"])): r for r in rows if r["engine"] == "transformers"}
    for r in rows:
        ref = base.get((r["model"], str(r["amb_layers"])))
        r["vs_transformers"] = None if ref is None else {
            "prefill": r["prefill_tok_s"] / ref["prefill_tok_s"], "decode": r["decode_tok_s"] / ref["decode_tok_s"]}
    return rows


def columns() -> dict:
    def ratio(key):
        return lambda r: "" if r["vs_transformers"] is None else f"{r['vs_transformers'][key]:.2f}x"

    return {
        "model": lambda r: r["model"], "engine": lambda r: r["engine"], "weights": lambda r: r["weights"],
        "AMB": lambda r: "off" if not r["amb_layers"] else f"on {r['amb_layers']}",
        "prefill tok/s": lambda r: f"{r['prefill_tok_s']:.1f}", "decode tok/s": lambda r: f"{r['decode_tok_s']:.1f}",
        "prefill vs transformers": ratio("prefill"), "decode vs transformers": ratio("decode"),
        "peak RSS MiB": lambda r: f"{r['peak_rss_mib']:.0f}", "load s": lambda r: f"{r['load_s']:.1f}",
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "gemma3-270m"],
                        help=f"short names ({', '.join(report.MODELS)}), registry names or GGUF paths")
    parser.add_argument("--n-prompt", type=int, default=1024, help="prompt tokens (default 1024)")
    parser.add_argument("--n-gen", type=int, default=64, help="greedy tokens (default 64)")
    parser.add_argument("--n-ubatch", type=int, default=512, help="prompt forward size (default 512)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per point (default 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads (default: all cores)")
    parser.add_argument("--quick", action="store_true", help="smoke check: 64-token prompt, 8 tokens, 1 rep")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n_prompt, args.n_gen, args.reps = 64, 8, 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    if args.prepare:
        return prepare(json.loads(args.prepare))
    rows, notes = [], []
    for name in args.models:
        model_rows, model_notes = bench_model(name, args)
        rows += model_rows
        notes += model_notes
    notes += [f"{args.threads} thread{'s' * (args.threads != 1)}; prompt: {args.n_prompt} random token ids in {args.n_ubatch}-token forwards; "
              f"decode: {args.n_gen} greedy tokens; medians of {args.reps} after a warm-up; peak RSS: VmHWM of a fresh "
              "process per row, loading included.",
              "transformers loads the GGUF through its own GGUF reader (AutoModelForCausalLM.from_pretrained with "
              "gguf_file= requires the `accelerate` package); the reference AMB wraps any gated MLP (gate_proj, "
              "up_proj, down_proj, act_fn): Llama's and Gemma 3's qualify."]
    params = {"models": args.models, "n_prompt": args.n_prompt, "n_gen": args.n_gen, "n_ubatch": args.n_ubatch,
              "reps": args.reps, "threads": args.threads, "prompt_text": "random token ids",
              "transformers": _version("transformers"), "torch": _version("torch")}
    report.write_report("vs_transformers", "pace-gguf vs transformers with the reference AMB", with_ratios(rows),
                        columns(), params, notes, args.out)
    return 0


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
