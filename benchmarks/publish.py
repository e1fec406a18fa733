"""RESULTS.md from the latest evaluation and benchmark results, and the plan that produces them.

    .venv/bin/python benchmarks/publish.py                 # rewrite RESULTS.md from benchmarks/results/
    .venv/bin/python benchmarks/publish.py --run all       # first rerun everything (about 2.5 hours on 2 cores, by the steps timed so far)
    .venv/bin/python benchmarks/publish.py --run sweep niah-smollm2   # rerun some steps, then rewrite

The held-out protocol: `sweep` tries AMB layer sets and thresholds on the *dev* split (alternate
haystack files); the best of them is then evaluated, next to AMB off and the default layers, on
the *test* split, which the sweep never saw. Evaluation outputs go to benchmarks/results/eval/<step>/
(results.json, report.md, heatmaps); benchmarks write benchmarks/results/<name>.{json,md}.
Evaluation data comes from ../shared/data (see its README); a step whose data is absent is skipped
with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pace_gguf import machine
from pace_gguf.eval import report as eval_report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
EVAL = RESULTS / "eval"
DATA = ROOT.parent / "shared" / "data"
HAYSTACK = DATA / "haystack" / "paul_graham_essays"
QUALITY = DATA / "leval" / "quality.jsonl"
TOPICS = DATA / "leval" / "topic_retrieval_longchat.jsonl"
SMOLLM2, GEMMA3 = "smollm2-135m-instruct", "gemma3-270m"
BEST = "<best of sweep>"  # replaced by the sweep's best configuration when the step runs

SWEEP_CONFIGS = ["off", "on", "layers=6,20", "layers=26", "on,theta_high=0.7,theta_low=0.3", "on,alpha=0.4",
                 "on,mode=paper"]

# step -> (what it evaluates, arguments of `pace-gguf eval` after the output folder). Sized for a
# 2-core machine (SmolLM2 reads about 100 tokens/s there at 6k tokens): few cases, so only large
# differences can show; more --depths, --repeats or --per-document give more cases for more time.
EVALUATIONS: dict[str, tuple[str, list[str]]] = {
    "sweep": ("AMB settings on the dev split (SmolLM2, NIAH 2k and 6k)", [
        "niah", SMOLLM2, "--haystack", str(HAYSTACK), "--split", "dev", "--lengths", "2k,6k", "--depths", "25,75",
        *(a for c in SWEEP_CONFIGS for a in ("--config", c))]),
    "niah-smollm2": ("NIAH within the 8k context, test split", [
        "niah", SMOLLM2, "--haystack", str(HAYSTACK), "--split", "test", "--lengths", "1k,2k,4k,7k",
        "--depths", "0,50,100", "--config", "off", "--config", "on", "--config", BEST]),
    "niah-smollm2-beyond": ("NIAH beyond the 8k context: stream vs map-reduce, test split", [
        "niah", SMOLLM2, "--haystack", str(HAYSTACK), "--split", "test", "--lengths", "12k", "--depths", "50",
        "--config", "off,strategy=stream", "--config", "on,strategy=stream", "--config", "off,strategy=map-reduce"]),
    "niah-gemma3": ("NIAH within the 32k context, test split", [
        "niah", GEMMA3, "--haystack", str(HAYSTACK), "--split", "test", "--lengths", "1k,4k,7k",
        "--depths", "0,50,100", "--config", "off", "--config", "on"]),
    "niah-gemma3-long": ("NIAH at 16k and 28k tokens, test split", [
        "niah", GEMMA3, "--haystack", str(HAYSTACK), "--split", "test", "--lengths", "16k,28k", "--depths", "50",
        "--config", "off", "--config", "on"]),
    "quality-smollm2": ("QuALITY multiple choice (L-Eval), odd documents, 1 question each", [
        "longdoc", SMOLLM2, "--data", str(QUALITY), "--split", "test", "--per-document", "1",
        "--max-tokens", "16", "--config", "off", "--config", "on"]),
    "quality-gemma3": ("QuALITY multiple choice (L-Eval), odd documents, 1 question each", [
        "longdoc", GEMMA3, "--data", str(QUALITY), "--split", "test", "--per-document", "1",
        "--max-tokens", "16", "--config", "off", "--config", "on"]),
    "topics-smollm2": ("LongChat topic retrieval (~10k tokens, beyond the 8k context), 2 chats", [
        "longdoc", SMOLLM2, "--data", str(TOPICS), "--split", "test", "--per-document", "1", "--limit", "2",
        "--config", "off,strategy=stream", "--config", "on,strategy=stream", "--config", "off,strategy=map-reduce"]),
    "topics-gemma3": ("LongChat topic retrieval (fits the 32k context), 3 chats", [
        "longdoc", GEMMA3, "--data", str(TOPICS), "--split", "test", "--per-document", "1", "--limit", "3",
        "--config", "off", "--config", "on"]),
}

# Repetitions and prompt fill sized for a 2-core machine, as the evaluations are (each runner's
# --help gives the full-size defaults).
BENCHMARKS: dict[str, list[str]] = {
    "throughput": ["benchmarks/throughput.py", "--reps", "2"],
    "vs_transformers": ["benchmarks/vs_transformers.py", "--reps", "2"],
    "memory": ["benchmarks/memory.py", "--fill", "0.25"],
}


def best_of_sweep() -> str:
    """The sweep's most accurate AMB-on configuration (ties: the earlier one in SWEEP_CONFIGS)."""
    report = json.loads((EVAL / "sweep" / "results.json").read_text())
    candidates = [c["name"] for c in report["configs"] if c["name"] != "off"]
    return max(candidates, key=lambda name: (report["summary"][name]["correct"], -candidates.index(name)))


def run_evaluation(step: str, threads: int | None) -> None:
    _, args = EVALUATIONS[step]
    if not DATA.is_dir():
        print(f"skipping {step}: {DATA} is absent", file=sys.stderr)
        return
    if BEST in args:
        args = [best_of_sweep() if a == BEST else a for a in args]
        args = _dedupe_configs(args)
    command = ["pace-gguf", "eval", *args[:1], "--out", f"benchmarks/results/eval/{step}", *args[1:]]
    command += ["--threads", str(threads)] if threads else []
    shown = " ".join(a.replace(str(ROOT.parent), "..") for a in command)
    exe = [str(Path(sys.executable).with_name("pace-gguf"))]
    subprocess.run(exe + command[1:] + ["--command-line", shown], check=True, cwd=ROOT)


def _dedupe_configs(args: list[str]) -> list[str]:
    """The sweep's best may be "off" or "on" already: give each --config once."""
    out, seen, i = [], set(), 0
    while i < len(args):
        if args[i] == "--config":
            if args[i + 1] not in seen:
                out += args[i:i + 2]
                seen.add(args[i + 1])
            i += 2
        else:
            out.append(args[i])
            i += 1
    return out


def run_benchmark(name: str) -> None:
    subprocess.run([sys.executable, *BENCHMARKS[name]], check=True, cwd=ROOT,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))


# --- RESULTS.md ------------------------------------------------------------------------------------------------


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def evaluation_rows(reports: dict[str, dict]) -> list[str]:
    """One row per configuration and step: accuracy, and the paired difference against the first."""
    rows = ["| step | model | configuration | accuracy | vs baseline (paired) | gained / lost | p |",
            "|---|---|---|---|---|---|---|"]
    for step, report in reports.items():
        comparisons = {c["config"]: c for c in report["comparisons"]}
        for config in report["configs"]:
            s = report["summary"][config["name"]]
            c = comparisons.get(config["name"])
            diff = "baseline" if c is None else ("n/a" if c["accuracy"] is None else
                                                 f"{100 * (c['accuracy'] - c['baseline_accuracy']):+.1f} pt")
            rows.append(f"| {step} | {report['model']['name']} | `{config['name']}` | {_pct(s['accuracy'])} "
                        f"({s['correct']}/{s['cases']}) | {diff} | "
                        f"{'' if c is None else str(c['gained']) + ' / ' + str(c['lost'])} | "
                        f"{'' if c is None else format(c['p_value'], '.3g')} |")
    return rows


def findings(reports: dict[str, dict]) -> list[str]:
    """Which way each configuration moved against its baseline, and whether that could be chance."""
    lines = []
    for step, report in reports.items():
        for c in report["comparisons"]:
            if c["gained"] == c["lost"]:
                verdict = "no change" if c["gained"] == 0 else "as many cases gained as lost"
            else:
                verdict = "more cases gained than lost" if c["gained"] > c["lost"] else "more cases lost than gained"
            significance = "significant at 5%" if c["p_value"] < 0.05 else "within chance"
            lines.append(f"* {step}: `{c['config']}` vs `{c['baseline']}`: {verdict} ({c['gained']} gained, "
                         f"{c['lost']} lost of {c['paired_cases']} paired cases; sign test p = {c['p_value']:.3g}, "
                         f"{significance}).")
    return lines


def _demote(markdown: str) -> str:
    """A report's headings two levels down, under its "## ..." section here."""
    return "\n".join("##" + line if line.startswith("#") else line for line in markdown.splitlines())


def write_results_md() -> Path:
    reports = {step: json.loads((EVAL / step / "results.json").read_text())
               for step in EVALUATIONS if (EVAL / step / "results.json").is_file()}
    lines = ["# Results", "",
             "Generated by `.venv/bin/python benchmarks/publish.py` (add `--run all` to rerun every evaluation and "
             "benchmark first; see that file for the plan). Do not edit by hand.", ""]
    machines = {machine.summary_line(r["machine"]).rsplit("; ", 1)[0] for r in reports.values()}  # without the date
    lines += [f"Hardware of the evaluations: {m}." for m in sorted(machines)] + [""]
    if reports:
        lines += ["## Does the memory bank help?", "",
                  "Accuracy per evaluation step and configuration (correct / scored cases), and the paired "
                  "difference against the step's first configuration on the cases both scored. `on` is the default "
                  "layers (`pace_gguf.amb.default_layers`); the sweep ran on the dev split, every other step on the "
                  "test split. p is the exact two-sided sign test on the cases that changed: with this few cases, "
                  "only large differences could be told from chance.", "", *evaluation_rows(reports), "",
                  *findings(reports), ""]
        if "sweep" in reports:
            lines += [f"Best AMB configuration of the sweep (dev split): `{best_of_sweep()}`; it appears in the "
                      "test-split steps next to `off` and `on`.", ""]
    for step, report in reports.items():
        lines += [f"## Evaluation `{step}`: {EVALUATIONS[step][0]}", "", _demote(eval_report.markdown(report))]
        pngs = sorted((EVAL / step).glob("heatmap-*.png"))
        lines += ["", " ".join(f"![{p.stem}](benchmarks/results/eval/{step}/{p.name})" for p in pngs), ""] if pngs else [""]
    for name in BENCHMARKS:
        md = RESULTS / f"{name}.md"
        if md.is_file():
            lines += [f"## Benchmark `{name}`", "", _demote(md.read_text()), ""]
    target = ROOT / "RESULTS.md"
    tmp = target.with_name(".RESULTS.md.tmp")
    tmp.write_text("\n".join(lines).rstrip() + "\n")
    os.replace(tmp, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", nargs="+", default=[], metavar="STEP",
                        choices=["all", *EVALUATIONS, *BENCHMARKS],
                        help=f"rerun these first: all, or any of {', '.join([*EVALUATIONS, *BENCHMARKS])}")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of the evaluations (default: llama.cpp's choice)")
    args = parser.parse_args(argv)
    steps = [*EVALUATIONS, *BENCHMARKS] if "all" in args.run else args.run
    for step in steps:
        started = time.time()
        print(f"== {step}", file=sys.stderr, flush=True)
        if step in EVALUATIONS:
            run_evaluation(step, args.threads)
        else:
            run_benchmark(step)
        print(f"== {step}: {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    print(write_results_md())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
