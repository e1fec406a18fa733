"""Golden dumps: key layout, consistency with the banks, reproducibility, CLI."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pace_gguf.reference import AmbConfig, get_banks  # noqa: E402
from pace_gguf.reference import golden  # noqa: E402

SIZES = [24, 24, 9, 1, 1]


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    path = tmp_path_factory.mktemp("golden") / "g.npz"
    model = golden.build_tiny_model("qwen2", seed=0)
    arrays = golden.write_golden(path, model, forward_sizes=SIZES, layers=[0, 1])
    return path, arrays, model


def test_layout_and_shapes(dump):
    path, arrays, model = dump
    data = np.load(path)
    assert sorted(data.files) == sorted(arrays)
    meta = json.loads(str(data["meta"]))
    m, d_ff = meta["amb_config"]["bank_size"], model.config.intermediate_size
    assert data["forward_sizes"].tolist() == SIZES and data["layers"].tolist() == [0, 1]
    assert data["logits"].shape == (sum(SIZES), model.config.vocab_size)
    assert np.array_equal(data["final_logits"], data["logits"][-1])
    for layer in (0, 1):
        for f, n in enumerate(SIZES):
            p = f"L{layer}_F{f}"
            assert data[f"{p}_cases"].shape == (n,) and data[f"{p}_cases"].dtype == np.int8
            assert data[f"{p}_store_cases"].shape == (n,)
            assert data[f"{p}_keys"].shape == data[f"{p}_values"].shape == (m, d_ff)
            assert data[f"{p}_usage"].dtype == np.float32 and data[f"{p}_valid"].dtype == bool
    # The default stream exercises all three cases.
    cases = np.concatenate([data[f"L1_F{f}_cases"] for f in range(len(SIZES))])
    assert set(cases.tolist()) == {0, 1, 2}


def test_dump_matches_live_banks_and_is_reproducible(dump, tmp_path):
    path, arrays, model = dump
    last = len(SIZES) - 1
    for layer, bank in get_banks(model).items():
        snap = bank.snapshot().to_numpy()
        for name in ("keys", "values", "usage", "valid"):
            assert np.array_equal(arrays[f"L{layer}_F{last}_{name}"], snap[name])
    again = golden.write_golden(tmp_path / "h.npz", golden.build_tiny_model("qwen2", seed=0),
                                forward_sizes=SIZES, layers=[0, 1])
    for key, value in arrays.items():
        if key != "meta":
            assert np.array_equal(again[key], value), key
    # The first forward ran into an empty bank: everything low and seeded.
    assert not arrays["L0_F0_cases"].any()
    assert arrays["L0_F0_valid"].all()


def test_prompt_granularity_dump_flushes_at_the_end(tmp_path):
    cfg = AmbConfig(bank_size=8, chunk=16)
    arrays = golden.write_golden(tmp_path / "p.npz", forward_sizes=[10, 10, 5], layers=[1],
                                 config=cfg, granularity="prompt")
    stored = [arrays[f"L1_F{f}_store_cases"].size for f in range(3)]
    assert stored == [0, 16, 9]                     # chunks aligned to the prompt start
    assert not arrays["L1_F2_cases"].any()          # all prompt forwards read the empty snapshot


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli.npz"
    rc = golden.main(["--out", str(out), "--arch", "llama", "--forward-sizes", "8,4,1",
                      "--layers", "1", "--config-json", '{"bank_size": 4, "chunk": 8}'])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    data = np.load(out)
    assert data["L1_F2_keys"].shape[0] == 4 and "L0_F0_cases" not in data.files
    with pytest.raises(SystemExit):
        golden.main(["--out", str(out), "--forward-sizes", "a,b"])
    with pytest.raises(ValueError, match="bank_size"):
        golden.main(["--out", str(out), "--config-json", '{"bank_size": 0}'])
