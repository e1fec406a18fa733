"""The evaluation harness (pace_gguf.eval): scoring, configuration specs, the NIAH grid, L-Eval
rows, the report, and a tiny real run of `pace-gguf eval` on the default model. Full evaluations
are commands (see RESULTS.md), not tests."""

from __future__ import annotations

import json

import pytest

from pace_gguf import machine
from pace_gguf.errors import PaceError
from pace_gguf.eval import cases as eval_cases
from pace_gguf.eval import report, scoring
from pace_gguf.eval.configs import parse_config
from pace_gguf.eval.harness import Outcome
from pace_gguf.amb import PaceConfigError

QUESTION = "Why did they leave?\n (A) They were careless. (B) Their subconscious knew. (C) Nothing at all (D) Bored"


# --- scoring ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction, answers, expected", [
    ("The code is 7291.", ["7291"], True),
    ("The code is 72910.", ["7291"], False),           # whole words only
    ("SMOKED   paprika!", ["smoked paprika"], True),   # case, spacing, punctuation
    ("It is the Silver Heron", ["Silver Heron"], True),
    ("paprika", ["smoked paprika"], False),
    ("", ["7291"], False),
])
def test_contains_match(prediction, answers, expected):
    assert scoring.contains_match(prediction, answers) is expected


def test_exact_match_and_f1_follow_squad_normalisation():
    assert scoring.exact_match("The Silver Heron.", ["silver heron"])
    assert not scoring.exact_match("a silver heron boat", ["silver heron"])
    assert scoring.token_f1("silver heron boat", ["silver heron"]) == pytest.approx(0.8)
    assert scoring.token_f1("nothing", ["silver heron"]) == 0.0
    assert scoring.token_f1("x", ["no", "x y"]) == pytest.approx(2 / 3)  # the best reference


@pytest.mark.parametrize("prediction, expected", [
    ("(B) Their subconscious", "B"), ("B", "B"), ("The answer is C.", "C"), ("Answer: D", "D"),
    ("They were careless, I think", "A"),  # no letter: the option whose words it repeats
    ("A man came by", None),               # neither a marked letter nor an option's words
    ("I. e. nothing at all", "C"),         # "I." is not an option letter
    ("D\n\nAnswer: C\n\nAnswer: B", "D"),   # the first answer counts, not the rambling after it
])
def test_chosen_option(prediction, expected):
    assert scoring.chosen_option(prediction, QUESTION) == expected


def test_score_picks_multiple_choice_from_the_references():
    assert scoring.is_multiple_choice(["(B) Their subconscious knew."])
    assert not scoring.is_multiple_choice(["Boston"])
    assert scoring.score("B.", ["(B) Their subconscious knew."], QUESTION) == {"kind": "choice", "chosen": "B",
                                                                              "correct": True}
    wrong = scoring.score("(A)", ["(B) Their subconscious knew."], QUESTION)
    assert wrong["correct"] is False
    text = scoring.score("It was April 25, 2018", ["April 25 , 2018"])
    assert text["kind"] == "text" and text["correct"] and not text["exact"] and 0 < text["f1"] < 1


# --- configurations ---------------------------------------------------------------------------------------------


def test_config_specs():
    assert parse_config("off").pace == {"enabled": False} and parse_config("off").strategy == "direct"
    on = parse_config("on")
    assert on.pace == {"layers": "default"} and on.pace_for(30)["layers"] == (12, 26)
    assert len(on.pace_for(18)["layers"]) == 2 and max(on.pace_for(18)["layers"]) < 18
    paper = parse_config("layers=12,26,mode=paper,theta_high=0.7,strategy=stream")
    assert paper.pace == {"layers": (12, 26), "mode": "paper", "theta_high": 0.7}
    assert paper.strategy == "stream" and paper.amb and paper.name == "layers=12,26,mode=paper,theta_high=0.7,strategy=stream"
    assert parse_config("on,alpha=0.3").pace == {"layers": "default", "alpha": 0.3}
    assert parse_config("off,strategy=map-reduce").strategy == "map-reduce"


@pytest.mark.parametrize("spec, fragment", [
    ("offf", "not off, on or key=value"), ("layers=12,x", "not off, on"), ("speed=3", "unknown setting 'speed'"),
    ("theta_high=high", "theta_high='high' is not a valid"), ("strategy=fast", "strategy must be one of"),
    ("off,,on", "empty item"), ("strategy=error", "strategy must be one of"),
])
def test_bad_config_specs_say_what_is_wrong(spec, fragment):
    with pytest.raises(PaceConfigError, match=fragment.replace("(", r"\(")):
        parse_config(spec)


# --- cases ----------------------------------------------------------------------------------------------------------


def test_lengths_and_depths():
    assert eval_cases.parse_lengths("2k, 1024,7k") == (1024, 2048, 7168)
    assert eval_cases.parse_depths("100,0,50") == (0.0, 50.0, 100.0)
    for bad in ("", "0", "2m", "-3"):
        with pytest.raises(PaceError):
            eval_cases.parse_lengths(bad)
    for bad in ("", "101", "-1", "x"):
        with pytest.raises(PaceError):
            eval_cases.parse_depths(bad)


def test_niah_grid(default_llm, long_document):
    haystack = long_document(3000, seed=3)
    lengths, depths = (256, 700), (0.0, 50.0, 100.0)
    grid = eval_cases.niah_cases(default_llm, haystack, eval_cases.DEFAULT_NEEDLES, lengths, depths, repeats=2)
    assert len(grid) == len(lengths) * len(depths) * 2 and len({c.id for c in grid}) == len(grid)
    assert {c.where["needle"] for c in grid} == set(range(len(eval_cases.DEFAULT_NEEDLES)))  # all in turn
    for case in grid:
        needle = eval_cases.DEFAULT_NEEDLES[case.where["needle"]]
        assert case.document.count(needle.text) == 1 and case.question in needle.questions
        n_tokens = len(default_llm.tokenize(case.document.encode(), add_bos=False, special=False))
        assert abs(n_tokens - case.where["length"]) <= 4, (case.id, n_tokens)
        offset = case.document.index(needle.text) / len(case.document)
        expected = case.where["depth"] / 100
        assert abs(offset - expected) < 0.15, (case.id, offset)
    with pytest.raises(PaceError, match="fewer than the longest length"):
        eval_cases.niah_cases(default_llm, haystack, eval_cases.DEFAULT_NEEDLES, (100_000,), depths)


def test_haystack_splits_take_alternate_files(tmp_path):
    for i in range(4):
        (tmp_path / f"essay{i}.txt").write_text(f"Essay number {i}.")
    (tmp_path / "notes.md").write_text("not a haystack file")
    assert eval_cases.load_haystack(tmp_path, "dev") == "Essay number 0.\n\nEssay number 2."
    assert eval_cases.load_haystack(tmp_path, "test") == "Essay number 1.\n\nEssay number 3."
    assert "notes" not in eval_cases.load_haystack(tmp_path)
    with pytest.raises(PaceError, match="no .txt files"):
        eval_cases.load_haystack(tmp_path / "nothing-here" if False else _empty(tmp_path))


def _empty(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_needles_file(tmp_path):
    path = tmp_path / "needles.jsonl"
    path.write_text(json.dumps({"needle": "The vault key is blue.", "question": ["Which key?", "What colour?"],
                                "answer": "blue"}) + "\n\n")
    (needle,) = eval_cases.load_needles(path)
    assert needle.questions == ("Which key?", "What colour?") and needle.answers == ("blue",)
    path.write_text('{"needle": "x", "question": "q"}\n')
    with pytest.raises(PaceError, match=r"needles.jsonl:1: expected"):
        eval_cases.load_needles(path)
    path.write_text("{not json\n")
    with pytest.raises(PaceError, match=r"needles.jsonl:1: not JSON"):
        eval_cases.load_needles(path)


def _leval_file(tmp_path, rows):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_leval_rows_splits_and_limits(tmp_path):
    rows = [{"input": f"Document {i}.", "instructions": [f"Q{i}a (A) x (B) y", f"Q{i}b (A) x (B) y"],
             "outputs": ["(A) x", "(B) y"]} for i in range(4)]
    path = _leval_file(tmp_path, rows)
    everything = eval_cases.leval_cases(path)
    assert len(everything) == 8 and everything[0].question.endswith(eval_cases.MULTIPLE_CHOICE_HINT)
    assert [c.where["document"] for c in eval_cases.leval_cases(path, "dev")] == [0, 0, 2, 2]
    assert [c.where["document"] for c in eval_cases.leval_cases(path, "test", per_document=1)] == [1, 3]
    assert len(eval_cases.leval_cases(path, limit=3)) == 3
    text = _leval_file(tmp_path, [{"input": "Doc.", "instructions": ["When?"], "outputs": [["April", "Apr"]]}])
    assert eval_cases.leval_cases(text)[0].answers == ("April", "Apr")


@pytest.mark.parametrize("row", [{"input": "x", "instructions": ["q"]}, {"input": "", "instructions": ["q"], "outputs": ["a"]},
                                 {"input": "x", "instructions": ["q", "r"], "outputs": ["a"]},
                                 {"input": "x", "instructions": ["q"], "outputs": [3]}])
def test_bad_leval_rows_name_their_line(tmp_path, row):
    path = _leval_file(tmp_path, [{"input": "fine", "instructions": ["q"], "outputs": ["a"]}, row])
    with pytest.raises(PaceError, match=r"data.jsonl:2: not an L-Eval row"):
        eval_cases.leval_cases(path)


# --- report ----------------------------------------------------------------------------------------------------------


def _outcome(case, config, correct):
    return Outcome(case, config, "answer", correct, {"correct": correct}, "direct", 100, 120, 0.5,
                   skipped=None if correct is not None else "does not fit")


def _synthetic_report(complete=True):
    grid = [eval_cases.Case(f"L{n}-D{d}-R0", "doc", "q?", ("a",), {"length": n, "depth": d, "needle": 0, "repeat": 0})
            for n in (1024, 2048) for d in (0.0, 100.0)]
    configs = [parse_config("off"), parse_config("on")]
    outcomes = [_outcome(c.id, "off", c.where["length"] == 1024) for c in grid]
    outcomes += [_outcome(c.id, "on", True) for c in grid[:3]] + [_outcome(grid[3].id, "on", None)]
    meta = {"title": "t", "command": "pace-gguf eval niah", "machine": machine.describe(),
            "model": {"name": "m.gguf", "architecture": "llama", "n_layer": 30, "n_ctx": 8192, "n_ctx_train": 8192},
            "settings": {}}
    return report.build("niah", meta, configs, grid, outcomes, complete)


def test_report_summary_and_paired_comparison():
    built = _synthetic_report()
    off, on = built["summary"]["off"], built["summary"]["on"]
    assert (off["correct"], off["cases"], off["skipped"]) == (2, 4, 0)
    assert (on["correct"], on["cases"], on["skipped"]) == (3, 3, 1)
    assert off["by_length"]["1024"] == {"cases": 2, "correct": 2, "accuracy": 1.0}
    (comparison,) = built["comparisons"]
    assert comparison == {"config": "on", "baseline": "off", "paired_cases": 3, "gained": 1, "lost": 0,
                          "baseline_accuracy": pytest.approx(2 / 3), "accuracy": 1.0, "p_value": 1.0}
    assert json.loads(json.dumps(built))["schema"] == report.SCHEMA


def test_sign_test():
    assert report.sign_test(0, 0) == 1.0
    assert report.sign_test(5, 0) == pytest.approx(2 / 32)
    assert report.sign_test(3, 3) == 1.0
    assert report.sign_test(10, 1) == pytest.approx(2 * 12 / 2048)


def test_report_files(tmp_path):
    built = _synthetic_report(complete=False)
    written = report.write(built, tmp_path)
    names = {p.name for p in written}
    assert {"results.json", "report.md"} <= names
    text = (tmp_path / "report.md").read_text()
    assert "Incomplete" in text and "| `on` | 3 | 66.7% | 100.0% | +33.3 pt | 1 | 0 |" in text
    if report.heatmap_available():
        for config in ("off", "on"):
            assert (tmp_path / report.heatmap_name(config)).read_bytes().startswith(b"\x89PNG")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


# --- a tiny real run -------------------------------------------------------------------------------------------------


def test_eval_niah_cli_tiny_run(run_cli, tmp_path, long_document):
    haystack = tmp_path / "haystack.txt"
    haystack.write_text(long_document(1500, seed=5))
    out = tmp_path / "out"
    result = run_cli("eval", "niah", "--haystack", str(haystack), "--lengths", "200,400", "--depths", "0,100",
                     "--config", "off", "--config", "layers=12,26", "--config", "off,strategy=stream",
                     "--max-tokens", "24", "--n-ctx", "1024", "--threads", "2", "--out", str(out), timeout=600)
    assert result.returncode == 0, result.stderr
    built = json.loads((out / "results.json").read_text())
    assert built["complete"] and built["kind"] == "niah" and built["model"]["n_layer"] == 30
    assert {"cpu_model", "cpu_features", "build_id"} <= set(built["machine"])
    assert len(built["outcomes"]) == 4 * 3 and all(o["correct"] is not None for o in built["outcomes"])
    assert {o["strategy"] for o in built["outcomes"]} == {"direct", "stream"}
    assert built["summary"]["layers=12,26"]["cases"] == 4
    assert "| `layers=12,26` |" in (out / "report.md").read_text() and "| `off` |" in result.stdout
    # The planted fact at 200 tokens is within reach of the 135M model with the AMB off.
    assert built["summary"]["off"]["by_length"]["200"]["correct"] >= 1


def test_eval_longdoc_cli_tiny_run(run_cli, tmp_path, long_document):
    document = long_document(300, fact="The lighthouse keeper's cat is named Biscuit.", seed=2)
    data = _leval_file(tmp_path, [{"input": document, "instructions": ["What is the lighthouse keeper's cat named?"],
                                   "outputs": ["Biscuit"]}])
    out = tmp_path / "out"
    result = run_cli("eval", "longdoc", "--data", str(data), "--config", "off", "--config", "on", "--max-tokens",
                     "16", "--n-ctx", "1024", "--threads", "2", "--out", str(out), timeout=600)
    assert result.returncode == 0, result.stderr
    built = json.loads((out / "results.json").read_text())
    assert [o["config"] for o in built["outcomes"]] == ["off", "on"]
    assert built["summary"]["off"]["f1"] is not None and built["outcomes"][0]["scores"]["kind"] == "text"


@pytest.mark.parametrize("args, fragment", [
    (("niah", "--haystack", "/nonexistent/hay"), "/nonexistent/hay"),
    (("niah", "--haystack", "{tmp}", "--config", "layers=12,x"), "not off, on or key=value"),
    (("niah", "--haystack", "{tmp}", "--config", "off", "--config", "off"), "given twice"),
    (("longdoc", "--data", "{tmp}/bad.jsonl"), "bad.jsonl:1: not JSON"),
])
def test_eval_cli_bad_input_is_one_line(run_cli, assert_one_line_error, tmp_path, args, fragment):
    (tmp_path / "hay.txt").write_text("Some text. " * 50)
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run_cli("eval", *args, "--out", str(tmp_path / "out"))
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "out").exists()


def test_eval_interrupted_keeps_what_finished(cli_command, tmp_path, long_document):
    """Ctrl-C after the first run: exit 130, and results.json holds that run, marked incomplete."""
    import signal
    import subprocess

    haystack = tmp_path / "haystack.txt"
    haystack.write_text(long_document(1500, seed=7))
    out = tmp_path / "out"
    proc = subprocess.Popen([*cli_command, "eval", "niah", "--haystack", str(haystack), "--lengths", "300,600,900",
                             "--depths", "0,50,100", "--config", "off", "--max-tokens", "8", "--n-ctx", "1024",
                             "--threads", "2", "--out", str(out)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    try:
        for line in proc.stderr:
            if line.startswith("pace-gguf: run 1/9"):
                break
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == 130, rest
    finally:
        proc.kill()
    built = json.loads((out / "results.json").read_text())
    assert not built["complete"] and 1 <= len(built["outcomes"]) < 9
    assert "Incomplete" in (out / "report.md").read_text()


def test_publish_writes_results_md_from_reports(tmp_path, monkeypatch):
    """benchmarks/publish.py: RESULTS.md from the reports present, the sweep's best chosen from its
    AMB-on configurations, each --config given once."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("publish", Path(__file__).parents[1] / "benchmarks" / "publish.py")
    publish = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(publish)
    monkeypatch.setattr(publish, "ROOT", tmp_path)
    monkeypatch.setattr(publish, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(publish, "EVAL", tmp_path / "results" / "eval")
    built = _synthetic_report()
    for step in ("sweep", "niah-smollm2"):
        report.write(built, tmp_path / "results" / "eval" / step)
    assert publish.best_of_sweep() == "on"
    assert publish._dedupe_configs(["niah", "--config", "off", "--config", "on", "--config", "on", "--x"]) == [
        "niah", "--config", "off", "--config", "on", "--x"]
    text = publish.write_results_md().read_text()
    assert "| sweep | m.gguf | `on` | 100.0% (3/3) | +33.3 pt | 1 / 0 | 1 |" in text
    assert "`on` vs `off`: more cases gained than lost (1 gained, 0 lost of 3 paired cases; sign test p = 1, " \
           "within chance)" in text
    assert "## Evaluation `niah-smollm2`" in text and "\n### t\n" in text  # the step's report, headings demoted


def test_rescore_scores_stored_answers_again(tmp_path, run_cli, assert_one_line_error):
    built = _synthetic_report()
    built["cases"][0]["answers"] = ["answer"]  # the stored prediction is "answer": now right under both
    new = report.rescored(json.loads(json.dumps(built)))
    assert [o["correct"] for o in new["outcomes"] if o["case"] == built["cases"][0]["id"]] == [True, True]
    # the other references ("a") normalise to nothing, which matches nothing
    assert new["summary"]["off"]["correct"] == 1 and new["summary"]["on"]["correct"] == 1
    assert new["cases"] == built["cases"]
    assert [o["correct"] for o in new["outcomes"]].count(None) == 1  # a skipped case stays skipped
    (tmp_path / "results.json").write_text("{broken")
    assert_one_line_error(run_cli("eval", "rescore", str(tmp_path)), "not a pace-gguf evaluation result")
