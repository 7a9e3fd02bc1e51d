"""Tiny offline transformers models: tokenizers, chat templates, save and reload."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from valuebias.demo_models import tiny_models

TEXTS = [
    "What, in one word, is the greatest thing ever?",
    "What is the worst thing in the world? Please answer in one word only.",
    "freedom love power kindness courage honesty",
] * 20
MESSAGES = [{"role": "user", "content": "What is the best thing ever?"},
            {"role": "assistant", "content": "love"}]
EXPECTED = {
    "llama": ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the best thing ever?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nlove<|eot_id|>"),
    "gemma": ("<bos><start_of_turn>user\nWhat is the best thing ever?<end_of_turn>\n"
              "<start_of_turn>model\nlove<end_of_turn>\n"),
}
GENERATION_PROMPT = {"llama": "<|start_header_id|>assistant<|end_header_id|>\n\n", "gemma": "<start_of_turn>model\n"}
SPECIALS = {"llama": tiny_models.LLAMA_SPECIAL_TOKENS, "gemma": tiny_models.GEMMA_SPECIAL_TOKENS}
SPACE_MARK = {"llama": "Ġ", "gemma": "▁"}


@pytest.fixture(scope="module", params=tiny_models.STYLES)
def tokenizer(request):
    return tiny_models.train_tokenizer(TEXTS, style=request.param, vocab_size=300)


def style_of(tokenizer) -> str:
    return "llama" if "<|eot_id|>" in tokenizer.get_vocab() else "gemma"


def test_chat_template_renders_as_specified(tokenizer):
    style = style_of(tokenizer)
    assert tokenizer.apply_chat_template(MESSAGES, tokenize=False) == EXPECTED[style]
    assert tiny_models.render_chat(style, MESSAGES) == EXPECTED[style]
    with_prompt = tokenizer.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True)
    assert with_prompt == EXPECTED[style].split(GENERATION_PROMPT[style])[0] + GENERATION_PROMPT[style]


def test_special_tokens_are_single_ids_when_the_rendered_text_is_retokenized(tokenizer):
    style = style_of(tokenizer)
    vocab = tokenizer.get_vocab()
    for token in SPECIALS[style]:
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [vocab[token]]
    ids = tokenizer(EXPECTED[style], add_special_tokens=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    rendered_specials = [t for t in pieces if t in SPECIALS[style]]
    # Every special token of the rendered text came back whole, in order, and none was split.
    expected_order = re.findall("|".join(map(re.escape, SPECIALS[style])), EXPECTED[style])
    assert rendered_specials == expected_order
    assert not any(p in {"<", "<|", "|>"} for p in pieces)
    assert tokenizer.decode(ids) == EXPECTED[style]


def test_pad_token_is_distinct_from_everything_the_template_emits(tokenizer):
    style = style_of(tokenizer)
    ids = tokenizer(EXPECTED[style], add_special_tokens=False)["input_ids"]
    assert tokenizer.pad_token_id is not None
    assert tokenizer.pad_token_id not in ids


def test_leading_space_marker(tokenizer):
    style = style_of(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("love power kindness", add_special_tokens=False)["input_ids"])
    other = "▁" if style == "llama" else "Ġ"
    assert any(p.startswith(SPACE_MARK[style]) for p in pieces), pieces
    assert not any(other in p for p in pieces), pieces
    assert tokenizer.decode(tokenizer("love power", add_special_tokens=False)["input_ids"]) == "love power"


def test_add_special_tokens_prepends_bos(tokenizer):
    ids = tokenizer("love")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert ids[1:] == tokenizer("love", add_special_tokens=False)["input_ids"]


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="style"):
        tiny_models.train_tokenizer(TEXTS, style="mistral")


@pytest.mark.parametrize("architecture", tiny_models.STYLES)
@pytest.mark.parametrize("head", tiny_models.HEADS)
def test_save_and_reload_offline(tmp_path, monkeypatch, architecture, head):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = tiny_models.train_tokenizer(TEXTS, style=architecture, vocab_size=300)
    model = tiny_models.build_tiny_model(tokenizer, architecture=architecture, head=head, hidden_size=32,
                                         num_layers=1, num_heads=2, seed=3)
    assert model.dtype == torch.float32
    assert model.config.pad_token_id == tokenizer.pad_token_id
    out = tiny_models.save_pretrained(model, tokenizer, tmp_path / "m")

    files = {p.name for p in out.iterdir()}
    assert "model.safetensors" in files
    assert not any(name.endswith((".bin", ".pt")) for name in files)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == {"llama": "llama", "gemma": "gemma2"}[architecture]

    auto = AutoModelForSequenceClassification if head == "sequence_classification" else AutoModelForCausalLM
    reloaded = auto.from_pretrained(out)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(out)
    assert reloaded_tokenizer.apply_chat_template(MESSAGES, tokenize=False) == EXPECTED[architecture]
    assert reloaded_tokenizer.pad_token == tokenizer.pad_token

    ids = torch.tensor([reloaded_tokenizer(EXPECTED[architecture], add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        before, after = model(input_ids=ids).logits, reloaded(input_ids=ids).logits
    expected_shape = (1, 1) if head == "sequence_classification" else (1, ids.shape[1], len(tokenizer))
    assert tuple(after.shape) == expected_shape
    torch.testing.assert_close(before, after)


def test_same_seed_same_weights_different_seed_different_weights():
    tokenizer = tiny_models.train_tokenizer(TEXTS, style="llama", vocab_size=300)

    def weights(seed):
        model = tiny_models.build_tiny_model(tokenizer, architecture="llama", head="sequence_classification",
                                             hidden_size=32, num_layers=1, num_heads=2, seed=seed)
        return model.score.weight.detach().clone()

    torch.testing.assert_close(weights(1), weights(1))
    assert not torch.equal(weights(1), weights(2))
