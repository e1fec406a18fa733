"""pace.amb.* GGUF metadata: valid keys configure the AMB, invalid ones are rejected with an error
that names the key (never clamped, never a crash), and the model still loads with the AMB off. The
files are the real default model with metadata edited by gguf-py's own gguf_new_metadata (upstream's
tool)."""

import gguf
import pytest
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

import numpy as np

from pace_gguf.amb import PaceConfigError, PaceMetadataWarning

pytestmark = pytest.mark.slow

T = gguf.GGUFValueType


class _Writer(gguf.GGUFWriter):
    """gguf-py's writer, honouring array item types (gguf_new_metadata passes none; ints become i32)."""

    item_types: dict = {}

    def add_key_value(self, key, val, vtype, sub_type=None):
        super().add_key_value(key, val, vtype, sub_type or self.item_types.get(key))


def with_metadata(src, dst, **pace):
    """Copy `src` to `dst` with pace.amb.<name> keys added (type, value[, description, array item type])."""
    reader = gguf.GGUFReader(src, "r")
    arch = reader.get_field("general.architecture").contents()
    writer = _Writer(dst, arch=arch, endianess=reader.endianess)
    new = {f"pace.amb.{name}": MetadataDetails(*spec) for name, spec in pace.items()}
    writer.item_types = {key: d.sub_type for key, d in new.items() if d.sub_type is not None}
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


LAYER = {"enabled": (T.BOOL, True), "layers": (T.ARRAY, [3], "", T.INT32)}


@pytest.mark.parametrize(
    ("name", "pace", "message"),
    [
        ("layer", {"enabled": (T.BOOL, True), "layers": (T.ARRAY, [99], "", T.INT32)}, "layer 99 is out of range"),
        ("bank", {**LAYER, "bank_size": (T.INT32, 0)}, "bank_size"),
        ("mode", {"mode": (T.STRING, "legacy")}, "pace.amb.mode"),
        ("theta", {"theta_low": (T.FLOAT32, 0.9)}, "theta_low"),
        # typed and range-checked: never wrapped, never parsed out of a string
        ("bank_u64", {**LAYER, "bank_size": (T.UINT64, 2**32 + 100)}, "int32 range"),
        ("layer_u64", {"enabled": (T.BOOL, True), "layers": (T.ARRAY, [2**32 + 12], "", T.UINT64)}, "int32 range"),
        ("bank_str", {**LAYER, "bank_size": (T.STRING, "50")}, "pace.amb.bank_size"),
        ("theta_str", {"theta_high": (T.STRING, "0.5")}, "pace.amb.theta_high"),
        ("layers_str", {"enabled": (T.BOOL, True), "layers": (T.STRING, "[12, 26]")}, "pace.amb.layers"),
        ("layers_float", {"enabled": (T.BOOL, True), "layers": (T.ARRAY, [1.0], "", T.FLOAT32)}, "pace.amb.layers"),
        ("enabled_int", {"enabled": (T.INT32, 1)}, "pace.amb.enabled"),
        ("alpha_f64_inf", {"alpha": (T.FLOAT64, 1e300)}, "pace.amb.alpha"),
        ("layers_huge", {"enabled": (T.BOOL, True), "layers": (T.ARRAY, list(range(100_000)), "", T.INT32)}, "at most 512"),
    ],
)
def test_invalid_gguf_keys_are_refused_and_the_model_still_loads(model_with, run_cli, assert_one_line_error,
                                                                 name, pace, message):
    path = model_with(name, **pace)
    with pytest.raises(PaceConfigError, match=message) as refused:
        load(path)
    assert len(str(refused.value)) < 400  # a 100k-entry array is not spelled out
    assert_one_line_error(run_cli("chat", "-m", str(path), "-p", "hi"), message)
    # the model is still usable without the AMB, and says why its settings were not used
    with pytest.warns(PaceMetadataWarning, match=message):
        llm = load(path, pace=False)
    assert not llm.amb_enabled
    assert llm.create_completion("Once upon a time", max_tokens=2, temperature=0)["choices"][0]["text"] is not None


def test_cli_runs_a_model_with_invalid_keys_without_the_amb(model_with, run_cli):
    path = model_with("bank_zero", **LAYER, bank_size=(T.INT32, 0))
    result = run_cli("chat", "-m", str(path), "--no-amb", "-p", "Say hi", "--max-tokens", "2", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert "bank_size" in result.stderr  # the warning says why the model's settings were not used


def test_float_keys_arrive_exactly(model_with):
    """Floats used to pass through a 6-decimal rendering: 1e-7 arrived as 0."""
    tiny = float(np.float32(1e-7))
    path = model_with("exact", theta_low=(T.FLOAT32, tiny), theta_high=(T.FLOAT32, 0.123456789))
    pace = load(path).pace
    assert pace.theta_low == tiny
    assert pace.theta_high == float(np.float32(0.123456789))
