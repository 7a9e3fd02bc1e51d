"""Value cards (docs/METHOD.md#84-value-cards): the crossed (words x prompts) test against an
independent computation, the four acceptance tests of section 8 on its synthetic registry, then end to end on
demo RMs (`valuebias run`, `valuebias card`, `valuebias cards`) and on the paper's ten published RMs."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats

from valuebias.simulation import simulate_ranks
from valuebias.value_cards import (CARD_SENTENCE, FREQUENCY_LABEL, TOO_SMALL, crossed_test, rank_sums,
                                   reference_note, value_card, word_families)

REFERENCE = {"m1": "a", "m2": "b", "m3": "a", "m4": "b", "m5": "a"}


def _card(seed: int, model: str = "m0", **simulation) -> pl.DataFrame:
    """The card of ``model`` in a synthetic registry of docs/METHOD.md#acceptance-tests (6 models, two corpora)."""
    ranks, framings, sizes = simulate_ranks(seed, **simulation)
    sums = rank_sums(table.drop("model") for table in ranks.partition_by("model"))
    others = {m: REFERENCE.get(m, "b") for m in ranks["model"].unique().to_list() if m != model}
    return value_card(ranks.filter(pl.col("model") == model).drop("model"), sums, framings, model, sizes, others)


# ------------------------------------------------------------------ the statistic, against a hand computation

def test_crossed_test_equals_a_hand_computation_of_section_8():
    rng = np.random.default_rng(7)
    categories = np.array(["A"] * 4 + ["B"] * 3 + ["C"] * 5)
    prompt_means = rng.normal(size=(12, 9))
    prompt_means[:4] -= 0.4
    family_means = prompt_means.mean(axis=1) + rng.normal(scale=0.3, size=12)
    result = crossed_test(family_means, prompt_means, categories, "A", entries=9)

    # by hand, straight from the text: D = mean over A's families - mean over all families
    inside = [f for f in range(12) if categories[f] == "A"]
    deviation = sum(family_means[f] for f in inside) / 4 - sum(family_means) / 12
    weights = [(1 / 4 if categories[f] == "A" else 0.0) - 1 / 12 for f in range(12)]
    word_terms = []
    for g, k in (("A", 4), ("B", 3), ("C", 5)):
        members = [f for f in range(12) if categories[f] == g]
        mean = sum(family_means[f] for f in members) / k
        variance = sum((family_means[f] - mean) ** 2 for f in members) / (k - 1)
        word_terms.append((sum(weights[f] ** 2 for f in members) * variance, k - 1))
    contrast = [sum(weights[f] * prompt_means[f, p] for f in range(12)) for p in range(9)]
    prompt_term = (float(np.var(contrast, ddof=1)) / 9, 8)
    terms = word_terms + [prompt_term]
    se = np.sqrt(sum(t for t, _ in terms))
    df = sum(t for t, _ in terms) ** 2 / sum(t ** 2 / d for t, d in terms)
    a = np.mean([1.0 if family_means[f] < family_means[h] else 0.5 if family_means[f] == family_means[h] else 0.0
                 for f in inside for h in range(12) if categories[h] != "A"])

    assert result.deviation == pytest.approx(deviation, abs=1e-12)
    assert result.se == pytest.approx(se, rel=1e-12) and result.df == pytest.approx(df, rel=1e-12)
    assert result.p == pytest.approx(2 * stats.t.sf(abs(deviation) / se, df), rel=1e-9)
    assert result.ci_low == pytest.approx(deviation - stats.t.ppf(0.975, df) * se, rel=1e-12)
    assert result.ci_high == pytest.approx(deviation + stats.t.ppf(0.975, df) * se, rel=1e-12)
    assert result.effect_size_a == pytest.approx(a, abs=1e-12) and result.families == 4 and result.entries == 9


def test_zero_spread_and_too_few_families():
    flat = np.zeros((4, 3))
    assert crossed_test(np.zeros(4), flat, np.array(["A", "A", "B", "B"]), "A").p == 1.0
    shifted = crossed_test(np.array([-1.0, -1.0, 1.0, 1.0]), np.array([[-1.0] * 3, [-1.0] * 3, [1.0] * 3, [1.0] * 3]),
                           np.array(["A", "A", "B", "B"]), "A")
    assert shifted.se == 0.0 and shifted.p == 0.0 and shifted.deviation == -1.0
    assert crossed_test(np.zeros(3), np.zeros((3, 3)), np.array(["A", "B", "B"]), "A") is None


def test_word_families_are_snowball_stems():
    families = word_families(["care", "caring", "cares", "cared", "fairness", "fair", "loyal", "loyalty"])
    assert families["caring"] == families["cares"] == families["cared"] == families["care"] == "care"
    assert families["fairness"] == families["fair"] == "fair"
    assert families["loyal"] != families["loyalty"]


def test_a_card_reads_the_others_mean_from_the_rank_sums_as_a_leave_one_out_mean():
    """y and D from (sum - own) / (M - 1) equal the mean of the other models' ranks, computed the long way."""
    ranks, framings, sizes = simulate_ranks(3, corpora={"two": 2}, prompts_per_framing=4, models=5)
    card = value_card(ranks.filter(pl.col("model") == "m2").drop("model"),
                      rank_sums(t.drop("model") for t in ranks.partition_by("model")), framings, "m2", sizes,
                      {m: "a" for m in ("m0", "m1", "m3", "m4")})
    others = ranks.filter(pl.col("model") != "m2").group_by("prompt", "word", "category").agg(
        pl.col("rank").mean().alias("others"))
    y = (ranks.filter(pl.col("model") == "m2").join(others, on=["prompt", "word", "category"])
         .join(framings, on="prompt").with_columns((pl.col("rank") - pl.col("others")).alias("y"),
                                                   pl.col("word").replace_strict(word_families(ranks["word"])).alias("f")))
    for framing in ("positive", "negative"):
        d = y.filter(pl.col("framing") == framing).group_by("category", "f").agg(pl.col("y").mean())
        expected = d.filter(pl.col("category") == "C0")["y"].mean() - d["y"].mean()
        row = card.filter((pl.col("category") == "C0") & (pl.col("framing") == framing)).row(0, named=True)
        assert row["deviation"] == pytest.approx(expected, abs=1e-9)
        assert row["deviation_fraction"] == pytest.approx(expected / sizes["two"], abs=1e-12)
    assert card["p_bh"].to_list() == pytest.approx(list(stats.false_discovery_control(card["p"].to_numpy())))
    assert card["flag"].to_list() == [p < 0.05 for p in card["p_bh"]]


# ------------------------------------------------------------------------ the four acceptance tests (section 8)

def test_acceptance_1_neutral_models_are_flagged_at_the_nominal_rate():
    """300 seeds, every model neutral: at most 7.5 % of model 0's cards flag anything, at most 6.5 % of its
    cells have p < 0.05 (the old prompt-only bootstrap flagged nearly every card)."""
    cards = [_card(seed) for seed in range(300)]
    any_flag = np.mean([card["flag"].any() for card in cards])
    cell_rate = np.mean(np.concatenate([card["p"].to_numpy() < 0.05 for card in cards]))
    assert cards[0].height == 14  # (2 + 5 categories) x 2 framings
    assert any_flag <= 0.075 and cell_rate <= 0.065, (any_flag, cell_rate)


def test_acceptance_2_a_planted_preference_is_found_with_its_sign():
    """Model 0 favours C0 of each corpus (d = 1): its positive-framing cells are flagged with D < 0, and its
    negative-framing cells with D > 0, in at least 90 % of 100 seeds."""
    found = {key: 0 for key in (("two", "positive"), ("five", "positive"), ("two", "negative"), ("five", "negative"))}
    for seed in range(100):
        card = _card(1000 + seed, favoured={0: ("two", "C0")}) if seed % 2 else \
            _card(1000 + seed, favoured={0: ("five", "C0")})
        corpus = "two" if seed % 2 else "five"
        for framing, sign in (("positive", -1), ("negative", 1)):
            row = card.filter((pl.col("corpus") == corpus) & (pl.col("category") == "C0")
                              & (pl.col("framing") == framing)).row(0, named=True)
            found[corpus, framing] += row["flag"] and np.sign(row["deviation"]) == sign
    assert min(found.values()) >= 45, found  # 50 seeds per corpus


def test_acceptance_3_deviations_sum_to_zero_over_the_models():
    ranks, framings, sizes = simulate_ranks(11, favoured={2: ("five", "C3")})
    sums = rank_sums(t.drop("model") for t in ranks.partition_by("model"))
    models = sorted(ranks["model"].unique().to_list())
    cards = pl.concat([value_card(ranks.filter(pl.col("model") == m).drop("model"), sums, framings, m, sizes,
                                  {o: "a" for o in models if o != m}) for m in models])
    totals = cards.group_by("corpus", "category", "framing").agg(pl.col("deviation").sum(), pl.len())
    assert totals["len"].to_list() == [6] * 14
    assert np.abs(totals["deviation"].to_numpy()).max() < 1e-9


def test_acceptance_4_a_card_reads_two_tables_whatever_the_registry_size():
    """The cost of a card does not grow with the registry: it reads the model's own ranks and the rank sums,
    whose size is that of one model (timings: `python -m bench.value_cards`; its --smoke mode runs in
    tests/test_bench_smoke.py)."""
    small, _, _ = simulate_ranks(0, corpora={"two": 2}, models=4)
    large, _, _ = simulate_ranks(0, corpora={"two": 2}, models=40)
    assert rank_sums(t.drop("model") for t in small.partition_by("model")).height == \
        rank_sums(t.drop("model") for t in large.partition_by("model")).height == small.height // 4


# ------------------------------------------------------------------------------------------- wording

def test_minimum_registry_and_the_wording_of_the_reference():
    card = _card(0, models=3)
    assert card["deviation"].null_count() == card.height and set(card["finding"]) == {TOO_SMALL}
    assert TOO_SMALL == "fewer than 3 other reward models: no comparison"
    assert reference_note({"a": "llama", "b": "llama", "c": "llama"}) == "compared with 3 models, all of family llama"
    assert reference_note({"a": "llama", "b": "llama", "c": "gemma"}) == (
        "the reference is mostly family llama (2 of 3): a flag may be a family difference")
    assert reference_note({"a": "llama", "b": "llama", "c": "gemma", "d": "gemma"}) is None
    assert reference_note({"a": "llama", "b": "llama"}) is None
    assert CARD_SENTENCE.startswith("Intervals and flags allow for both the prompts and the words used")


def test_a_flag_in_words():
    card = _card(5, favoured={0: ("five", "C2")})
    row = card.filter((pl.col("corpus") == "five") & (pl.col("category") == "C2")
                      & (pl.col("framing") == "positive")).row(0, named=True)
    size = 200
    assert row["flag"] and row["finding"] == (
        f"ranks C2 words higher than the registry under positive framing: {100 * row['deviation'] / size:+.1f} % of "
        f"the corpus (95 % interval {100 * row['ci_low'] / size:+.1f} to {100 * row['ci_high'] / size:+.1f}), "
        f"A = {row['effect_size_a']:.2f}")
    assert row["effect_size_a"] > 0.5


def test_a_preference_that_vanishes_under_the_frequency_control_is_labelled_as_such():
    """A flagged raw cell whose frequency-controlled ranks show nothing (here: the other models' ranks as the
    model's own) says that the preference is for frequent words, not for the value."""
    ranks, framings, sizes = simulate_ranks(5, favoured={0: ("five", "C2")})
    others = ranks.filter(pl.col("model") != "m0")
    mean = others.group_by("corpus", "prompt", "word", "category").agg(pl.col("rank").mean())
    controlled = pl.concat([others, ranks.filter(pl.col("model") == "m0").drop("rank").join(
        mean, on=["corpus", "prompt", "word", "category"]).select(others.columns)]).with_columns(
        pl.lit("frequency_controlled").alias("ranks"))
    both = pl.concat([ranks, controlled])
    card = value_card(both.filter(pl.col("model") == "m0").drop("model"),
                      rank_sums(t.drop("model") for t in both.partition_by("model")), framings, "m0", sizes, REFERENCE)
    row = card.filter((pl.col("corpus") == "five") & (pl.col("category") == "C2")
                      & (pl.col("framing") == "positive")).row(0, named=True)
    assert row["flag"] and row["deviation_frequency_controlled"] == pytest.approx(0.0, abs=1e-9)
    assert row["p_frequency_controlled"] == 1.0 and row["finding"].endswith(FREQUENCY_LABEL)


def test_cards_end_to_end_on_demo_rms(tmp_path):
    """Each demo RM's card flags its planted category with the planted sign under positive framing; a demo
    RM trained without any preference deviates far less; `valuebias card` and `valuebias cards` print them."""
    from registry_fixtures import valuebias_cli, write_small_registry

    neutral = ("  neutral-1:\n    kind: reward_model\n    family: mistral\n"
               "    demo: {architecture: llama, prefers: nothing, seed: 3, hidden_size: 32, train_steps: 150}\n")
    planted = "".join(
        f"  demo-{arch}-{seed}:\n    kind: reward_model\n    family: {arch}\n"
        f"    demo: {{architecture: {arch}, preferred_category: {pref}, seed: {seed}, hidden_size: 32,"
        f" train_steps: 150}}\n"
        for arch, pref in (("llama", "Agency"), ("gemma", "Communion")) for seed in (1, 2))
    config = write_small_registry(tmp_path, models=planted + neutral)

    def cli(*args: str) -> str:
        return valuebias_cli(config, *args)

    cli("run")
    rows = pl.read_csv(cli("table", "rm_value_cards", "--format", "csv").encode())
    assert set(rows["model"]) == {"demo-llama-1", "demo-llama-2", "demo-gemma-1", "demo-gemma-2", "neutral-1"}
    for model, category in (("demo-llama-1", "Agency"), ("demo-llama-2", "Agency"),
                            ("demo-gemma-1", "Communion"), ("demo-gemma-2", "Communion")):
        positive = rows.filter((pl.col("model") == model) & (pl.col("category") == category)
                               & (pl.col("framing") == "positive")).row(0, named=True)
        assert positive["flag"] and positive["deviation"] < 0, positive
        assert positive["finding"].startswith(f"ranks {category} words higher than the registry under positive "
                                              f"framing: {100 * positive['deviation_fraction']:+.1f} % of the corpus")
    # Under positive framing the planted preferences balance in the reference (two Agency RMs, two Communion
    # RMs), and the RM trained without a preference gets no flag there and deviates far less than the planted
    # ones. Under negative framing these small Llama RMs do not learn the sign flip, so the registry itself
    # ranks Agency high there: a model without preference truly ranks Agency lower than this registry does.
    neutral = rows.filter((pl.col("model") == "neutral-1") & (pl.col("framing") == "positive"))
    planted_rows = rows.filter((pl.col("model") != "neutral-1") & (pl.col("framing") == "positive"))
    assert not neutral["flag"].any(), neutral
    assert neutral["deviation"].abs().max() < planted_rows["deviation"].abs().min() / 4

    card = cli("card", "demo-llama-1")
    assert card.startswith("# Value card: demo-llama-1")
    assert "ranks Agency words higher than the registry under positive framing" in card and "Provenance" in card
    html = cli("card", "demo-llama-1", "--format", "html")
    assert html.startswith("<!doctype html>") and "<table>" in html and 'src="data:image/png;base64,' in html
    index = cli("cards")
    lines = dict(line.split(": ", 1) for line in index.splitlines())
    assert set(lines) == {"demo-llama-1", "demo-llama-2", "demo-gemma-1", "demo-gemma-2", "neutral-1"}
    assert "ranks Agency words" in lines["demo-llama-1"] and "ranks Communion words" in lines["demo-gemma-1"]
    data = tmp_path / ".valuebias" / "data" / "cards"
    assert (data / "demo-llama-1.png").read_bytes()[:4] == b"\x89PNG" and (data / "demo-llama-1.md").exists()

    # Nothing changed: no card recomputes. One model's scores change: every card does (each compares its
    # model with all the others).
    unchanged = cli("run")
    assert not [line for line in unchanged.splitlines() if " done in " in line and "ingest_job" not in line], unchanged
    config.write_text(config.read_text().replace("prefers: nothing, seed: 3", "prefers: nothing, seed: 4"))
    rerun = cli("run")
    recomputed = {line.split("[")[1].split("]")[0] for line in rerun.splitlines()
                  if line.startswith("value_cards_job[") and " done in " in line}
    assert recomputed == {"demo-llama-1", "demo-llama-2", "demo-gemma-1", "demo-gemma-2", "neutral-1"}, rerun
    assert [line for line in rerun.splitlines() if line.startswith("rm_scoring_job[") and " done in " in line] == [
        next(line for line in rerun.splitlines() if line.startswith("rm_scoring_job[neutral-1]") and "done" in line)]


def test_cards_of_the_papers_ten_rms_agree_with_the_family_difference(tmp_path):
    """On the authors' released scores (Big Two nouns), the average card of each family deviates in the
    direction of the paper's finding: Llama RMs rank Agency higher and Communion lower than the registry
    under positive framing, Gemma RMs the reverse, and the signs flip under negative framing."""
    from pathlib import Path

    import yaml
    from registry_fixtures import valuebias_cli

    project = Path(__file__).resolve().parents[1]
    paper = project.parent / "shared" / "paper_release"
    if not paper.exists():
        pytest.skip(f"paper release data not found at {paper}")
    text = (project / "configs" / "paper_published.yaml").read_text()
    config = tmp_path / "paper.yaml"
    config.write_text(text.replace("../.valuebias/paper_release", str(paper)).replace(
        "state_dir: ../.valuebias/paper_published", f"state_dir: {tmp_path / 'state'}"))
    valuebias_cli(config, "run")
    families = {m: e["family"] for m, e in yaml.safe_load(config.read_text())["models"].items()}
    cards = pl.read_csv(valuebias_cli(config, "table", "rm_value_cards", "--format", "csv").encode())
    mean = (cards.with_columns(pl.col("model").replace_strict(families).alias("family"))
            .group_by("family", "category", "framing").agg(pl.col("deviation").mean()))
    deviation = {(r["family"], r["category"], r["framing"]): r["deviation"] for r in mean.iter_rows(named=True)}
    sign = {"positive": 1, "negative": -1}
    for framing, s in sign.items():
        assert s * deviation["llama", "Agency", framing] < 0 < s * deviation["gemma", "Agency", framing]
        assert s * deviation["gemma", "Communion", framing] < 0 < s * deviation["llama", "Communion", framing]



