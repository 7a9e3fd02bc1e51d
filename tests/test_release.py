"""Registry releases (issue 26): `valuebias release` writes an immutable release that `release verify` checks byte
for byte, refuses while a partition is stale, `valuebias diff` names what changed between two releases, and the
open export validates against the Every Eval Ever schema.

The registry: four reward models (two Llama-family, two Gemma-family) imported from published score files written
here (no model is run): seeded noise and no preference, until one model's file is rewritten to score Communion words
higher, which makes the families differ."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.registry_fixtures import AGENCY, COMMUNION, PROMPTS, write_small_registry

# the paper's 54 prompts (27 per framing): enough prompts for the value cards' paired bootstrap to flag a panel
PAPER_PROMPTS = dict(pl.read_csv(Path(__file__).resolve().parents[1] / "valuebias" / "data" / "prompts_paper54.csv")
                     .select("prompt", "text").iter_rows())
MODELS = {"llama-1": "llama", "llama-2": "llama", "gemma-1": "gemma", "gemma-2": "gemma"}


def write_scores(path: Path, preferred: str | None, seed: int, prompts: dict[str, str] = PAPER_PROMPTS) -> None:
    """A published score file: N(0, 0.3) noise per cell, and every word of ``preferred`` (if any) scores 1 higher."""
    rng = np.random.default_rng(seed)
    lines = ["response," + ",".join(prompts)]
    for word in AGENCY + COMMUNION:
        planted = 1.0 if preferred and word in (AGENCY if preferred == "Agency" else COMMUNION) else 0.0
        lines.append(word + "," + ",".join(f"{planted + rng.normal(0, 0.3):.6f}" for _ in prompts))
    path.write_text("\n".join(lines) + "\n")


def published_registry(root: Path, storage: str | None = None, prompts: dict[str, str] = PAPER_PROMPTS) -> Path:
    """The registry of this module; ``prompts``: the paper's 54 (enough for value-card flags) or the 6 of
    ``registry_fixtures`` (quicker, where flags do not matter)."""
    root.mkdir(parents=True, exist_ok=True)
    entries = ""
    for seed, (model, family) in enumerate(MODELS.items()):
        write_scores(root / f"{model}.csv", None, seed, prompts)
        entries += f"  {model}:\n    kind: reward_model\n    family: {family}\n    published: {{small: {model}.csv}}\n"
    config = write_small_registry(root, models=entries, prompts=prompts)
    if storage:
        config.write_text(f"storage: {storage}\n" + config.read_text())
    return config


def valuebias(capsys, *args: str) -> tuple[int, str, str]:
    """``valuebias ARGS`` in this process: (exit code, stdout, stderr)."""
    from valuebias.orchestration.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def fresh_env(monkeypatch):
    monkeypatch.delenv("VALUEBIAS_CONFIG", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", "")


def test_a_release_on_s3_verifies_exports_valid_records_and_names_a_changed_byte(tmp_path, s3_server, s3_bucket,
                                                                                 monkeypatch, capsys, fresh_env):
    import boto3
    import jsonschema

    from valuebias.open_export import schema

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    config = published_registry(tmp_path, storage=f"s3://{s3_bucket}/registry", prompts=PROMPTS)
    assert valuebias(capsys, "run", "--config", str(config))[0] == 0
    code, out, err = valuebias(capsys, "release", "--name", "2026-12-10", "--config", str(config))
    assert code == 0, err
    assert "release 2026-12-10 written to s3://" in out

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    prefix = "registry/releases/2026-12-10/"
    keys = {o["Key"][len(prefix):] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix=prefix)["Contents"]}
    stored = lambda relative: s3.get_object(Bucket=s3_bucket, Key=prefix + relative)["Body"].read()  # noqa: E731
    manifest_bytes = stored("manifest.json")
    manifest = json.loads(manifest_bytes)
    assert hashlib.sha256(manifest_bytes).hexdigest() in out  # the hash to cite is printed
    # every file but the manifest is listed with its SHA-256, computed here independently
    assert set(manifest["files"]) == keys - {"manifest.json"}
    for relative, entry in manifest["files"].items():
        data = stored(relative)
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}, relative
    expected = {"tables/rm_family_tests.parquet", "tables/rm_family_tests.csv", "tables/rm_mixed_model.csv",
                "tables/rm_interaction_test.csv", "tables/rm_rank_cells.parquet", "config/valuebias.yaml",
                "config/config.json", "README.md", "reports/rm_report.md", "reports/figure1_small.png"}
    expected |= {f"{folder}/{m}.{ext}" for m in MODELS for folder, ext in
                 (("rm_word_scores", "parquet"), ("rm_value_cards", "parquet"), ("cards", "md"), ("cards", "png"),
                  ("export/every_eval_ever", "json"))}
    assert expected <= keys, expected - keys
    assert stored("config/valuebias.yaml") == config.read_bytes()
    tests_parquet = pl.read_parquet(io.BytesIO(stored("tables/rm_family_tests.parquet")))
    assert pl.read_csv(io.BytesIO(stored("tables/rm_family_tests.csv"))).equals(tests_parquet)
    # per table its data version and row count, as recorded by the run; per model its content: the file's SHA-256
    family_tests = next(t for t in manifest["tables"] if t["asset"] == "rm_family_tests")
    from valuebias.table_version import content_version

    assert family_tests["data_version"] == content_version(tests_parquet)
    assert family_tests["rows"] == tests_parquet.height
    assert manifest["models"]["gemma-2"]["content"]["parts"] == {
        "small": hashlib.sha256((tmp_path / "gemma-2.csv").read_bytes()).hexdigest()}
    assert manifest["code"]["asset_code_versions"]["rm_family_tests"] == "2"
    assert manifest["packages"]["polars"] == pl.__version__
    readme = stored("README.md").decode()
    assert "# ValueBias release 2026-12-10" in readme and "![figure1_small](reports/figure1_small.png)" in readme

    # the open export: one record per reward model, each valid against the vendored Every Eval Ever schema, its
    # scores the value cards' deviations
    validator = jsonschema.Draft7Validator(schema())
    cards = pl.concat([pl.read_parquet(io.BytesIO(stored(f"rm_value_cards/{m}.parquet"))) for m in MODELS])
    for model in MODELS:
        record = json.loads(stored(f"export/every_eval_ever/{model}.json"))
        errors = sorted(validator.iter_errors(record), key=str)
        assert not errors, f"{model}: {errors[0].message} at {list(errors[0].absolute_path)}"
        card = cards.filter(pl.col("model") == model)
        assert len(record["evaluation_results"]) == card.height
        for result in record["evaluation_results"]:
            corpus, category, framing = result["evaluation_result_id"].split("/")
            row = card.filter((pl.col("corpus") == corpus) & (pl.col("category") == category)
                              & (pl.col("framing") == framing)).row(0, named=True)
            assert result["score_details"]["score"] == row["deviation"]
    # the validator is not a rubber stamp: a record without its model fails
    broken = json.loads(stored("export/every_eval_ever/llama-1.json"))
    del broken["model_info"]
    assert not validator.is_valid(broken)

    code, out, err = valuebias(capsys, "release", "verify", "2026-12-10", "--config", str(config))
    assert code == 0 and "verifies" in out, err
    code, out, _ = valuebias(capsys, "releases", "--config", str(config))
    assert "| 2026-12-10 |" in out and hashlib.sha256(manifest_bytes).hexdigest() in out
    # an existing name is refused, in one line, and the release is untouched
    code, out, err = valuebias(capsys, "release", "--name", "2026-12-10", "--config", str(config))
    assert code == 1 and err.count("\n") == 1 and "release '2026-12-10' already exists" in err, err
    assert stored("manifest.json") == manifest_bytes

    # one byte changed in a released file: verify exits non-zero naming that file
    target = "rm_word_scores/gemma-1.parquet"
    data = bytearray(stored(target))
    data[len(data) // 2] ^= 0x01
    s3.put_object(Bucket=s3_bucket, Key=prefix + target, Body=bytes(data))
    code, out, err = valuebias(capsys, "release", "verify", "2026-12-10", "--config", str(config))
    assert code == 1
    problems = [line for line in err.splitlines() if "changed:" in line]
    assert problems == [line for line in err.splitlines() if "changed:" in line and target in line]
    assert len(problems) == 1 and f"s3://{s3_bucket}/registry/releases/2026-12-10/{target}" in problems[0], err
    assert "does NOT verify: 1 difference(s)" in err


def test_refusals_and_the_diff_between_two_releases_around_one_model_s_change(tmp_path, capsys, fresh_env):
    """One registry, one model's score file changed between two releases (the registry is run twice, the least
    these behaviours need): a release is refused naming the stale partition, a failed blocking check and a failed
    run; `diff` names the changed model, the panels whose significance flipped and the value-card flags."""
    from valuebias.assets.versions import latest_record
    from valuebias.orchestration.state import project_instance
    from valuebias.config import load_config

    config = published_registry(tmp_path)
    assert valuebias(capsys, "run", "--config", str(config))[0] == 0
    assert valuebias(capsys, "release", "--name", "before", "--config", str(config))[0] == 0
    # gemma-2 now prefers Communion words: its partition is stale, and a release is refused in one line naming it
    path = tmp_path / "gemma-2.csv"
    write_scores(path, "Communion", seed=3)
    code, out, err = valuebias(capsys, "release", "--name", "after", "--config", str(config))
    assert code == 1
    assert err.count("\n") == 1, err  # one line, no traceback
    assert err.startswith("valuebias: error: cannot release: ")
    assert f"rm_word_scores[gemma-2] stale (changed: published file (small: {path}))" in err
    assert "rm_word_scores[gemma-1]" not in err and "rm_word_scores[llama-1]" not in err
    assert not (tmp_path / ".valuebias" / "data" / "releases" / "after" / "manifest.json").exists()
    assert valuebias(capsys, "run", "--config", str(config))[0] == 0
    code, out, err = valuebias(capsys, "release", "--name", "after", "--config", str(config))
    assert code == 0, err

    releases = tmp_path / ".valuebias" / "data" / "releases"
    tables = {name: pl.read_parquet(releases / name / "tables" / "rm_family_tests.parquet").filter(
        pl.col("category").is_not_null()) for name in ("before", "after")}
    key = ["corpus", "ranks", "category", "framing", "family_a", "family_b"]
    joined = tables["before"].join(tables["after"], on=key, suffix="_after")
    newly = joined.filter((pl.col("p_bonferroni") >= 0.05) & (pl.col("p_bonferroni_after") < 0.05))
    no_longer = joined.filter((pl.col("p_bonferroni") < 0.05) & (pl.col("p_bonferroni_after") >= 0.05))
    assert newly.height + no_longer.height > 0, joined  # the change flips at least one panel
    flipped = {tuple(r[k] for k in key): "newly significant" for r in newly.iter_rows(named=True)}
    flipped |= {tuple(r[k] for k in key): "no longer significant" for r in no_longer.iter_rows(named=True)}

    code, out, err = valuebias(capsys, "diff", "before", "after", "--format", "json", "--config", str(config))
    assert code == 0, err
    diff = json.loads(out)
    assert (diff["from"], diff["to"]) == ("before", "after")
    content = {name: json.loads((releases / name / "manifest.json").read_text())["models"]["gemma-2"]["content"]
               ["digest"] for name in ("before", "after")}
    assert diff["models"] == [{"change": "changed", "model": "gemma-2", "content_before": content["before"],
                               "content_after": content["after"]}]
    reported = {tuple(p[k] for k in key): p["change"] for p in diff["panels"]
                if p["change"] in ("newly significant", "no longer significant")}
    assert reported == flipped
    for panel in diff["panels"]:  # each family's mean rank, before and after, from the two releases' tables
        row = joined.filter(pl.all_horizontal([pl.col(k) == panel[k] for k in key])).row(0, named=True)
        assert (panel["mean_a_before"], panel["mean_a_after"]) == (row["mean_a"], row["mean_a_after"])
        assert panel["mean_b_change"] == pytest.approx(row["mean_b_after"] - row["mean_b"], abs=1e-12)
    # value-card flags added and removed, with their numbers, against the two releases' cards
    cards = {name: pl.concat([pl.read_parquet(p) for p in sorted((releases / name / "rm_value_cards").glob("*"))])
             .filter(pl.col("flag")) for name in ("before", "after")}
    panel = ["model", "corpus", "category", "framing"]
    added = cards["after"].join(cards["before"].select(panel), on=panel, how="anti")
    removed = cards["before"].join(cards["after"].select(panel), on=panel, how="anti")
    assert added.height + removed.height > 0
    got = {(f["change"], f["model"], f["category"], f["framing"]): (f["deviation"], f["p_bh"])
           for f in diff["card_flags"]}
    want = {("flag added", r["model"], r["category"], r["framing"]): (r["deviation"], r["p_bh"])
            for r in added.iter_rows(named=True)}
    want |= {("flag removed", r["model"], r["category"], r["framing"]): (r["deviation"], r["p_bh"])
             for r in removed.iter_rows(named=True)}
    assert got == want

    markdown = valuebias(capsys, "diff", "before", "after", "--config", str(config))[1]
    assert "- gemma-2: changed" in markdown
    for (corpus, ranks, category, framing, fam_a, fam_b), change in flipped.items():
        assert f"{corpus} ({ranks}) {category} x {framing}, {fam_a} vs {fam_b}: {change}" in markdown
    csv = pl.read_csv(io.BytesIO(valuebias(capsys, "diff", "before", "after", "--format", "csv",
                                           "--config", str(config))[1].encode()))
    assert csv.filter(pl.col("section") == "model")["model"].to_list() == ["gemma-2"]
    # default: the latest release against the current state, which is what it released
    latest = json.loads(valuebias(capsys, "diff", "--format", "json", "--config", str(config))[1])
    assert (latest["from"], latest["to"], latest["models"], latest["card_flags"]) == ("after", "current state", [], [])
    assert {p["change"] for p in latest["panels"]} <= {"unchanged (significant)", "unchanged (not significant)"}

    # the release is the on-demand Dagster asset registry_release: its run shows the diff as markdown metadata
    record = latest_record(project_instance(load_config(config)), "registry_release")
    metadata = record.asset_materialization.metadata
    assert metadata["release"].value == "after" and metadata["previous_release"].value == "before"
    assert "# ValueBias diff: before -> after" in metadata["diff"].value
    assert "- gemma-2: changed" in metadata["diff"].value

    # every partition is fresh; a blocking check's latest result is a failure (recorded on the instance as a
    # validation outside a run would record it): refused, naming the check
    import dagster as dg

    project_instance(load_config(config)).report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey("rm_family_tests"), check_name="rm_family_tests_contract", passed=False))
    code, out, err = valuebias(capsys, "release", "--name", "third", "--config", str(config))
    assert code == 1 and err.count("\n") == 1, err
    assert "cannot release: 1 problem(s): rm_family_tests check rm_family_tests_contract failed" in err

    # a partition whose latest run failed after its last materialization (its inputs unchanged): refused too
    from valuebias.orchestration.launch import JobRuns

    data = tmp_path / ".valuebias" / "data"
    (data / "cards").rename(data / "cards.kept")
    (data / "cards").write_text("a file where the cards' folder was: writing a card fails")
    with JobRuns(project_instance(load_config(config))) as runs:
        outcome = runs.execute("value_cards_job", partition="gemma-2", assets=None)
    (data / "cards").unlink()
    (data / "cards.kept").rename(data / "cards")
    assert not outcome.success
    code, out, err = valuebias(capsys, "release", "--name", "third", "--config", str(config))
    assert code == 1 and err.count("\n") == 1, err
    # ... and so is the blocking contract check that failed run planned and never evaluated
    assert (f"cannot release: 3 problem(s): rm_value_cards[gemma-2] failed (run {outcome.run_id}); "
            "rm_family_tests check rm_family_tests_contract failed; rm_value_cards check rm_value_cards_contract did "
            f"not complete (run {outcome.run_id} failed). Run `valuebias run`") in err


def test_the_open_export_follows_the_every_eval_ever_schema_and_leaves_out_panels_without_numbers():
    """Fast, without a registry: records built from value-card rows validate against the vendored schema (checked
    here with jsonschema directly), carry each panel's deviation as the score, and a card without numbers (a
    registry too small for cards) exports nothing; a broken record is named field by field."""
    import jsonschema

    from valuebias.open_export import every_eval_ever_records, schema, schema_problems

    cards = pl.DataFrame({
        "model": ["rm-a", "rm-a", "rm-b"], "corpus": ["big2", "big2", "big2"],
        "category": ["Agency", "Communion", "Agency"], "framing": ["positive", "positive", "positive"],
        "deviation": [-3.25, 1.5, None], "deviation_fraction": [-0.0125, 0.00577, None], "p_bh": [0.001, 0.4, None],
        "flag": [True, False, False], "finding": ["ranks Agency words higher than the registry under positive framing",
                                                  "", "too few reward models for a card"],
        "ci_low": [-4.0, 0.1, None],  # any other column is ignored
    })
    manifest = {"name": "2026-12-10", "created": "2026-12-10T09:30:00Z",
                "code": {"git_commit": "0123abcd"}, "packages": {"valuebias": "0.1.0"},
                "models": {"rm-a": {"kind": "reward_model", "family": "llama", "source": "huggingface",
                                    "provenance": {"location": "org/rm-a"}, "content": {"digest": "d1"}}}}
    records = every_eval_ever_records(cards, manifest)
    assert list(records) == ["rm-a"]
    record = records["rm-a"]
    jsonschema.Draft7Validator(schema()).validate(record)
    assert schema_problems(record) == []
    assert record["model_info"]["id"] == "org/rm-a" and record["retrieved_timestamp"] == "1796895000"
    assert [(r["evaluation_result_id"], r["score_details"]["score"]) for r in record["evaluation_results"]] == [
        ("big2/Agency/positive", -3.25), ("big2/Communion/positive", 1.5)]
    assert record["evaluation_results"][0]["score_details"]["details"]["flag"] == "true"
    record["evaluation_results"][1]["score_details"]["score"] = "high"
    del record["source_metadata"]
    assert schema_problems(record) == ["(record): 'source_metadata' is a required property",
                                       "evaluation_results.1.score_details.score: 'high' is not of type 'number'"]
