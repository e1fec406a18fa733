"""What a measurement ran on: CPU, instruction sets ggml was compiled for, build, versions. Cheap
(no model loads); benchmarks and evaluations put it in every report."""

from __future__ import annotations

import datetime
import os
import platform
import sys


def cpu_model() -> str:
    """The CPU's marketing name (Linux: /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict:
    from . import __version__, _native  # noqa: PLC0415 (loads the native library)

    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "cpu_features": _native.system_info(),
        "build_id": _native.build_id(),
        "pace_gguf": __version__,
        "llama_cpp_python": _native.llama_cpp_module().__version__,
        "python": sys.version.split()[0],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
