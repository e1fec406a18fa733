"""Bad input to `pace-gguf convert` / `reorder`: one `pace-gguf: error:` line, exit status 1,
and never a partial output file."""

from __future__ import annotations

import json
import shutil

import pytest


def _run(capsys, *argv):
    from pace_gguf.cli import main

    code = main(list(argv) + ["--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("pace-gguf: error:")]
    return code, err


def _expect_error(capsys, needle, *argv):
    code, err = _run(capsys, *argv)
    assert code == 1 and len(err) == 1, err
    assert needle in err[0], err[0]
    return err[0]


@pytest.fixture
def hf_copy(tiny_hf, tmp_path):
    dst = tmp_path / "hf"
    shutil.copytree(tiny_hf("qwen2"), dst)
    return dst


def test_missing_input(capsys, tmp_path):
    _expect_error(capsys, "input not found", "convert", str(tmp_path / "nope"), "-o", str(tmp_path / "o.gguf"))


def test_missing_config(capsys, hf_copy, tmp_path):
    (hf_copy / "config.json").unlink()
    _expect_error(capsys, "no config.json", "convert", str(hf_copy), "-o", str(tmp_path / "o.gguf"))


def test_missing_tokenizer(capsys, hf_copy, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (hf_copy / name).unlink(missing_ok=True)
    _expect_error(capsys, "no tokenizer", "convert", str(hf_copy), "-o", str(tmp_path / "o.gguf"))


def test_unsupported_architecture_lists_supported(capsys, hf_copy, tmp_path):
    cfg = json.loads((hf_copy / "config.json").read_text())
    cfg["architectures"] = ["NotARealModelForCausalLM"]
    (hf_copy / "config.json").write_text(json.dumps(cfg))
    line = _expect_error(capsys, "unsupported architecture NotARealModelForCausalLM", "convert", str(hf_copy),
                         "-o", str(tmp_path / "o.gguf"))
    assert "LlamaForCausalLM" in line and "Qwen2ForCausalLM" in line


def test_experts_must_divide_d_ff(capsys, tiny_f32, tmp_path):
    out = tmp_path / "o.gguf"
    _expect_error(capsys, "not divisible by --experts 12", "convert", str(tiny_f32("qwen2", 0)), "-o", str(out),
                  "--experts", "12", "--quant", "F32")
    assert list(tmp_path.iterdir()) == []


def test_truncated_safetensors(capsys, hf_copy, tmp_path):
    st = hf_copy / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    _expect_error(capsys, "truncated", "convert", str(hf_copy), "-o", str(tmp_path / "o.gguf"))


def test_truncated_gguf(capsys, tiny_f32, tmp_path):
    bad = tmp_path / "bad.gguf"
    data = tiny_f32("qwen2", 0).read_bytes()
    bad.write_bytes(data[: len(data) - 1000])
    _expect_error(capsys, "truncated", "convert", str(bad), "-o", str(tmp_path / "o.gguf"))
    bad.write_bytes(b"GGUF" + data[4:200])
    _expect_error(capsys, "truncated", "reorder", str(bad), "-o", str(tmp_path / "o.gguf"))


def test_output_folder_missing(capsys, tiny_f32, tmp_path):
    _expect_error(capsys, "output folder does not exist", "convert", str(tiny_f32("qwen2", 0)),
                  "-o", str(tmp_path / "no" / "such" / "o.gguf"))


def test_failure_mid_write_keeps_old_output_and_leaves_no_temp(capsys, tiny_f32, tmp_path):
    """An imatrix whose ffn_down entry has the wrong length fails after the reordered temp file is
    written: the previous OUT must survive untouched and no temp file may remain."""
    import numpy as np

    from pace_gguf.convert.imatrix import save_legacy

    im = tmp_path / "bad.dat"
    save_legacy(im, {"blk.0.ffn_down.weight": np.ones(100, np.float32)})
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.gguf"
    out.write_bytes(b"previous")
    _expect_error(capsys, "imatrix entry blk.0.ffn_down.weight", "convert", str(tiny_f32("qwen2", 0)),
                  "-o", str(out), "--quant", "Q4_K_M", "--experts", "8", "--imatrix", str(im))
    assert out.read_bytes() == b"previous"
    assert [p.name for p in out_dir.iterdir()] == ["o.gguf"]


def test_unknown_quant_type(capsys, tiny_f32, tmp_path):
    _expect_error(capsys, "unknown quantization type", "convert", str(tiny_f32("qwen2", 0)),
                  "-o", str(tmp_path / "o.gguf"), "--quant", "Q9_X")


@pytest.mark.parametrize("failure", ["interrupt", "disk_full"])
def test_interruption_or_full_disk_leaves_no_partial_output(failure, capsys, tiny_f32, tmp_path, monkeypatch):
    """Ctrl-C or ENOSPC in the middle of writing tensors: OUT keeps its old content, no temp file
    remains; a full disk is one error line and exit 1, Ctrl-C exit 130."""
    import errno

    import pace_gguf.gguf_file as gf

    real, written = gf.write_gguf, []

    def failing_write(dst, *a, **kw):
        produce = a[3]                                    # (src, kv, drop, produce, progress)

        def produce_then_fail(name):
            if len(written) == 5:
                if failure == "interrupt":
                    raise KeyboardInterrupt
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))
            written.append(name)
            return produce(name)
        return real(dst, *a[:3], produce_then_fail, *a[4:], **kw)

    import pace_gguf.convert.reorder as ro
    monkeypatch.setattr(ro, "write_gguf", failing_write)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.gguf"
    out.write_bytes(b"previous")
    from pace_gguf.cli import main

    code = main(["convert", str(tiny_f32("qwen2", 0)), "-o", str(out), "--quant", "F32", "--experts", "8",
                 "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("pace-gguf: error:")]
    assert len(written) == 5                              # it did fail in the middle of the tensors
    if failure == "interrupt":
        assert code == 130 and err == []
    else:
        assert code == 1 and len(err) == 1 and "No space left on device" in err[0], err
    assert out.read_bytes() == b"previous"
    assert [p.name for p in out_dir.iterdir()] == ["o.gguf"]
