#!/usr/bin/env python3
"""The AMB on one device of a built tree: the first checks of a GPU session, with no model and no
Python packages (the standard library only), so that a GPU machine needs only the carried build.

    python3 cpp/device_check.py --build-dir DIR --device CUDA0 [--out DIR] [--quick]

DIR is a CMake build folder of cpp/ holding bin/ (the libraries), test-backend-ops and
pace-amb-composed, e.g. cpp/build_cuda.py's, built on another machine and carried. Runs:
1. test-backend-ops' GGML_OP_AMB cases (cpp/tests/test-backend-ops-amb.inc) on the device against
   the CPU op, when the device has a kernel (skipped for the CPU, the reference itself);
2. pace-amb-composed with the device's kernel (--impl fused, where it has one) and with the AMB
   composed from ggml ops (--impl composed), against the fused op on the CPU: labels, counters,
   rows, and the time per call of each (the number cpp/src/BACKENDS.md's decision still needs).
Prints a table, writes device_check.json to --out (default: the current folder) and exits non-zero
if any check failed. --quick keeps test-backend-ops' width-64 and width-1536 cases and two sizes.
The end-to-end chat and the speed benchmark need the model and pace_gguf: see BACKENDS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backend_ops import PASSED, QUICK, library_env  # noqa: E402

# pace-amb-composed's sizes: (n_ff, tokens, sequences) and options; decode and a prompt ubatch,
# SmolLM2 and Qwen2-7B widths, a ubatch stored in several chunks, a prompt span storing from pend
DECLINED = 3  # pace-amb-composed's exit status when the device declines the op

SIZES = [(1536, 1, 1, {}), (1536, 512, 1, {}), (18944, 1, 1, {}), (18944, 512, 1, {}), (1536, 64, 3, {}),
         (1536, 512, 1, {"chunk": 128}), (1536, 300, 2, {"chunk": 80, "span": 70})]
QUICK_SIZES = [(1536, 1, 1, {}), (1536, 64, 3, {}), (1536, 300, 2, {"chunk": 80, "span": 70})]


def backend_ops(build_dir: Path, device: str, quick: bool) -> dict:
    if device == "CPU":
        return {"skipped": "the CPU is test-backend-ops' reference"}
    command = [str(build_dir / "test-backend-ops"), "test", "-o", "AMB", "-b", device] + (["-p", QUICK] if quick else [])
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=library_env(build_dir), timeout=3600)
    passed = PASSED.search(result.stdout)
    return {"command": " ".join(command[1:]), "returncode": result.returncode, "seconds": round(time.monotonic() - start, 1),
            "device_found": re.search(rf"^Backend \d+/\d+: {re.escape(device)}$", result.stdout, re.M) is not None,
            "passed": int(passed[1]) if passed else 0, "cases": int(passed[2]) if passed else 0,
            "ok": result.returncode == 0 and passed is not None and passed[1] == passed[2] and int(passed[2]) > 0,
            "tail": result.stdout[-1500:] + result.stderr[-1500:]}


def composed_tool(build_dir: Path, device: str, impl: str, n_ff: int, tokens: int, seqs: int, mode: str = "code",
                  fill: int = 50, reps: int = 20, chunk: int = 1024, span: int = -1) -> dict:
    """One pace-amb-composed run, parsed. span >= 0: a prompt span open with that many rows pending per
    sequence. ok: every case label, counter and pending count equal (its exit status), and every usage
    and valid flag; the rows', banks' and pending rows' differences are for the caller to bound.
    declined: the device's supports_op refused the op (nothing ran)."""
    command = [str(build_dir / "pace-amb-composed"), "--device", device, "--impl", impl, "--n-ff", str(n_ff),
               "--tokens", str(tokens), "--seqs", str(seqs), "--mode", mode, "--fill", str(fill), "--reps", str(reps),
               "--chunk", str(chunk), "--span", str(span)]
    result = subprocess.run(command, capture_output=True, text=True, env=library_env(build_dir), timeout=1800)
    out = result.stdout
    rows = re.search(r"enhanced rows: max \|diff\| / max \|fused\| = (\S+)", out)
    bank = re.search(r"keys (\S+), values (\S+) \(relative\); usage equal (\d+)/(\d+), valid equal (\d+)/(\d+)", out)
    times = re.search(r"fused \(CPU\) (\S+) us, \S+ \(\S+\) (\S+) us, (\d+) computing nodes", out)
    pend = re.search(r"pending rows after: counts equal \(sequence 0: (\d+)\); max \|diff\| keys (\S+), values (\S+)", out)
    ok = (result.returncode == 0 and None not in (rows, bank, times) and bank[3] == bank[4] and bank[5] == bank[6]
          and (span < 0 or pend is not None))
    declined = result.returncode == DECLINED and "declines" in out  # the runtime would not place it there either
    return {"impl": impl, "n_ff": n_ff, "tokens": tokens, "seqs": seqs, "chunk": chunk, "span": span, "ok": ok,
            "declined": declined,
            "rows_rel_diff": float(rows[1]) if rows else None,
            "keys_rel_diff": float(bank[1]) if bank else None, "values_rel_diff": float(bank[2]) if bank else None,
            "pending_after": int(pend[1]) if pend else None,
            "pending_keys_diff": float(pend[2]) if pend else None, "pending_values_diff": float(pend[3]) if pend else None,
            "cpu_fused_us": float(times[1]) if times else None, "device_us": float(times[2]) if times else None,
            "nodes": int(times[3]) if times else None, "tail": "" if ok or declined else (out + result.stderr)[-1500:]}


def device_has_kernel(ops: dict, device: str) -> bool:
    """test-backend-ops counts only the cases a device supports (lavapipe's declined ones were not counted)."""
    return device == "CPU" or ops.get("cases", 0) > 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, required=True, help="CMake build folder of cpp/")
    parser.add_argument("--device", required=True, help="ggml device name, e.g. CUDA0, Vulkan0, MTL0, CPU")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for device_check.json")
    parser.add_argument("--quick", action="store_true", help="fewer cases (see above)")
    args = parser.parse_args(argv)
    tools = ["pace-amb-composed"] + ([] if args.device == "CPU" else ["test-backend-ops"])
    for tool in (args.build_dir / name for name in tools):
        if not tool.exists():
            raise SystemExit(f"{tool} is missing: build the targets test-backend-ops and pace-amb-composed in "
                             f"{args.build_dir} first")

    ops = backend_ops(args.build_dir, args.device, args.quick)
    if not ops.get("device_found", True):
        raise SystemExit(f"no device {args.device} in this build on this machine (test-backend-ops lists its "
                         f"devices: {args.build_dir / 'test-backend-ops'} test -o AMB)\n{ops['tail']}")
    impls = ("fused", "composed") if device_has_kernel(ops, args.device) else ("composed",)
    runs = [composed_tool(args.build_dir, args.device, impl, n_ff, tokens, seqs, **options)
            for n_ff, tokens, seqs, options in (QUICK_SIZES if args.quick else SIZES) for impl in impls]
    report = {"device": args.device, "build_dir": str(args.build_dir), "test_backend_ops": ops, "pace_amb_composed": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "device_check.json").write_text(json.dumps(report, indent=1))

    print(f"test-backend-ops -o AMB on {args.device}: "
          + (ops["skipped"] if "skipped" in ops else f"{ops['passed']}/{ops['cases']} passed in {ops['seconds']} s"))
    print("| impl | n_ff | tokens | seqs | chunk | span | agrees | rows rel. diff | fused on the CPU | on the device | nodes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        span = "-" if r["span"] < 0 else f"{r['span']} pending"
        agrees = "declined by the device" if r["declined"] else "yes" if r["ok"] else "NO"
        print(f"| {r['impl']} | {r['n_ff']} | {r['tokens']} | {r['seqs']} | {r['chunk']} | {span} | {agrees} | "
              f"{r['rows_rel_diff']} | {r['cpu_fused_us']} us | {r['device_us']} us | {r['nodes']} |")
    failed = [r["tail"] for r in runs if not (r["ok"] or r["declined"])] + ([ops["tail"]] if "ok" in ops and not ops["ok"] and ops["cases"] else [])
    for tail in failed:
        print(tail, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
