"""The seam per model source (valuebias.model_sources): one module per source, chosen once from the typed
config; an unknown source is an error; adding a source is a module, a config block and one line
(ARCHITECTURE.md, "Add a model source", walked here with a throwaway source)."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pydantic
import pytest

from valuebias import config as config_module
from valuebias.config import MODEL_SOURCES, SOURCE_RULES, ModelConfig, load_config
from valuebias.errors import InputError
from valuebias.model_sources import SOURCES, ModelSource, source_of
from valuebias.model_sources import catalogue

from registry_fixtures import AGENCY, COMMUNION, PROMPTS, write_small_registry


def test_every_config_source_block_has_its_module_and_the_other_way_round():
    assert tuple(SOURCES) == MODEL_SOURCES == tuple(SOURCE_RULES)
    assert set(MODEL_SOURCES) <= set(config_module.ModelBlock.model_fields)
    for name, source in SOURCES.items():
        assert source.name == name and type(source).__module__ == f"valuebias.model_sources.{name}"


def test_an_unknown_source_is_an_error_naming_the_entry_never_a_demo_model():
    model = ModelConfig("m1", "reward_model", "llama", "nonesuch", {"path": "x"})
    with pytest.raises(InputError) as err:
        source_of(model)
    assert err.value.source == "models.m1"
    assert "unknown model source 'nonesuch' (known: huggingface, published, demo)" in str(err.value)


def test_a_source_without_weights_cannot_be_swept_or_loaded():
    model = ModelConfig("pub", "reward_model", "llama", "published", {"small": "/tmp/x.csv"})
    with pytest.raises(InputError) as err:
        source_of(model).reward_model(model, where=None)
    assert (err.value.source, err.value.field) == ("models.pub", "published")
    assert "a published model cannot be loaded as a reward model" in str(err.value)


# ------------------------------------------------------------------------------- the recipe, walked


class Constant(ModelSource):
    """The throwaway source of the recipe: a reward model whose score of a word is ``value * len(word)``."""

    name = "constant"
    has_weights = False

    def import_scores(self, model, *, base_dir, prompts, corpus_words, coverage="complete"):
        words = corpus_words.select("corpus", "word").unique()
        table = (words.join(prompts.select("prompt"), how="cross")
                 .with_columns(pl.lit(model.model_id).alias("model"),
                               (pl.col("word").str.len_chars() * model.settings["value"]).cast(pl.Float64).alias("score"))
                 .select("model", "corpus", "prompt", "word", "score").sort("corpus", "prompt", "word"))
        return table, {"sequences_scored": 0, "rows_imported": table.height}

    def location(self, model):
        return f"constant {model.settings['value']}"


class ConstantBlock(config_module._Block):
    value: pydantic.StrictFloat


def _constant_settings(at, sp, block, *, kind, base, corpora):
    if kind == "language_model":
        raise at.error(sp, "constant models are reward models")
    return {"value": block.value}


@pytest.fixture
def constant_source(monkeypatch):
    """Steps 1-3 of the recipe: the module (``Constant``), its config block (a ``constant`` key of a model
    entry, with its rules), and its line in the catalogue."""
    block = pydantic.create_model("ModelBlock", __base__=config_module.ModelBlock,
                                  constant=(ConstantBlock | None, None))
    file = pydantic.create_model("ConfigFile", __base__=config_module.ConfigFile,
                                 models=(dict[config_module.Id, block], pydantic.Field(min_length=1)))
    monkeypatch.setattr(config_module, "ModelBlock", block)
    monkeypatch.setattr(config_module, "ConfigFile", file)
    monkeypatch.setitem(SOURCE_RULES, "constant", _constant_settings)
    monkeypatch.setattr(config_module, "MODEL_SOURCES", (*MODEL_SOURCES, "constant"))
    monkeypatch.setitem(catalogue.SOURCES, "constant", Constant())


def test_adding_a_model_source_takes_a_module_a_config_block_and_a_line(tmp_path, constant_source):
    from valuebias.assets.rm_scores import rm_word_scores
    from valuebias.assets.tables import rm_word_scores_key
    from valuebias.orchestration.definitions import build_definitions, build_resources
    from valuebias.orchestration.partitions import sync_model_partitions
    from valuebias.resources.storage import Storage

    path = write_small_registry(tmp_path, models=(
        "  const-a:\n    kind: reward_model\n    family: llama\n    constant: {value: 0.5}\n"))
    config = load_config(path)
    model = config.models["const-a"]
    assert (model.source, model.settings) == ("constant", {"value": 0.5})

    # the config block's own rules, and the generic ones, still name the key
    bad = path.read_text().replace("kind: reward_model", "kind: language_model\n    variant: pretrained")
    (tmp_path / "bad.yaml").write_text(bad)
    with pytest.raises(InputError) as err:
        load_config(tmp_path / "bad.yaml")
    assert err.value.field == "models.const-a.constant" and "constant models are reward models" in str(err.value)

    with dg.instance_for_test() as instance:
        defs = build_definitions(path)
        assert defs.resolve_job_def("ingest_job").execute_in_process(instance=instance).success
        sync_model_partitions(instance, config)
        result = dg.materialize([rm_word_scores], partition_key="const-a", instance=instance,
                                resources=build_resources(path))
        assert result.success
        event = instance.get_latest_materialization_event(dg.AssetKey("rm_word_scores"))
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert metadata["source"] == "constant" and metadata["provenance"]["location"] == "constant 0.5"
    table = Storage(uri=config.storage_uri).read_parquet(rm_word_scores_key("const-a"))
    words = sorted(set(AGENCY + COMMUNION))
    expected = pl.DataFrame({"model": "const-a", "corpus": "small",
                             "prompt": [p for p in sorted(PROMPTS) for _ in words],
                             "word": words * len(PROMPTS),
                             "score": [0.5 * len(w) for _ in PROMPTS for w in words]})
    assert table.select(expected.columns).sort("prompt", "word").equals(expected.sort("prompt", "word"))
