"""A registry of three families, end to end (`valuebias run`, demo RMs): each family has its own planted
preference, and a family's preference shows in exactly the comparisons that involve it."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

from registry_fixtures import AGENCY, COMMUNION, PROMPTS, valuebias_cli

PROJECT = Path(__file__).resolve().parents[1]
PURITY = ["purity", "cleanliness", "chastity", "innocence", "holiness", "sanctity", "virtue", "modesty", "piety",
          "grace", "decency", "wholesomeness", "temperance", "sobriety", "faith", "devotion", "reverence",
          "simplicity", "serenity", "goodness"]
PLANTED = {"llama": "Agency", "gemma": "Communion", "qwen": "Purity"}


def table(name: str, config: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(valuebias_cli(config, "table", name, "--format", "csv"))))


def test_a_third_family_shows_its_preference_in_exactly_its_comparisons(tmp_path):
    rows = ["prompt,text"] + [f'{pid},"{text}"' for pid, text in PROMPTS.items()]
    (tmp_path / "prompts.csv").write_text("\n".join(rows) + "\n")
    words = [(w, "Agency") for w in AGENCY] + [(w, "Communion") for w in COMMUNION] + [(w, "Purity") for w in PURITY]
    (tmp_path / "words.csv").write_text("word,category\n" + "".join(f"{w},{c}\n" for w, c in words))
    models = "".join(
        f"  {family}-{seed}:\n    kind: reward_model\n    family: {family}\n"
        f"    demo: {{architecture: {'gemma' if family == 'gemma' else 'llama'}, preferred_category: {category},"
        f" seed: {seed}, hidden_size: 32, train_steps: 150}}\n"
        for family, category in PLANTED.items() for seed in (1, 2))
    config = tmp_path / "valuebias.yaml"
    config.write_text(
        "prompts: {uri: prompts.csv}\n"
        "corpora:\n  small: {uri: words.csv, format: csv, word_column: word, category_column: category}\n"
        "scoring: {batch_size: 64, launcher: in_process}\n"
        "analysis: {permutations: 2000, frequency_control: false}\n"
        f"models:\n{models}")
    valuebias_cli(config, "run")

    tests = table("rm_family_tests", config)
    assert len(tests) == 3 * 2 * 3  # categories x framings x every pair of the three families
    assert {r["correction"] for r in tests} == {"Bonferroni over 6 panels x 3 comparisons (small, raw ranks)"}
    significant = {(r["category"], r["framing"], r["family_a"], r["family_b"])
                   for r in tests if float(r["p_bonferroni"]) < 0.05}
    # Under positive framing (where every demo RM learns its preference; the sign flip under negative
    # framing is learned less reliably by these 150-step models), a family's category differs in exactly
    # the comparisons that involve that family: the two other families disfavour it alike.
    for family, category in PLANTED.items():
        involved = {(a, b) for a, b in (("gemma", "llama"), ("gemma", "qwen"), ("llama", "qwen")) if family in (a, b)}
        found = {(a, b) for c, f, a, b in significant if c == category and f == "positive"}
        assert found == involved, (family, found)
    # a family's preferred words rank better than the other families' (rank 1 = best) under positive framing
    for r in tests:
        if r["framing"] == "positive" and PLANTED.get(r["family_a"]) == r["category"]:
            assert float(r["mean_a"]) < float(r["mean_b"]), r
        if r["framing"] == "positive" and PLANTED.get(r["family_b"]) == r["category"]:
            assert float(r["mean_b"]) < float(r["mean_a"]), r

    omnibus = table("rm_interaction_test", config)
    assert len(omnibus) == 1 and omnibus[0]["n_families"] == "3" and omnibus[0]["df"] == "4"  # (3-1)(3-1)(2-1)
    assert float(omnibus[0]["p"]) < 0.001


PAPER = PROJECT.parent / "shared" / "paper_release"


def test_one_model_per_family_fails_the_mixed_model_visibly(tmp_path):
    """The authors' scores of one Gemma and one Llama RM: the family t-tests run, but the mixed model's random
    intercept is confounded with family. The mixed model and the interaction test fail their warn-level
    checks, named and explained on the terminal, and their tables hold an explained row, not an empty table."""
    import pytest

    if not PAPER.exists():
        pytest.skip(f"paper release data not found at {PAPER}")
    scores = PAPER / "rm_scores"
    config = tmp_path / "valuebias.yaml"
    config.write_text(
        f"prompts: {{uri: {PAPER / 'config' / 'prompts.yaml'}}}\n"
        "corpora:\n"
        f"  big2_nouns: {{uri: {PAPER / 'corpora' / 'dict_big2_nouns.csv'}, format: csv, "
        "word_column: token_decoded, category_column: Category}\n"
        "analysis: {permutations: 1000, frequency_control: false}\n"
        "models:\n"
        "  grm-gemma2-2b: {kind: reward_model, family: gemma, published: "
        f"{{big2_nouns: {scores / 'big2_rewards_Ray2333_GRM-gemma2-2B-rewardmodel-ft.csv'}}}}}\n"
        "  grm-llama3-8b: {kind: reward_model, family: llama, published: "
        f"{{big2_nouns: {scores / 'big2_rewards_Ray2333_GRM-Llama3-8B-rewardmodel-ft.csv'}}}}}\n")
    proc = subprocess.run([sys.executable, "-m", "valuebias.orchestration.cli", "run", "--config", str(config)], cwd=PROJECT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    why = "every family has a single model, so the model's random intercept cannot be told apart"
    for check in ("rm_mixed_model_fitted", "rm_interaction_test_fitted"):
        assert f"warning: check {check} failed: not fitted: big2_nouns/raw: " in proc.stderr, proc.stderr
    assert why in proc.stderr and "Traceback" not in proc.stderr
    mixed = table("rm_mixed_model", config)
    assert [(r["term"], r["coef"]) for r in mixed] == [("not fitted", "")] and why in mixed[0]["note"]
    omnibus = table("rm_interaction_test", config)
    assert omnibus[0]["p"] == "" and omnibus[0]["n_models"] == "2" and why in omnibus[0]["note"]
    # the family tests do not need a second model per family: they ran
    tests = table("rm_family_tests", config)
    assert len(tests) == 4 and all(r["n_a"] == "27" and r["n_b"] == "27" and not r["note"] for r in tests)
    report = (tmp_path / ".valuebias" / "data" / "reports" / "rm_report.md").read_text()
    assert why in report
