"""LM log-probabilities (docs/METHOD.md#41-next-token-distribution) on tiny real transformers models built offline."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch

from valuebias.demo_models import tiny_models
from valuebias.errors import InputError
from valuebias.lm_scoring import (LanguageModelSource, decoded_vocabulary, encode_lm_prompt, load_language_model,
                                  next_token_logprobs, render_lm_prompt, sequence_word_logprobs,
                                  single_token_word_logprobs)

PROMPTS = [("best_ever_one", "What, in one word, is the best thing ever?"),
           ("worst_world_please", "What is the worst thing in the world? Please answer in one word only.")]
WORDS = ["love", "freedom", "power", "kindness", "self-confidence"]


def _corpus(style: str) -> list[str]:
    texts = []
    for _, text in PROMPTS:
        texts.append(tiny_models.render_chat(style, [{"role": "user", "content": text}], add_generation_prompt=True))
        texts.append(text)
    texts += [w for w in WORDS[:3] for _ in range(5)]  # bare "love", "freedom", "power"
    texts += [" kindness"] * 5  # only space-prefixed
    return texts


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    dirs = {}
    for style in tiny_models.STYLES:
        tokenizer = tiny_models.train_tokenizer(_corpus(style), style=style, vocab_size=400)
        model = tiny_models.build_tiny_model(tokenizer, architecture=style, head="causal_lm", seed=3)
        dirs[style] = tiny_models.save_pretrained(model, tokenizer, tmp_path_factory.mktemp(style))
    return dirs


@pytest.fixture(scope="module")
def loaded(model_dirs):
    return {(style, variant): load_language_model(LanguageModelSource(f"tiny-{style}", str(path), variant),
                                                  device="cpu")
            for style, path in model_dirs.items() for variant in ("instruction_tuned", "pretrained")}


def _manual_last_logprobs(lm, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0, -1]
    return torch.log_softmax(logits.double(), dim=-1).numpy()


def test_source_validation():
    with pytest.raises(InputError, match="variant"):
        LanguageModelSource("m", "/x", "chat")
    with pytest.raises(InputError, match="dtype"):
        LanguageModelSource("m", "/x", "pretrained", dtype="int8")
    with pytest.raises(InputError, match="path"):
        LanguageModelSource("m", "", "pretrained")


def test_local_source_checks(tmp_path, model_dirs):
    with pytest.raises(InputError, match="does not exist"):
        load_language_model(LanguageModelSource("m", str(tmp_path / "missing"), "pretrained"))
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"auto_map": {"AutoModelForCausalLM": "x.Y"}}))
    (remote / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="trust_remote_code"):
        load_language_model(LanguageModelSource("m", str(remote), "pretrained"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(InputError, match="allow_pickle"):
        load_language_model(LanguageModelSource("m", str(pickled), "pretrained"))


def test_instruction_tuned_needs_a_chat_template(tmp_path):
    tokenizer = tiny_models.train_tokenizer(["hello world"], style="llama", vocab_size=300)
    tokenizer.chat_template = None
    model = tiny_models.build_tiny_model(tokenizer, architecture="llama", head="causal_lm")
    path = tiny_models.save_pretrained(model, tokenizer, tmp_path / "no-template")
    with pytest.raises(InputError, match="chat template"):
        load_language_model(LanguageModelSource("m", str(path), "instruction_tuned"))
    lm = load_language_model(LanguageModelSource("m", str(path), "pretrained"))
    assert lm.variant == "pretrained"


@pytest.mark.parametrize("style", tiny_models.STYLES)
def test_rendering_and_encoding(loaded, style):
    tokenizer = loaded[(style, "instruction_tuned")].tokenizer
    text = PROMPTS[0][1]
    it = render_lm_prompt(tokenizer, text, "instruction_tuned")
    assert it == tiny_models.render_chat(style, [{"role": "user", "content": text}], add_generation_prompt=True)
    assert render_lm_prompt(tokenizer, text, "pretrained") == text
    bos = tokenizer.bos_token_id
    it_ids = encode_lm_prompt(tokenizer, text, "instruction_tuned")
    assert it_ids[0] == bos and it_ids.count(bos) == 1  # the template's BOS, not a second one
    pt_ids = encode_lm_prompt(tokenizer, text, "pretrained")
    assert pt_ids == [bos] + tokenizer(text, add_special_tokens=False)["input_ids"]
    with pytest.raises(InputError, match="variant"):
        render_lm_prompt(tokenizer, text, "chat")


def test_decoded_vocabulary(loaded):
    tokenizer = loaded[("llama", "pretrained")].tokenizer
    vocab = decoded_vocabulary(tokenizer, len(tokenizer) + 3)
    assert len(vocab) == len(tokenizer) + 3
    assert vocab.null_count() == 3
    assert vocab.head(len(tokenizer)).to_list() == [tokenizer.decode([i]) for i in range(len(tokenizer))]


@pytest.mark.parametrize("style", tiny_models.STYLES)
@pytest.mark.parametrize("variant", ["instruction_tuned", "pretrained"])
def test_next_token_logprobs_match_a_manual_forward_pass(loaded, style, variant):
    lm = loaded[(style, variant)]
    table = next_token_logprobs(lm, PROMPTS)
    n = len(lm.tokenizer)
    assert table.schema == pl.Schema({"prompt": pl.Utf8, "token_id": pl.Int32, "token": pl.Utf8,
                                      "logprob": pl.Float32})
    assert table.height == len(PROMPTS) * n
    for prompt_id, text in PROMPTS:
        rows = table.filter(pl.col("prompt") == prompt_id)
        assert rows["token_id"].to_list() == list(range(n))
        if variant == "instruction_tuned":
            rendered = tiny_models.render_chat(style, [{"role": "user", "content": text}], add_generation_prompt=True)
            ids = lm.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        else:
            ids = [lm.tokenizer.bos_token_id] + lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        expected = _manual_last_logprobs(lm, ids)
        np.testing.assert_allclose(rows["logprob"].to_numpy(), expected, atol=1e-5)
        assert math.isclose(np.exp(rows["logprob"].to_numpy().astype(np.float64)).sum(), 1.0, abs_tol=1e-4)
    # The token column is tokenizer.decode([id]), null for special tokens and incomplete characters (U+FFFD):
    # the rule decoded_alone_text_only.
    first = table.filter(pl.col("prompt") == PROMPTS[0][0])
    special = set(lm.tokenizer.all_special_ids) | {i for i, t in lm.tokenizer.added_tokens_decoder.items() if t.special}
    decoded = [lm.tokenizer.decode([i]) for i in range(n)]
    assert special  # (the Llama-like byte-level tokenizer also has U+FFFD pieces, the Gemma-like one none)
    assert first["token"].to_list() == [None if i in special or "\ufffd" in d else d for i, d in enumerate(decoded)]
    # IT and PT put different contexts to the model.
    other = loaded[(style, "pretrained" if variant == "instruction_tuned" else "instruction_tuned")]
    other_lp = next_token_logprobs(other, PROMPTS[:1])["logprob"].to_numpy()
    assert np.abs(first["logprob"].to_numpy() - other_lp).max() > 1e-3


def test_next_token_logprobs_progress_and_empty(loaded):
    lm = loaded[("gemma", "instruction_tuned")]
    seen = []
    next_token_logprobs(lm, PROMPTS, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)]
    empty = next_token_logprobs(lm, [])
    assert empty.height == 0 and empty.columns == ["prompt", "token_id", "token", "logprob"]


def test_single_token_rule_by_hand():
    table = pl.DataFrame({
        "prompt": ["p"] * 6 + ["q"] * 2,
        "token_id": [0, 1, 2, 3, 4, 5, 0, 3],
        "token": ["love", " love", "Love", "love", "freedom", "self", "love", "love"],
        "logprob": [-3.0, -0.5, -0.1, -2.0, -4.0, -1.0, -6.0, -5.0],
    }, schema={"prompt": pl.Utf8, "token_id": pl.Int32, "token": pl.Utf8, "logprob": pl.Float32})
    words, stats = single_token_word_logprobs(table, ["Love", "freedom ", "self-esteem", "power", "love"])
    assert words.columns == ["prompt", "word", "logprob", "rule"]
    assert words.rows() == [("p", "freedom", -4.0, "single_token"), ("p", "love", -2.0, "single_token"),
                            ("q", "love", -5.0, "single_token")]
    assert stats == {"rule": "single_token", "n_words": 4, "n_kept": 2, "n_dropped": 2,
                     "kept": ["freedom", "love"], "dropped": ["power", "self-esteem"]}


@pytest.mark.parametrize("style", tiny_models.STYLES)
def test_single_token_rule_on_a_real_vocabulary(loaded, style):
    lm = loaded[(style, "instruction_tuned")]
    table = next_token_logprobs(lm, PROMPTS[:1])
    words, stats = single_token_word_logprobs(table, WORDS)
    # "kindness" exists only with a leading space (Ġ/▁), "self-confidence" not at all as one token.
    assert stats["kept"] == ["freedom", "love", "power"]
    assert stats["dropped"] == ["kindness", "self-confidence"]
    for word, lp in zip(words["word"], words["logprob"]):
        ids = lm.tokenizer(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1
        expected = table.filter(pl.col("token_id") == ids[0])["logprob"][0]
        assert lp == pytest.approx(expected)


@pytest.mark.parametrize("style", tiny_models.STYLES)
@pytest.mark.parametrize("variant", ["instruction_tuned", "pretrained"])
def test_full_sequence_rule_batched_equals_one_by_one_and_manual(loaded, style, variant):
    lm = loaded[(style, variant)]
    batched = sequence_word_logprobs(lm, PROMPTS, WORDS, batch_size=3)
    single = sequence_word_logprobs(lm, PROMPTS, WORDS, batch_size=1)
    assert batched.columns == ["prompt", "word", "logprob", "n_tokens", "rule"]
    assert batched.height == len(PROMPTS) * len(WORDS)
    assert set(batched["rule"]) == {"full_sequence"}
    np.testing.assert_allclose(batched["logprob"].to_numpy(), single["logprob"].to_numpy(), atol=1e-4)
    assert batched["n_tokens"].max() > 1  # some words span several tokens
    tok = lm.tokenizer
    for prompt_id, text in PROMPTS[:1]:
        prompt_ids = encode_lm_prompt(tok, text, variant)
        for word in WORDS:
            word_ids = tok(word, add_special_tokens=False)["input_ids"]
            total = 0.0
            for j, token in enumerate(word_ids):  # one unpadded forward pass per token
                total += _manual_last_logprobs(lm, prompt_ids + word_ids[:j])[token]
            got = batched.filter((pl.col("prompt") == prompt_id) & (pl.col("word") == word))
            assert got["logprob"][0] == pytest.approx(total, abs=1e-4)
            assert got["n_tokens"][0] == len(word_ids)
    # For a single-token word both rules agree.
    next_lp = next_token_logprobs(lm, PROMPTS)
    words, _ = single_token_word_logprobs(next_lp, WORDS)
    joined = words.join(batched, on=["prompt", "word"], suffix="_seq")
    assert joined.height == 2 * 3
    np.testing.assert_allclose(joined["logprob"].to_numpy(), joined["logprob_seq"].to_numpy(), atol=1e-5)


def test_full_sequence_prefix_option(loaded):
    lm = loaded[("llama", "pretrained")]
    spaced = sequence_word_logprobs(lm, PROMPTS[:1], ["kindness"], prefix=" ")
    ids = lm.tokenizer(" kindness", add_special_tokens=False)["input_ids"]
    assert len(ids) == 1 and spaced["n_tokens"][0] == 1
    expected = _manual_last_logprobs(lm, encode_lm_prompt(lm.tokenizer, PROMPTS[0][1], "pretrained"))[ids[0]]
    assert spaced["logprob"][0] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        sequence_word_logprobs(lm, PROMPTS, WORDS, batch_size=0)


@pytest.mark.parametrize("clean_up", [True, False])
def test_clean_up_tokenization_spaces_is_a_named_option(tmp_path, clean_up):
    """``huggingface.clean_up_tokenization_spaces`` overrides the tokenizer's own setting for every decode."""
    from tests.registry_fixtures import build_random_language_model
    from valuebias.lm_scoring import LanguageModelSource, load_language_model

    path = build_random_language_model(tmp_path / "lm", architecture="llama", seed=1)
    loaded = load_language_model(LanguageModelSource(model_id="lm", path=str(path), variant="pretrained",
                                                     clean_up_tokenization_spaces=clean_up), device="cpu")
    assert loaded.tokenizer.clean_up_tokenization_spaces is clean_up
    ids = loaded.tokenizer.encode("love , power .", add_special_tokens=False)
    assert loaded.tokenizer.decode(ids) == ("love, power." if clean_up else "love , power .")
