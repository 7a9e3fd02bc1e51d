"""The invariance audit of a reward-model partition (docs/METHOD.md#85-invariance-audit; ``valuebias.invariance``).

- The sample is fixed: one prompt per adjective (seeded draws when there is no adjective column), up to
  ``WORDS_PER_PROMPT`` words each, the same whatever the order of the tables.
- Its figures on known orders (identical, reversed).
- A tiny real model scored by the engine passes the audit; the same model with a score that depends on the
  other rows of its batch (injected into its head) fails it on every figure, and so does the check.
- Imported scores and adopted outputs are reported as not audited.
The end-to-end runs (metadata and a passing check on a materialized partition, also when every score is
reused from the cache) are in tests/test_pipeline.py and tests/test_scoring_launcher.py.
"""

from __future__ import annotations

import dagster as dg
import numpy as np
import polars as pl
import pytest

from tests.registry_fixtures import AGENCY, COMMUNION, PROMPTS, build_random_reward_model
from valuebias.invariance import (AUDITED, FALLBACK_PROMPTS, MAX_ABS_DIFF, MAX_FLIPPED_PAIR_SHARE, MIN_KENDALL_TAU,
                                  NOT_AUDITED_IMPORTED, WORDS_PER_PROMPT, audit_failures, audit_sample, compare_scores)
from valuebias.prompts import paper_prompt_table, prompts_to_csv, read_prompts

WORDS = AGENCY + COMMUNION


def test_the_sample_is_one_seeded_prompt_per_adjective_and_a_seeded_word_sample():
    prompts = paper_prompt_table()
    words = [f"word{i:03d}" for i in range(300)]
    sample = audit_sample(prompts, words)
    adjective = dict(zip(prompts["prompt"], prompts["adjective"]))
    assert sorted(adjective[p] for p in sample) == sorted(set(prompts["adjective"]))  # one per adjective
    assert all(len(chosen) == WORDS_PER_PROMPT and set(chosen) <= set(words) for chosen in sample.values())
    assert len({tuple(chosen) for chosen in sample.values()}) == len(sample)  # each prompt its own draw
    # fixed: the same for the tables in another order, different for another seed
    assert audit_sample(prompts.reverse(), list(reversed(words))) == sample
    assert audit_sample(prompts, words, seed=1) != sample
    # fewer words than the sample size: all of them
    assert all(chosen == sorted(WORDS) for chosen in audit_sample(prompts, WORDS).values())
    # no adjective column: FALLBACK_PROMPTS prompts drawn with the seed
    drawn = audit_sample(prompts.select("prompt", "text"), words)
    assert len(drawn) == FALLBACK_PROMPTS and drawn == audit_sample(prompts.select("prompt", "text").reverse(), words)


def test_figures_of_known_orders():
    words = [f"w{i}" for i in range(10)]
    scores = np.arange(10, dtype=float)
    same = pl.DataFrame({"prompt": ["a"] * 10 + ["b"] * 10, "word": words * 2,
                         "partition_score": np.concatenate([scores, scores]),
                         "single_score": np.concatenate([scores, scores])})
    figures = compare_scores(same)
    assert figures["invariance_max_abs_diff"] == 0.0 and figures["invariance_min_kendall_tau"] == pytest.approx(1.0)
    assert figures["invariance_flipped_pairs"] == 0 and figures["invariance_sequences"] == 20

    # prompt b reversed: tau -1 there, all of its 45 pairs flipped out of 90
    reversed_b = same.with_columns(pl.when(pl.col("prompt") == "b").then(9 - pl.col("single_score"))
                                   .otherwise(pl.col("single_score")).alias("single_score"))
    figures = compare_scores(reversed_b)
    assert figures["invariance_min_kendall_tau"] == pytest.approx(-1.0)
    assert figures["invariance_mean_kendall_tau"] == pytest.approx(0.0)
    assert figures["invariance_flipped_pairs"] == 45 and figures["invariance_flipped_pair_share"] == 0.5
    assert figures["invariance_max_abs_diff"] == 9.0 and figures["invariance_score_scale"] == 9.0


def test_kendall_tau_is_scipys_tau_b_ties_included():
    from scipy.stats import kendalltau as scipy_tau

    from valuebias.invariance import kendall_tau

    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 6, size=30).astype(float), rng.integers(0, 6, size=30).astype(float)  # many ties
        assert kendall_tau(a, b) == pytest.approx(scipy_tau(a, b).statistic, abs=1e-12)
        noisy = a + rng.normal(0, 0.5, size=30)
        assert kendall_tau(a, noisy) == pytest.approx(scipy_tau(a, noisy).statistic, abs=1e-12)
    constant = np.ones(5)
    assert kendall_tau(constant, constant) == 1.0 and kendall_tau(constant, np.arange(5.0)) == 0.0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from valuebias.rm_scoring import load_reward_model
    from valuebias.hf_loading import HuggingFaceSource

    path = build_random_reward_model(tmp_path_factory.mktemp("rm") / "rm", architecture="llama", seed=5)
    return load_reward_model(HuggingFaceSource(model_id="rm", path=str(path)), device="cpu")


def _prompt_table() -> pl.DataFrame:
    return read_prompts(prompts_to_csv(pl.DataFrame({"prompt": list(PROMPTS), "text": list(PROMPTS.values())})),
                        source="prompts.csv")


def _engine_then_audit(loaded):
    from valuebias import engine
    from valuebias.invariance import audit_partition

    prompts = _prompt_table()
    scores, info = engine.score_prefix_cached(loaded, score="logits[0]", prompts=list(zip(prompts["prompt"],
                                                                                          prompts["text"])),
                                              words=WORDS, batch_size=16)
    assert info["engine"] == "prefix_cache"
    return audit_partition(loaded, score="logits[0]", prompts=prompts, scores=scores)


def test_a_tiny_real_model_scored_by_the_engine_passes(model):
    from valuebias.assets.rm_scores import invariance_result

    figures = _engine_then_audit(model)
    assert figures["invariance_audit"] == AUDITED and figures["invariance_dtype"] == "float32"
    assert figures["invariance_sequences"] == len(PROMPTS) * len(WORDS)  # 6 adjectives, 40 < 64 words each
    assert figures["invariance_max_abs_diff"] <= 1e-5
    assert figures["invariance_min_kendall_tau"] == pytest.approx(1.0) and figures["invariance_flipped_pairs"] == 0
    assert figures["invariance_seconds"] > 0
    assert audit_failures(figures) == []
    check = invariance_result(figures)
    assert check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["invariance_max_abs_diff_allowed"].value == MAX_ABS_DIFF["float32"]


def test_a_score_that_depends_on_the_batch_fails_the_audit_and_the_check(model):
    """Each score gets its batch neighbour's score added (the head's output rolled by one row): alone in its
    batch, a sequence gets twice its own score (the same order); in a batch, its neighbour's."""
    from valuebias.assets.rm_scores import invariance_result

    hook = model.model.score.register_forward_hook(lambda module, inputs, output: output + output.roll(1, dims=0))
    try:
        figures = _engine_then_audit(model)
    finally:
        hook.remove()
    assert figures["invariance_max_abs_diff"] > MAX_ABS_DIFF["float32"] * figures["invariance_score_scale"]
    assert figures["invariance_min_kendall_tau"] < MIN_KENDALL_TAU
    assert figures["invariance_flipped_pair_share"] > MAX_FLIPPED_PAIR_SHARE
    failures = audit_failures(figures)
    assert len(failures) == 3, failures
    check = invariance_result(figures)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.description.startswith("scores depend on the batch: max |score difference|")
    assert "Kendall's tau" in check.description and "flipped word pairs" in check.description


def test_imported_scores_and_adopted_outputs_are_not_audited(tmp_path):
    from valuebias.assets.rm_scores import NOT_AUDITED_ADOPTED, invariance_result
    from valuebias.published import import_published_scores

    published = tmp_path / "scores.csv"
    published.write_text("response," + ",".join(PROMPTS) + "\n"
                         + "".join(f"{w}," + ",".join(["0.5"] * len(PROMPTS)) + "\n" for w in WORDS))
    corpus_words = pl.DataFrame({"corpus": "small", "word": WORDS, "category": ["Agency"] * 20 + ["Communion"] * 20})
    _, metadata = import_published_scores("pub", {"small": str(published)}, str(tmp_path), _prompt_table(),
                                          corpus_words)
    assert metadata["invariance_audit"] == NOT_AUDITED_IMPORTED
    for recorded, said in ((metadata, NOT_AUDITED_IMPORTED), ({"rows": 1}, NOT_AUDITED_ADOPTED)):
        check = invariance_result(recorded)
        assert check.passed and check.description == said and check.metadata["invariance_audit"].value == said


def test_the_readme_states_the_thresholds_of_the_code():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Invariance audit", 1)[1].split("\n## ", 1)[0]
    def short(x: float) -> str:  # 1e-3, as written
        return f"{x:.0e}".replace("e-0", "e-")

    stated = [f"> {short(MAX_ABS_DIFF['float32'])} (float32), {short(MAX_ABS_DIFF['float16'])} (float16), "
              f"{short(MAX_ABS_DIFF['bfloat16'])} (bfloat16)", f"minimum < {MIN_KENDALL_TAU}",
              f"share > {MAX_FLIPPED_PAIR_SHARE:.1%}".replace("%", " %"), f"up to {WORDS_PER_PROMPT} of the",
              f"{FALLBACK_PROMPTS} prompts drawn at random"]
    assert [s for s in stated if s not in section] == []
