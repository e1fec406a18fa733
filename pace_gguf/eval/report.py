"""An evaluation's outputs: one JSON file with everything (settings, machine, every answer), a
markdown table comparing the configurations case by case, and for a needle-in-a-haystack grid a
heatmap PNG per configuration (with matplotlib, the `eval` extra). Files appear whole or not at all.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .. import machine
from ..atomic_files import publish, temp_paths
from . import scoring
from .cases import Case
from .configs import EvalConfig
from .harness import Outcome

SCHEMA = "pace-gguf-eval/1"
JSON_NAME, MARKDOWN_NAME = "results.json", "report.md"


def build(kind: str, meta: dict, configs, cases, outcomes: list[Outcome], complete: bool) -> dict:
    """The whole report as one JSON-ready dict."""
    group = "length" if kind == "niah" else None
    summary = {c.name: _summary([o for o in outcomes if o.config == c.name], cases, group) for c in configs}
    baseline = configs[0].name
    return {
        "schema": SCHEMA, "kind": kind, "complete": complete, **meta,
        "configs": [{"name": c.name, "pace": c.pace, "strategy": c.strategy} for c in configs],
        "cases": [{"id": c.id, "question": c.question, "answers": list(c.answers), "where": c.where,
                   "document_chars": len(c.document)} for c in cases],
        "outcomes": [o.to_dict() for o in outcomes],
        "summary": summary,
        "comparisons": [_compare(outcomes, baseline, c.name) for c in configs[1:]],
    }


def rescored(old: dict) -> dict:
    """The report with every scored answer scored again by the current `scoring` (the answers are
    stored, so a scoring fix needs no new model runs); summaries and comparisons follow."""
    cases = {c["id"]: c for c in old["cases"]}
    outcomes = []
    for o in old["outcomes"]:
        o = dict(o)
        if o["correct"] is not None:
            case = cases[o["case"]]
            o["scores"] = scoring.score(o["prediction"], case["answers"], case["question"])
            o["correct"] = o["scores"]["correct"]
        outcomes.append(Outcome(**o))
    meta = {k: v for k, v in old.items() if k not in ("schema", "kind", "complete", "configs", "cases", "outcomes",
                                                      "summary", "comparisons")}
    configs = [EvalConfig(c["name"], c["pace"], c["strategy"]) for c in old["configs"]]
    stubs = [Case(c["id"], "", c["question"], tuple(c["answers"]), c["where"]) for c in old["cases"]]
    return {**build(old["kind"], meta, configs, stubs, outcomes, old["complete"]), "cases": old["cases"]}


def _summary(outcomes: list[Outcome], cases, group: str | None) -> dict:
    scored = [o for o in outcomes if o.correct is not None]
    out = _tally(scored)
    out["skipped"] = len(outcomes) - len(scored)
    f1 = [o.scores["f1"] for o in scored if "f1" in o.scores]
    out["f1"] = sum(f1) / len(f1) if f1 else None
    out["exact"] = (sum(o.scores["exact"] for o in scored if "exact" in o.scores) / len(f1)) if f1 else None
    if group:
        where = {c.id: c.where[group] for c in cases}
        values = sorted({where[o.case] for o in outcomes})
        out["by_" + group] = {str(v): _tally([o for o in scored if where[o.case] == v]) for v in values}
    return out


def _tally(scored: list[Outcome]) -> dict:
    correct = sum(bool(o.correct) for o in scored)
    return {"cases": len(scored), "correct": correct, "accuracy": correct / len(scored) if scored else None}


def _compare(outcomes: list[Outcome], baseline: str, other: str) -> dict:
    """Paired comparison on the cases both configurations scored: cases gained and lost, and the
    exact two-sided sign test (McNemar) p-value of that difference."""
    base = {o.case: o.correct for o in outcomes if o.config == baseline and o.correct is not None}
    this = {o.case: o.correct for o in outcomes if o.config == other and o.correct is not None}
    paired = sorted(base.keys() & this.keys())
    gained = sum(this[c] and not base[c] for c in paired)
    lost = sum(base[c] and not this[c] for c in paired)
    n = len(paired)
    return {"config": other, "baseline": baseline, "paired_cases": n, "gained": gained, "lost": lost,
            "baseline_accuracy": sum(base[c] for c in paired) / n if n else None,
            "accuracy": sum(this[c] for c in paired) / n if n else None,
            "p_value": sign_test(gained, lost)}


def sign_test(gained: int, lost: int) -> float:
    """Two-sided exact binomial test of `gained` vs `lost` discordant pairs (1.0 when equal or none)."""
    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(gained, lost) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


# --- markdown --------------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    lines = [f"# {report['title']}", "", f"Command: `{report['command']}`", "",
             f"Model: {report['model']['name']} ({report['model']['architecture']}, {report['model']['n_layer']} layers, "
             f"trained context {report['model']['n_ctx_train']}, run with n_ctx {report['model']['n_ctx']}). "
             f"Machine: {machine.summary_line(report['machine'])}.", ""]
    if not report["complete"]:
        lines += ["**Incomplete**: the run was stopped; the numbers cover the cases finished.", ""]
    lines += _summary_table(report) + [""] + _comparison_table(report)
    return "\n".join(lines) + "\n"


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _summary_table(report: dict) -> list[str]:
    groups = sorted({g for s in report["summary"].values() for g in s.get("by_length", {})}, key=int)
    head = ["configuration", "strategy", "accuracy", *(f"{int(g):,} tok" for g in groups)]
    # exact match and F1 say something about short reference answers (L-Eval), not about a needle
    text_scores = report["kind"] == "longdoc" and any(s["f1"] is not None for s in report["summary"].values())
    head += ["exact", "F1"] if text_scores else []
    head += ["skipped"]
    rows = []
    for config in report["configs"]:
        s = report["summary"][config["name"]]
        row = [f"`{config['name']}`", config["strategy"], f"{_pct(s['accuracy'])} ({s['correct']}/{s['cases']})"]
        row += [_cell(s["by_length"].get(g)) for g in groups]
        row += [_pct(s["exact"]), "n/a" if s["f1"] is None else f"{s['f1']:.3f}"] if text_scores else []
        rows.append(row + [str(s["skipped"])])
    return _table(head, rows)


def _cell(tally: dict | None) -> str:
    if not tally or not tally["cases"]:
        return "–"
    return f"{_pct(tally['accuracy'])} ({tally['correct']}/{tally['cases']})"


def _comparison_table(report: dict) -> list[str]:
    if not report["comparisons"]:
        return []
    baseline = report["comparisons"][0]["baseline"]
    head = ["configuration", "paired cases", f"`{baseline}`", "this", "difference", "gained", "lost", "p (sign test)"]
    rows = []
    for c in report["comparisons"]:
        diff = None if c["accuracy"] is None else c["accuracy"] - c["baseline_accuracy"]
        rows.append([f"`{c['config']}`", str(c["paired_cases"]), _pct(c["baseline_accuracy"]), _pct(c["accuracy"]),
                     "n/a" if diff is None else f"{100 * diff:+.1f} pt", str(c["gained"]), str(c["lost"]),
                     f"{c['p_value']:.3g}"])
    return [f"Against `{baseline}`, on the cases both scored (gained: right here and wrong there):", "",
            *_table(head, rows)]


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


# --- heatmaps ------------------------------------------------------------------------------------------------


def heatmap_available() -> bool:
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def heatmaps(report: dict) -> dict[str, bytes]:
    """PNG bytes per configuration: accuracy by needle depth (rows) and length (columns)."""
    import io  # noqa: PLC0415

    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    where = {c["id"]: c["where"] for c in report["cases"]}
    lengths = sorted({w["length"] for w in where.values()})
    depths = sorted({w["depth"] for w in where.values()})
    images = {}
    for config in report["configs"]:
        counts = [[(0, 0)] * len(lengths) for _ in depths]  # (correct, scored) per cell
        for o in report["outcomes"]:
            if o["config"] == config["name"] and o["correct"] is not None:
                d, l = depths.index(where[o["case"]]["depth"]), lengths.index(where[o["case"]]["length"])
                counts[d][l] = (counts[d][l][0] + bool(o["correct"]), counts[d][l][1] + 1)
        grid = [[k / n if n else math.nan for k, n in row] for row in counts]
        fig, ax = plt.subplots(figsize=(max(4.8, 2.0 + 0.9 * len(lengths)), 1.4 + 0.45 * len(depths)), dpi=110)
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        for d, row in enumerate(counts):
            for l, (k, n) in enumerate(row):
                ax.text(l, d, f"{k}/{n}" if n else "–", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(lengths)), [f"{n:,}" for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths])
        ax.set_xlabel("document tokens")
        ax.set_ylabel("needle depth")
        ax.set_title(f"{report['model']['name']}\n{config['name']}", fontsize=8)
        fig.colorbar(image, ax=ax, label="accuracy")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        images[config["name"]] = buffer.getvalue()
    return images


def heatmap_name(config_name: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in config_name)
    return f"heatmap-{safe}.png"


# --- files ------------------------------------------------------------------------------------------------------


def write(report: dict, out_dir: Path) -> list[Path]:
    """results.json, report.md and the heatmaps into out_dir, each written whole or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {JSON_NAME: json.dumps(report, indent=1).encode(), MARKDOWN_NAME: markdown(report).encode()}
    if report["kind"] == "niah" and heatmap_available():
        files.update({heatmap_name(name): png for name, png in heatmaps(report).items()})
    written = []
    for name, data in files.items():
        target = out_dir / name
        with temp_paths(target, 1) as (tmp,):
            tmp.write_bytes(data)
            publish(tmp, target)
        written.append(target)
    return written
