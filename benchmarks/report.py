"""What the benchmark runners share: the models they know by short name, the prompt they feed, peak
memory, and the report each one writes.

`write_report` writes benchmarks/results/<name>.json, {"meta": {machine.describe(), the run's
parameters, "command": the command line}, "rows": [...]}, and <name>.md (a heading, the command, the
machine, a markdown table, notes), and prints the table. benchmarks/publish.py collects the .md files.

Importing this module loads no native library, so a worker bound to another libllama can import it.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"

# short name -> registry name
MODELS = {"smollm2": "smollm2-135m-instruct", "gemma3-270m": "gemma3-270m"}


RANDOM_SUFFIX = "-random"  # "qwen2-7b-random": shape_true.py's model, made once into the user cache


def model_path(name: str) -> Path:
    """A model by short name (MODELS), registry name, shape-true random model (<model>-random, see
    shape_true.py) or GGUF path; registry models are pulled, random ones written on first use."""
    from pace_gguf import registry  # noqa: PLC0415

    import shape_true  # noqa: PLC0415

    full = MODELS.get(name, name)
    if full in registry.MODELS:
        return registry.pull(full)
    if name.endswith(RANDOM_SUFFIX) and name[: -len(RANDOM_SUFFIX)] in shape_true.MODELS:
        from pace_gguf import paths  # noqa: PLC0415

        out = paths.cache_dir() / "bench" / f"{name}-q4_k_m.gguf"
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            print(f"writing {out} (shape-true random weights)", file=sys.stderr)
            shape_true.write(name[: -len(RANDOM_SUFFIX)], out)
        return out
    if Path(name).is_file():
        return Path(name)
    randoms = ", ".join(m + RANDOM_SUFFIX for m in shape_true.MODELS)
    raise SystemExit(f"unknown model {name!r}: give one of {', '.join(MODELS)}, {randoms}, a registry name or a GGUF path")


def random_prompt(n_tokens: int, n_vocab: int, seed: int = 0) -> list[int]:
    """Token ids drawn from ordinary vocabulary (ids 100..20000): speed and memory depend on shapes and
    counts, not on what the text says, and the same ids feed every engine the runners compare."""
    import numpy as np  # noqa: PLC0415

    return np.random.default_rng(seed).integers(100, min(n_vocab, 20000), n_tokens).tolist()


def peak_rss_mib() -> float:
    """This process's resident-memory high-water mark (VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def command_line() -> str:
    return shlex.join([Path(sys.executable).name, *sys.argv])


def markdown_table(rows: list[dict], columns: dict[str, Callable[[dict], str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row) for cell in columns.values()) + " |" for row in rows]
    return "\n".join(lines)


def write_report(name: str, title: str, rows: list[dict], columns: dict[str, Callable[[dict], str]], params: dict,
                 notes: list[str] = (), out: Path | None = None) -> tuple[Path, Path]:
    """Write <out>/<name>.json and <name>.md (out: benchmarks/results) and print the table.
    `columns`: header -> function of a row giving the cell text."""
    from pace_gguf import machine  # noqa: PLC0415  (loads pace-gguf's library)

    meta = {**machine.describe(), **params, "command": command_line()}
    table = markdown_table(rows, columns)
    out = Path(out) if out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    md = [f"# {title}", "", f"`{meta['command']}`", "", f"Machine: {machine.summary_line(meta)}.", "", table, ""]
    md += [f"* {note}" for note in notes]
    md_path.write_text("\n".join(md).rstrip() + "\n")
    print(table)
    for note in notes:
        print(f"* {note}")
    print(f"wrote {json_path} and {md_path.name}")
    return json_path, md_path


def ratio_text(median: float, low: float, high: float) -> str:
    return f"{median:.3f} ({low:.2f}-{high:.2f})"
