#!/usr/bin/env python3
"""Run llama.cpp's test-backend-ops with pace-gguf's GGML_OP_AMB cases on every backend a build has.

    python cpp/backend_ops.py [--build-dir DIR] [--rpc] [--cuda-host] [--quick]

test-backend-ops compares each backend device that supports the op with the CPU backend, the
oracle (cases: cpp/tests/test-backend-ops-amb.inc). DIR is a CMake build folder of cpp/ (default: the
package's, build/<wheel tag>, which `pip install .` leaves; cpp/build_vulkan.py's folder for the
Vulkan build); the target is built there first (EXCLUDE_FROM_ALL). --rpc also starts a
`pace-gguf rpc-server` on 127.0.0.1 (a free port) and adds it as a device. --cuda-host adds
"CUDAHost0", the CUDA kernels' source run on host fibers (cpp/tests/amb-cuda-host.h: their check on
machines without a GPU; Linux builds of the tool only). --quick keeps the cases of
widths 64 and 1536. Prints test-backend-ops' report and exits non-zero unless every device that ran
the op passed every case. CPU-only builds without --rpc have no device to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = "n_ff=(64|1536),"
# test-backend-ops' summary per device, e.g. "  26/26 tests passed"
PASSED = re.compile(r"^\s*(\d+)/(\d+) tests passed", re.M)


def package_build_dir() -> Path:
    dirs = sorted(p.parent for p in (ROOT / "build").glob("*/CMakeCache.txt"))
    if not dirs:
        raise SystemExit("no build folder under build/: install the package first (`pip install .`, see README)")
    return dirs[0]


def build_targets(build_dir: Path, rpc: bool) -> None:
    targets = ["test-backend-ops"] + (["pace-rpc-server"] if rpc else [])
    subprocess.run(["cmake", "--build", str(build_dir), "--target", *targets], check=True)


def library_env(build_dir: Path) -> dict:
    """The build tree's programs find its libraries in bin/ (their RPATH, $ORIGIN, is for the installed layout),
    then wherever LD_LIBRARY_PATH already points (cuBLAS outside the CUDA toolkit, say)."""
    paths = [str(build_dir / "bin")] + [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    return dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(paths))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def loopback_rpc_server(build_dir: Path):
    """The build's pace-rpc-server on 127.0.0.1, yielding its endpoint once it accepts connections."""
    port = free_port()
    proc = subprocess.Popen([str(build_dir / "pace-rpc-server"), "--host", "127.0.0.1", "--port", str(port),
                             "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env=library_env(build_dir))
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"pace-rpc-server did not start (exit code {proc.poll()})")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run(build_dir: Path, quick: bool, rpc_endpoint: str | None, cuda_host: bool) -> subprocess.CompletedProcess:
    env = library_env(build_dir)
    if rpc_endpoint:
        env["PACE_RPC_SERVERS"] = rpc_endpoint
    if cuda_host:
        env["PACE_CUDA_HOST"] = "1"
    command = [str(build_dir / "test-backend-ops"), "test", "-o", "AMB"] + (["-p", QUICK] if quick else [])
    return subprocess.run(command, env=env, capture_output=True, text=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=None, help="CMake build folder of cpp/ (default: the package's)")
    parser.add_argument("--rpc", action="store_true", help="also check a pace-gguf rpc-server on 127.0.0.1")
    parser.add_argument("--cuda-host", action="store_true", help="also check the CUDA kernels' source on host fibers")
    parser.add_argument("--quick", action="store_true", help=f"only the cases matching {QUICK!r}")
    args = parser.parse_args(argv)
    build_dir = args.build_dir or package_build_dir()
    build_targets(build_dir, args.rpc)
    with loopback_rpc_server(build_dir) if args.rpc else contextlib.nullcontext() as endpoint:
        result = run(build_dir, args.quick, endpoint, args.cuda_host)
    print(result.stdout)
    print(result.stderr, file=sys.stderr)
    counts = [(int(a), int(b)) for a, b in PASSED.findall(result.stdout)]
    compared = [(a, b) for a, b in counts if b > 0]
    if result.returncode != 0 or not compared or any(a != b for a, b in compared):
        print(f"backend_ops: FAILED (exit code {result.returncode}, passed/total per device {counts})", file=sys.stderr)
        return 1
    print(f"backend_ops: every compared device passed: {compared}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
