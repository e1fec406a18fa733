"""pace.amb.* GGUF metadata: valid keys configure the AMB, invalid ones are rejected with an error
that names the key (never clamped, never a crash). The files are the real default model with
metadata edited by gguf-py's own gguf_new_metadata (upstream's tool)."""

import gguf
import pytest
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

from pace_gguf import ModelFileError

pytestmark = pytest.mark.slow

T = gguf.GGUFValueType


def with_metadata(src, dst, **pace):
    """Copy `src` to `dst` with pace.amb.<name> keys added (value, type[, array item type])."""
    reader = gguf.GGUFReader(src, "r")
    arch = reader.get_field("general.architecture").contents()
    writer = gguf.GGUFWriter(dst, arch=arch, endianess=reader.endianess)
    new = {f"pace.amb.{name}": MetadataDetails(*spec) for name, spec in pace.items()}
    copy_with_new_metadata(reader, writer, new, remove_metadata=[])
    return dst


@pytest.fixture(scope="module")
def model_with(default_model_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("meta")

    def make(name, **pace):
        return with_metadata(default_model_path, folder / f"{name}.gguf", **pace)

    return make


def load(path, **kwargs):
    from pace_gguf import Llama

    return Llama(model_path=str(path), n_ctx=256, verbose=False, **kwargs)


def test_gguf_keys_configure_the_amb(model_with):
    path = model_with("good", enabled=(T.BOOL, True), layers=(T.ARRAY, [12, 26], "", T.INT32),
                      bank_size=(T.INT32, 32), theta_high=(T.FLOAT32, 0.8), mode=(T.STRING, "paper"),
                      granularity=(T.STRING, "prompt"))
    llm = load(path)
    pace = llm.pace
    assert (pace.enabled, pace.layers, pace.bank_size, pace.mode, pace.granularity) == (True, (12, 26), 32, "paper", "prompt")
    assert pace.theta_high == pytest.approx(0.8)
    llm.create_completion("Once upon a time", max_tokens=4, temperature=0)
    assert all(s.slots_used > 0 for s in llm.memory_stats().values())
    # a context can still switch it off
    assert not load(path, pace=False).amb_enabled


@pytest.mark.parametrize(
    ("name", "pace", "message"),
    [
        ("layer", {"enabled": (T.BOOL, True), "layers": (T.ARRAY, [99], "", T.INT32)}, "layer 99 is out of range"),
        ("bank", {"enabled": (T.BOOL, True), "layers": (T.ARRAY, [3], "", T.INT32), "bank_size": (T.INT32, 0)}, "bank_size"),
        ("mode", {"mode": (T.STRING, "legacy")}, "pace.amb.mode"),
        ("theta", {"theta_low": (T.FLOAT32, 0.9)}, "theta_low"),
    ],
)
def test_invalid_gguf_keys_are_rejected_naming_the_problem(model_with, run_cli, assert_one_line_error, name, pace, message):
    path = model_with(name, **pace)
    with pytest.raises(ModelFileError, match=message):
        load(path)
    assert_one_line_error(run_cli("chat", "-m", str(path), "-p", "hi"), message)
