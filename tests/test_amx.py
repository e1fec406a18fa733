"""ggml's AMX int8 matmul: the tile-configuration fix (cpp/fixes/0001-ggml-amx-tile-config.patch).

On Intel CPUs with AMX, a GGML_NATIVE build compiles ggml-cpu's amx/mmq.cpp with AMX enabled.
Unfixed, gcc 12 drops the stores that fill the tile configuration (rows, colsb) before
`ldtilecfg`, so the first tile instruction raises SIGILL.

* test_ldtilecfg_loads_the_whole_tile_config needs no AMX hardware: it compiles mmq.cpp of the
  fixed source tree for Sapphire Rapids and reads, from the object code, the 64 bytes every
  `ldtilecfg` loads (a constant in a data section, or a stack buffer filled by the stores just
  before it), and compares them with the configuration the kernels need.
* test_quantized_forward_through_amx runs the default model (Q4_1, which has AMX kernels) through
  the installed library, in a subprocess, where the CPU and the library have AMX; skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MMQ = Path("ggml/src/ggml-cpu/amx/mmq.cpp")

# tile_config_t as ggml's AMX kernels need it (see the "amx tile config" notes in mmq.cpp): palette 1,
# B in TMM0-1 (8 rows x 64 bytes), A in TMM2-3 (16 x 32), C in TMM4-7 (16 x 64), the rest unused.
_COLSB = [64, 64, 32, 32, 64, 64, 64, 64] + [0] * 8
_ROWS = [8, 8, 16, 16, 16, 16, 16, 16] + [0] * 8
EXPECTED_CONFIG = bytes([1, 0] + [0] * 14) + b"".join(c.to_bytes(2, "little") for c in _COLSB) + bytes(_ROWS)


def _cxx() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((l for l in text.splitlines() if l.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def cpu_has_amx() -> bool:
    return {"amx_tile", "amx_int8"} <= _cpu_flags()


# --- reading the object code -----------------------------------------------------------------------

_INSN = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*?)\s*(?:#.*)?$")
_RELOC = re.compile(r"^\s*([0-9a-f]+):\s+(R_X86_64_\w+)\s+(\S+?)(?:([+-])0x([0-9a-f]+))?$")
_MEM = re.compile(r"^(-?0x[0-9a-f]+|-?\d+)?\(%(\w+)\)$")
_GPR = {}
for _names in (("rax", "eax", "ax", "al"), ("rbx", "ebx", "bx", "bl"), ("rcx", "ecx", "cx", "cl"),
               ("rdx", "edx", "dx", "dl"), ("rsi", "esi", "si", "sil"), ("rdi", "edi", "di", "dil"),
               ("rbp", "ebp", "bp", "bpl"), ("rsp", "esp", "sp", "spl")):
    for _size, _name in zip((8, 4, 2, 1), _names):
        _GPR[_name] = (_names[0], _size)
for _i in range(8, 16):
    for _size, _suffix in ((8, ""), (4, "d"), (2, "w"), (1, "b")):
        _GPR[f"r{_i}{_suffix}"] = (f"r{_i}", _size)
_SUFFIX_SIZE = {"b": 1, "w": 2, "l": 4, "q": 8}


def _reg(operand: str) -> tuple[str, int] | None:
    """(canonical register, width in bytes) of a register operand, else None."""
    if not operand.startswith("%"):
        return None
    name = operand[1:]
    if name in _GPR:
        return _GPR[name]
    m = re.fullmatch(r"([xyz])mm(\d+)", name)
    if m:
        return f"v{m.group(2)}", {"x": 16, "y": 32, "z": 64}[m.group(1)]
    return None


def _operands(text: str) -> list[str]:
    """Split AT&T operands on the commas that are not inside parentheses."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def _le_bytes(value: int, size: int) -> list[int]:
    return list((value & (2 ** (8 * size) - 1)).to_bytes(size, "little"))


def _int(text: str) -> int:
    neg = text.startswith("-")
    text = text.lstrip("-$")
    value = int(text, 16) if text.startswith("0x") else int(text)
    return -value if neg else value


class ObjectFile:
    """The parts of an x86-64 ELF object that objdump shows: instructions with their relocations,
    symbols and section contents."""

    def __init__(self, path: Path):
        self.path = path
        dis = subprocess.run(["objdump", "-dr", "--no-show-raw-insn", str(path)], capture_output=True, text=True,
                             check=True).stdout
        self.insns: list[dict] = []  # {addr, mnem, ops, reloc, func}
        func = None
        for line in dis.splitlines():
            m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
            if m:
                func = m.group(1)
                continue
            m = _RELOC.match(line)
            if m and self.insns:
                addend = int(m.group(5) or "0", 16) * (-1 if m.group(4) == "-" else 1)
                self.insns[-1]["reloc"] = (int(m.group(1), 16), m.group(3), addend)
                continue
            m = _INSN.match(line)
            if m and func is not None:
                self.insns.append({"addr": int(m.group(1), 16), "mnem": m.group(2), "ops": _operands(m.group(3)),
                                   "reloc": None, "func": func})
        syms = subprocess.run(["objdump", "-t", str(path)], capture_output=True, text=True, check=True).stdout
        self.symbols: dict[str, tuple[str, int]] = {}
        for line in syms.splitlines():
            m = re.match(r"^([0-9a-f]{16}) .{7} (\S+)\s+[0-9a-f]+\s+(.*)$", line)
            if m:
                self.symbols[m.group(3).strip()] = (m.group(2), int(m.group(1), 16))
        self._sections: dict[str, dict[int, int]] = {}

    def section_bytes(self, section: str, start: int, size: int) -> bytes | None:
        if section not in self._sections:
            dump = subprocess.run(["objdump", "-s", "-j", section, str(self.path)], capture_output=True, text=True)
            data = {}
            for line in dump.stdout.splitlines():
                m = re.match(r"^ ([0-9a-f]+) ((?:[0-9a-f]{2,8} ?){1,4})", line)
                if m:
                    raw = bytes.fromhex(m.group(2).replace(" ", ""))
                    base = int(m.group(1), 16)
                    data.update({base + i: b for i, b in enumerate(raw)})
            self._sections[section] = data
        data = self._sections[section]
        if any(a not in data for a in range(start, start + size)):
            return None
        return bytes(data[a] for a in range(start, start + size))

    def rip_target(self, index: int) -> tuple[str, int] | None:
        """(section, offset) that the RIP-relative operand of instruction `index` points at."""
        insn = self.insns[index]
        if insn["reloc"] is None or index + 1 >= len(self.insns):
            return None
        where, symbol, addend = insn["reloc"]
        if symbol not in self.symbols:
            return None
        section, value = self.symbols[symbol]
        # effective address = next instruction + disp, disp = S + A - P (P: where the reloc sits)
        return section, value + addend + (self.insns[index + 1]["addr"] - where)

    def rip_bytes(self, index: int, size: int) -> bytes | None:
        target = self.rip_target(index)
        return self.section_bytes(*target, size) if target else None


_CONTROL = re.compile(r"^(j\w+|call\w*|ret\w*|jmp\w*|ud2|hlt)$")
_ZERO_IDIOMS = {"xor", "xorl", "xorq", "pxor", "vpxor", "vpxord", "vpxorq", "xorps", "vxorps", "vxorpd"}
_LOADS = re.compile(r"^(mov[lqwb]?|movabsq?|movdq[au]|movq|movd"
                    r"|vmovdq[au](8|16|32|64)?|vmovap[sd]|vmovup[sd]|vmovq|vmovd)$")


def loaded_tile_configs(obj: ObjectFile) -> list[tuple[str, bytes | None, str]]:
    """For every ldtilecfg: (where, the 64 bytes it loads or None where unknown, how they were read).

    A RIP-relative operand is read from the data section it points at. A stack operand is rebuilt
    by replaying the straight-line code before the ldtilecfg (back to the previous jump, call or
    function start): zeroing idioms, immediates and RIP-relative constant loads into registers,
    and stores into the 64 bytes. Bytes this cannot account for are None (the check fails closed).
    """
    found = []
    for i, insn in enumerate(obj.insns):
        if insn["mnem"] != "ldtilecfg":
            continue
        where = f"{insn['addr']:#x} in {insn['func']}"
        operand = insn["ops"][0]
        if "(%rip)" in operand:
            found.append((where, obj.rip_bytes(i, 64), "constant in " + str(obj.rip_target(i))))
            continue
        m = _MEM.match(operand)
        if not m:
            found.append((where, None, f"unreadable operand {operand}"))
            continue
        base_reg, base_off = m.group(2), _int(m.group(1) or "0")
        start = i
        while start > 0 and obj.insns[start - 1]["func"] == insn["func"]:
            if _CONTROL.match(obj.insns[start - 1]["mnem"]):
                break
            start -= 1
        cfg: list[int | None] = [None] * 64
        regs: dict[str, list[int | None]] = {}
        for j in range(start, i):
            ins = obj.insns[j]
            mnem, ops = ins["mnem"], ins["ops"]
            dst = ops[-1] if ops else ""
            dst_reg = _reg(dst)
            if mnem in _ZERO_IDIOMS and len(ops) >= 2 and len(set(ops)) == 1 and dst_reg:
                regs[dst_reg[0]] = [0] * 64
                continue
            src = ops[0] if ops else ""
            if dst_reg and _LOADS.match(mnem) and len(ops) == 2:
                if src.startswith("$"):
                    regs[dst_reg[0]] = _le_bytes(_int(src), dst_reg[1]) + [0] * (64 - dst_reg[1])
                    continue
                if "(%rip)" in src:
                    size = 8 if mnem in ("vmovq", "movq") else 4 if mnem in ("vmovd", "movd") else dst_reg[1]
                    data = obj.rip_bytes(j, size)
                    regs[dst_reg[0]] = (list(data) + [0] * (64 - size)) if data else [None] * 64
                    continue
            mem = _MEM.match(dst)
            if mem and mem.group(2) == base_reg:
                off = _int(mem.group(1) or "0") - base_off
                src_reg = _reg(src)
                if mnem in ("vmovq", "movq") and src_reg:
                    size = 8
                elif mnem in ("vmovd", "movd") and src_reg:
                    size = 4
                elif src_reg and not src.startswith("$"):
                    size = src_reg[1]
                else:
                    size = _SUFFIX_SIZE.get(mnem[-1], 0) if mnem.startswith("mov") else 0
                if off + max(size, 1) <= 0 or off >= 64:
                    continue
                if src.startswith("$") and size:
                    value = _le_bytes(_int(src), size)
                elif src_reg and size and _LOADS.match(mnem):
                    value = regs.get(src_reg[0], [None] * 64)[:size]
                else:  # a store we cannot interpret: the bytes it may touch become unknown
                    value = [None] * max(size, 64)
                    size = len(value)
                for k in range(size):
                    if 0 <= off + k < 64:
                        cfg[off + k] = value[k]
                continue
            if dst_reg:
                regs[dst_reg[0]] = [None] * 64  # any other write to a register: value unknown
        data = None if None in cfg else bytes(cfg)
        described = "".join("??" if b is None else f"{b:02x}" for b in cfg)
        found.append((where, data, f"stack buffer {operand} rebuilt from the code before it: {described}"))
    return found


def describe(config: bytes) -> str:
    colsb = [int.from_bytes(config[16 + 2 * t: 18 + 2 * t], "little") for t in range(16)]
    return f"palette {config[0]}, rows {list(config[48:64])}, colsb {colsb}"


# --- the fixed source tree --------------------------------------------------------------------------


def _load_fetch_module():
    spec = importlib.util.spec_from_file_location("pace_fetch_llama_cpp", ROOT / "cpp" / "fetch_llama_cpp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fixed_source(tmp_path_factory) -> Path:
    """The pinned llama.cpp with cpp/fixes and cpp/patches applied, as the build prepares it."""
    fetch = _load_fetch_module()
    dest = tmp_path_factory.mktemp("llama-src") / "llama.cpp"
    fetch.prepare_source(dest, ROOT / "cpp" / "llama.cpp.lock", ROOT / "cpp" / "patches", ROOT / "cpp" / "fixes")
    return dest


def _compiler_supports_amx(cxx: str, tmp: Path) -> bool:
    probe = tmp / "amx_probe.cpp"
    probe.write_text(textwrap.dedent("""\
        #include <immintrin.h>
        void probe(const void *cfg) { _tile_loadconfig(cfg); _tile_release(); }
    """))
    result = subprocess.run([cxx, "-O2", "-march=sapphirerapids", "-c", str(probe), "-o", str(tmp / "probe.o")],
                            capture_output=True, text=True)
    return result.returncode == 0


def _openmp_flags(cxx: str, tmp: Path) -> list[str]:
    """ggml uses OpenMP where the compiler has it (GGML_OPENMP), which shapes mmq.cpp's thread loop."""
    probe = tmp / "omp_probe.cpp"
    probe.write_text("#include <omp.h>\nint probe() { return omp_get_max_threads(); }\n")
    result = subprocess.run([cxx, "-fopenmp", "-c", str(probe), "-o", str(tmp / "omp_probe.o")], capture_output=True)
    return ["-DGGML_USE_OPENMP", "-fopenmp"] if result.returncode == 0 else []


def compile_mmq(src: Path, out: Path, march: str) -> subprocess.CompletedProcess:
    """ggml-cpu's amx/mmq.cpp with the defines and flags of a Release GGML_NATIVE build."""
    ggml = src / "ggml"
    cxx = _cxx()
    cmd = [cxx, "-DGGML_BACKEND_BUILD", "-DGGML_BACKEND_SHARED", "-DGGML_SHARED", "-DGGML_USE_CPU_REPACK",
           "-DGGML_USE_LLAMAFILE", "-D_GNU_SOURCE", "-D_XOPEN_SOURCE=600", *_openmp_flags(cxx, out.parent),
           f"-I{ggml / 'include'}", f"-I{ggml / 'src'}", f"-I{ggml / 'src' / 'ggml-cpu'}",
           "-O3", "-DNDEBUG", "-std=gnu++17", "-fPIC", f"-march={march}", "-c", str(src / MMQ), "-o", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True)


def _marches() -> list[str]:
    # sapphirerapids: the first AMX CPUs (the crash was seen there); native: what the build uses here
    return ["sapphirerapids"] + (["native"] if cpu_has_amx() else [])


@pytest.mark.slow  # prepares the patched source tree and compiles mmq.cpp (~20 s)
@pytest.mark.parametrize("march", _marches())
def test_ldtilecfg_loads_the_whole_tile_config(fixed_source, tmp_path, march):
    if platform.machine() not in ("x86_64", "AMD64") or not sys.platform.startswith("linux"):
        pytest.skip("the check reads x86-64 ELF object code with objdump (Linux x86-64 only)")
    cxx = _cxx()
    if cxx is None or shutil.which("objdump") is None:
        pytest.skip("needs a C++ compiler and objdump")
    if not _compiler_supports_amx(cxx, tmp_path):
        pytest.skip(f"{cxx} cannot compile AMX intrinsics for -march=sapphirerapids (too old)")
    obj = tmp_path / "mmq.o"
    result = compile_mmq(fixed_source, obj, march)
    assert result.returncode == 0, result.stderr[-3000:]

    configs = loaded_tile_configs(ObjectFile(obj))
    assert configs, "no ldtilecfg in mmq.o: the AMX kernels were not compiled (expected with AMX and AVX512-VNNI)"
    for where, data, how in configs:
        assert data is not None, f"cannot tell what the ldtilecfg at {where} loads ({how})"
        assert data == EXPECTED_CONFIG, (
            f"the ldtilecfg at {where} loads {describe(data)}, not {describe(EXPECTED_CONFIG)}: the stores of the "
            f"tile config were dropped (a tile instruction will raise SIGILL); {how}"
        )


# --- a real forward through the AMX kernels ---------------------------------------------------------

AMX_SCRIPT = """
import sys
import numpy as np
from pace_gguf import Llama, _native

info = _native.system_info()
print("SYSTEM_INFO", info, flush=True)
if "AMX_INT8 = 1" not in info:
    print("NO_AMX_IN_LIBRARY", flush=True)
    sys.exit(0)
llm = Llama(model_path=sys.argv[1], n_ctx=512, n_batch=256, n_ubatch=256, n_threads=2, logits_all=True,
            verbose=True, seed=0)
text = " ".join(["The secret code is 4817."] * 12) + " What is the secret code? The secret code is"
tokens = llm.tokenize(text.encode(), add_bos=True)
assert len(tokens) >= 64, len(tokens)   # batches of more than 2 x 16 rows: the AMX tile kernels
llm.eval(tokens)
scores = np.array(llm.scores[: len(tokens)], dtype=np.float32)
assert np.isfinite(scores).all()
answer = []
for _ in range(6):  # greedy, one token at a time (the single-row path)
    answer.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
    llm.eval([answer[-1]])
print("ANSWER", llm.detokenize(answer).decode(errors="replace"), flush=True)
"""


@pytest.mark.slow  # real model
@pytest.mark.skipif(not cpu_has_amx(), reason="this CPU has no AMX (amx_tile/amx_int8 not in /proc/cpuinfo): "
                    "ggml's AMX kernels cannot run here")
def test_quantized_forward_through_amx(default_model_path, tmp_path):
    result = subprocess.run([sys.executable, "-c", AMX_SCRIPT, str(default_model_path)], capture_output=True,
                            text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, f"exit status {result.returncode} (-4 is SIGILL)\n{result.stderr[-3000:]}"
    if "NO_AMX_IN_LIBRARY" in result.stdout:
        pytest.skip("the CPU has AMX but the loaded library was built without it (GGML_NATIVE=OFF?): "
                    + result.stdout.splitlines()[0])
    # The Q4_1 weights were repacked into ggml's AMX buffer, so the batched matmuls ran the tile kernels.
    assert "AMX model buffer size" in result.stderr, result.stderr[-3000:]
    assert "4817" in result.stdout.split("ANSWER", 1)[-1], result.stdout
