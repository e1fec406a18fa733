"""transformers integration, CE on tiny Qwen2/Llama models (spec 8.3, 8.4) and prompt granularity."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pace_gguf.reference import (  # noqa: E402
    AmbConfig, AmbMLP, ce_reorder_model, cluster_experts, disable_amb, enable_amb, get_banks,
    permute_ffn,
    reset_memory, run_prompt_and_generate,
)
from pace_gguf.reference.golden import build_tiny_model  # noqa: E402

N_EXPERTS = 8
CFG = AmbConfig(bank_size=8, chunk=16)
ARCHS = ["qwen2", "llama"]


def prompt(n=40, ids=8, seed=0):
    """Few distinct ids, so that activations recur and the AMB has high/mid cases to act on."""
    return torch.randint(0, ids, (n,), generator=torch.Generator().manual_seed(seed))


def ce_reordered(model):
    """A deep copy with every layer's FFN permuted by CE; returns (model, {layer: perm})."""
    out = copy.deepcopy(model)
    results = ce_reorder_model(out, N_EXPERTS, seed=0)
    perms = {i: r.perm for i, r in results.items()}
    # Cross-check against the plain array helpers on the original weights.
    for i, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        g, u, d = permute_ffn(mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight,
                              perms[i])
        new = out.model.layers[i].mlp
        assert torch.equal(new.gate_proj.weight, g) and torch.equal(new.up_proj.weight, u)
        assert torch.equal(new.down_proj.weight, d)
        assert np.array_equal(perms[i], cluster_experts(mlp.gate_proj.weight, N_EXPERTS).perm)
    return out, perms


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request):
    return build_tiny_model(request.param, seed=0)


# ---------------------------------------------------------------------- enable / reset / disable

def test_first_forward_is_exactly_the_plain_model(tiny):
    model = copy.deepcopy(tiny)
    ids = prompt()
    plain = run_prompt_and_generate(model, ids, max_new_tokens=4)
    keys_before = list(model.state_dict())
    banks = enable_amb(model, layers=[0, 1], config=CFG)
    assert set(banks) == {0, 1} and isinstance(model.model.layers[0].mlp, AmbMLP)
    assert list(model.state_dict()) == keys_before             # same parameters, same keys
    amb = run_prompt_and_generate(model, ids, max_new_tokens=4)
    # Single prefill forward into an empty bank: the AMB is an exact identity for the prompt.
    assert torch.equal(amb.prompt_logits, plain.prompt_logits)
    assert banks[0].n_valid == CFG.bank_size
    assert len(banks[0].history) == 1 + 3                  # prefill + 3 decode forwards
    assert disable_amb(model) == 2 and get_banks(model) == {}
    again = run_prompt_and_generate(model, ids, max_new_tokens=4)
    assert torch.equal(again.prompt_logits, plain.prompt_logits) and again.tokens == plain.tokens


def test_reset_memory_makes_runs_repeatable(tiny):
    model = copy.deepcopy(tiny)
    enable_amb(model, layers=[1], config=CFG)
    ids = prompt(seed=1)
    a = run_prompt_and_generate(model, ids, [16, 16, 8], max_new_tokens=6)
    b = run_prompt_and_generate(model, ids, [16, 16, 8], max_new_tokens=6)
    assert torch.equal(a.prompt_logits, b.prompt_logits) and a.tokens == b.tokens
    c = run_prompt_and_generate(model, ids, [16, 16, 8], max_new_tokens=6, reset=False)
    assert not torch.equal(a.prompt_logits, c.prompt_logits)     # the bank carried over
    assert reset_memory(model) == 1 and get_banks(model)[1].n_valid == 0


def test_training_mode_does_not_store_unless_asked(tiny):
    model = copy.deepcopy(tiny)
    bank = enable_amb(model, layers=[0], config=CFG)[0]
    model.train()
    with torch.no_grad():
        model(input_ids=prompt()[None])
    assert bank.n_valid == 0
    bank = enable_amb(model, layers=[0], config=AmbConfig(bank_size=8, store_in_training=True))[0]
    with torch.no_grad():
        model(input_ids=prompt()[None])
    assert bank.n_valid == 8


def test_enable_amb_bad_arguments(tiny):
    model = copy.deepcopy(tiny)
    for layers in ([2], [-1], [0, 0], ["0"], [True], 3.5):
        with pytest.raises(ValueError, match="layers"):
            enable_amb(model, layers=layers)
    with pytest.raises(ValueError, match="config"):
        enable_amb(model, layers=[0], config={"bank_size": 3})
    model.model.layers[0].mlp = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match="gated MLP"):
        enable_amb(model, layers=[0])
    with pytest.raises(ValueError, match="decoder layer"):
        enable_amb(torch.nn.Linear(2, 2), layers=[0])


def test_runner_bad_arguments(tiny):
    ids = prompt(10)
    with pytest.raises(ValueError, match="batch"):
        run_prompt_and_generate(tiny, torch.stack([ids, ids]))
    with pytest.raises(ValueError, match="forward_sizes"):
        run_prompt_and_generate(tiny, ids, [4, 4])
    with pytest.raises(ValueError, match="granularity"):
        run_prompt_and_generate(tiny, ids, granularity="token")
    with pytest.raises(ValueError, match="max_new_tokens"):
        run_prompt_and_generate(tiny, ids, max_new_tokens=-1)


# ---------------------------------------------------------------------- granularity

@pytest.mark.parametrize("splits", [[7, 13, 20], [16, 16, 8], 5])
def test_prompt_granularity_matches_one_forward(tiny, splits):
    model = copy.deepcopy(tiny)
    banks = enable_amb(model, layers=[0, 1], config=CFG)
    ids = prompt(seed=2)
    # Warm the banks with an earlier "document" so that the prompt really retrieves something.
    warm = dict(reset=True, max_new_tokens=0)
    run_prompt_and_generate(model, prompt(seed=3), **warm)
    snaps = {i: b.snapshot() for i, b in banks.items()}
    whole = run_prompt_and_generate(model, ids, max_new_tokens=6, reset=False)
    whole_banks = {i: b.snapshot() for i, b in banks.items()}
    for i, b in banks.items():
        b.load_snapshot(snaps[i])
    split = run_prompt_and_generate(model, ids, splits, max_new_tokens=6, granularity="prompt",
                                    reset=False)
    assert torch.allclose(split.prompt_logits, whole.prompt_logits, rtol=0, atol=1e-5)
    assert split.tokens == whole.tokens
    for i, b in banks.items():
        assert torch.equal(b.state.usage, whole_banks[i].usage)
        assert torch.allclose(b.state.keys, whole_banks[i].keys, atol=1e-5)
    # In ubatch granularity the later ubatches see the earlier ones: results differ.
    for i, b in banks.items():
        b.load_snapshot(snaps[i])
    ubatch = run_prompt_and_generate(model, ids, [20, 20], max_new_tokens=0, reset=False)
    assert not torch.allclose(ubatch.prompt_logits, whole.prompt_logits, atol=1e-5)


# ---------------------------------------------------------------------- CE (spec 8.3, 8.4)

def test_ce_model_equals_original(tiny):
    ce_model, perms = ce_reordered(tiny)
    assert any(not np.array_equal(p, np.arange(p.size)) for p in perms.values())
    ids = prompt(24, ids=64, seed=4)
    ref = run_prompt_and_generate(tiny, ids, max_new_tokens=8)
    got = run_prompt_and_generate(ce_model, ids, max_new_tokens=8)
    assert torch.allclose(got.prompt_logits, ref.prompt_logits, rtol=0, atol=1e-5)
    assert got.tokens == ref.tokens


def test_amb_on_ce_model_equals_amb_on_original(tiny):
    ce_model, perms = ce_reordered(tiny)
    model = copy.deepcopy(tiny)
    banks = enable_amb(model, layers=[0, 1], config=CFG)
    ce_banks = enable_amb(ce_model, layers=[0, 1], config=CFG)
    ids = prompt(seed=5)
    ref = run_prompt_and_generate(model, ids, [10, 10, 20], max_new_tokens=6)
    got = run_prompt_and_generate(ce_model, ids, [10, 10, 20], max_new_tokens=6)
    assert torch.allclose(got.prompt_logits, ref.prompt_logits, rtol=0, atol=1e-5)
    assert got.tokens == ref.tokens
    for i in (0, 1):
        a, b = banks[i], ce_banks[i]
        assert sum(s.high + s.mid for s in a.history) > 0       # the AMB really acted
        assert [(s.high, s.mid, s.low) for s in a.history] == \
            [(s.high, s.mid, s.low) for s in b.history]
        perm = torch.as_tensor(perms[i])
        assert torch.allclose(b.state.keys, a.state.keys[:, perm], atol=1e-5)    # K_CE = K[:, pi]
        assert torch.allclose(b.state.values, a.state.values[:, perm], atol=1e-5)
        assert torch.equal(b.state.usage, a.state.usage) and torch.equal(b.state.valid, a.state.valid)
