"""Time and peak memory of `pace-gguf convert` (CE + quantization).

Cases (each a fresh `pace-gguf convert` subprocess):
  * smollm2: SmolLM2-135M-Instruct (registry Q4_1, dequantized to an F16 GGUF first) -> Q4_K_M, CE K=64;
  * qwen2-7b: a shape-true random Qwen2-7B checkpoint (hidden 3584, d_ff 18944, 28 heads / 4 KV heads,
    vocab 152064, bf16 safetensors, one shard per layer, written to disk by this script) -> Q4_K_M,
    CE K=64, through upstream's convert_hf_to_gguf.py. `--layers N` keeps the true shapes with
    fewer layers (time scales with layers; peak memory is set by the largest tensor).

Peak memory: the process tree (our process + upstream's converter) is sampled every 0.1 s for the
sum of VmRSS and of RssAnon (anonymous memory: what the process itself allocated; VmRSS also counts
touched pages of memory-mapped files, which llama.cpp's quantizer maps), and wait4's ru_maxrss of the
converter and its children is reported too (the largest single process). Inputs are made in a
separate process: Linux counts the launching process's resident memory into a child's ru_maxrss,
so the process that launches the converter must stay small.

    python benchmarks/convert.py [--cases smollm2,qwen2-7b] [--layers 28] [--workdir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QWEN2_7B = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
                vocab_size=152064, num_hidden_layers=28)


def _status_kib(pid: int) -> tuple[int, int]:
    rss = anon = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1])
    except OSError:
        pass
    return rss, anon


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def run_measured(cmd: list[str], env=None) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"rss": 0, "anon": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            rss = anon = 0
            for p in _tree(proc.pid):
                r, a = _status_kib(p)
                rss, anon = rss + r, anon + a
            peak["rss"], peak["anon"] = max(peak["rss"], rss), max(peak["anon"], anon)
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out = proc.stdout.read()
    # wait4: the rusage of this child and its waited-for descendants only (ru_maxrss: the largest
    # single process among them), not of every child this benchmark ever ran
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    th.join()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return {"seconds": round(seconds, 1), "peak_rss_tree_mib": round(peak["rss"] / 1024),
            "peak_anon_tree_mib": round(peak["anon"] / 1024),
            "max_single_process_rss_mib": round(usage.ru_maxrss / 1024),
            "log_tail": [ln for ln in out.splitlines() if ln.startswith("pace-gguf:")][-4:]}


def make_qwen2_7b(folder: Path, layers: int, seed: int = 0) -> Path:
    """Write a random bf16 Qwen2-7B-shaped checkpoint, one safetensors shard per layer (streamed:
    one tensor in memory at a time)."""
    import numpy as np

    from pace_gguf.convert.tiny import build_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    h, f, nh, nkv, v = (QWEN2_7B[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                              "num_key_value_heads", "vocab_size"))
    hd = h // nh
    rng = np.random.default_rng(seed)

    def bf16(shape, scale):
        # bf16 bits as uint16 (numpy has no bfloat16): round-to-nearest of float32 draws
        out = np.empty(int(np.prod(shape)), np.uint16)
        step = 1 << 24                            # 64 MiB of float32 at a time
        for a in range(0, out.size, step):
            x = (rng.standard_normal(min(step, out.size - a), dtype=np.float32) * scale).view(np.uint32)
            out[a:a + x.size] = (x + 0x7FFF + ((x >> 16) & 1)) >> 16
        return out.reshape(shape)

    index = {}

    def shard(name: str, tensors: dict):
        path = folder / name
        # safetensors.numpy cannot write bf16 from uint16: write the header by hand
        header, offset = {}, 0
        for k, (arr, dtype) in tensors.items():
            header[k] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
            offset += arr.nbytes
        head = json.dumps(header).encode()
        head += b" " * (-len(head) % 8)
        with open(path, "wb") as fh:
            fh.write(len(head).to_bytes(8, "little") + head)
            for arr, _ in tensors.values():
                arr.tofile(fh)                    # no copy of a 1 GB embedding
        for k in tensors:
            index[k] = name

    shard("model-embed.safetensors", {"model.embed_tokens.weight": (bf16((v, h), 0.02), "BF16")})
    for i in range(layers):
        p = f"model.layers.{i}."
        ones = np.full(h, 0x3F80, np.uint16)   # bf16 1.0
        shard(f"model-layer{i:02d}.safetensors", {
            p + "input_layernorm.weight": (ones, "BF16"), p + "post_attention_layernorm.weight": (ones, "BF16"),
            p + "self_attn.q_proj.weight": (bf16((h, h), h ** -0.5), "BF16"),
            p + "self_attn.q_proj.bias": (bf16((h,), 0.02), "BF16"),
            p + "self_attn.k_proj.weight": (bf16((nkv * hd, h), h ** -0.5), "BF16"),
            p + "self_attn.k_proj.bias": (bf16((nkv * hd,), 0.02), "BF16"),
            p + "self_attn.v_proj.weight": (bf16((nkv * hd, h), h ** -0.5), "BF16"),
            p + "self_attn.v_proj.bias": (bf16((nkv * hd,), 0.02), "BF16"),
            p + "self_attn.o_proj.weight": (bf16((h, h), h ** -0.5), "BF16"),
            p + "mlp.gate_proj.weight": (bf16((f, h), h ** -0.5), "BF16"),
            p + "mlp.up_proj.weight": (bf16((f, h), h ** -0.5), "BF16"),
            p + "mlp.down_proj.weight": (bf16((h, f), f ** -0.5), "BF16"),
        })
        print(f"  wrote layer {i + 1}/{layers}", file=sys.stderr, flush=True)
    shard("model-head.safetensors", {"model.norm.weight": (np.full(h, 0x3F80, np.uint16), "BF16"),
                                     "lm_head.weight": (bf16((v, h), h ** -0.5), "BF16")})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
              "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
              "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 151643,
              "eos_token_id": 151643, "use_sliding_window": False, **QWEN2_7B, "num_hidden_layers": layers}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    tok, _ = build_tokenizer("qwen2")
    tok.save_pretrained(folder)
    return folder


CASES = {"smollm2": "smollm2-f16.gguf", "qwen2-7b": "qwen2-7b-random"}   # case -> input in the workdir


def prepare_input(case: str, work: Path, layers: int, threads: int) -> None:
    if case == "smollm2":
        from pace_gguf.convert.quantize import quantize
        from pace_gguf.registry import pull
        quantize(pull(), work / CASES[case], "F16", allow_requantize=True, nthread=threads, show_progress=False)
    else:
        make_qwen2_7b(work / CASES[case], layers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="smollm2,qwen2-7b")
    ap.add_argument("--layers", type=int, default=28, help="layers of the shape-true Qwen2-7B (true: 28)")
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (needs ~2.2x the bf16 checkpoint)")
    ap.add_argument("--prepare", choices=list(CASES), help=argparse.SUPPRESS)   # internal: make one input
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "convert.json")
    args = ap.parse_args()
    if args.prepare:
        prepare_input(args.prepare, Path(args.workdir), args.layers, args.threads)
        return 0
    exe = str(Path(sys.executable).with_name("pace-gguf"))
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=args.workdir))
    try:
        for case in args.cases.split(","):
            if case not in CASES:
                raise SystemExit(f"unknown case {case}")
            # In a child process: Linux counts a parent's resident memory at spawn time into the
            # child's ru_maxrss, so this process must stay small while it launches the converter.
            t0 = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--prepare", case, "--workdir", str(work),
                            "--layers", str(args.layers), "--threads", str(args.threads)], check=True)
            src = work / CASES[case]
            print(f"prepared {case} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            label, layers = ("SmolLM2-135M-Instruct (F16 GGUF)", 30) if case == "smollm2" else (
                f"random Qwen2-7B shapes, {args.layers}/28 layers (bf16 safetensors)", args.layers)
            out = work / f"{case}-{args.quant}.gguf"
            in_bytes = src.stat().st_size if src.is_file() else sum(p.stat().st_size for p in src.glob("*.safetensors"))
            m = run_measured([exe, "convert", str(src), "-o", str(out), "--quant", args.quant,
                              "--experts", str(args.experts), "--threads", str(args.threads), "--no-progress"])
            row = {"case": case, "input": label, "layers": layers, "input_gib": round(in_bytes / 2**30, 2),
                   "output_gib": round(out.stat().st_size / 2**30, 2), "quant": args.quant,
                   "experts": args.experts, **m}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
            out.unlink()
            shutil.rmtree(src, ignore_errors=True) if src.is_dir() else src.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n`pace-gguf convert --quant {args.quant} --experts {args.experts}`, {args.threads} threads, "
          f"{platform.machine()}, {os.cpu_count()} cores\n")
    print("| input | in GiB | out GiB | time s | peak RSS (tree) MiB | peak anon (tree) MiB | max single-process RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['input']} | {r['input_gib']} | {r['output_gib']} | {r['seconds']} | {r['peak_rss_tree_mib']} | "
              f"{r['peak_anon_tree_mib']} | {r['max_single_process_rss_mib']} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "threads": args.threads, "cpu_count": os.cpu_count(),
                                     "machine": platform.machine()}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
