"""Explicit RM scores: batched equals one-by-one, source checks, scalar readers."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import polars as pl
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from valuebias.demo_models import tiny_models
from valuebias import rm_scoring as scoring
from valuebias import hf_loading
from valuebias.errors import InputError
from valuebias.rm_scoring import load_reward_model, read_scalar, score_words
from valuebias.hf_loading import HuggingFaceSource, check_source

PROMPTS = [
    ("greatest_ever_one", "What, in one word, is the greatest thing ever?"),
    ("worst_world_please", "What is the worst thing in the world? Please answer in one word only."),
    ("good_time_single", "What, in a single word, is the most good thing of all time?"),
]
# Words of very different token lengths (and some the tokenizer never saw).
WORDS = ["love", "power", "kindness", "a", "self-determination", "extraordinarily unpronounceable",
         "Zyxwvut", "freedom", "trust", "honesty", "achievement", "x y z w v u t s"]


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    texts = [tiny_models.render_chat(style, [{"role": "user", "content": p}, {"role": "assistant", "content": w}])
             for style in tiny_models.STYLES for _, p in PROMPTS for w in WORDS[:4]]
    dirs = {}
    for architecture in tiny_models.STYLES:
        tokenizer = tiny_models.train_tokenizer(texts, style=architecture, vocab_size=400)
        model = tiny_models.build_tiny_model(tokenizer, architecture=architecture, head="sequence_classification",
                                             seed=1)
        dirs[architecture] = tiny_models.save_pretrained(model, tokenizer,
                                                         tmp_path_factory.mktemp("rm") / architecture)
    return dirs


def one_by_one(loaded, prompt_text, word):
    text = scoring.render_conversation(loaded.tokenizer, prompt_text, word)
    ids = torch.tensor([loaded.tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        return loaded.model(input_ids=ids).logits[0, 0].item()


@pytest.mark.parametrize("architecture", tiny_models.STYLES)
def test_batched_scores_equal_one_by_one(model_dirs, architecture):
    loaded = load_reward_model(HuggingFaceSource("tiny", str(model_dirs[architecture])), device="cpu")
    assert loaded.dtype == torch.float32 and loaded.model.dtype == torch.float32
    lengths = {len(loaded.tokenizer(w, add_special_tokens=False)["input_ids"]) for w in WORDS}
    assert len(lengths) >= 3, "the words must span several token lengths"

    calls = []
    batched = score_words(loaded, score="logits[0]", prompts=PROMPTS, words=WORDS, batch_size=5,
                          progress=lambda done, total: calls.append((done, total)))
    assert batched.columns == ["prompt", "word", "score"]
    assert batched.schema["score"] == pl.Float64
    assert batched.height == len(PROMPTS) * len(WORDS)
    assert batched.select("prompt", "word").rows() == [(p, w) for p, _ in PROMPTS for w in WORDS]
    total = len(PROMPTS) * len(WORDS)
    assert len(calls) == math.ceil(total / 5) and calls[-1] == (total, total)

    singles = [one_by_one(loaded, text, w) for _, text in PROMPTS for w in WORDS]
    diff = (batched["score"].to_torch() - torch.tensor(singles, dtype=torch.float64)).abs().max().item()
    assert diff <= 1e-5
    assert batched["score"].n_unique() > len(WORDS)  # not a constant: the comparison means something

    big = score_words(loaded, score="logits[0]", prompts=PROMPTS, words=WORDS, batch_size=64)
    assert (big["score"] - batched["score"]).abs().max() <= 1e-5


def test_score_words_with_no_words_gives_an_empty_typed_table(model_dirs):
    loaded = load_reward_model(HuggingFaceSource("tiny", str(model_dirs["llama"])), device="cpu")
    empty = score_words(loaded, score="logits[0]", prompts=PROMPTS, words=[])
    assert empty.height == 0 and empty.schema["score"] == pl.Float64


def test_score_attribute_reader_end_to_end(model_dirs):
    """An ArmoRM-style wrapper whose output carries `score` gives the same numbers as the head."""
    loaded = load_reward_model(HuggingFaceSource("tiny", str(model_dirs["gemma"])), device="cpu")

    class ScoreOutput(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = inner.config

        def forward(self, **kwargs):
            return SimpleNamespace(score=self.inner(**kwargs).logits)  # shape (batch, 1)

    direct = score_words(loaded, score="logits[0]", prompts=PROMPTS, words=WORDS)
    wrapped = hf_loading.LoadedModel(model=ScoreOutput(loaded.model), tokenizer=loaded.tokenizer, device="cpu",
                                  dtype=torch.float32)
    via_attribute = score_words(wrapped, score="score", prompts=PROMPTS, words=WORDS, batch_size=4)
    assert (direct["score"] - via_attribute["score"]).abs().max() <= 1e-5


def test_multi_output_head_and_logits0_guard(model_dirs, tmp_path):
    base = AutoModelForSequenceClassification.from_pretrained(model_dirs["llama"])
    config = base.config
    config.num_labels = 3
    torch.manual_seed(0)
    multi = AutoModelForSequenceClassification.from_config(config)
    out = tmp_path / "urm"
    multi.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(model_dirs["llama"] / name, out / name)

    with pytest.raises(InputError) as err:
        load_reward_model(HuggingFaceSource("urm", str(out), score="logits[0]"), device="cpu")
    assert err.value.field == "huggingface.score" and err.value.source == "models.urm"

    loaded = load_reward_model(HuggingFaceSource("urm", str(out), score="logits[:,0]"), device="cpu")
    scores = score_words(loaded, score="logits[:,0]", prompts=PROMPTS[:1], words=WORDS[:3])
    text = scoring.render_conversation(loaded.tokenizer, PROMPTS[0][1], WORDS[0])
    ids = torch.tensor([loaded.tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        expected = loaded.model(input_ids=ids).logits[0, 0].item()
    assert scores["score"][0] == pytest.approx(expected, abs=1e-5)


def test_explicit_dtype_is_honoured(model_dirs):
    loaded = load_reward_model(HuggingFaceSource("tiny", str(model_dirs["llama"]), dtype="bfloat16"), device="cpu")
    assert loaded.dtype == torch.bfloat16 and loaded.model.dtype == torch.bfloat16
    scores = score_words(loaded, score="logits[0]", prompts=PROMPTS[:1], words=WORDS[:2])
    assert scores["score"].is_finite().all()


# ---- check_source ---------------------------------------------------------------------------------

def expect_input_error(src, field):
    with pytest.raises(InputError) as err:
        check_source(src)
    assert err.value.source == f"models.{src.model_id}"
    assert err.value.field == field
    return err.value


def test_missing_local_path(tmp_path):
    expect_input_error(HuggingFaceSource("gone", str(tmp_path / "nope")), "huggingface.path")
    expect_input_error(HuggingFaceSource("rel", "./definitely/not/here"), "huggingface.path")


def test_remote_code_needs_trust(model_dirs, tmp_path):
    remote = tmp_path / "remote"
    shutil.copytree(model_dirs["llama"], remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_custom.CustomRewardModel"}
    (remote / "config.json").write_text(json.dumps(config))

    err = expect_input_error(HuggingFaceSource("armo", str(remote)), "huggingface.trust_remote_code")
    assert "trust_remote_code: true" in str(err)
    kwargs = check_source(HuggingFaceSource("armo", str(remote), trust_remote_code=True))
    assert kwargs["trust_remote_code"] is True


def test_pickle_only_weights_need_allow_pickle(model_dirs, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(model_dirs["llama"], pickled)
    model = AutoModelForSequenceClassification.from_pretrained(model_dirs["llama"])
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()

    err = expect_input_error(HuggingFaceSource("old", str(pickled)), "huggingface.allow_pickle")
    assert "pytorch_model.bin" in str(err)
    kwargs = check_source(HuggingFaceSource("old", str(pickled), allow_pickle=True))
    assert "use_safetensors" not in kwargs
    loaded = load_reward_model(HuggingFaceSource("old", str(pickled), allow_pickle=True), device="cpu")
    torch.testing.assert_close(loaded.model.score.weight, model.score.weight)

    # Weights next to safetensors are fine: safetensors are what gets loaded.
    shutil.copy(model_dirs["llama"] / "model.safetensors", pickled / "model.safetensors")
    assert check_source(HuggingFaceSource("old", str(pickled)))["use_safetensors"] is True


def test_directory_without_weights(model_dirs, tmp_path):
    empty = tmp_path / "noweights"
    shutil.copytree(model_dirs["llama"], empty)
    (empty / "model.safetensors").unlink()
    expect_input_error(HuggingFaceSource("empty", str(empty)), "huggingface.path")


def test_hub_ids_pass_the_safety_flags_through():
    kwargs = check_source(HuggingFaceSource("sky", "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2", revision="abc123"))
    assert kwargs == {"pretrained_model_name_or_path": "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2",
                      "revision": "abc123", "trust_remote_code": False, "use_safetensors": True}
    assert not HuggingFaceSource("sky", "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2").is_local
    for local in ("/abs/path", "./rel", "../up", "~/home"):
        assert HuggingFaceSource("x", local).is_local


def test_hub_remote_code_error_becomes_input_error(monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError("The repository RLHFlow/ArmoRM-Llama3-8B-v0.1 contains custom code which must be "
                         "executed to correctly load the model. Please pass the argument `trust_remote_code=True`")

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", refuse)
    with pytest.raises(InputError) as err:
        load_reward_model(HuggingFaceSource("armo", "RLHFlow/ArmoRM-Llama3-8B-v0.1", score="score"))
    assert err.value.field == "huggingface.trust_remote_code" and err.value.source == "models.armo"


def test_bad_registry_values_are_refused():
    with pytest.raises(InputError) as err:
        HuggingFaceSource("m", "org/name", score="logits[1]")
    assert err.value.field == "huggingface.score"
    with pytest.raises(InputError) as err:
        HuggingFaceSource("m", "org/name", dtype="int8")
    assert err.value.field == "huggingface.dtype"


def test_tokenizer_without_chat_template(model_dirs):
    loaded = load_reward_model(HuggingFaceSource("tiny", str(model_dirs["llama"])), device="cpu")
    loaded.tokenizer.chat_template = None
    with pytest.raises(InputError) as err:
        score_words(loaded, score="logits[0]", prompts=PROMPTS, words=WORDS)
    assert err.value.field == "huggingface.path" and err.value.source == "models.tiny"


# ---- read_scalar ----------------------------------------------------------------------------------

def test_read_scalar_logits0():
    out = SimpleNamespace(logits=torch.tensor([[1.5], [-2.0]]))
    assert read_scalar(out, "logits[0]").tolist() == [1.5, -2.0]
    with pytest.raises(ValueError, match="1-label"):
        read_scalar(SimpleNamespace(logits=torch.zeros(2, 3)), "logits[0]")


def test_read_scalar_first_column_of_multi_output_head():
    out = SimpleNamespace(logits=torch.tensor([[1.0, 9.0, 9.0], [3.0, 9.0, 9.0]]))
    assert read_scalar(out, "logits[:,0]").tolist() == [1.0, 3.0]


def test_read_scalar_score_attribute_from_a_module():
    class ArmoLike(torch.nn.Module):
        def __init__(self, shape_per_sequence):
            super().__init__()
            self.shape_per_sequence = shape_per_sequence

        def forward(self, input_ids):
            values = input_ids.float().sum(dim=1)
            return SimpleNamespace(score=values.reshape(-1, *self.shape_per_sequence), logits=None)

    ids = torch.tensor([[1, 2], [3, 4], [5, 6]])
    for shape in [(), (1,), (1, 1)]:
        assert read_scalar(ArmoLike(shape)(ids), "score").tolist() == [3.0, 7.0, 11.0]
    with pytest.raises(ValueError, match="no attribute 'score'"):
        read_scalar(SimpleNamespace(logits=torch.zeros(2, 1)), "score")
    with pytest.raises(ValueError, match="values per sequence"):
        read_scalar(SimpleNamespace(score=torch.zeros(2, 4)), "score")


@pytest.mark.parametrize("architecture", tiny_models.STYLES)
def test_one_render_per_prompt_equals_the_template_per_word(model_dirs, architecture):
    """render_conversations applies the template once per prompt; every text equals the template's own."""
    loaded = load_reward_model(HuggingFaceSource("tiny", str(model_dirs[architecture])), device="cpu")
    for _, text in PROMPTS:
        assert scoring.render_conversations(loaded.tokenizer, text, WORDS) == [
            scoring.render_conversation(loaded.tokenizer, text, word) for word in WORDS]


def test_a_template_that_changes_the_answer_is_rendered_per_word(model_dirs):
    """A template that transforms the answer (here: upper case) makes the shortcut differ from the template,
    which the check finds: every word is then rendered in full."""
    loaded = load_reward_model(HuggingFaceSource("tiny", str(model_dirs["llama"])), device="cpu")
    loaded.tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>"
                                      "{% if m['role'] == 'assistant' %}{{ m['content'] | upper }}"
                                      "{% else %}{{ m['content'] }}{% endif %}{% endfor %}")
    texts = scoring.render_conversations(loaded.tokenizer, PROMPTS[0][1], WORDS)
    assert texts[0].endswith("<assistant>LOVE") and texts == [
        scoring.render_conversation(loaded.tokenizer, PROMPTS[0][1], word) for word in WORDS]


@pytest.mark.parametrize("architecture", tiny_models.STYLES)
def test_token_ids_equal_the_tokenizer_call(model_dirs, architecture):
    loaded = load_reward_model(HuggingFaceSource("tiny", str(model_dirs[architecture])), device="cpu")
    texts = [scoring.render_conversation(loaded.tokenizer, p, w) for _, p in PROMPTS for w in WORDS]
    assert scoring.token_ids(loaded.tokenizer, texts) == loaded.tokenizer(texts, add_special_tokens=False)["input_ids"]
    loaded.tokenizer.backend_tokenizer.enable_truncation(8)  # a backend that truncates: the tokenizer call decides
    assert scoring.token_ids(loaded.tokenizer, texts) == loaded.tokenizer(texts, add_special_tokens=False)["input_ids"]
