"""The paper's reward-model heads, offline: tiny random-weight replicas (valuebias/paper_heads.py).

Each replica is built from the real transformers config class of its base (Llama-3.1, Llama-3, Gemma-2)
with the base's published chat template, and read the way the paper's RMs are read: ``logits[0]`` of a
1-label head (Skywork, GRM), ``logits[:,0]`` of a multi-output head (URM), the ``score`` attribute of a
remote-code head (ArmoRM, QRM). The reference score of a conversation is computed independently of any
padding or pad id: the base transformer on the unpadded token ids, the head applied to the last token.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from valuebias.demo_models import paper_heads
from valuebias import engine, rm_scoring as scoring
from valuebias import hf_loading
from valuebias.config import load_config
from valuebias.errors import InputError
from valuebias.lm_scoring import LanguageModelSource
from valuebias.model_content import DigestCache, check_executed_code, describe_change, folder_identity

TOL = 1e-4
PROMPTS = [
    ("greatest_ever_one", "What, in one word, is the greatest thing ever?"),
    ("worst_world_please", "What is the worst thing in the world? Please answer in one word only."),
    ("good_time_single", "What, in a single word, is the most good thing of all time?"),
]
# Words of one to many tokens (the tokenizer is trained on the first four only).
WORDS = ["love", "power", "kindness", "freedom", "self-determination", "Zyxwvut", "a", "peace and quiet"]
TRAINING_TEXTS = [text for _, text in PROMPTS] + WORDS[:4]
BASES = tuple(paper_heads.BASES)
# sha256 of the published templates as copied (valuebias/demo_models/chat_templates/README.md names the sources).
TEMPLATE_SHA256 = {
    "llama3.1": "e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65",
    "llama3": "ba03a121d097859c7b5b9cd03af99aafe95275210d2876f642ad9929a150f122",
    "gemma2": "ecd6ae513fe103f0eb62e8ab5bfa8d0fe45c1074fa398b089c93a7e70c15cfd6",
}
# What each template makes of [user: P, assistant: W] (the published formats, written out by hand).
RENDERED = {
    "llama3.1": ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December "
                 "2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nP<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\nW<|eot_id|>"),
    "llama3": ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nP<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nW<|eot_id|>"),
    "gemma2": "<bos><start_of_turn>user\nP<end_of_turn>\n<start_of_turn>model\nW<end_of_turn>\n",
}


@pytest.fixture(scope="module", autouse=True)
def offline_and_one_thread():
    """No hub; one intra-op thread (tiny models are dominated by per-op overhead on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    """``replica(base, head, pad=..., padding_side=...)``: the folder of that replica, built once."""
    built: dict[tuple, Path] = {}

    def get(base: str, head: str, pad: str = "own", padding_side: str = "right") -> Path:
        key = (base, head, pad, padding_side)
        if key not in built:
            out = tmp_path_factory.mktemp(f"{base}-{head}-{pad}-{padding_side}")
            built[key] = paper_heads.build_replica(out, base=base, head=head, texts=TRAINING_TEXTS, pad=pad,
                                                   padding_side=padding_side, seed=7)
        return built[key]

    return get


def source(path: Path, head: str, **kwargs) -> hf_loading.HuggingFaceSource:
    return hf_loading.HuggingFaceSource(model_id="replica", path=str(path), score=paper_heads.READERS[head],
                                     trust_remote_code=head == "custom_code", **kwargs)


def load(path: Path, head: str, **kwargs) -> hf_loading.LoadedModel:
    return scoring.load_reward_model(source(path, head, **kwargs), device="cpu")


def unpadded_scores(loaded, head: str) -> np.ndarray:
    """Per (prompt, word), prompt-major: the head on the base's hidden state at the last token of the
    unpadded sequence; no pad id is involved."""
    model, tokenizer = loaded.model, loaded.tokenizer
    out = []
    with torch.inference_mode():
        for (_, text), word in itertools.product(PROMPTS, WORDS):
            rendered = scoring.render_conversation(tokenizer, text, word)
            ids = torch.tensor([tokenizer(rendered, add_special_tokens=False)["input_ids"]])
            last = model.model(input_ids=ids).last_hidden_state[:, -1]
            out.append(float(model.score_hidden(last)[0][0] if head == "custom_code" else model.score(last)[0, 0]))
    return np.array(out)


def product_scores(loaded, head: str) -> dict[str, np.ndarray]:
    """The straightforward path one sequence at a time and batched, and the engine."""
    reader = paper_heads.READERS[head]
    one = scoring.score_words(loaded, score=reader, prompts=PROMPTS, words=WORDS, batch_size=1)
    batched = scoring.score_words(loaded, score=reader, prompts=PROMPTS, words=WORDS, batch_size=7)
    fast, info = engine.score_prefix_cached(loaded, score=reader, prompts=PROMPTS, words=WORDS, batch_size=4,
                                            max_batch_size=8)
    assert fast["word"].to_list() == one["word"].to_list() == WORDS * len(PROMPTS)
    return {"one_by_one": one["score"].to_numpy(), "batched": batched["score"].to_numpy(),
            "engine": fast["score"].to_numpy(), "info": info}


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


# ---- templates ------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", BASES)
def test_the_published_template_is_installed_and_renders_the_published_format(replica, base):
    path = paper_heads.TEMPLATE_DIR / paper_heads.BASES[base].template_file
    assert hashlib.sha256(path.read_bytes()).hexdigest() == TEMPLATE_SHA256[base]
    loaded = load(replica(base, "sequence_classification"), "sequence_classification")
    assert loaded.tokenizer.chat_template == paper_heads.chat_template(base)
    assert scoring.render_conversation(loaded.tokenizer, "P", "W") == RENDERED[base]
    assert type(loaded.model.config).__name__ == paper_heads.BASES[base].config_class


# ---- the three heads: engine = straightforward = the unpadded score --------------------------------


@pytest.mark.parametrize("head", paper_heads.HEADS)
@pytest.mark.parametrize("base", BASES)
def test_every_path_reads_the_unpadded_last_token_score(replica, base, head):
    loaded = load(replica(base, head), head)
    assert loaded.model.dtype == torch.float32
    reference = unpadded_scores(loaded, head)
    assert reference.std() > 1e-3  # the scores differ between conversations: the comparisons below can fail
    got = product_scores(loaded, head)
    assert max_diff(got["engine"], got["one_by_one"]) <= TOL
    assert max_diff(got["batched"], got["one_by_one"]) <= TOL  # scores do not move with the batch size
    assert max_diff(got["one_by_one"], reference) <= TOL
    if head == "custom_code":
        assert got["info"]["engine"].startswith("straightforward (")
        assert paper_heads.CUSTOM_CLASS in got["info"]["engine"]
    else:
        assert got["info"]["engine"] == "prefix_cache"
    if head == "multi_output":
        assert loaded.model.config.num_labels == paper_heads.MULTI_OUTPUT_LABELS


@pytest.mark.parametrize("head", paper_heads.HEADS)
@pytest.mark.parametrize("base", BASES)
def test_pad_equal_to_eos_still_reads_the_last_real_token(replica, base, head):
    """The Llama-3 templates end every turn with EOS; with pad == EOS a head that finds padding by its id
    reads the wrong token, padded or not. The product pads with an id that no sequence contains."""
    path = replica(base, head, pad="eos")
    loaded = load(path, head)
    tokenizer, config = loaded.tokenizer, loaded.model.config
    assert config.pad_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id
    rendered = tokenizer(scoring.render_conversation(tokenizer, PROMPTS[0][1], "love"), add_special_tokens=False)
    reference = unpadded_scores(loaded, head)
    if base.startswith("llama"):
        assert rendered["input_ids"][-1] == tokenizer.eos_token_id
        # The hazard is real: the model's own forward, unpadded, reads another token than the last one.
        own = []
        with torch.inference_mode():
            for (_, text), word in itertools.product(PROMPTS, WORDS):
                ids = tokenizer(scoring.render_conversation(tokenizer, text, word), add_special_tokens=False)
                output = loaded.model(input_ids=torch.tensor([ids["input_ids"]]))
                own.append(float(scoring.read_scalar(output, paper_heads.READERS[head])[0]))
        assert max_diff(np.array(own), reference) > 10 * TOL
    got = product_scores(loaded, head)
    for path_name in ("one_by_one", "batched", "engine"):
        assert max_diff(got[path_name], reference) <= TOL, path_name
    assert config.pad_token_id not in set(itertools.chain.from_iterable(
        tokenizer([scoring.render_conversation(tokenizer, t, w) for (_, t), w in itertools.product(PROMPTS, WORDS)],
                  add_special_tokens=False)["input_ids"]))


@pytest.mark.parametrize("head", ["sequence_classification", "custom_code"])
@pytest.mark.parametrize("base", BASES)
def test_left_padding(replica, base, head):
    """A checkpoint whose tokenizer pads on the left: the replica's head reads the last real token of a
    left-padded batch, and the product (which pads its own batches) is not affected by the tokenizer's side."""
    loaded = load(replica(base, head, padding_side="left"), head)
    tokenizer = loaded.tokenizer
    assert tokenizer.padding_side == "left"
    texts = [scoring.render_conversation(tokenizer, text, word)
             for (_, text), word in itertools.product(PROMPTS, WORDS)]
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    assert (batch["attention_mask"][:, 0] == 0).any()  # some rows really are left-padded
    reference = unpadded_scores(loaded, head)
    with torch.inference_mode():
        output = loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    left_padded = scoring.read_scalar(output, paper_heads.READERS[head]).numpy()
    assert max_diff(left_padded, reference) <= TOL
    got = product_scores(loaded, head)
    for path_name in ("one_by_one", "batched", "engine"):
        assert max_diff(got[path_name], reference) <= TOL, path_name


# ---- BOS exactly once in the ids fed ---------------------------------------------------------------


def _record_inputs(module) -> tuple[list[dict], torch.utils.hooks.RemovableHandle]:
    calls: list[dict] = []

    def hook(_module, args, kwargs):
        calls.append({"input_ids": kwargs["input_ids"].clone(), "attention_mask": kwargs.get("attention_mask"),
                      "position_ids": kwargs.get("position_ids")})

    return calls, module.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("head", ["sequence_classification", "custom_code"])
@pytest.mark.parametrize("base", BASES)
def test_bos_appears_exactly_once_in_the_ids_fed(replica, base, head):
    loaded = load(replica(base, head), head)
    tokenizer, bos = loaded.tokenizer, loaded.tokenizer.bos_token_id
    texts = [scoring.render_conversation(tokenizer, text, word)
             for (_, text), word in itertools.product(PROMPTS, WORDS)]
    expected = sorted(tokenizer(texts, add_special_tokens=False)["input_ids"])
    assert all(ids[0] == bos and ids.count(bos) == 1 for ids in expected)
    # The hazard is real: the default encoding adds a second BOS in front of the template's.
    assert tokenizer(texts[0])["input_ids"][:2] == [bos, bos]

    calls, handle = _record_inputs(loaded.model)
    try:
        scoring.score_words(loaded, score=paper_heads.READERS[head], prompts=PROMPTS, words=WORDS, batch_size=5)
    finally:
        handle.remove()
    fed = sorted(row[mask.bool()].tolist() for call in calls for row, mask in zip(call["input_ids"],
                                                                                 call["attention_mask"]))
    assert fed == expected  # exactly the template's ids, one BOS each, nothing added

    if head == "custom_code":
        return
    calls, handle = _record_inputs(loaded.model.model)  # the engine runs the base transformer itself
    try:
        _, info = engine.score_prefix_cached(loaded, score=paper_heads.READERS[head], prompts=PROMPTS, words=WORDS)
    finally:
        handle.remove()
    assert info["engine"] == "prefix_cache"
    prefixes = [call for call in calls if call["position_ids"] is None]
    suffixes = [call for call in calls if call["position_ids"] is not None]
    assert prefixes and suffixes
    for call in prefixes:  # one row per prompt: its shared prefix, starting with the template's BOS
        for row, mask in zip(call["input_ids"], call["attention_mask"]):
            real = row[mask.bool()]
            assert real[0] == bos and int((real == bos).sum()) == 1
    assert all(int((call["input_ids"] == bos).sum()) == 0 for call in suffixes)


# ---- remote code -----------------------------------------------------------------------------------


def _fresh_custom_copy(replica, base: str, tmp_path: Path, tag: str) -> Path:
    """A copy of the custom-code replica whose code this test process has not imported yet: transformers
    keys an imported module by its folder's name and the code's hash, so each test gives its copy its own
    ``tag`` (a fixed one, so that reruns reuse transformers' module cache instead of growing it)."""
    folder = tmp_path / f"custom_{tag}"  # a valid module name
    shutil.copytree(replica(base, "custom_code"), folder)
    code = folder / paper_heads.CUSTOM_CODE_FILE
    code.write_text(code.read_text() + f"# copy {tag}\n")
    return folder


def _imported_from(folder: Path) -> list[str]:
    return [name for name in sys.modules if name.startswith(f"transformers_modules.{folder.name}")]


@pytest.mark.parametrize("base", ["llama3", "gemma2"])
def test_remote_code_is_refused_before_it_runs_and_runs_when_trusted(replica, base, tmp_path, monkeypatch):
    folder = _fresh_custom_copy(replica, base, tmp_path, f"refused_{base}")
    marker = tmp_path / "imported.txt"
    monkeypatch.setenv(paper_heads.REMOTE_CODE_MARKER_ENV, str(marker))
    untrusted = hf_loading.HuggingFaceSource(model_id="armo", path=str(folder), score="score")
    for attempt in (hf_loading.check_source, lambda src: scoring.load_reward_model(src, device="cpu")):
        with pytest.raises(InputError) as err:
            attempt(untrusted)
        assert err.value.field == "huggingface.trust_remote_code" and err.value.source == "models.armo"
    assert not marker.exists() and not _imported_from(folder)  # the code never ran

    loaded = load(folder, "custom_code")
    assert type(loaded.model).__name__ == paper_heads.CUSTOM_CLASS
    assert marker.read_text().splitlines() == [type(loaded.model).__module__]  # it ran once, when trusted
    scores = scoring.score_words(loaded, score="score", prompts=PROMPTS[:1], words=WORDS)
    assert scores.height == len(WORDS) and scores["score"].std() > 1e-3


def test_remote_code_is_part_of_the_content_identity_and_checked_after_loading(replica, tmp_path):
    folder = _fresh_custom_copy(replica, "llama3", tmp_path, "identity")
    before = folder_identity(folder, cache=DigestCache(None))
    assert paper_heads.CUSTOM_CODE_FILE in before.parts and "config.json" in before.parts

    loaded = load(folder, "custom_code")
    objects = [loaded.model, loaded.model.config, loaded.tokenizer]
    assert check_executed_code(objects, before, source="models.armo") == [paper_heads.CUSTOM_CODE_FILE]

    # The code changes after the digest was taken: what runs is no longer what was digested.
    code = folder / paper_heads.CUSTOM_CODE_FILE
    code.write_text(code.read_text() + "# edited after the digest\n")
    after = folder_identity(folder, cache=DigestCache(None))
    assert after.digest != before.digest
    assert describe_change("files", before.parts, after) == f"model content ({paper_heads.CUSTOM_CODE_FILE})"
    reloaded = load(folder, "custom_code")
    objects = [reloaded.model, reloaded.model.config, reloaded.tokenizer]
    with pytest.raises(InputError) as err:
        check_executed_code(objects, before, source="models.armo")
    assert err.value.field == "huggingface.path" and paper_heads.CUSTOM_CODE_FILE in str(err.value)
    assert check_executed_code(objects, after) == [paper_heads.CUSTOM_CODE_FILE]


def test_hub_remote_code_needs_a_full_commit_sha(tmp_path):
    sha = "0123456789abcdef0123456789abcdef01234567"
    for revision in (None, "main", sha[:12]):
        with pytest.raises(InputError) as err:
            hf_loading.check_source(hf_loading.HuggingFaceSource(model_id="armo", path="RLHFlow/ArmoRM-Llama3-8B-v0.1",
                                                           score="score", trust_remote_code=True, revision=revision))
        assert err.value.field == "huggingface.revision" and "40-character commit sha" in str(err.value)
    kwargs = hf_loading.check_source(hf_loading.HuggingFaceSource(model_id="armo", path="RLHFlow/ArmoRM-Llama3-8B-v0.1",
                                                            score="score", trust_remote_code=True, revision=sha))
    assert kwargs["revision"] == sha and kwargs["trust_remote_code"] is True
    # Without remote code, a hub id needs no pin.
    assert "revision" not in hf_loading.check_source(hf_loading.HuggingFaceSource(model_id="sky", path="org/name"))

    def config_with(huggingface: str) -> Path:
        path = tmp_path / "valuebias.yaml"
        path.write_text("prompts: {uri: prompts.csv}\ncorpora:\n  big2: {uri: words.csv, format: csv}\nmodels:\n"
                        f"  armo:\n    kind: reward_model\n    family: llama\n    huggingface: {huggingface}\n")
        return path

    with pytest.raises(InputError) as err:
        load_config(config_with("{path: RLHFlow/ArmoRM-Llama3-8B-v0.1, score: score, trust_remote_code: true, "
                                "revision: main}"))
    assert err.value.field == "models.armo.huggingface.revision" and err.value.row == 8
    pinned = load_config(config_with(f"{{path: RLHFlow/ArmoRM-Llama3-8B-v0.1, score: score, "
                                     f"trust_remote_code: true, revision: '{sha}'}}"))
    assert pinned.models["armo"].settings["revision"] == sha
    (tmp_path / "armo").mkdir()  # a local folder: its content digest is the pin
    local = load_config(config_with("{path: ./armo, score: score, trust_remote_code: true}"))
    assert local.models["armo"].settings["trust_remote_code"] is True


def test_the_paper_config_names_each_unpinned_remote_code_model(tmp_path):
    """configs/paper_huggingface.yaml leaves the three `revision:` keys empty: it stops naming the first;
    with commit shas filled in it loads (every other key of it is valid)."""
    paper = Path(__file__).resolve().parents[1] / "configs" / "paper_huggingface.yaml"
    with pytest.raises(InputError) as err:
        load_config(paper)
    assert err.value.field == "models.qrm-gemma2-27b.huggingface.revision"
    text = paper.read_text()
    assert text.count("revision:  # REQUIRED") == 3
    shas = iter(f"{i:040x}" for i in range(1, 4))
    while "revision:  # REQUIRED" in text:
        text = text.replace("revision:  # REQUIRED", f"revision: '{next(shas)}'  # REQUIRED", 1)
    pinned = tmp_path / "configs" / "paper_huggingface.yaml"
    pinned.parent.mkdir()
    pinned.write_text(text)
    config = load_config(pinned)
    remote = {mid: m.settings["revision"] for mid, m in config.models.items() if m.settings["trust_remote_code"]}
    assert sorted(remote) == ["armorm-llama3-8b", "qrm-gemma2-27b", "qrm-llama3.1-8b"]
    assert len(config.reward_models()) == 10 and all(len(sha) == 40 for sha in remote.values())


# ---- attention implementation ------------------------------------------------------------------------


def test_gemma2_loads_with_eager_attention_by_default(replica, tmp_path):
    gemma = replica("gemma2", "sequence_classification")
    src = source(gemma, "sequence_classification")
    assert hf_loading.attn_implementation(src, hf_loading.check_source(src)) == "eager"  # read from config.json
    assert load(gemma, "sequence_classification").model.config._attn_implementation == "eager"
    assert LanguageModelSource(model_id="lm", path=str(gemma), variant="pretrained",
                               attn_implementation="eager").as_huggingface_source().attn_implementation == "eager"
    with pytest.raises(InputError) as err:  # a kernel this transformers refuses for Gemma-2
        load(gemma, "sequence_classification", attn_implementation="sdpa")
    assert err.value.field == "huggingface.attn_implementation"

    llama = replica("llama3.1", "sequence_classification")
    src = source(llama, "sequence_classification")
    assert hf_loading.attn_implementation(src, hf_loading.check_source(src)) is None  # transformers' own default
    assert load(llama, "sequence_classification").model.config._attn_implementation == "sdpa"
    assert load(llama, "sequence_classification",
                attn_implementation="eager").model.config._attn_implementation == "eager"
    with pytest.raises(InputError) as err:
        source(llama, "sequence_classification", attn_implementation="fast")
    assert err.value.field == "huggingface.attn_implementation"


def test_attn_implementation_in_the_config(tmp_path):
    def entry(extra: str) -> Path:
        path = tmp_path / "valuebias.yaml"
        path.write_text("prompts: {uri: prompts.csv}\ncorpora:\n  big2: {uri: words.csv, format: csv}\nmodels:\n"
                        f"  rm: {{kind: reward_model, family: gemma, huggingface: {{path: org/rm{extra}}}}}\n")
        return path

    unset, eager = load_config(entry("")).models["rm"], load_config(entry(", attn_implementation: eager")).models["rm"]
    assert "attn_implementation" not in unset.settings  # unset: not part of the fingerprint
    assert eager.settings["attn_implementation"] == "eager" and eager.fingerprint != unset.fingerprint
    with pytest.raises(InputError) as err:
        load_config(entry(", attn_implementation: fast"))
    assert err.value.field == "models.rm.huggingface.attn_implementation" and "eager, sdpa" in str(err.value)


def test_the_scoring_worker_runs_a_local_remote_code_head_as_digested(replica, tmp_path):
    """``score_partition.score_reward_model`` (what the scoring worker calls) digests the folder, loads from
    it, checks the code that ran, and records the digest of the remote code in its provenance."""
    import polars as pl

    from valuebias.config import ModelConfig
    from valuebias.model_sources import Workspace, source_of
    from valuebias.rm_partition import score_reward_model

    folder = _fresh_custom_copy(replica, "gemma2", tmp_path, "worker")
    prompts = pl.DataFrame({"prompt": [p for p, _ in PROMPTS], "text": [t for _, t in PROMPTS]})
    words = pl.DataFrame({"corpus": "big2", "word": WORDS, "category": "Agency"})
    settings = {"path": str(folder), "score": "score", "trust_remote_code": True, "dtype": "float32"}
    model = ModelConfig("armo", "reward_model", "llama", "huggingface", settings)
    where = Workspace(prompts=prompts, corpus_words=words, demo_dir=tmp_path / "demo")
    table, metadata = score_reward_model("armo", lambda: source_of(model).reward_model(model, where),
                                         prompts=prompts, corpus_words=words, device="cpu")
    assert table.height == len(PROMPTS) * len(WORDS) and metadata["engine"].startswith("straightforward (")
    parts = metadata["content"]["parts"]
    code = (folder / paper_heads.CUSTOM_CODE_FILE).read_bytes()
    assert parts[paper_heads.CUSTOM_CODE_FILE] == hashlib.sha256(code).hexdigest()
    expected = unpadded_scores(load(folder, "custom_code"), "custom_code")
    got = table.sort("prompt", "word")
    order = {(p, w): i for i, (p, w) in enumerate(itertools.product([p for p, _ in PROMPTS], WORDS))}
    expected = expected[[order[(p, w)] for p, w in zip(got["prompt"], got["word"])]]
    assert max_diff(got["score"].to_numpy(), expected) <= TOL
