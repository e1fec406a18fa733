#!/usr/bin/env python3
"""Fuzzing under sanitizers: build pace-gguf's native libraries with AddressSanitizer and
UndefinedBehaviorSanitizer, then run under them

  state     tests/fuzz/test_fuzz_state.py     crafted session states (Llama.load_state and
                                              llama_state_seq_set_data), 2 hypothesis targets
  metadata  tests/fuzz/test_fuzz_metadata.py  crafted pace.* GGUF metadata, 1 hypothesis target
  convert   tests/fuzz/test_fuzz_convert.py   `pace-gguf convert`/`reorder` on truncated GGUF and
                                              safetensors inputs (subprocesses), 2 targets
  existing  the op and runtime tests: tests/test_amb_parity.py, test_amb_runtime.py,
            test_amb_sequences.py, test_amb_hardening.py, test_amb_metadata.py
  existing-oom  test_amb_hardening.py's out-of-memory test (see below)

(each fuzz file also replays its part of tests/fuzz/corpus), and print per target the cases run,
the time, the test result and the sanitizer reports. Exit status: 0 when every target passed with
zero sanitizer reports, 1 when there was a report, 2 when tests failed without one.

    .venv/bin/python tests/fuzz/run_sanitized.py                      # build (or reuse) + everything
    .venv/bin/python tests/fuzz/run_sanitized.py --examples 200 --targets state,metadata
    .venv/bin/python tests/fuzz/run_sanitized.py --source-tree        # test this checkout's pace_gguf

--examples N is per hypothesis target (default 3400: 3 targets, over 10,000 cases in all);
--convert-examples N per converter target (default 40). --source-tree puts the checkout first on
PYTHONPATH (it must then be importable: pace_gguf/convert and pace_gguf/llama.cpp.lock linked in, as
in a development checkout); without it, the installed pace_gguf runs, on the sanitized libraries.

The build: `cmake -S cpp -B <build dir> -G Ninja` with -fsanitize=address,undefined, GGML_NATIVE=OFF,
GGML_OPENMP=OFF, RelWithDebInfo, then `cmake --build --target llama ggml-cpu` (niced). The build
folder (default <user cache>/pace-gguf/asan-build, --build-dir) is kept: a cold build takes 6-10
minutes on 2 cores, a rebuild after editing cpp/ only what changed. The libraries in <build>/bin
are loaded through PACE_GGUF_LIB_DIR.

The run environment: Python is not instrumented, so libasan and libstdc++ are preloaded
(LD_PRELOAD), leak detection is off (Python keeps memory until exit by design), the first report
aborts the process (halt_on_error, abort_on_error); ASan writes its reports to
<build>/sanitizer-logs/<target>/report.<pid> (log_path, children such as the converter and its
quantizer included), UBSan to stderr, which lands in <target>/pytest.log (pytest runs with -s).
GGML_NO_BACKTRACE=1 keeps ggml from attaching gdb. When a report kills a fuzz target, the case it
was running is in <target>/last-case.json; for the state target, every case in order (cases share
a context) is in <target>/cases.jsonl. A case that was found this way belongs, minimized, in
tests/fuzz/corpus (see the fuzz files for the formats), where every test run replays it.

test_amb_hardening.py::test_failed_reconfiguration_keeps_the_old_banks runs out of memory on purpose
(RLIMIT_AS): it runs as its own target, existing-oom, with allocator_may_return_null=1 (malloc then
returns NULL as libc's does, instead of an ASan "out of memory" report).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FUZZ = REPO / "tests" / "fuzz"
SANITIZE = "-fsanitize=address,undefined -fno-omit-frame-pointer"
TARGETS = {
    "state": ["tests/fuzz/test_fuzz_state.py"],
    "metadata": ["tests/fuzz/test_fuzz_metadata.py"],
    "convert": ["tests/fuzz/test_fuzz_convert.py"],
    "existing": ["tests/test_amb_parity.py", "tests/test_amb_runtime.py", "tests/test_amb_sequences.py",
                 "tests/test_amb_hardening.py", "tests/test_amb_metadata.py"],
    "existing-oom": ["tests/test_amb_hardening.py::test_failed_reconfiguration_keeps_the_old_banks"],
}
# The test that runs out of memory on purpose (RLIMIT_AS) needs malloc to return NULL, as libc's
# does, where ASan would report "out of memory": it runs alone with allocator_may_return_null=1
# (elsewhere that stays off, so that a size computed too large is still reported).
OOM_TEST = TARGETS["existing-oom"][0]
PYTEST_SUMMARY = re.compile(r"\d+ (passed|failed|error|errors|skipped|deselected)\b.* in [\d.]+s")
REPORT_START = re.compile(r"ERROR: AddressSanitizer|: runtime error: |ERROR: LeakSanitizer|AddressSanitizer:DEADLYSIGNAL")


def default_build_dir() -> Path:
    spec = importlib.util.spec_from_file_location("pace_pinned_source", REPO / "pace_gguf" / "pinned_source.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cache_dir() / "asan-build"


def build(build_dir: Path, jobs: int) -> Path:
    """Configure (once) and build libllama + libggml-cpu with the sanitizers; returns the lib folder."""
    nice = ["nice", "-n", "10"] if sys.platform != "win32" else []
    if not (build_dir / "build.ninja").exists():
        cmd = nice + ["cmake", "-S", str(REPO / "cpp"), "-B", str(build_dir), "-G", "Ninja",
                      "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DGGML_NATIVE=OFF", "-DGGML_OPENMP=OFF",
                      f"-DPython_EXECUTABLE={sys.executable}",
                      f"-DCMAKE_C_FLAGS={SANITIZE}", f"-DCMAKE_CXX_FLAGS={SANITIZE}",
                      f"-DCMAKE_SHARED_LINKER_FLAGS={SANITIZE}", f"-DCMAKE_EXE_LINKER_FLAGS={SANITIZE}"]
        print("+", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    cmd = nice + ["cmake", "--build", str(build_dir), "--target", "llama", "ggml-cpu", "-j", str(jobs)]
    print("+", shlex.join(cmd), flush=True)
    start = time.monotonic()
    subprocess.run(cmd, check=True)
    print(f"build: {time.monotonic() - start:.0f} s", flush=True)
    lib = build_dir / "bin"
    if not (lib / "libllama.so").exists():
        raise SystemExit(f"run_sanitized: no libllama.so in {lib} after the build")
    return lib


def compiler(build_dir: Path) -> str:
    for line in (build_dir / "CMakeCache.txt").read_text().splitlines():
        if line.startswith("CMAKE_CXX_COMPILER:"):
            return line.split("=", 1)[1]
    return "c++"


def runtime_library(cxx: str, name: str) -> str:
    path = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True, check=True).stdout.strip()
    if not os.path.isabs(path):
        raise SystemExit(f"run_sanitized: {cxx} does not know {name} (is the sanitizer runtime installed?)")
    return os.path.realpath(path)


def sanitizer_env(lib: Path, build_dir: Path, log_dir: Path, source_tree: bool) -> dict:
    cxx = compiler(build_dir)
    preload = [runtime_library(cxx, "libasan.so"), runtime_library(cxx, "libstdc++.so")]
    env = dict(os.environ)
    env.update({
        "LD_PRELOAD": ":".join(preload + ([env["LD_PRELOAD"]] if env.get("LD_PRELOAD") else [])),
        "ASAN_OPTIONS": f"detect_leaks=0:halt_on_error=1:abort_on_error=1:log_path={log_dir}/report",
        "UBSAN_OPTIONS": f"print_stacktrace=1:halt_on_error=1:abort_on_error=1:log_path={log_dir}/report",
        "GGML_NO_BACKTRACE": "1",
        "PACE_GGUF_LIB_DIR": str(lib),
        "PACE_FUZZ_CASE_FILE": str(log_dir / "last-case.json"),
        "PACE_FUZZ_CASE_LOG": str(log_dir / "cases.jsonl"),
        "PACE_FUZZ_STATS": str(log_dir / "cases.json"),
        "PYTHONFAULTHANDLER": "1",
    })
    if source_tree:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def reports_in(log_dir: Path, output: str) -> list[str]:
    """Sanitizer reports: log_path files (report.<pid>: ASan's), and those in the output (gcc's
    UBSan runtime ignores log_path and writes to stderr, which pytest -s passes through)."""
    found = [p.read_text(errors="replace") for p in sorted(log_dir.glob("report.*"))]
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if REPORT_START.search(line):
            found.append("\n".join(lines[i:i + 60]))
    return found


def run_target(name: str, args, lib: Path, log_root: Path) -> dict:
    log_dir = log_root / name
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.iterdir():
        old.unlink()
    env = sanitizer_env(lib, args.build_dir, log_dir, args.source_tree)
    env["PACE_FUZZ_EXAMPLES"] = str(args.examples)
    env["PACE_FUZZ_CONVERT_EXAMPLES"] = str(args.convert_examples)
    if name == "existing-oom":
        env["ASAN_OPTIONS"] += ":allocator_may_return_null=1"
    if name != "state":  # the whole-state fuzzer is the only one whose cases must be logged in order
        env.pop("PACE_FUZZ_CASE_LOG")
    # -s: no output capture, so that what a sanitizer writes to stderr before it aborts the process
    # reaches the log (a capture file would be lost with the process)
    cmd = [sys.executable, "-m", "pytest", *TARGETS[name], "-q", "-s", "-p", "no:cacheprovider", "-rfE",
           *([f"--deselect={OOM_TEST}"] if name == "existing" else []), *args.pytest_args]
    print(f"\n=== {name}: {shlex.join(cmd)}", flush=True)
    start = time.monotonic()
    with open(log_dir / "pytest.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = []
        for line in proc.stdout:
            log.write(line)
            output.append(line)
            if args.verbose:
                print(line, end="", flush=True)
        rc = proc.wait()
    seconds = time.monotonic() - start
    text = "".join(output)
    reports = reports_in(log_dir, text)
    stats = json.loads((log_dir / "cases.json").read_text()) if (log_dir / "cases.json").exists() else {}
    ends = [ln.strip("= ") for ln in text.splitlines() if PYTEST_SUMMARY.search(ln)]
    summary = ends[-1] if ends and rc >= 0 else f"killed by signal {-rc}" if rc < 0 else f"exit {rc}"
    result = {"target": name, "rc": rc, "seconds": seconds, "reports": len(reports), "cases": stats,
              "summary": summary, "log": str(log_dir)}
    print(f"--- {name}: exit {rc}, {seconds:.0f} s, {len(reports)} sanitizer report(s); {result['summary']}")
    for target, outcomes in sorted(stats.items()):
        print(f"    {target}: {sum(outcomes.values())} cases ({', '.join(f'{k} {v}' for k, v in sorted(outcomes.items()))})")
    if rc != 0 and not args.verbose:
        print("\n".join(text.splitlines()[-40:]))
    for report in reports:
        print(f"\n!!! sanitizer report ({name}):\n{report[:12000]}")
    if reports and (log_dir / "last-case.json").exists():
        print(f"!!! the case that was running ({log_dir / 'last-case.json'}):\n{(log_dir / 'last-case.json').read_text()}")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", type=Path, default=None, help="sanitized build folder (kept between runs)")
    parser.add_argument("--no-build", action="store_true", help="use the build folder as it is")
    parser.add_argument("--jobs", type=int, default=2, help="build jobs (default 2)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    parser.add_argument("--examples", type=int, default=3400, help="cases per hypothesis target (default 3400)")
    parser.add_argument("--convert-examples", type=int, default=40, help="cases per converter target (default 40)")
    parser.add_argument("--source-tree", action="store_true", help="import pace_gguf from this checkout")
    parser.add_argument("--verbose", action="store_true", help="stream pytest's output")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args(argv)
    args.build_dir = (args.build_dir or default_build_dir()).expanduser().resolve()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    if sys.platform != "linux":
        parser.error("the sanitized run is set up for Linux (LD_PRELOAD of gcc's libasan)")

    start = time.monotonic()
    if args.no_build:
        lib = args.build_dir / "bin"
        if not (lib / "libllama.so").exists():
            parser.error(f"--no-build: no libllama.so in {lib}")
    else:
        lib = build(args.build_dir, args.jobs)
    log_root = args.build_dir / "sanitizer-logs"
    results = [run_target(name, args, lib, log_root) for name in targets]

    total_cases = sum(sum(o.values()) for r in results for t, o in r["cases"].items() if t != "baseline")
    n_reports = sum(r["reports"] for r in results)
    failed = [r["target"] for r in results if r["rc"] != 0]
    print("\n=== summary (ASan + UBSan)")
    for r in results:
        cases = sum(sum(o.values()) for t, o in r["cases"].items() if t != "baseline")
        print(f"  {r['target']:12s} exit {r['rc']:3d}  {r['seconds']:6.0f} s  {cases:6d} cases  {r['reports']} report(s)  "
              f"{r['summary']}")
    print(f"  total: {total_cases} fuzz and corpus cases, {n_reports} sanitizer report(s), "
          f"{time.monotonic() - start:.0f} s; logs in {log_root}")
    if n_reports:
        return 1
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
