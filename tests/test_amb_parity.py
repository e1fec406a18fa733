"""GGML_OP_AMB against the PyTorch reference (spec 8.16, 8.18): tiny fp32 Llama and Qwen2 models,
converted to F32 GGUF by upstream's converter, run through the patched llama.cpp and through
pace_gguf.reference on the same token stream.

* granularity "prompt": llama.cpp, with the prompt split into ubatches of several sizes, equals the
  reference running the whole prompt as ONE forward, then 16 greedy tokens as 1-token forwards;
* granularity "ubatch": equals the reference running the same forward sizes.
Checked: identical case labels per token and layer, identical greedy tokens, logits within 1e-4
relative, and the banks themselves. Both "code" and "paper" modes.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pace_gguf.amb import PaceConfig  # noqa: E402
from pace_gguf.reference import AmbConfig  # noqa: E402
from pace_gguf.reference.golden import run_golden  # noqa: E402
from pace_gguf.reference.hf import disable_amb, enable_amb, run_prompt_and_generate  # noqa: E402

pytestmark = pytest.mark.slow

LAYERS = (0, 1)
N_PROMPT, N_GEN = 40, 16
BANK, CHUNK = 8, 16


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def tiny(request, tmp_path_factory):
    from pace_gguf.convert.tiny import tiny_gguf

    folder = tmp_path_factory.mktemp(request.param)
    gguf = tiny_gguf(request.param, folder, layers=2)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder / "hf", torch_dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    # A prompt drawn from a few ids, so activations recur and all three cases occur.
    ids = torch.randint(1000, 1008, (N_PROMPT,), generator=torch.Generator().manual_seed(0)).tolist()
    return gguf, model, ids


def configs(mode: str, granularity: str):
    ref = AmbConfig(bank_size=BANK, chunk=CHUNK, mode=mode)
    ours = PaceConfig(enabled=True, layers=LAYERS, bank_size=BANK, chunk=CHUNK, mode=mode, granularity=granularity)
    return ref, ours


def reference(model, prompt, ref_config, granularity, forward_sizes):
    """Greedy continuation, then the golden run of prompt + continuation (cases, banks, logits)."""
    enable_amb(model, layers=LAYERS, config=ref_config)
    gen = run_prompt_and_generate(model, prompt, forward_sizes, max_new_tokens=N_GEN, granularity=granularity)
    stream = prompt + gen.tokens[:-1]  # the last generated token is chosen, never fed back
    # The golden run replays the same forwards; its "ubatch" granularity treats each forward on its
    # own, which for a single prompt forward is exactly the prompt granularity.
    golden = run_golden(model, stream, list(forward_sizes) + [1] * (N_GEN - 1), LAYERS, ref_config, "ubatch")
    disable_amb(model)
    return gen.tokens, golden


def ours(gguf, prompt, config, n_ubatch):
    from pace_gguf import Llama

    llm = Llama(model_path=str(gguf), n_ctx=128, n_batch=128, n_ubatch=n_ubatch, type_k=0, type_v=0,
                logits_all=True, seed=0, verbose=False, pace=config, n_threads=2)
    llm.eval(prompt)  # one llama_decode, split into ubatches of n_ubatch
    tokens = []
    for _ in range(N_GEN):
        tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        if len(tokens) < N_GEN:
            llm.eval([tokens[-1]])
    return llm, tokens


def golden_cases(golden, layer):
    n_forwards = len(golden["forward_sizes"])
    return np.concatenate([golden[f"L{layer}_F{f}_cases"] for f in range(n_forwards)]).astype(np.int32)


def assert_same_run(llm, tokens, ref_tokens, golden):
    assert tokens == ref_tokens
    n = llm.n_tokens
    logits = np.array(llm.scores[:n], dtype=np.float32)
    ref_logits = golden["logits"]
    assert np.abs(logits - ref_logits).max() <= 1e-4 * np.abs(ref_logits).max()
    last = len(golden["forward_sizes"]) - 1
    kinds = set()
    for layer in LAYERS:
        cases = llm.amb_cases(layer)
        np.testing.assert_array_equal(cases, golden_cases(golden, layer))
        kinds |= set(cases.tolist())
        bank = llm.amb_bank(layer)
        np.testing.assert_array_equal(bank["valid"], golden[f"L{layer}_F{last}_valid"])
        np.testing.assert_array_equal(bank["usage"], golden[f"L{layer}_F{last}_usage"])
        for key in ("keys", "values"):
            ref = golden[f"L{layer}_F{last}_{key}"]
            np.testing.assert_allclose(bank[key], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert kinds == {0, 1, 2}, f"the stream should exercise low, mid and high, got {kinds}"


@pytest.mark.parametrize("mode", ["code", "paper"])
def test_prompt_granularity_matches_one_reference_forward_for_any_ubatch(tiny, mode):
    gguf, model, prompt = tiny
    ref_config, config = configs(mode, "prompt")
    ref_tokens, golden = reference(model, prompt, ref_config, "prompt", [N_PROMPT])
    for n_ubatch in (7, 16, 64):
        llm, tokens = ours(gguf, prompt, config, n_ubatch)
        assert_same_run(llm, tokens, ref_tokens, golden)


@pytest.mark.parametrize("mode", ["code", "paper"])
@pytest.mark.parametrize("n_ubatch", [7, 16])
def test_ubatch_granularity_matches_reference_with_the_same_forwards(tiny, mode, n_ubatch):
    gguf, model, prompt = tiny
    ref_config, config = configs(mode, "ubatch")
    sizes = [min(n_ubatch, N_PROMPT - s) for s in range(0, N_PROMPT, n_ubatch)]
    ref_tokens, golden = reference(model, prompt, ref_config, "ubatch", sizes)
    llm, tokens = ours(gguf, prompt, config, n_ubatch)
    assert_same_run(llm, tokens, ref_tokens, golden)


def test_amb_off_matches_the_reference_model_without_amb(tiny):
    gguf, model, prompt = tiny
    with torch.no_grad():
        ref = model(torch.tensor([prompt])).logits[0].numpy()
    llm, _ = ours(gguf, prompt, PaceConfig(), n_ubatch=16)
    ours_logits = np.array(llm.scores[:N_PROMPT], dtype=np.float32)
    assert np.abs(ours_logits - ref).max() <= 1e-4 * np.abs(ref).max()
