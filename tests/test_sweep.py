"""The optional full-vocabulary sweep of a reward model (issue 4, docs/METHOD.md#6-vocabulary-sweep)."""

from __future__ import annotations

import io

import polars as pl

from valuebias.orchestration.cli import main as valuebias_main
from tests.registry_fixtures import build_random_reward_model, random_models_entry, write_small_registry
from valuebias.rm_scoring import load_reward_model, score_words
from valuebias.hf_loading import HuggingFaceSource


def test_sweep_scores_every_vocabulary_string_like_the_straightforward_path(tmp_path, monkeypatch, capsys):
    path = build_random_reward_model(tmp_path / "rm", architecture="llama", seed=5)
    models = random_models_entry({"llama-a": ("llama", path), "gemma-a": ("gemma", path)})
    models = models.replace("  gemma-a:\n", "  gemma-a:\n    vocabulary_sweep: {prompts: [best_ever_one, worst_ever_one],"
                                             " top_n: 4}\n", 1)
    config = write_small_registry(tmp_path, models=models)
    monkeypatch.setenv("DAGSTER_HOME", "")
    assert valuebias_main(["run", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "rm_sweep_job[gemma-a]" in out and "rm_sweep_job[llama-a]" not in out  # switched on per entry

    sweep = pl.read_parquet(tmp_path / ".valuebias" / "data" / "rm_vocabulary_sweep" / "gemma-a.parquet")
    loaded = load_reward_model(HuggingFaceSource("gemma-a", str(path)))
    vocabulary_size = len(loaded.tokenizer)
    assert sweep.filter(pl.col("prompt") == "best_ever_one")["token_id"].to_list() == list(range(vocabulary_size))

    assert valuebias_main(["table", "rm_sweep_tokens", "--format", "csv", "--config", str(config)]) == 0
    extremes = pl.read_csv(io.StringIO(capsys.readouterr().out))
    assert extremes.height == 2 * 2 * 4 and set(extremes["side"]) == {"top", "bottom"}
    best = extremes.filter(pl.col("prompt") == "best_ever_one")
    # The top strings really are the highest-scoring ones, by the straightforward path.
    some = sorted(set(sweep.filter(pl.col("prompt") == "best_ever_one")["token"].to_list()))[:200]
    reference = score_words(loaded, score="logits[0]",
                            prompts=[("best_ever_one", "What, in one word, is the best thing ever?")],
                            words=sorted(set(some) | set(best["token"].to_list())), batch_size=64)
    joined = reference.join(sweep.filter(pl.col("prompt") == "best_ever_one").unique(subset=["token"]),
                            left_on="word", right_on="token")
    assert (joined["score"] - joined["score_right"]).abs().max() <= 1e-4
    top = best.filter(pl.col("side") == "top")
    others = reference.filter(~pl.col("word").is_in(top["token"].to_list()))
    assert top["score"].min() >= others["score"].max() - 1e-4

    # Nothing changed: the sweep is fresh and skipped.
    assert valuebias_main(["run", "--config", str(config)]) == 0
    assert "rm_sweep_job[gemma-a] skipped: fresh" in capsys.readouterr().out
