"""Shared fixtures. Real parts only: the installed pace_gguf with its patched llama.cpp, the real
default model pulled through the registry (cached in the user cache, so CI pulls it once)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# A job started in the background (`cmd &`, nohup) inherits SIGINT ignored, and so would every CLI
# process the tests start, since an ignored signal stays ignored across exec: the Ctrl-C tests would
# then see it have no effect. A handler is reset to the default at exec, so children get Ctrl-C back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Helper modules of the tests (amb_state.py) are imported by name: pytest runs in importlib mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

@pytest.fixture(scope="session")
def default_model_path() -> Path:
    from pace_gguf import registry

    return registry.pull(registry.DEFAULT_MODEL)


@pytest.fixture(scope="session")
def gemma3_model_path() -> Path:
    """A second architecture (gemma3: GeGLU, sliding-window attention, K-quants), 18 layers."""
    from pace_gguf import registry

    return registry.pull("gemma3-270m")


@pytest.fixture(scope="session")
def stock_lib_dir() -> str:
    """Stock llama.cpp of the same pinned source (tests/stock_oracle.py), built once, then reused."""
    from stock_oracle import build_stock_library

    return build_stock_library()


@pytest.fixture(scope="session")
def default_llm(default_model_path):
    """One loaded default model for the whole session (loading costs ~1 s)."""
    from pace_gguf import Llama

    return Llama(model_path=str(default_model_path), n_ctx=2048, seed=0, verbose=False)


def pace_cli() -> list[str]:
    """The installed console script, falling back to `python -m pace_gguf` in the same env."""
    exe = Path(sys.executable).with_name("pace-gguf")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "pace_gguf"]


@pytest.fixture(scope="session")
def cli_command() -> list[str]:
    """The command line that starts pace-gguf (for tests that manage the process themselves)."""
    return pace_cli()


@pytest.fixture
def run_cli():
    def run(*args: str, env: dict | None = None, input: str = "", timeout: float = 300):
        full_env = dict(os.environ, **(env or {}))
        return subprocess.run(
            pace_cli() + list(args), capture_output=True, text=True, env=full_env, input=input, timeout=timeout
        )

    return run


@pytest.fixture
def run_python(tmp_path):
    """Runs a script in a process of its own (for checks whose state lasts a process, such as added
    RPC servers), with the tests' pace_gguf (installed, or the checkout on PYTHONPATH) rather than
    the current folder's, in a temporary folder; fails with its stderr unless it exits 0."""
    import pace_gguf

    def run(script: str, *args: str, env: dict | None = None, timeout: float = 600) -> str:
        full_env = dict(os.environ, **(env or {}), PYTHONPATH=str(Path(pace_gguf.__file__).resolve().parents[1]))
        result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                                timeout=timeout, cwd=tmp_path, env=full_env)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    return run


def _assert_every_amb_case_passes(device: str, *args: str, env: dict | None = None, timeout: float = 1800) -> None:
    """cpp/backend_ops.py (test-backend-ops' AMB cases against the CPU op) with `args`: `device` ran
    them and passed every one, and the case list spans the widths, fills, sequences and modes."""
    result = subprocess.run([sys.executable, str(ROOT / "cpp" / "backend_ops.py"), *args], capture_output=True,
                            text=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert re.search(rf"Backend \d+/\d+: {device}", result.stdout), result.stdout[-3000:]
    passed = re.search(r"^\s*(\d+)/(\d+) tests passed", result.stdout, re.M)
    assert passed and passed[1] == passed[2] and int(passed[2]) >= 30, result.stdout[-3000:]
    for case in ("n_ff=18944,n_tokens=2048", "fill=0", "fill=2", "n_seq=3", "mode=1"):
        assert case in result.stdout, case


@pytest.fixture
def assert_every_amb_case_passes():
    return _assert_every_amb_case_passes


def _assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pace-gguf: error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def assert_one_line_error():
    """Bad input must give a non-zero exit and exactly one clear error line, never a traceback."""
    return _assert_one_line_error


@pytest.fixture
def copy_file(tmp_path):
    def copy(src: Path, nbytes: int | None = None, name: str = "model.gguf") -> Path:
        out = tmp_path / name
        if nbytes is None:
            shutil.copyfile(src, out)
        else:
            with open(src, "rb") as f:
                out.write_bytes(f.read(nbytes))
        return out

    return copy


class RawContext:
    """A llama_context with n_seq_max = 2 and the AMB on `layers`, on an already loaded model (f32 KV
    cache), driven through llama.cpp's own batch API: llama-cpp-python's `Llama` drives one sequence."""

    def __init__(self, llm, layers, n_ubatch=512, kv_unified=False):
        from pace_gguf import _native, amb  # noqa: PLC0415

        self.lc, self.amb, self.layers = _native.llama_cpp_module().llama_cpp, amb, layers
        params = self.lc.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 512, 512, n_ubatch, 2
        params.n_threads = params.n_threads_batch = 2
        params.type_k = params.type_v = 0  # GGML_TYPE_F32
        params.kv_unified = kv_unified  # needed for tokens that belong to several sequences
        self.ctx = self.lc.llama_init_from_model(llm._model.model, params)
        assert self.ctx
        self.n_vocab = llm.n_vocab()
        amb.set_config(self.ctx, amb.PaceConfig(enabled=True, layers=layers))

    def decode(self, items):
        """items: (seq_id or tuple of seq_ids, pos, token) in one batch; returns logits per item."""
        batch = self.lc.llama_batch_init(len(items), 0, 2)
        for i, (seqs, pos, tok) in enumerate(items):
            seqs = seqs if isinstance(seqs, tuple) else (seqs,)
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, len(seqs), True
            for k, seq in enumerate(seqs):
                batch.seq_id[i][k] = seq
        batch.n_tokens = len(items)
        assert self.lc.llama_decode(self.ctx, batch) == 0
        self.lc.llama_batch_free(batch)
        return np.array([np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
                         for i in range(len(items))])

    def cases(self, seq, n):
        return {il: self.amb.cases(self.ctx, il, n, seq) for il in self.layers}

    def bank(self, layer, seq):
        return self.amb.bank(self.ctx, layer, seq)

    def close(self):
        self.lc.llama_free(self.ctx)


@pytest.fixture
def raw_context():
    """RawContext(llm, layers, n_ubatch=512, kv_unified=False): see the class."""
    return RawContext


_FILLER_WORDS = ("the a river town market morning people walked along old stone bridge while merchants sold bread "
                 "fish and cloth under bright sky children played near water farmers carried baskets of apples "
                 "through narrow streets toward square where bells rang").split()


def _filler_paragraphs(n_paragraphs: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    sentence = lambda: " ".join(rng.choice(_FILLER_WORDS) for _ in range(12)).capitalize() + "."  # noqa: E731
    return [" ".join(sentence() for _ in range(5)) for _ in range(n_paragraphs)]


@pytest.fixture(scope="session")
def long_document():
    """A generated plain-text document of about `tokens` tokens (SmolLM2's tokenizer: ~68 per
    paragraph) with `fact` planted as its own paragraph at `where` (0..1) of the way through."""

    def make(tokens: int, fact: str | None = None, where: float = 0.5, seed: int = 0) -> str:
        paragraphs = _filler_paragraphs(max(1, tokens // 68), seed)
        if fact:
            paragraphs.insert(int(len(paragraphs) * where), fact)
        return "\n\n".join(paragraphs)

    return make
