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


def test_readme_main_command_chats_with_the_default_model():
    readme = (ROOT / "README.md").read_text()
    main = [l for l in readme.splitlines() if l.startswith("python3 -m venv .venv") and "pace-gguf chat" in l]
    assert len(main) == 1
