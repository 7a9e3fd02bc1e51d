"""The prefix-cached engine equals the straightforward path (valuebias/engine.py, issue 4).

Tiny Llama-like and Gemma-like models with random weights, built offline; words of 1 to 20+ tokens so
that suffix batches are ragged.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from valuebias.demo_models import tiny_models
from valuebias import engine, rm_scoring as scoring
from valuebias import hf_loading

TOL = 1e-4

PROMPTS = [
    ("greatest_ever_one", "What, in one word, is the greatest thing ever?"),
    ("worst_world_please", "What is the worst thing in the world? Please answer in one word only."),
    ("good_time_single", "What, in a single word, is the most good thing of all time?"),
]
# Trained on a few words only, so the others split into several tokens (ragged suffixes).
TRAIN_WORDS = ["love", "freedom", "power", "kindness", "honesty"]
WORDS = TRAIN_WORDS + ["a", "zq", "Love", "achievement", "compassionate", "self-determination",
                       "antidisestablishmentarianism", "peace and quiet", "ümlaut", "42"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models are dominated by per-op overhead; one intra-op thread is faster, and much faster on a
    machine shared with other work (two spinning threads contend for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tokenizer(style):
    texts = [tiny_models.render_chat(style, [{"role": "user", "content": p}, {"role": "assistant", "content": w}])
             for _, p in PROMPTS for w in TRAIN_WORDS]
    return tiny_models.train_tokenizer(texts, style=style, vocab_size=400)


@pytest.fixture(scope="module", params=["llama", "gemma"])
def style(request):
    return request.param


@pytest.fixture(scope="module")
def tokenizer(style):
    return _tokenizer(style)


@pytest.fixture(scope="module")
def rm(style, tokenizer, tmp_path_factory):
    """A tiny RM saved and reloaded through ``scoring.load_reward_model``, like a real checkpoint."""
    model = tiny_models.build_tiny_model(tokenizer, architecture=style, head="sequence_classification", seed=3)
    out = tiny_models.save_pretrained(model, tokenizer, tmp_path_factory.mktemp(f"rm_{style}"))
    src = hf_loading.HuggingFaceSource(model_id=f"tiny-{style}", path=str(out), dtype="float32")
    return scoring.load_reward_model(src, device="cpu")


def _straightforward(loaded, words=WORDS, prompts=PROMPTS, batch_size=5):
    return scoring.score_words(loaded, score="logits[0]", prompts=prompts, words=words, batch_size=batch_size)


def _max_diff(a, b) -> float:
    assert a["prompt"].to_list() == b["prompt"].to_list()
    assert a["word"].to_list() == b["word"].to_list()
    return float(np.abs(a["score"].to_numpy() - b["score"].to_numpy()).max())


def test_words_have_ragged_token_lengths(tokenizer):
    lengths = {len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in WORDS}
    assert min(lengths) == 1 and max(lengths) >= 5 and len(lengths) >= 4


def test_supported_models(rm):
    ok, reason = engine.supports_prefix_cache(rm.model)
    assert ok, reason
    assert not engine.supports_prefix_cache(rm.model, score="score")[0]


def test_equals_straightforward(rm):
    ref = _straightforward(rm)
    # Small batches, so that many batches run against one prefix cache (which must stay unchanged).
    got, info = engine.score_prefix_cached(rm, score="logits[0]", prompts=PROMPTS, words=WORDS, batch_size=4,
                                           max_batch_size=8)
    assert info["engine"] == "prefix_cache" and info["layout"] == "packed"
    assert _max_diff(ref, got) <= TOL
    assert got.schema == ref.schema
    # A real shared prefix was cached for every prompt, and far fewer tokens were run.
    assert set(info["prefix_tokens"]) == {p for p, _ in PROMPTS}
    assert all(n >= 10 for n in info["prefix_tokens"].values())
    assert info["tokens_processed"] < 0.75 * info["tokens_full"]
    assert info["batches"] >= 3 and info["oom_halvings"] == 0
    assert info["groups"] == 1  # the prompts' prefixes (of different lengths) were cached together
    # Scores actually vary (the comparison is not between constants).
    assert got["score"].std() > 1e-3


@pytest.mark.parametrize("pack_tokens", [0, 6, 40])
def test_layouts_equal_straightforward(rm, pack_tokens):
    """One row per sequence (pack_tokens=0), and packs so short that long words get a pack alone."""
    got, info = engine.score_prefix_cached(rm, score="logits[0]", prompts=PROMPTS, words=WORDS, batch_size=16,
                                           pack_tokens=pack_tokens)
    assert info["layout"] == ("rows" if pack_tokens == 0 else "packed")
    assert _max_diff(_straightforward(rm), got) <= TOL


def test_vocabulary_sweep(rm):
    """docs/METHOD.md#6-vocabulary-sweep in miniature: every vocabulary token, decoded, as the response (spaces,
    newlines, byte fragments, special tokens such as the pad token itself)."""
    tok = rm.tokenizer
    words = [tok.decode([i]) for i in range(len(tok))]
    assert tok.pad_token in words
    prompts = PROMPTS[:2]
    ref = _straightforward(rm, words=words, prompts=prompts, batch_size=64)
    got, info = engine.score_prefix_cached(rm, score="logits[0]", prompts=prompts, words=words)
    assert info["engine"] == "prefix_cache" and got.height == 2 * len(tok)
    assert _max_diff(ref, got) <= TOL


def test_batch_size_one_and_single_word(rm):
    """One word per prompt: the prefix is the whole sequence but its last token."""
    ref = _straightforward(rm, words=["freedom"])
    got, info = engine.score_prefix_cached(rm, score="logits[0]", prompts=PROMPTS, words=["freedom"], batch_size=1)
    assert _max_diff(ref, got) <= TOL
    for pid, text in PROMPTS:
        full = rm.tokenizer(scoring.render_conversation(rm.tokenizer, text, "freedom"),
                            add_special_tokens=False)["input_ids"]
        assert info["prefix_tokens"][pid] == len(full) - 1


def test_progress_and_empty(rm):
    calls = []
    got, _ = engine.score_prefix_cached(rm, score="logits[0]", prompts=PROMPTS[:1], words=WORDS, batch_size=4,
                                        max_batch_size=4, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (len(WORDS), len(WORDS)) and len(calls) >= 3
    empty, info = engine.score_prefix_cached(rm, score="logits[0]", prompts=PROMPTS, words=[])
    assert empty.height == 0 and info["engine"].startswith("straightforward")


def test_forced_oom_halving_keeps_scores(rm):
    plain, plain_info = engine.score_prefix_cached(rm, score="logits[0]", prompts=PROMPTS, words=WORDS,
                                                   batch_size=8)
    seen = []

    def oom_once(batch_tokens):
        seen.append(batch_tokens)
        if len(seen) == 1:  # the first (full, 8-row) batch runs out of memory once
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    got, info = engine.score_prefix_cached(rm, score="logits[0]", prompts=PROMPTS, words=WORDS, batch_size=8,
                                           oom_simulator=oom_once)
    assert info["oom_halvings"] == 1 and plain_info["oom_halvings"] == 0
    assert info["final_batch_size"] < info["initial_batch_size"] == plain_info["initial_batch_size"]
    assert info["batches"] > plain_info["batches"]
    assert _max_diff(plain, got) <= 1e-6
    assert _max_diff(_straightforward(rm), got) <= TOL


@pytest.mark.parametrize("pack_tokens", [0, 256])
def test_memory_budget_is_respected_by_halving(rm, pack_tokens):
    """A device that fits at most ``budget`` tokens a batch: the engine halves until every batch fits."""
    budget, ran = 90, []

    def device(batch_tokens):
        if batch_tokens > budget:
            raise RuntimeError(f"CUDA error: out of memory (simulated, {batch_tokens} tokens)")
        ran.append(batch_tokens)

    got, info = engine.score_prefix_cached(rm, score="logits[0]", prompts=PROMPTS, words=WORDS, batch_size=16,
                                           oom_simulator=device, pack_tokens=pack_tokens)
    assert info["oom_halvings"] >= 1 and max(ran) <= budget
    assert _max_diff(_straightforward(rm), got) <= TOL


def test_other_errors_propagate(rm):
    def broken(batch_tokens):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        engine.score_prefix_cached(rm, score="logits[0]", prompts=PROMPTS, words=WORDS, oom_simulator=broken)

    def never_fits(batch_tokens):
        raise MemoryError("simulated")

    with pytest.raises(MemoryError):
        engine.score_prefix_cached(rm, score="logits[0]", prompts=PROMPTS, words=WORDS, batch_size=4,
                                   oom_simulator=never_fits)


def test_adaptive_batch_size_grows_and_respects_oom_ceiling():
    b = engine.AdaptiveBatchSize(4, max_size=32, grow_after=2)
    for _ in range(2):
        b.succeeded(4)
    assert b.size == 8
    b.succeeded(3)  # a short (last) batch does not count
    assert b.size == 8
    b.failed(8)
    assert (b.size, b.halvings) == (4, 1)
    for _ in range(10):
        b.succeeded(4)
    assert b.size == 4  # never grows back to a size that ran out of memory
    d = engine.AdaptiveBatchSize(4, max_size=32)
    d.scale_start(20)
    assert d.size == d.initial == 32
    c = engine.AdaptiveBatchSize(4, max_size=16, grow_after=1)
    for _ in range(10):
        c.succeeded(c.size)
    assert c.size == 16
    assert engine.is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert not engine.is_out_of_memory(RuntimeError("expected scalar type"))


class CustomHeadRM(transformers.LlamaForSequenceClassification):
    """Stands in for a remote-code reward model (its class lives outside transformers)."""


def test_fallback_for_unsupported_model(tmp_path):
    tok = _tokenizer("llama")
    base = tiny_models.build_tiny_model(tok, architecture="llama", head="sequence_classification", seed=1)
    model = CustomHeadRM(base.config).eval()
    model.load_state_dict(base.state_dict())
    loaded = hf_loading.LoadedModel(model=model, tokenizer=tok, device="cpu", dtype=torch.float32)
    ok, reason = engine.supports_prefix_cache(model)
    assert not ok and "CustomHeadRM" in reason
    got, info = engine.score_prefix_cached(loaded, score="logits[0]", prompts=PROMPTS, words=WORDS, batch_size=4)
    assert info["engine"].startswith("straightforward (") and "CustomHeadRM" in info["engine"]
    assert info["prefix_tokens"] == {}
    assert _max_diff(_straightforward(loaded, batch_size=4), got) == 0.0


def test_gemma_prefix_longer_than_sliding_window():
    """Gemma 2 alternates sliding-window layers: a window shorter than the prefix must still match."""
    tok = _tokenizer("gemma")
    tiny = tiny_models.build_tiny_model(tok, architecture="gemma", head="sequence_classification")
    config = tiny.config
    config.sliding_window = 6
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    assert "sliding_attention" in model.config.layer_types
    loaded = hf_loading.LoadedModel(model=model, tokenizer=tok, device="cpu", dtype=torch.float32)
    got, info = engine.score_prefix_cached(loaded, score="logits[0]", prompts=PROMPTS, words=WORDS, batch_size=4)
    assert info["engine"] == "prefix_cache" and min(info["prefix_tokens"].values()) > 6
    assert info["groups"] == len(PROMPTS) and info["layout"] == "rows"  # the window is shorter than a row
    ref = _straightforward(loaded)
    assert _max_diff(ref, got) <= TOL


def test_model_without_pad_id_like_straightforward():
    tok = _tokenizer("llama")
    model = tiny_models.build_tiny_model(tok, architecture="llama", head="sequence_classification", seed=2)
    model.config.pad_token_id = None
    loaded = hf_loading.LoadedModel(model=model, tokenizer=tok, device="cpu", dtype=torch.float32)
    got, info = engine.score_prefix_cached(loaded, score="logits[0]", prompts=PROMPTS, words=WORDS, batch_size=4)
    assert info["engine"] == "prefix_cache" and model.config.pad_token_id == tok.pad_token_id
    assert _max_diff(_straightforward(loaded), got) <= TOL


def test_multi_output_reader(tokenizer, style):
    """``logits[:,0]`` of a multi-output head (URM-style) reads the same column on both paths."""
    model = tiny_models.build_tiny_model(tokenizer, architecture=style, head="sequence_classification", seed=4)
    config = model.config
    config.num_labels = 3
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    loaded = hf_loading.LoadedModel(model=model, tokenizer=tokenizer, device="cpu", dtype=torch.float32)
    ref = scoring.score_words(loaded, score="logits[:,0]", prompts=PROMPTS, words=WORDS, batch_size=5)
    got, info = engine.score_prefix_cached(loaded, score="logits[:,0]", prompts=PROMPTS, words=WORDS)
    assert info["engine"] == "prefix_cache"
    assert _max_diff(ref, got) <= TOL


# ---------------------------------------------------------------------------------------------------
# Causal-LM sequence log-probs


def _full_pass_logprob(model, ctx_ids, cont_ids) -> float:
    ids = torch.tensor([ctx_ids + cont_ids])
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return float(sum(logp[len(ctx_ids) - 1 + j, t] for j, t in enumerate(cont_ids)))


@pytest.fixture(scope="module")
def lm(style, tokenizer):
    model = tiny_models.build_tiny_model(tokenizer, architecture=style, head="causal_lm", seed=7)
    return hf_loading.LoadedModel(model=model, tokenizer=tokenizer, device="cpu", dtype=torch.float32)


def test_sequence_logprobs_equal_full_pass(lm, style):
    contexts = [tiny_models.render_chat(style, [{"role": "user", "content": p}], add_generation_prompt=True)
                for _, p in PROMPTS]
    conts = WORDS + [""]
    got, info = engine.sequence_logprobs(lm, contexts=contexts, continuations=conts, batch_size=4)
    assert info["engine"] == "prefix_cache" and info["layout"] == "packed"
    rows, _ = engine.sequence_logprobs(lm, contexts=contexts, continuations=conts, batch_size=4, pack_tokens=0)
    assert np.abs(rows["logprob"].to_numpy() - got["logprob"].to_numpy()).max() <= TOL
    assert got.columns == ["context", "continuation", "n_tokens", "logprob"] and got.height == len(contexts) * len(conts)
    tok = lm.tokenizer
    expected = []
    for context in contexts:
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        for c in conts:
            cont = tok(c, add_special_tokens=False)["input_ids"] if c else []
            expected.append(_full_pass_logprob(lm.model, ctx, cont))
    assert np.abs(got["logprob"].to_numpy() - np.array(expected)).max() <= TOL
    assert got.filter(got["continuation"] == "")["logprob"].to_list() == [0.0] * len(contexts)
    assert got["n_tokens"].max() >= 5 and (got["logprob"] < 0).sum() == len(contexts) * len(WORDS)
    if style == "gemma":  # the causal LM's own output processing (final logit soft-capping) is applied
        assert lm.model.config.final_logit_softcapping is not None


def test_sequence_logprobs_raw_prompt_with_bos_and_oom(lm):
    seen = []

    def oom_once(batch_tokens):
        seen.append(batch_tokens)
        if len(seen) == 1:
            raise torch.OutOfMemoryError("out of memory (simulated)")

    got, info = engine.sequence_logprobs(lm, contexts=["What is the best thing ever?"], continuations=WORDS,
                                         add_special_tokens=True, batch_size=8, oom_simulator=oom_once)
    assert info["oom_halvings"] == 1
    tok = lm.tokenizer
    ctx = tok("What is the best thing ever?", add_special_tokens=True)["input_ids"]
    assert ctx[0] == tok.bos_token_id
    expected = [_full_pass_logprob(lm.model, ctx, tok(w, add_special_tokens=False)["input_ids"]) for w in WORDS]
    assert np.abs(got["logprob"].to_numpy() - np.array(expected)).max() <= TOL


class CustomLM(transformers.LlamaForCausalLM):
    pass


def test_sequence_logprobs_fallback():
    tok = _tokenizer("llama")
    base = tiny_models.build_tiny_model(tok, architecture="llama", head="causal_lm", seed=8)
    model = CustomLM(base.config).eval()
    model.load_state_dict(base.state_dict())
    loaded = hf_loading.LoadedModel(model=model, tokenizer=tok, device="cpu", dtype=torch.float32)
    got, info = engine.sequence_logprobs(loaded, contexts=["Hello there"], continuations=WORDS,
                                         add_special_tokens=True)
    assert info["engine"].startswith("straightforward (") and "CustomLM" in info["engine"]
    ctx = tok("Hello there", add_special_tokens=True)["input_ids"]
    expected = [_full_pass_logprob(model, ctx, tok(w, add_special_tokens=False)["input_ids"]) for w in WORDS]
    assert np.abs(got["logprob"].to_numpy() - np.array(expected)).max() <= TOL
