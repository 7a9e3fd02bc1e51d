"""The language-model half on real Dagster instances: LM and pair partitions, the planted MWLR pattern
end to end on demonstration LMs, and a new pair recomputing only itself (issue 3)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from valuebias.assets.tables import lm_next_token_key, lm_word_logprobs_key, mwlr_key
from valuebias.orchestration.definitions import build_definitions, build_resources
from valuebias.orchestration.partitions import LANGUAGE_MODELS, PAIRS, REWARD_MODELS, sync_model_partitions
from valuebias.orchestration.sensors import model_partitions_sensor
from valuebias.resources.storage import Storage
from tests.registry_fixtures import AGENCY, COMMUNION, PROMPTS, write_small_registry
from valuebias.config import load_config

# Two instruction-tuned demo LMs with opposite planted preferences, and a pretrained one for a second pair.
LMS = {"lm-llama-it": ("llama", "instruction_tuned", "Agency"),
       "lm-gemma-it": ("gemma", "instruction_tuned", "Communion"),
       "lm-llama-pt": ("llama", "pretrained", "Agency")}
FIRST_PAIR = "lm-llama-it__vs__lm-gemma-it"
SECOND_PAIR = "lm-llama-pt__vs__lm-gemma-it"


def lm_registry(root: Path, state_dir: Path, pairs: list[tuple[str, str]], models: tuple[str, ...] = tuple(LMS),
                storage: Path | None = None, launcher: str | None = "in_process") -> Path:
    entries = "".join(
        f"  {mid}:\n    kind: language_model\n    variant: {LMS[mid][1]}\n    family: {LMS[mid][0]}\n"
        f"    demo: {{architecture: {LMS[mid][0]}, preferred_category: {LMS[mid][2]}, hidden_size: 32}}\n"
        for mid in models)
    extra = (f"state_dir: {state_dir}\n" + (f"storage: {storage}\n" if storage else "")
             + "pairs:\n" + "".join(f"  - [{a}, {b}]\n" for a, b in pairs)
             + "implicit_rewards: {top_n: 5, words: [love, power]}\n")
    return write_small_registry(root, models=entries, extra=extra, launcher=launcher)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    """One state folder for the module, so the demo LMs are built once (cached by their recipe)."""
    return tmp_path_factory.mktemp("lm_state")




def ran(output: str, job: str) -> list[str]:
    """The partitions (or asset lists) of ``job`` that ran, from ``valuebias run``'s output."""
    return [line.split("[", 1)[1].split("]")[0] for line in output.splitlines()
            if line.startswith(f"{job}[") and " done in " in line]


def csv_table(cli, name: str, config: Path) -> pl.DataFrame:
    return pl.read_csv(io.StringIO(cli("table", name, "--format", "csv", "--config", str(config))))


def test_lm_and_pair_partitions_materialize(tmp_path, state_dir):
    # the product's default launcher: each LM partition in a Pipes worker subprocess
    config_path = lm_registry(tmp_path, state_dir, [("lm-llama-it", "lm-gemma-it")],
                              models=("lm-llama-it", "lm-gemma-it"), storage=tmp_path / "data", launcher=None)
    config = load_config(config_path)
    resources = build_resources(config_path)
    with dg.instance_for_test() as instance:
        defs = build_definitions(config_path)
        assert defs.resolve_job_def("ingest_job").execute_in_process(instance=instance).success
        # The sensor would add a partition per model and per pair.
        tick = model_partitions_sensor(dg.build_sensor_context(
            instance=instance, resources=resources, repository_def=defs.get_repository_def()))
        assert {(r.partitions_def_name, tuple(r.partition_keys)) for r in tick.dynamic_partitions_requests} == {
            (LANGUAGE_MODELS, ("lm-llama-it", "lm-gemma-it")), (PAIRS, (FIRST_PAIR,))}
        sync_model_partitions(instance, config)
        assert sorted(instance.get_dynamic_partitions(LANGUAGE_MODELS)) == ["lm-gemma-it", "lm-llama-it"]
        assert instance.get_dynamic_partitions(PAIRS) == [FIRST_PAIR]
        assert instance.get_dynamic_partitions(REWARD_MODELS) == []  # no partition that could only fail

        from valuebias.assets.implicit import mwlr_pair
        from valuebias.assets.lm_scores import lm_next_token_logprobs, lm_word_logprobs

        from valuebias.resources.scoring_launcher import ScoringLauncher

        # lm-llama-it through the product's default launcher (Pipes worker subprocesses), lm-gemma-it in
        # process (the same task functions; a worker process costs several seconds of imports)
        for model, launcher in (("lm-llama-it", ""), ("lm-gemma-it", "in_process")):
            result = dg.materialize([lm_next_token_logprobs, lm_word_logprobs], partition_key=model,
                                    instance=instance,
                                    resources={**resources, "scoring": ScoringLauncher(launcher=launcher)})
            assert result.success
        # Both models have log-probs now: the sensor requests the missing pair, and nothing else (the tables
        # that read every pair wait for it).
        tick = model_partitions_sensor(dg.build_sensor_context(
            instance=instance, resources=resources, repository_def=defs.get_repository_def()))
        assert [(r.job_name, r.partition_key) for r in tick.run_requests] == [("mwlr_job", FIRST_PAIR)]
        assert dg.materialize([mwlr_pair], partition_key=FIRST_PAIR, instance=instance, resources=resources).success
        tick = model_partitions_sensor(dg.build_sensor_context(
            instance=instance, resources=resources, repository_def=defs.get_repository_def()))
        assert not tick.dynamic_partitions_requests
        assert [(r.job_name, r.partition_key, tuple(k.to_user_string() for k in r.asset_selection))
                for r in tick.run_requests] == [("lm_statistics_job", None, (
                    "lm_rank_cells", "mwlr_tokens", "mwlr_words", "lm_anova", "lm_posthoc", "lm_report"))]

        storage = Storage(uri=config.storage_uri)
        logprobs = storage.read_parquet(lm_next_token_key("lm-llama-it"))
        assert logprobs.columns == ["model", "prompt", "token_id", "token", "logprob"]
        assert logprobs.schema["logprob"] == pl.Float32 and logprobs.schema["token_id"] == pl.Int32
        vocabulary = logprobs.filter(pl.col("prompt") == "best_ever_one").height
        assert logprobs.height == len(PROMPTS) * vocabulary
        sums = logprobs.group_by("prompt").agg(pl.col("logprob").cast(pl.Float64).exp().sum())["logprob"]
        assert np.allclose(sums.to_numpy(), 1.0, atol=1e-4)

        words = storage.read_parquet(lm_word_logprobs_key("lm-llama-it"))
        assert words.columns == ["model", "corpus", "prompt", "word", "logprob", "rule"]
        assert set(words["rule"]) == {"single_token"}
        assert words["word"].n_unique() == len(AGENCY) + len(COMMUNION)  # every demo word is one token

        from valuebias.assets.versions import latest_record

        key = dg.AssetKey("lm_word_logprobs")
        assert instance.get_materialized_partitions(key) == {"lm-llama-it", "lm-gemma-it"}
        meta = latest_record(instance, "lm_word_logprobs", "lm-llama-it").asset_materialization.metadata
        assert meta["words_kept"].value == {"small": {"words": 40, "single_token": 40, "full_sequence": 0,
                                                      "dropped": 0}}
        assert meta["launcher"].value == "subprocess"
        meta = latest_record(instance, "lm_next_token_logprobs", "lm-llama-it").asset_materialization.metadata
        assert meta["launcher"].value == "subprocess" and meta["dagster/row_count"].value == logprobs.height
        assert instance.get_materialized_partitions(dg.AssetKey("mwlr_pair")) == {FIRST_PAIR}
        pair = storage.read_parquet(mwlr_key(FIRST_PAIR))
        assert pair.columns == ["pair", "prompt", "token", "logprob_a", "logprob_b", "mwlr"]
        event = instance.get_latest_materialization_event(dg.AssetKey("mwlr_pair"))
        recorded = event.asset_materialization.metadata["input_versions"].value
        assert set(recorded) == {"lm_next_token_logprobs[lm-llama-it]", "lm_next_token_logprobs[lm-gemma-it]",
                                 "code"}


def test_run_shows_the_planted_preference_and_a_new_pair_recomputes_only_itself(tmp_path, state_dir, cli):
    config = lm_registry(tmp_path, state_dir, [("lm-llama-it", "lm-gemma-it")])
    first = cli("run", "--config", str(config))
    assert sorted(ran(first, "lm_scoring_job")) == sorted(LMS)
    assert ran(first, "mwlr_job") == [FIRST_PAIR]
    assert "rm_statistics_job" not in first  # no reward model registered: nothing to do there

    tokens = csv_table(cli, "mwlr_tokens", config)
    assert set(tokens["pair"]) == {FIRST_PAIR}
    for prompt, framing in (("best_ever_one", "positive"), ("worst_ever_one", "negative")):
        rows = tokens.filter(pl.col("prompt") == prompt)
        top, bottom = rows.filter(pl.col("side") == "top"), rows.filter(pl.col("side") == "bottom")
        assert top["rank"].to_list() == [1, 2, 3, 4, 5] and bottom["rank"].to_list() == [-5, -4, -3, -2, -1]
        assert (top["mwlr"] > 0).all() and (bottom["mwlr"] < 0).all()
        # lm-llama-it (model a) was planted to favour Agency after positive prompts, lm-gemma-it Communion;
        # after negative prompts each favours the other category.
        favoured_by_a, favoured_by_b = (AGENCY, COMMUNION) if framing == "positive" else (COMMUNION, AGENCY)
        assert set(top["token"]) <= set(favoured_by_a), top
        assert set(bottom["token"]) <= set(favoured_by_b), bottom

    words = csv_table(cli, "mwlr_words", config)
    mean = dict(words.group_by("word", "framing").agg(pl.col("mwlr").mean())
                .select(pl.concat_str("word", "framing", separator="/"), "mwlr").iter_rows())
    assert mean["power/positive"] > 0 > mean["love/positive"] and mean["love/negative"] > 0 > mean["power/negative"]
    cells = csv_table(cli, "lm_rank_cells", config)
    assert cells.columns == ["corpus", "pair", "prompt", "category", "valence", "model", "median_rank"]
    # Figure 2 per pair: the pair's two models only (lm-llama-pt is registered but in no pair)
    assert set(cells["pair"]) == {FIRST_PAIR} and set(cells["model"]) == {"lm-llama-it", "lm-gemma-it"}
    assert len(cells) == len(PROMPTS) * 2 * 2
    first_cells = cells
    anova = csv_table(cli, "lm_anova", config)
    assert set(anova["pair"]) == {FIRST_PAIR} and "category:valence:model" in set(anova["term"])
    posthoc = csv_table(cli, "lm_posthoc", config)
    assert len(posthoc) == 4 and set(posthoc["pair"]) == {FIRST_PAIR}
    agency_positive = posthoc.filter((pl.col("category") == "Agency") & (pl.col("valence") == "positive"))
    assert agency_positive["mean_a"][0] < agency_positive["mean_b"][0]  # llama ranks Agency better (1 = best)
    assert (state_dir / "data" / "reports" / "figure3.png").read_bytes()[:4] == b"\x89PNG"

    # Nothing changed: nothing runs.
    second = cli("run", "--config", str(config))
    assert ran(second, "lm_scoring_job") == [] and ran(second, "mwlr_job") == []
    assert "lm_statistics_job skipped" in second

    # A second pair: only it is computed; the models and the first pair are fresh and skipped, and of the
    # statistics only what reads the pairs reruns.
    config = lm_registry(tmp_path, state_dir, [("lm-llama-it", "lm-gemma-it"), ("lm-llama-pt", "lm-gemma-it")])
    rows = {(r["asset"], r["partition"]): r["state"]
            for r in csv.DictReader(io.StringIO(cli("status", "--format", "csv", "--config", str(config))))}
    assert rows[("mwlr_pair", SECOND_PAIR)] == "missing" and rows[("mwlr_pair", FIRST_PAIR)] == "fresh"
    third = cli("run", "--config", str(config))
    assert ran(third, "lm_scoring_job") == []
    assert ran(third, "mwlr_job") == [SECOND_PAIR]
    assert f"mwlr_job[{FIRST_PAIR}] skipped: fresh" in third
    # the tables that read the pairs (Figure 2's rank cells now hold the new pair too) carry what reads them
    # and the report into their run: a new partition changes their rows, so it changes their readers too
    assert ran(third, "lm_statistics_job") == ["lm_rank_cells, mwlr_tokens, mwlr_words, lm_anova, lm_posthoc, "
                                               "lm_report"]
    cells = csv_table(cli, "lm_rank_cells", config)
    assert set(cells["pair"]) == {FIRST_PAIR, SECOND_PAIR}
    # the first pair's rows are the ones the first run wrote: the second pair changes none of them
    assert cells.filter(pl.col("pair") == FIRST_PAIR).equals(first_cells)
    assert set(csv_table(cli, "lm_posthoc", config)["pair"]) == {FIRST_PAIR, SECOND_PAIR}
    assert set(csv_table(cli, "mwlr_tokens", config)["pair"]) == {FIRST_PAIR, SECOND_PAIR}

    instance = dg.DagsterInstance.from_config(str(state_dir / "dagster"))
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("mwlr_pair")), limit=100).records
    assert sorted(r.asset_materialization.partition for r in records) == [FIRST_PAIR, SECOND_PAIR]


def test_full_sequence_rule_scores_the_words_that_are_several_tokens(tmp_path, state_dir):
    from valuebias.lm_scoring import language_model_word_logprobs, score_language_model
    from valuebias.model_sources import Workspace, source_of
    from valuebias.lm_scoring import load_language_model

    config = load_config(lm_registry(tmp_path, state_dir, [], models=("lm-llama-it",)))
    model = config.models["lm-llama-it"]
    prompts = pl.DataFrame({"prompt": list(PROMPTS), "text": list(PROMPTS.values()),
                            "framing": ["positive"] * 3 + ["negative"] * 3})
    corpus = pl.DataFrame({"corpus": "small", "word": AGENCY + COMMUNION,
                           "category": ["Agency"] * len(AGENCY) + ["Communion"] * len(COMMUNION)})
    where = Workspace(prompts=prompts, corpus_words=corpus, demo_dir=state_dir / "demo_models")
    next_token, meta = score_language_model(model.model_id, lambda: source_of(model).language_model(model, where),
                                            prompts=prompts)
    assert meta["demo_converged"] and meta["max_probability_sum_error"] < 1e-4

    def load():
        source, _ = source_of(model).language_model(model, where)
        return load_language_model(source, device="cpu")

    # Two words the demo LM never saw whole: several tokens each.
    extra = pl.DataFrame({"corpus": "small", "word": ["self-control", "team-work"], "category": "Agency"})
    words = pl.concat([corpus, extra])
    single, single_meta = language_model_word_logprobs(model.model_id, next_token, words, prompts)
    full, full_meta = language_model_word_logprobs(model.model_id, next_token, words, prompts,
                                                   rule="full_sequence", load=load)
    assert single_meta["words_kept"]["small"] == {"words": 42, "single_token": 40, "full_sequence": 0, "dropped": 2}
    assert full_meta["words_kept"]["small"] == {"words": 42, "single_token": 40, "full_sequence": 2, "dropped": 0}
    multi = full.filter(pl.col("rule") == "full_sequence")
    assert sorted(multi["word"].unique()) == ["self-control", "team-work"] and len(multi) == 2 * len(PROMPTS)
    assert (multi["logprob"] < 0).all()
    # The single-token rows are the same under both rules.
    assert full.filter(pl.col("rule") == "single_token").equals(single)
