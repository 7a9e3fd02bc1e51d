"""`valuebias run` / `valuebias table` end to end, as a user runs them (subprocesses, real instance)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.registry_fixtures import PROMPTS, write_small_registry

PROJECT = Path(__file__).resolve().parents[1]
PAPER = PROJECT.parent / "shared" / "paper_release"
VALUEBIAS = [sys.executable, "-m", "valuebias.orchestration.cli"]


def valuebias(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DAGSTER_DISABLE_TELEMETRY="1")
    env.pop("VALUEBIAS_CONFIG", None)
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.run([*VALUEBIAS, *args], cwd=PROJECT, env=env, capture_output=True, text=True,
                          timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"valuebias {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def read_csv_table(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def panel(rows: list[dict], category: str, framing: str) -> dict:
    return next(r for r in rows if r["category"] == category and r["framing"] == framing)


def test_run_recovers_the_planted_preferences_and_is_idempotent(tmp_path):
    config = write_small_registry(tmp_path, launcher=None)  # as a user runs it: Pipes subprocesses
    first = valuebias("run", "--config", str(config))
    assert any(line.startswith("rm_scoring_job[demo-llama-1]") and " done in " in line
               for line in first.stdout.splitlines())
    tests = read_csv_table(valuebias("table", "rm_family_tests", "--format", "csv", "--config", str(config)).stdout)
    assert {r["ranks"] for r in tests} == {"raw", "frequency_controlled"}
    tests = [r for r in tests if r["ranks"] == "raw"]
    assert len(tests) == 4  # 2 categories x 2 framings
    assert {r["correction"] for r in tests} == {"Bonferroni over 4 panels x 1 comparison (small, raw ranks)"}
    agency, communion = panel(tests, "Agency", "positive"), panel(tests, "Communion", "positive")
    # family_a = gemma (planted: Communion), family_b = llama (planted: Agency); rank 1 = best.
    assert agency["family_a"] == "gemma" and agency["family_b"] == "llama"
    assert float(agency["mean_b"]) < float(agency["mean_a"]) and float(agency["p_bonferroni"]) < 0.05
    assert float(communion["mean_a"]) < float(communion["mean_b"]) and float(communion["p_bonferroni"]) < 0.05

    cells = read_csv_table(valuebias("table", "rm_rank_cells", "--format", "csv", "--config", str(config)).stdout)
    assert len([c for c in cells if c["ranks"] == "raw"]) == 4 * 2 * len(PROMPTS)
    # The planted preferences are a family x category x framing interaction: llama (vs gemma) ranks
    # Communion (vs Agency) worse under positive framing (vs negative), so its coefficient is positive.
    mixed = read_csv_table(valuebias("table", "rm_mixed_model", "--format", "csv", "--config", str(config)).stdout)
    three_way = next(r for r in mixed if r["ranks"] == "raw"
                     and r["term"] == "family[T.llama]:category[T.Communion]:framing[T.positive]")
    assert float(three_way["coef"]) > 0 and float(three_way["p"]) < 0.001, three_way
    omnibus = read_csv_table(valuebias("table", "rm_interaction_test", "--format", "csv", "--config",
                                       str(config)).stdout)
    raw = next(r for r in omnibus if r["ranks"] == "raw")
    assert raw["df"] == "1" and float(raw["p"]) < 0.001 and raw["n_families"] == "2", raw

    # Re-running gives the same tables, and the runs are in the project's instance for the UI.
    valuebias("run", "--config", str(config))
    again = read_csv_table(valuebias("table", "rm_family_tests", "--format", "csv", "--config", str(config)).stdout)
    assert [r for r in again if r["ranks"] == "raw"] == tests
    assert (tmp_path / ".valuebias" / "dagster" / "history" / "runs.db").exists()
    assert (tmp_path / ".valuebias" / "data" / "reports" / "figure1_small.png").read_bytes()[:4] == b"\x89PNG"
    assert "![Figure 1, small](figure1_small.png)" in (tmp_path / ".valuebias" / "data" / "reports"
                                                     / "rm_report.md").read_text()
    # A complete run leaves no partition missing, and each partition set holds only what can succeed.
    code = ("import json, dagster as dg; from valuebias.orchestration.definitions import build_definitions as b; "
            "i = dg.DagsterInstance.get(); g = b().resolve_asset_graph(); "
            "print(json.dumps({k.to_user_string(): [len(i.get_materialized_partitions(k)), "
            "len(i.get_dynamic_partitions(g.get(k).partitions_def.name))] "
            "for k in g.get_all_asset_keys() if g.get(k).partitions_def}))")
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path / ".valuebias" / "dagster"), VALUEBIAS_CONFIG=str(config))
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, env=env, capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == {"rm_word_scores": [4, 4], "rm_vocabulary_sweep": [0, 0],
                               "lm_next_token_logprobs": [0, 0], "lm_word_logprobs": [0, 0], "mwlr_pair": [0, 0],
                               "rm_value_cards": [4, 4]}


def test_run_stops_on_a_bad_prompt_file_and_scores_nothing(tmp_path):
    bad = dict(PROMPTS)
    bad["best_ever_1"] = bad.pop("best_ever_one")
    config = write_small_registry(tmp_path, prompts=bad)
    proc = valuebias("run", "--config", str(config), check=False)
    assert proc.returncode == 1
    # the ids come last in write_small_registry's prompts.csv: header on line 1, best_ever_1 on line 7
    assert f"{tmp_path / 'prompts.csv'}: row 7, field 'prompt': prompt id 'best_ever_1' does not match" in proc.stderr
    assert not (tmp_path / ".valuebias" / "data" / "rm_word_scores").exists()


def test_bad_config_is_reported_with_file_row_and_field(tmp_path):
    config = write_small_registry(tmp_path, models="  m1:\n    kind: reward_model\n    family: llama\n")
    proc = valuebias("run", "--config", str(config), check=False)
    assert proc.returncode == 2
    assert f"{config}: row" in proc.stderr and "field 'models.m1'" in proc.stderr
    assert "exactly one source" in proc.stderr


def test_table_before_run_says_what_to_do(tmp_path):
    config = write_small_registry(tmp_path)
    proc = valuebias("table", "rm_family_tests", "--config", str(config), check=False)
    assert proc.returncode == 2 and f"run `valuebias run --config {config}` first" in proc.stderr


@pytest.mark.skipif(not PAPER.exists(), reason=f"paper release data not found at {PAPER}")
def test_published_paper_scores_reproduce_figure1_direction(tmp_path):
    text = (PROJECT / "configs" / "paper_published.yaml").read_text()
    text = text.replace("../.valuebias/paper_release", str(PAPER)).replace(
        "state_dir: ../.valuebias/paper_published", f"state_dir: {tmp_path / 'state'}")
    config = tmp_path / "paper.yaml"
    config.write_text(text)
    valuebias("run", "--config", str(config))
    cells = read_csv_table(valuebias("table", "rm_rank_cells", "--format", "csv", "--config", str(config)).stdout)
    assert len([c for c in cells if c["ranks"] == "raw"]) == 1080  # 10 RMs x 2 categories x 54 prompts
    tests = [r for r in read_csv_table(valuebias("table", "rm_family_tests", "--format", "csv", "--config",
                                                 str(config)).stdout) if r["ranks"] == "raw"]
    agency = panel(tests, "Agency", "positive")
    assert float(agency["mean_b"]) < float(agency["mean_a"])  # Llama ranks Agency better than Gemma
    assert float(agency["p_bonferroni"]) < 0.05
