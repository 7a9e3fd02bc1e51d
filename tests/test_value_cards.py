"""Value cards (METHOD.md section 8): the science on cells with a known answer, then end to end on demo
RMs (`valuebias run`, `valuebias card`, `valuebias cards`)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from valuebias.value_cards import (TOO_SMALL, effect_size, model_profiles, neighbours, paired_bootstrap,
                                   value_card)

def _cells(preferences: dict[str, str | None], prompts: int = 6, seed: int = 0) -> pl.DataFrame:
    """Median-rank cells of models preferring a category (rank 10 under positive framing, 30 under negative)
    or nothing (20 everywhere), with noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for model, preferred in preferences.items():
        for framing in ("positive", "negative"):
            for p in range(prompts):
                for category in ("Agency", "Communion"):
                    rank = 20.0
                    if preferred == category:
                        rank = 10.0 if framing == "positive" else 30.0
                    elif preferred is not None:
                        rank = 30.0 if framing == "positive" else 10.0
                    rows.append(("small", "raw", model, "fam", category, f"{framing}{p}", framing,
                                 rank + rng.normal(0, 1.0)))
    return pl.DataFrame(rows, schema=["corpus", "ranks", "model", "family", "category", "prompt", "framing",
                                      "median_rank"], orient="row")


SIZES = {"small": 40}


def test_a_card_flags_the_planted_category_with_its_sign_and_direction_in_words():
    cells = _cells({"a1": "Agency", "a2": "Agency", "c1": "Communion", "c2": "Communion", "n": None})
    card = value_card(cells, "a1", SIZES, draws=500)
    row = {(r["category"], r["framing"]): r for r in card.iter_rows(named=True)}
    agency = row["Agency", "positive"]
    assert agency["flag"] and agency["deviation"] < 0 and agency["ci_high"] < 0
    assert agency["finding"] == "ranks Agency words higher than the registry under positive framing"
    assert row["Agency", "negative"]["flag"] and row["Agency", "negative"]["deviation"] > 0
    assert row["Agency", "negative"]["finding"].startswith("ranks Agency words lower than the registry")
    assert agency["deviation_fraction"] == pytest.approx(agency["deviation"] / 40)
    assert agency["reference_models"] == 4 and agency["prompts"] == 6 and agency["position"] in (1, 2)


def test_a_model_without_preference_gets_no_flags():
    cells = _cells({"a1": "Agency", "a2": "Agency", "c1": "Communion", "c2": "Communion", "n": None})
    card = value_card(cells, "n", SIZES, draws=500)
    assert not card["flag"].any() and set(card["finding"]) == {""}


def test_fewer_than_three_models_give_no_numbers():
    card = value_card(_cells({"a1": "Agency", "c1": "Communion"}), "a1", SIZES)
    assert card.height == 4 and card["deviation"].null_count() == 4 and not card["flag"].any()
    assert set(card["finding"]) == {TOO_SMALL}


def test_bootstrap_effect_size_and_neighbours():
    low, high, p = paired_bootstrap(np.array([-2.0, -1.0, -3.0, -2.5]), draws=500)
    assert high < 0 and p == 0.0
    assert paired_bootstrap(np.array([-1.0, 1.0, -1.0, 1.0]), draws=500)[2] > 0.5
    assert effect_size(np.array([2.0, 2.0, 2.0])) is None  # undefined, not infinite
    assert effect_size(np.array([1.0, 3.0])) == pytest.approx(2.0 / np.std([1.0, 3.0], ddof=1))
    cells = _cells({"a1": "Agency", "a2": "Agency", "c1": "Communion", "n": None})
    assert neighbours(model_profiles(cells), "a1", SIZES) == ("a2", "c1")


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
        assert positive["finding"] == f"ranks {category} words higher than the registry under positive framing"
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
    config.write_text(text.replace("../../shared/paper_release", str(paper)).replace(
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


def test_a_preference_that_vanishes_under_the_frequency_control_is_labelled_as_such():
    raw = _cells({"a1": "Agency", "a2": "Agency", "c1": "Communion", "c2": "Communion", "n": None})
    # after the frequency control a1's advantage is gone: at every prompt it sits at the others' mean, +-1
    others = raw.filter(pl.col("model") != "a1")
    mean = others.group_by("corpus", "category", "prompt", "framing").agg(pl.col("median_rank").mean())
    a1 = (raw.filter(pl.col("model") == "a1").drop("median_rank")
          .join(mean, on=["corpus", "category", "prompt", "framing"])
          .with_columns(pl.col("median_rank") + pl.when(pl.col("prompt").str.ends_with("0") | pl.col("prompt")
                        .str.ends_with("2") | pl.col("prompt").str.ends_with("4")).then(1.0).otherwise(-1.0)))
    controlled = pl.concat([others, a1.select(others.columns)]).with_columns(pl.lit("frequency_controlled").alias("ranks"))
    cells = pl.concat([raw, controlled])
    card = value_card(cells, "a1", SIZES, draws=500)
    agency = card.filter((pl.col("category") == "Agency") & (pl.col("framing") == "positive")).row(0, named=True)
    assert agency["flag"] and agency["p_bootstrap_frequency_controlled"] > 0.05
    assert agency["finding"] == ("ranks Agency words higher than the registry under positive framing (not under the "
                                 "frequency control: a preference for frequent words, not for the value)")
