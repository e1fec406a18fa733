"""Hugging Face folder -> GGUF through upstream's convert_hf_to_gguf.py (pinned source).

Architecture, tensor names, tokenizer and chat template all come from upstream; this module only
checks the input first (so bad input gets a one-line error instead of a traceback from deep inside
the converter) and runs the converter in a subprocess with its own gguf-py, through
upstream_runner.py so that its memory stays bounded by one row chunk per big tensor.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from .errors import ConvertError
from .upstream import converter_env, source_dir

# Architectures we test end to end; every other upstream architecture with a gated FFN also works.
TESTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "tekken.json")
OUTTYPES = ("f32", "f16", "bf16", "q8_0", "auto")
# run by path in upstream's interpreter setup (it imports upstream's gguf-py, not ours)
UPSTREAM_RUNNER = Path(__file__).with_name("upstream_runner.py")
QUIET_ENV = "PACE_GGUF_UPSTREAM_QUIET"        # read by upstream_runner.py
# config.json keys upstream's converter takes the layer count from, in its order (find_hparam)
_LAYER_COUNT_KEYS = ("n_layers", "num_hidden_layers", "n_layer", "num_layers")
_BAR_PREFIX = b"Writing:"                    # gguf-py's GGUFWriter progress bar


@lru_cache(maxsize=1)
def upstream_architectures() -> tuple[str, ...]:
    """HF architecture names upstream's converter registers (read from its source, not imported:
    importing it needs torch and its own gguf-py)."""
    names = set()
    for path in (source_dir() / "conversion").glob("*.py"):
        for args in re.findall(r"@ModelBase\.register\(([^)]*)\)", path.read_text(encoding="utf-8")):
            names.update(re.findall(r"[\"']([A-Za-z0-9_]+)[\"']", args))
    return tuple(sorted(names))


def check_hf_folder(src: Path) -> dict:
    """Validate an HF checkpoint folder; returns its config. Raises ConvertError with one line."""
    if not src.exists():
        raise ConvertError(f"input not found: {src}")
    if not src.is_dir():
        raise ConvertError(f"{src} is neither a Hugging Face model folder nor a GGUF file")
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ConvertError(f"{src} has no config.json (not a Hugging Face model folder?)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{config_path} is not valid JSON: {exc}") from exc
    arch = (config.get("architectures") or [None])[0]
    if arch is None:
        raise ConvertError(f"{config_path} names no architecture (\"architectures\" is missing)")
    if arch not in upstream_architectures():
        raise ConvertError(
            f"unsupported architecture {arch}: supported are Hugging Face architectures with a gated FFN "
            f"that llama.cpp's converter knows, tested: {', '.join(TESTED_ARCHITECTURES)} "
            f"(`pace-gguf convert --list-architectures` prints all {len(upstream_architectures())})")
    if not any((src / name).is_file() for name in _TOKENIZER_FILES):
        raise ConvertError(f"{src} has no tokenizer (expected one of {', '.join(_TOKENIZER_FILES)})")
    weights = sorted(src.glob("*.safetensors"))
    if not weights:
        raise ConvertError(f"{src} has no *.safetensors weights (only safetensors checkpoints are supported)")
    for path in weights:
        check_safetensors(path)
    return config


def layer_count(config: dict) -> int | None:
    """The model's layer count as upstream's converter reads it (text_config's keys win)."""
    merged = {**config, **(config.get("text_config") or {})}
    count = next((merged[key] for key in _LAYER_COUNT_KEYS if key in merged), None)
    return count if isinstance(count, int) else None


def check_safetensors(path: Path) -> None:
    """Header parse + size check: a truncated download fails here, not halfway through converting."""
    if not path.is_file():                          # a FIFO would block the read below
        raise ConvertError(f"{path} is not a regular file")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than its 8-byte header length")
            n = int.from_bytes(head, "little")
            if n > size - 8:
                raise ValueError("header runs past the end of the file")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{path} is not a valid safetensors file: {exc}") from exc
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ConvertError(f"{path} is truncated: its tensors need {8 + n + end:,} bytes but the file has {size:,}")


def run_upstream_converter(src: Path, out: Path, outtype: str = "auto", *, verbose: bool = False,
                           progress: bool = False) -> Path:
    """Run convert_hf_to_gguf.py on `src` writing `out`. Raises ConvertError (with upstream's last
    error line) when it fails. Does not make `out` atomic: callers write into a temp path.
    `progress`: show upstream's own write progress bar (bytes, rate, ETA); `verbose`: its whole log."""
    if outtype not in OUTTYPES:
        raise ConvertError(f"outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    check_hf_folder(src)
    # upstream_runner.py streams big pass-through tensors in row chunks (same bytes, bounded RAM)
    cmd = [sys.executable, str(UPSTREAM_RUNNER),
           str(source_dir() / "convert_hf_to_gguf.py"), str(src), "--outfile", str(out), "--outtype", outtype]
    # In its own session, a Ctrl-C typed at the terminal reaches only this process, which stops
    # the converter (no traceback of it); subprocess.run kills it on any exception.
    if verbose:
        returncode, log = subprocess.run(cmd, env=converter_env(), start_new_session=True).returncode, ""
    else:
        # its per-tensor INFO lines are silenced; warnings, errors and the bar remain
        env = converter_env() | {QUIET_ENV: "1"}
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True) as proc:
            try:
                log = _read_log(proc.stdout, show_bar=progress)
            except BaseException:
                # Ctrl-C, SIGTERM: Popen's exit would leave it running (or wait for its end), and
                # it would go on writing `out` after the caller removed it
                proc.kill()
                proc.wait()
                raise
        returncode = proc.returncode
    if returncode != 0:
        out.unlink(missing_ok=True)
        raise ConvertError(f"llama.cpp's converter failed on {src}: {_last_error(log)}")
    return out


def _read_log(stream, show_bar: bool) -> str:
    """Read the converter's output to its end. Redraws of upstream's "Writing" tqdm bar go to our
    stderr when `show_bar` (they end in carriage returns); everything else is returned."""
    kept, pending, shown = [], b"", False
    for chunk in iter(lambda: stream.read1(1 << 16), b""):
        *parts, pending = re.split(rb"[\r\n]", pending + chunk)
        for part in parts:
            if part.startswith(_BAR_PREFIX):
                if show_bar:
                    sys.stderr.write("\r" + part.decode(errors="replace"))
                    sys.stderr.flush()
                    shown = True
            elif part.strip():
                kept.append(part.decode(errors="replace"))
    if pending.strip() and not pending.startswith(_BAR_PREFIX):
        kept.append(pending.decode(errors="replace"))
    if shown:
        sys.stderr.write("\n")
    return "\n".join(kept)


def _last_error(log: str) -> str:
    """The most telling line of a failed converter run (the exception line of its traceback)."""
    lines = [ln.strip() for ln in log.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line) or line.startswith("ERROR:"):
            return line
    return lines[-1] if lines else "no output (see --verbose)"
