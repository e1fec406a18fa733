"""The README's test command is exactly what CI runs, and its main command is present."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ci_command() -> str:
    lines = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.strip() and not l.startswith(("#", "set ", "cd "))]
    assert len(lines) == 1, lines
    return lines[0].strip()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert _ci_command() in readme.splitlines()


# The prompt whose answer tests/test_cli.py checks (tests/test_examples.py, test_amb_runtime.py and
# test_portable_build.py use it too): a fact read from the prompt, whose answer does not depend on
# the CPU's kernels the way world knowledge of the 135M model does (README, Builds).
MAIN_PROMPT = "Note: the door code is 4817. What is the door code?"


def test_readme_main_command_chats_with_the_default_model():
    readme = (ROOT / "README.md").read_text()
    main = [l for l in readme.splitlines() if l.startswith("python3 -m venv .venv") and "pace-gguf chat" in l]
    assert len(main) == 1
    assert main[0].endswith(f'pace-gguf chat --prompt "{MAIN_PROMPT}" --temperature 0')


def test_the_tests_check_the_readme_prompt():
    for name in ("test_cli.py", "test_examples.py", "test_portable_build.py"):
        assert f'PROMPT = "{MAIN_PROMPT}"' in (ROOT / "tests" / name).read_text(), name
