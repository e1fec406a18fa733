"""`Llama.ask` / `Llama.summarize` on the real default model: planted facts, topic words, every
strategy on an input far beyond the context, and the `stream` strategy's bank kept across evictions.
Assertions rest on planted facts and structure, never on the model's exact wording."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pace_gguf import Llama
from pace_gguf.errors import ContextOverflowError, DocumentError, PaceError

pytestmark = pytest.mark.slow

FACT = "Note: the door code is 4817."
QUESTION = "What is the door code?"
AMB = {"layers": (12, 26)}


@pytest.fixture(scope="module")
def llm_4k(default_model_path):
    return Llama(model_path=str(default_model_path), n_ctx=4096, n_threads=2, seed=0, verbose=False)


@pytest.fixture(scope="module")
def llm_1k(default_model_path):
    return Llama(model_path=str(default_model_path), n_ctx=1024, n_threads=2, seed=0, verbose=False)


@pytest.mark.parametrize("pace", [False, AMB], ids=["amb-off", "amb-on"])
def test_planted_fact_in_a_3000_token_document(llm_4k, long_document, pace):
    llm_4k.configure_pace(pace)
    result = llm_4k.ask(long_document(3000, FACT), QUESTION, max_tokens=24)
    assert "4817" in result.text
    assert result.strategy == "direct" and result.requested_strategy == "auto"
    assert 2700 < result.document_tokens < 3300
    assert result.tokens_read > result.document_tokens and result.tokens_generated > 0
    assert result.prefill.tokens_per_second > 0 and result.decode.tokens_per_second > 0
    assert result.amb_enabled == bool(pace)
    if pace:
        assert sorted(result.amb_stats) == [12, 26]
        assert all(s["slots_used"] > 0 and s["invalidations"] == 0 for s in result.amb_stats.values())


def test_files_and_streaming(llm_1k, tmp_path):
    (tmp_path / "a.txt").write_text("The weather report says it will rain.\n")
    (tmp_path / "b.md").write_text(f"# Office\n\n{FACT}\n")
    pieces: list[str] = []
    stream = llm_1k.ask([tmp_path / "a.txt", tmp_path / "b.md"], QUESTION, max_tokens=24, stream=True,
                        on_text=pieces.append)
    with pytest.raises(PaceError, match="read to its end"):
        stream.result  # noqa: B018
    streamed = "".join(stream)
    assert "4817" in streamed and "".join(pieces) == streamed
    assert stream.result.text == streamed.strip()
    assert stream.result.documents == [str(tmp_path / "a.txt"), str(tmp_path / "b.md")]


@pytest.fixture(scope="module")
def document_20k(long_document):
    return long_document(20000, FACT, where=0.9)


@pytest.mark.parametrize("strategy", ["map-reduce", "refine", "stream"])
def test_every_strategy_reads_a_20k_token_document(llm_1k, document_20k, strategy):
    llm_1k.configure_pace(AMB if strategy == "stream" else False)
    progress = []
    result = llm_1k.ask(document_20k, QUESTION, strategy=strategy, max_tokens=32, progress=progress.append)
    assert result.strategy == strategy
    assert result.document_tokens > 18000
    # everything was read: never a silent truncation
    assert result.tokens_read >= result.document_tokens
    assert result.text and result.tokens_generated > 0
    assert progress and all(p.done <= p.total for p in progress)
    if strategy == "stream":
        assert result.evictions > 0 and result.evicted_tokens > result.document_tokens - 1024
        assert all(s["invalidations"] == 0 and s["slots_used"] > 0 for s in result.amb_stats.values())
        assert not result.chunks
    else:
        calls = [c for c in result.chunks if c.stage in ("map", "refine")]
        assert len(calls) >= 20000 // 1024
        assert all(c.input_tokens <= 1024 for c in result.chunks)
    if strategy == "map-reduce":
        assert any(c.stage == "reduce" for c in result.chunks)


@pytest.mark.parametrize("strategy", ["direct", "error"])
def test_too_long_for_direct_says_how_long(llm_1k, document_20k, strategy):
    with pytest.raises(ContextOverflowError, match=r"the input has \d+ tokens.*needs a context of \d+ tokens"):
        llm_1k.ask(document_20k, QUESTION, strategy=strategy)


def test_summary_names_each_section(llm_1k):
    topics = {
        "volcano": ["The volcano erupted at dawn after weeks of small earthquakes.",
                    "Lava flowed down the eastern slopes of the volcano and reached the sea by evening.",
                    "Geologists measured sulfur gases rising from the crater of the volcano."],
        "violin": ["The violin is the smallest instrument of the string family.",
                   "A violin has four strings and is played with a bow made of horsehair.",
                   "Spruce is used for the top of a violin and maple for its back."],
        "penguin": ["The penguin is a bird that cannot fly but swims very well.",
                    "A penguin father keeps the egg warm on his feet for two months.",
                    "Warmer seas are making it harder for the penguin to find food."],
    }
    document = "\n\n".join(f"## {name.title()}\n\n" + " ".join(lines) for name, lines in topics.items())
    result = llm_1k.summarize(document, strategy="map-reduce", style="bullets", chunk_tokens=60, overlap=0)
    assert [c.stage for c in result.chunks] == ["map"] * 3
    for topic, chunk in zip(topics, result.chunks):
        assert topic in chunk.text.lower()
        assert topic in result.text.lower()


def test_bad_requests(llm_1k, tmp_path):
    with pytest.raises(PaceError, match="strategy must be one of"):
        llm_1k.ask("text", QUESTION, strategy="fastest")
    with pytest.raises(PaceError, match="question is empty"):
        llm_1k.ask("text", "  ")
    with pytest.raises(PaceError, match="length must be one of"):
        llm_1k.summarize("text", length="tiny")
    with pytest.raises(PaceError, match="max_tokens"):
        llm_1k.ask("text", QUESTION, max_tokens=0)
    with pytest.raises(DocumentError):
        llm_1k.ask(Path(tmp_path / "missing.txt"), QUESTION)
    with pytest.raises(ContextOverflowError, match="reading window"):
        llm_1k.ask("word " * 2000, QUESTION, strategy="stream", max_tokens=1000)


# --- the bank across evictions ----------------------------------------------------------------------


def _filled(llm, long_document, n_tokens: int):
    llm.configure_pace(AMB)
    llm.reset()
    tokens = llm.tokenize(long_document(n_tokens + 200).encode(), add_bos=True)[:n_tokens]
    llm.eval(tokens)
    return tokens


def test_eviction_keeps_the_bank_and_moves_the_case_log(llm_1k, long_document):
    tokens = _filled(llm_1k, long_document, 800)
    before = {layer: llm_1k.amb_bank(layer) for layer in AMB["layers"]}
    cases_before = {layer: llm_1k.amb_cases(layer) for layer in AMB["layers"]}
    assert all(b["valid"].any() for b in before.values())

    llm_1k.evict_window(16, 316)

    assert llm_1k.n_tokens == 500
    assert llm_1k.input_ids[:500].tolist() == tokens[:16] + tokens[316:800]
    for layer in AMB["layers"]:
        after = llm_1k.amb_bank(layer)
        for key in ("keys", "values", "usage", "valid"):
            np.testing.assert_array_equal(after[key], before[layer][key])
        cases = llm_1k.amb_cases(layer)
        np.testing.assert_array_equal(cases[:16], cases_before[layer][:16])
        np.testing.assert_array_equal(cases[16:500], cases_before[layer][316:800])
        assert (cases[500:] == -1).all()
    assert all(s.invalidations == 0 for s in llm_1k.memory_stats().values())

    # reading goes on after the window: the bank keeps growing from where it was
    used = {layer: s.high + s.mid + s.low for layer, s in llm_1k.memory_stats().items()}
    llm_1k.eval(tokens[:200])
    assert all(s.high + s.mid + s.low == used[layer] + 200 and s.invalidations == 0
               for layer, s in llm_1k.memory_stats().items())


def test_undo_style_removal_after_an_eviction_still_empties_the_bank(llm_1k, long_document):
    _filled(llm_1k, long_document, 600)
    llm_1k.evict_window(16, 216)
    llm_1k._ctx.kv_cache_seq_rm(0, 300, -1)  # drop tokens the bank absorbed, as a prefix reuse would
    for layer, stats in llm_1k.memory_stats().items():
        assert stats.invalidations == 1 and stats.slots_used == 0, stats
        assert not llm_1k.amb_bank(layer)["valid"].any()


def test_evicting_everything_after_the_prefix_keeps_the_bank_attached_to_it(llm_1k, long_document):
    """What the bank took from evicted tokens stays attached to the kept prefix: reading goes on
    (each eval first clears the positions after the cached tokens) without emptying it, and a
    removal that reaches into the prefix still does."""
    tokens = _filled(llm_1k, long_document, 600)
    llm_1k.evict_window(16, 600)
    assert llm_1k.n_tokens == 16
    llm_1k.eval(tokens[:100])
    assert all(s.slots_used > 0 and s.invalidations == 0 for s in llm_1k.memory_stats().values())
    llm_1k._ctx.kv_cache_seq_rm(0, 15, -1)
    assert all(s.slots_used == 0 and s.invalidations == 1 for s in llm_1k.memory_stats().values())
    with pytest.raises(PaceError, match="keep at least the first token"):
        _filled(llm_1k, long_document, 100)
        llm_1k.evict_window(0, 100)


def test_eviction_with_the_amb_off_and_bad_ranges(llm_1k, long_document):
    llm_1k.configure_pace(False)
    llm_1k.reset()
    tokens = llm_1k.tokenize(long_document(600).encode(), add_bos=True)[:400]
    llm_1k.eval(tokens)
    llm_1k.evict_window(8, 108)
    assert llm_1k.n_tokens == 300
    with pytest.raises(PaceError, match="evict_window"):
        llm_1k.evict_window(10, 400)
    with pytest.raises(PaceError, match="evict_window"):
        llm_1k.evict_window(5, 5)


def test_a_new_prompt_resets_the_bank_a_continued_one_keeps_it(llm_1k):
    """generate() with the AMB on: the next turn of a conversation goes on with the bank as it is;
    an unrelated prompt starts from an empty bank (what a fresh context gives)."""
    llm_1k.configure_pace(AMB)
    first = llm_1k.tokenize(b"The first message of a conversation about rivers.", add_bos=True)
    more = llm_1k.tokenize(b" And a second message about bridges.", add_bos=False)
    other = llm_1k.tokenize(b"An unrelated prompt about apples.", add_bos=True)

    def run(tokens):
        for _ in zip(range(1), llm_1k.generate(tokens, temp=0.0)):
            pass
        return {layer: s.high + s.mid + s.low for layer, s in llm_1k.memory_stats().items()}

    llm_1k.reset()
    after_first = run(first)
    assert set(after_first.values()) == {len(first)}
    continued = run(first + more)  # extends what the context holds
    assert set(continued.values()) == {len(first) + len(more)}
    assert set(run(other).values()) == {len(other)}
    assert all(s.invalidations == 0 for s in llm_1k.memory_stats().values())
