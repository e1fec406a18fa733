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


def _features(system_info: str) -> str:
    """The compiled-in CPU features, from llama.cpp's system info ("CPU : SSE3 = 1 | AVX2 = 1 | ...")."""
    names = [item.split(":")[-1].split("=")[0].strip() for item in system_info.split("|") if item.strip().endswith("= 1")]
    return " ".join(names) or system_info


def summary_line(description: dict) -> str:
    """describe()'s result as one line for a report."""
    d = description
    return (f"{d['cpu_model']}, {d['logical_cpus']} logical CPUs ({d['machine']}, {d['system']}); "
            f"ggml CPU features: {_features(d['cpu_features'])}; build `{d['build_id']}`; "
            f"pace-gguf {d['pace_gguf']}, llama-cpp-python {d['llama_cpp_python']}, Python {d['python']}; {d['date']}")
