"""Bad model files get a ModelFileError that says what is wrong, before llama.cpp sees them."""

import os
import struct

import pytest

from pace_gguf import ModelFileError
from pace_gguf.gguf_file import check_gguf

pytestmark = pytest.mark.slow  # uses the real default model


def test_valid_model_passes(default_model_path):
    summary = check_gguf(default_model_path)
    assert summary.architecture == "llama"
    assert summary.n_tensors > 0


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        check_gguf(tmp_path / "nope.gguf")


def test_folder_is_not_a_model(tmp_path):
    with pytest.raises(ModelFileError, match="is a folder"):
        check_gguf(tmp_path)


def test_not_gguf(tmp_path):
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("this is plain text\n")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        check_gguf(bogus)


def test_truncated_tensor_data(default_model_path, copy_file):
    cut = copy_file(default_model_path, nbytes=default_model_path.stat().st_size // 2)
    with pytest.raises(ModelFileError, match="truncated"):
        check_gguf(cut)


def test_truncated_header(default_model_path, copy_file):
    cut = copy_file(default_model_path, nbytes=4096)
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        check_gguf(cut)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(default_model_path, copy_file):
    locked = copy_file(default_model_path, nbytes=1024)
    locked.chmod(0)
    with pytest.raises(ModelFileError, match="cannot read"):
        check_gguf(locked)


@pytest.mark.parametrize("count", [2**31, 513])
def test_block_count_llama_cpp_would_abort_on(default_model_path, copy_file, count):
    """llama.cpp asserts (ending the process without a word) on more than LLAMA_MAX_LAYERS layers."""
    path = copy_file(default_model_path)
    data = bytearray(path.read_bytes()[:1 << 20])
    key = b"llama.block_count"
    at = data.index(key) + len(key)
    assert struct.unpack_from("<I", data, at)[0] == 4  # GGUF_TYPE_UINT32
    with open(path, "r+b") as f:
        f.seek(at + 4)
        f.write(struct.pack("<I", count))
    with pytest.raises(ModelFileError, match=f"block_count is {count}"):
        check_gguf(path)


def test_written_file_matches_gguf_py_reading(default_model_path, tmp_path):
    """write_gguf (ggml's writer) against an independent reader, gguf-py's GGUFReader: the source's
    keys minus the dropped ones, the new keys with their types and exact float32 values, and every
    tensor's bytes where its info says."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    from pace_gguf.gguf_file import read_gguf, write_gguf

    src = read_gguf(default_model_path)
    new_kv = {"pace.ce.experts": 16, "pace.amb.enabled": True, "pace.amb.alpha": 1e-7, "pace.amb.mode": "paper",
              "pace.amb.layers": [12, 26], "pace.ce.objective": [0.5, 3.25], "general.file_type": 3}
    out = tmp_path / "out.gguf"
    write_gguf(out, src, new_kv, ("tokenizer.chat_template",), lambda name: src.raw_chunks(src.tensor(name)))

    reader = GGUFReader(out)
    fields = {name: f for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    kept = [k for k in src.kv if k != "tokenizer.chat_template" and k not in new_kv]
    assert list(fields) == kept + list(new_kv)          # source order, replaced and new keys at the end
    assert fields["llama.block_count"].contents() == src.kv["llama.block_count"]
    assert fields["tokenizer.ggml.tokens"].contents()[:3] == list(src.kv["tokenizer.ggml.tokens"][:3])
    types = {k: fields[k].types for k in new_kv}
    assert types["pace.ce.experts"] == [GGUFValueType.INT32] and types["pace.amb.enabled"] == [GGUFValueType.BOOL]
    assert types["pace.amb.layers"] == [GGUFValueType.ARRAY, GGUFValueType.INT32]
    assert types["pace.ce.objective"] == [GGUFValueType.ARRAY, GGUFValueType.FLOAT32]
    assert fields["pace.amb.alpha"].contents() == float(np.float32(1e-7))   # float32, exactly
    assert fields["pace.amb.layers"].contents() == [12, 26] and fields["pace.amb.mode"].contents() == "paper"
    written = {t.name: t for t in reader.tensors}
    assert list(written) == [t.name for t in src.tensors]
    for t in src.tensors[:: max(1, len(src.tensors) // 20)] + src.tensors[-1:]:
        assert written[t.name].data.tobytes() == src.raw(t).tobytes(), t.name
    assert read_gguf(out).kv["pace.amb.layers"] == [12, 26]
