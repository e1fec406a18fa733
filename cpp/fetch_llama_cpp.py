#!/usr/bin/env python3
"""Obtain the pinned llama.cpp source and apply its bug fixes and pace-gguf's patches.

Run by cpp/CMakeLists.txt at configure time (and usable by hand):

    python cpp/fetch_llama_cpp.py --dest build/llama.cpp

1. The llama-cpp-python sdist named in cpp/llama.cpp.lock is fetched with pip, by package name,
   into a cache outside the work tree, and its size and sha256 are checked against the lock.
   A cached archive with the wrong checksum is deleted and fetched again, never used. That part
   is pace_gguf/pinned_source.py, shared with the installed converter and loaded here by path.
2. Its vendored llama.cpp is extracted into a staging folder; cpp/fixes/*.patch (fixes of upstream
   bugs, applied to the stock oracle build too) and then cpp/patches/*.patch (pace-gguf's hooks)
   are applied in name order; a patch that does not apply stops everything with the patch's name.
3. The staging tree is synced into --dest file by file, so that only files whose content changed
   get a new mtime: editing one patch rebuilds what it touches, not the whole library.

Only the standard library is used: this runs before anything of ours is installed.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAMP_NAME = ".pace-source-stamp"


def _load_pinned_source():
    """pace_gguf/pinned_source.py of this checkout, by file path: the package is not installed yet."""
    path = HERE.parent / "pace_gguf" / "pinned_source.py"
    spec = importlib.util.spec_from_file_location("pace_gguf_pinned_source", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pinned = _load_pinned_source()


class FetchError(RuntimeError):
    """A failure with a message meant for the person running the build."""


def extract_subdir(archive: Path, subdir: str, staging: Path) -> None:
    """Extract <top>/<subdir>/ of the sdist into staging, without the submodule's .git file."""
    with tarfile.open(archive) as tar:
        top = tar.getmembers()[0].name.split("/")[0]
        prefix = f"{top}/{subdir}/"
        members = []
        for member in tar.getmembers():
            if not member.name.startswith(prefix):
                continue
            member.name = member.name[len(prefix):]
            if member.name in ("", ".git"):
                continue
            members.append(member)
        if not members:
            raise FetchError(f"{archive.name} has no {subdir}/ folder")
        extract_args = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(staging, members=members, **extract_args)


def apply_patches(patches: list[Path], tree: Path) -> None:
    # GIT_CEILING_DIRECTORIES stops git from finding an enclosing repository (the build folder may
    # sit inside a checkout), so `git apply` patches the tree relative to its own root.
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(tree.parent))
    for patch in patches:
        result = subprocess.run(
            ["git", "apply", "--whitespace=nowarn", str(patch)], cwd=tree, env=env, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise FetchError(f"patch {patch.name} does not apply to the pinned llama.cpp:\n{result.stderr.strip()}")
        print(f"pace-gguf: applied {patch.name}", flush=True)


def sync_tree(src: Path, dest: Path) -> int:
    """Make dest equal to src, touching only files that differ. Returns how many files changed."""
    changed = 0
    wanted = set()
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        wanted.add(rel)
        out = dest / rel
        if path.is_dir():
            out.mkdir(parents=True, exist_ok=True)
        elif not out.is_file() or not filecmp.cmp(path, out, shallow=False):
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
            shutil.copymode(path, out)
            changed += 1
    for path in sorted(dest.rglob("*"), reverse=True):
        rel = path.relative_to(dest)
        if rel not in wanted and rel.name != STAMP_NAME:
            path.rmdir() if path.is_dir() else path.unlink()
            changed += 1
    return changed


def source_stamp(lock: dict, patches: list[Path]) -> str:
    parts = [lock["sha256"]] + [f"{p.parent.name}/{p.name}:{pinned.sha256_file(p)}" for p in patches]
    return "\n".join(parts) + "\n"


def patch_list(fix_dir: Path | None, patch_dir: Path) -> list[Path]:
    """What is applied, in order: the upstream bug fixes, then pace-gguf's patches."""
    fixes = sorted(fix_dir.glob("*.patch")) if fix_dir is not None else []
    return fixes + sorted(patch_dir.glob("*.patch"))


def prepare_source(dest: Path, lock_path: Path, patch_dir: Path, fix_dir: Path | None = HERE / "fixes") -> None:
    lock = json.loads(lock_path.read_text())
    patches = patch_list(fix_dir, patch_dir)
    stamp = source_stamp(lock, patches)
    stamp_file = dest / STAMP_NAME
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        return
    archive = pinned.ensure_archive(lock)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".llama-staging-") as tmp:
        staging = Path(tmp) / "llama.cpp"
        staging.mkdir()
        extract_subdir(archive, lock["subdir"], staging)
        apply_patches(patches, staging)
        changed = sync_tree(staging, dest)
    stamp_file.write_text(stamp)
    print(f"pace-gguf: llama.cpp {lock['llama_cpp_build']} ready in {dest} ({changed} files updated)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, required=True, help="folder to hold the patched llama.cpp tree")
    parser.add_argument("--lock", type=Path, default=HERE / "llama.cpp.lock")
    parser.add_argument("--fixes", type=Path, default=HERE / "fixes", help="upstream bug fixes, applied first")
    parser.add_argument("--patches", type=Path, default=HERE / "patches", help="pace-gguf's patches, applied next")
    args = parser.parse_args(argv)
    try:
        prepare_source(args.dest.resolve(), args.lock, args.patches, args.fixes)
    except (FetchError, pinned.PinnedSourceError, OSError, tarfile.TarError) as exc:
        print(f"pace-gguf: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
