"""The converter on truncated inputs: `pace-gguf convert` / `reorder` of a GGUF cut at any offset, and
`convert` of a Hugging Face folder whose model.safetensors is cut at any offset, must end with exit
status 1, exactly one `pace-gguf: error:` line, no traceback, and nothing left in the output folder.

Each case runs the CLI as a subprocess (the environment, sanitizer settings included, passes on to
it and to llama.cpp's quantizer under it), so this target is slow: $PACE_FUZZ_CONVERT_EXAMPLES cases
per input kind (default 4; tests/fuzz/run_sanitized.py runs a few dozen).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pace_fuzz import CORPUS, count, record  # noqa: E402  (tests/fuzz/pace_fuzz.py)

EXAMPLES = max(1, int(os.environ.get("PACE_FUZZ_CONVERT_EXAMPLES", "4")))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
COMMANDS = {
    "convert": ["convert", "--quant", "Q8_0", "--experts", "8"],
    "reorder": ["reorder", "--experts", "8"],
}


@dataclass
class ConvertCase:
    """What corpus files (corpus/convert-*.json) hold: the input kind, the command and the cut."""

    source: str = "gguf"      # "gguf": the tiny GGUF; "hf": model.safetensors of a tiny HF folder
    command: str = "convert"  # a key of COMMANDS ("hf": convert only)
    length: int = 0           # bytes kept
    note: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def run_cli(args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # the CLI of this checkout (tests run the source tree; PYTHONPATH reaches the child too)
    return subprocess.run([sys.executable, "-m", "pace_gguf", *args, "--no-progress"], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


def check_refused(result: subprocess.CompletedProcess, out_dir) -> None:
    # a sanitizer report of the child (UBSan writes to its stderr) is shown whole, for run_sanitized.py
    for marker in ("runtime error:", "ERROR: AddressSanitizer"):
        assert marker not in result.stderr, result.stderr[result.stderr.index(marker) - 300:][:8000]
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("pace-gguf: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert list(out_dir.iterdir()) == [], list(out_dir.iterdir())


def run_case(case: ConvertCase, src_path, work, target: str) -> None:
    record(case)
    data = src_path.read_bytes()
    assert 0 <= case.length < len(data)
    out_dir = work / "out"
    out_dir.mkdir(exist_ok=True)
    for stale in out_dir.iterdir():
        stale.unlink()
    if case.source == "gguf":
        bad = work / "cut.gguf"
        bad.write_bytes(data[: case.length])
        src = bad
    else:
        import shutil  # noqa: PLC0415

        src = work / "hf"
        if src.exists():
            shutil.rmtree(src)
        shutil.copytree(src_path.parent, src)
        (src / src_path.name).write_bytes(data[: case.length])
    result = run_cli([COMMANDS[case.command][0], str(src), "-o", str(out_dir / "o.gguf"), *COMMANDS[case.command][1:]],
                     cwd=work)
    check_refused(result, out_dir)
    count(target, case.source + " " + case.command)


@pytest.fixture(scope="module")
def tiny_hf_model(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from pace_gguf.convert.tiny import make_tiny_hf

    folder = make_tiny_hf("llama", tmp_path_factory.mktemp("hf") / "hf", seed=1, hidden=32, intermediate=64)
    return folder / "model.safetensors"


def interesting_cuts(size: int, header: int) -> list[int]:
    """Offsets around the structure: magic/version/counts, the end of the header, the last bytes."""
    return sorted({c for c in (0, 1, 3, 4, 7, 8, 12, 16, 20, 23, 24, 25, 32, header - 1, header, header + 1,
                              size // 2, size - 32, size - 1) if 0 <= c < size})


@SETTINGS
@given(data=st.data())
def test_fuzz_convert_truncated_gguf(tiny_model_path, tmp_path_factory, data):
    size = tiny_model_path.stat().st_size
    header = size - 100_000 if size > 100_000 else size // 4  # roughly the KV section's end
    length = data.draw(st.sampled_from(interesting_cuts(size, header)) | st.integers(0, size - 1), label="length")
    command = data.draw(st.sampled_from(sorted(COMMANDS)), label="command")
    run_case(ConvertCase("gguf", command, length), tiny_model_path, tmp_path_factory.mktemp("cut"),
             "convert: truncated GGUF")


@SETTINGS
@given(data=st.data())
def test_fuzz_convert_truncated_safetensors(tiny_hf_model, tmp_path_factory, data):
    raw = tiny_hf_model.read_bytes()
    size, header = len(raw), 8 + int.from_bytes(raw[:8], "little")
    length = data.draw(st.sampled_from(interesting_cuts(size, header)) | st.integers(0, size - 1), label="length")
    run_case(ConvertCase("hf", "convert", length), tiny_hf_model, tmp_path_factory.mktemp("cut"),
             "convert: truncated safetensors")


@pytest.mark.parametrize("path", sorted(CORPUS.glob("convert-*.json")), ids=lambda p: p.stem)
def test_convert_corpus(path, tiny_model_path, request, tmp_path):
    case = ConvertCase(**json.loads(path.read_text()))
    src = tiny_model_path if case.source == "gguf" else request.getfixturevalue("tiny_hf_model")
    run_case(case, src, tmp_path, "corpus replay")
