#!/usr/bin/env python3
"""Build tools of stock llama.cpp (the pinned source with cpp/fixes, without pace-gguf's patches)
into the user cache, for benchmarks that measure with upstream's own programs.

    python cpp/build_tools.py llama-perplexity [...]   # prints the path of each tool

The tools read standard GGUF files: CE-reordered models are standard GGUFs, so upstream's tools
measure them as they measure any model. Built with the same CMAKE_ARGS as the package, in a build
folder of their own (the stock oracle's stays library-only), and rebuilt incrementally.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build_stock  # noqa: E402


def default_build_dir() -> Path:
    stock = build_stock.default_build_dir()
    return stock.parent.parent / "stock-tools" / stock.name


def build_tools(names: list[str], build_dir: Path | None = None) -> list[Path]:
    """Build the named tools (cmake targets, e.g. llama-perplexity); their executables' paths."""
    build_dir = build_dir or default_build_dir()
    build_stock.build(build_dir, ("-DPACE_STOCK=ON", "-DPACE_UPSTREAM_TOOLS=ON"), tuple(names))
    paths = []
    for name in names:
        found = sorted(p for p in build_dir.rglob(name) if p.is_file())
        if not found:
            raise SystemExit(f"the build finished but no {name} was found under {build_dir}")
        paths.append(found[0])
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tools", nargs="+", help="cmake targets of llama.cpp's tools, e.g. llama-perplexity")
    parser.add_argument("--build-dir", type=Path, default=None)
    args = parser.parse_args()
    for path in build_tools(args.tools, args.build_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
