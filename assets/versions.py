"""Input versions: what each asset was computed from, so that only what changed recomputes.

Every asset records, in its materialization metadata, ``input_versions``: the data versions of the
stored inputs it read and the fingerprints of the config it used (a model entry, the analysis
settings). A partition is **stale** when the versions it would read now differ from the recorded ones,
and **missing** when it was never materialized. ``valuebias status`` and ``valuebias run`` use
``partition_state``; the assets use ``current_input_versions`` to record what they read.

A model's inputs include its **content** (``model_content``: ``valuebias.model_content``), not only its
config entry, and every computed asset's inputs include its **code version** (``code``, from
:data:`CODE_VERSIONS`, also the asset's Dagster ``code_version``).
"""

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable

import dagster as dg

from valuebias.config import ModelConfig, RegistryConfig
from valuebias.errors import InputError
from valuebias.model_content import ContentIdentity, DigestCache, describe_change, model_content

#: The version of the code that computes each asset. Bump one when a change to that code changes what
#: it writes (a ranking convention, a test statistic, a scoring kernel): that asset then recomputes, and
#: what reads it recomputes only if the result's data version changed. Refactors that write the same
#: tables do not bump. The asset's Dagster ``code_version`` is this value, so the UI agrees.
CODE_VERSIONS = {
    "prompts": "1", "corpus_words": "1", "model_registry": "1",
    # Not bumped for the read-at-the-last-real-token fix (valuebias.model_content.SCORING_CONVENTION): that would
    # rescore every model of every state on upgrade; the fix changes the scores of pad == EOS models only, and
    # their next scoring misses the old cache (`valuebias run --all` recomputes them now).
    "rm_word_scores": "1", "rm_vocabulary_sweep": "1",
    # 2: a `ranks` column (raw, frequency_controlled), k families, comparisons with the correction named
    "rm_rank_cells": "2", "rm_mixed_model": "2", "rm_family_tests": "2", "rm_interaction_test": "1",
    "rm_rank_sums": "1",
    "rm_value_cards": "2",  # 2: deviation from the leave-one-out mean of word ranks, crossed words x prompts interval
    "rm_report": "3",  # 2: plots embedded (the UI shows them); 3: significant panels marked, interaction test
    "lm_next_token_logprobs": "2", "lm_word_logprobs": "1", "mwlr_pair": "1",
    # lm_rank_cells 2, lm_anova 2, lm_posthoc 2: Figure 2 per pair (a ``pair`` column; the pooled group is optional)
    "lm_rank_cells": "2", "lm_anova": "2", "lm_posthoc": "2", "mwlr_tokens": "1", "mwlr_words": "1",
    "lm_report": "3",  # 2: as rm_report; 3: a Figure-2 section per corpus and pair
    "registry_release": "1",  # on demand only (assets/release.py); never planned
}
#: Assets whose output is a function of a model's content (their metadata carries ``content``).
CONTENT_ASSETS = ("rm_word_scores", "rm_vocabulary_sweep", "lm_next_token_logprobs")
#: Scoring assets whose outputs, recorded before content identities existed, are adopted, not recomputed.
ADOPTING_ASSETS = CONTENT_ASSETS + ("lm_word_logprobs",)
#: Input-version keys that older records lack.
NEW_KEYS = ("model_content", "code")


@dataclass
class ContentCheck:
    """How the current content identity of a model is found when staleness is decided: ``cached``
    (rehash a file only when its size, mtime or inode changed: CLI status and run), ``verify`` (rehash
    everything: ``--verify``) or ``stat`` (never hash: sensor ticks). Identities are memoized per model."""

    config: RegistryConfig
    mode: str = "cached"
    _known: dict = field(default_factory=dict)
    _digests: DigestCache | None = None

    def identity(self, model: ModelConfig) -> ContentIdentity | None:
        if model.model_id not in self._known:
            from object_store import read_input_uri

            if self._digests is None:  # one digest cache (one read of its file) for every model
                self._digests = DigestCache(self.config.digest_cache_path)
            self._known[model.model_id] = model_content(
                model.model_id, model.source, model.settings, cache=self._digests,
                read=lambda uri: read_input_uri(uri, base_dir=self.config.base_dir), mode=self.mode)
        return self._known[model.model_id]

DATA_VERSION_TAG = "dagster/data_version"
INPUT_VERSIONS = "input_versions"


def latest_record(instance: dg.DagsterInstance, asset: str, partition: str | None = None):
    """The latest materialization record of an asset (partition), or None."""
    records_filter = dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset),
                                           asset_partitions=[partition] if partition else None)
    records = instance.fetch_materializations(records_filter, limit=1).records
    return records[0] if records else None


def data_version(record) -> str | None:
    """The data version a materialization record carries."""
    if record is None:
        return None
    return (record.event_log_entry.dagster_event.event_specific_data.materialization.tags or {}).get(DATA_VERSION_TAG)


def recorded_input_versions(record) -> dict[str, str] | None:
    if record is None:
        return None
    value = record.asset_materialization.metadata.get(INPUT_VERSIONS)
    return dict(value.value) if value is not None else None


def _latest_version(instance, asset, partition=None, overrides=None) -> str:
    if overrides and asset in overrides:
        return overrides[asset]
    return data_version(latest_record(instance, asset, partition)) or "missing"


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=list).encode()).hexdigest()[:16]


def settings_fingerprint(config: RegistryConfig, section: str, *fields: str) -> str:
    """The hash of the settings of one config section (``analysis``, ``implicit_rewards``) an asset uses."""
    settings = getattr(config, section)
    return _hash({name: getattr(settings, name) for name in fields})


# -------------------------------------------------------------------- what each asset reads, declared once
#
# ``INPUTS`` is the one declaration of what every computed asset reads. The assets' Dagster ``deps`` are
# derived from it (``reads``), so the asset graph the UI draws, the run order of ``valuebias run`` and the
# requests of the sensor and the schedule (``orchestration.plan``, which walks that graph) and the input
# versions recorded and compared here all come from the same lines.
#
# Why not Dagster's own stale status (``CachingStaleStatusResolver``)? It sees data versions and code
# versions only. Two things here are not Dagster data: a model's registry entry and its content (a
# published file, a weights folder, a hub commit; see ``valuebias.model_content``), and the settings a
# table is computed with (families, permutations, word rule). And a pair partition reads two partitions of
# another dynamic partition set, which no Dagster partition mapping expresses. So every asset records the
# versions it read (``input_versions``) and staleness compares them; for plain table inputs these *are*
# Dagster's data versions (``dagster/data_version`` of the latest materialization).


@dataclass(frozen=True)
class Reading:
    """Where an input's version comes from, for one partition of the reading asset."""

    instance: dg.DagsterInstance
    config: RegistryConfig
    partition: str | None
    overrides: dict[str, str] | None

    def version(self, asset: str, partition: str | None = None) -> str:
        return _latest_version(self.instance, asset, partition, self.overrides)

    @property
    def model(self) -> ModelConfig | None:
        return self.config.models.get(self.partition) if self.partition else None


@dataclass(frozen=True)
class _StoredInput:
    """An input that is another asset: drawn in the asset graph as a dependency on it."""

    asset: str

    def dep(self) -> dg.AssetDep:
        return dg.AssetDep(self.asset)


@dataclass(frozen=True)
class Table(_StoredInput):
    """An unpartitioned stored table (``prompts``, ``rm_rank_cells``); ``only_if`` limits it to some models."""

    only_if: Callable[[ModelConfig | None], bool] | None = None

    def versions(self, r: Reading) -> dict[str, str]:
        if self.only_if is not None and not self.only_if(r.model):
            return {}
        return {self.asset: r.version(self.asset)}

    def upstream(self, config: RegistryConfig, partition: str | None) -> list[tuple[str, str | None]]:
        return [(self.asset, None)]


@dataclass(frozen=True)
class SamePartition(_StoredInput):
    """The same partition of another asset with the same partition set."""

    def versions(self, r: Reading) -> dict[str, str]:
        return {self.asset: r.version(self.asset, r.partition)}

    def upstream(self, config: RegistryConfig, partition: str | None) -> list[tuple[str, str | None]]:
        return [(self.asset, partition)]


@dataclass(frozen=True)
class Partitions(_StoredInput):
    """Some partitions of a partitioned asset: ``keys(config, partition)`` says which (every registered
    reward model; a pair's two models). Recorded as ``asset[key]``."""

    keys: Callable[[RegistryConfig, str | None], list[str]]

    def versions(self, r: Reading) -> dict[str, str]:
        return {f"{self.asset}[{key}]": r.version(self.asset, key) for key in self.keys(r.config, r.partition)}

    def upstream(self, config: RegistryConfig, partition: str | None) -> list[tuple[str, str | None]]:
        return [(self.asset, key) for key in self.keys(config, partition)]

    def dep(self) -> dg.AssetDep:
        return dg.AssetDep(self.asset, partition_mapping=dg.AllPartitionMapping())


@dataclass(frozen=True)
class Setting:
    """Part of the registry config the asset is computed with (not a stored table: no Dagster dependency)."""

    value: Callable[[RegistryConfig, str | None], dict[str, str]]

    def versions(self, r: Reading) -> dict[str, str]:
        return self.value(r.config, r.partition)

    def upstream(self, config: RegistryConfig, partition: str | None) -> list[tuple[str, str | None]]:
        return []

    def dep(self) -> None:
        return None


@dataclass(frozen=True)
class Lineage(_StoredInput):
    """Drawn in the asset graph, not versioned and never waited for (``model_registry``: its rows are the
    models' entries, which ``model`` versions more precisely)."""

    def versions(self, r: Reading) -> dict[str, str]:
        return {}

    def upstream(self, config: RegistryConfig, partition: str | None) -> list[tuple[str, str | None]]:
        return []


def _entry(config: RegistryConfig, partition: str | None) -> dict[str, str]:
    model = config.models.get(partition) if partition else None
    return {"model": model.fingerprint if model else "removed"}


MODEL_ENTRY = Setting(_entry)
REWARD_MODEL_FAMILIES = Setting(lambda config, _: {f"family[{m.model_id}]": m.family for m in config.reward_models()})
RANKING_SETTINGS = Setting(lambda config, _: {"analysis": settings_fingerprint(
    config, "analysis", "frequency_control", "category_overlap")})
REWARD_MODEL_SCORES = Partitions("rm_word_scores", lambda config, _: [m.model_id for m in config.reward_models()])
# Figure 2 reads only the language models of its groups (the pairs, and every LM when pooled), so a model in no
# group changes no Figure-2 table.
LM_WORD_LOGPROBS = Partitions("lm_word_logprobs", lambda config, _: list(dict.fromkeys(
    m for models in config.figure2_groups().values() for m in models)))
FIGURE2_GROUPS = Setting(lambda config, _: {"figure2_groups": "; ".join(
    f"{group}: {', '.join(models)}" for group, models in config.figure2_groups().items()) or "none"})
EVERY_PAIR = Partitions("mwlr_pair", lambda config, _: list(config.pair_models()))

INPUTS: dict[str, tuple] = {
    "rm_word_scores": (MODEL_ENTRY, Table("prompts"), Table("corpus_words"), Lineage("model_registry")),
    "rm_vocabulary_sweep": (
        MODEL_ENTRY, Setting(lambda config, p: {"sweep": _hash(config.models[p].vocabulary_sweep
                                                               if p in config.models else None)}),
        Table("prompts"), Lineage("corpus_words"), Lineage("model_registry")),
    "rm_rank_cells": (Table("prompts"), Table("corpus_words"), REWARD_MODEL_SCORES, REWARD_MODEL_FAMILIES,
                      RANKING_SETTINGS, Lineage("model_registry")),
    "rm_rank_sums": (Table("corpus_words"), REWARD_MODEL_SCORES, RANKING_SETTINGS, Lineage("model_registry")),
    "rm_mixed_model": (Table("rm_rank_cells"),),
    "rm_interaction_test": (Table("rm_rank_cells"),),
    "rm_family_tests": (Table("rm_rank_cells"), Setting(lambda config, _: {"analysis": settings_fingerprint(
        config, "analysis", "families", "comparisons", "permutations", "seed")})),
    # a card compares its model with every other one: any reward model's new scores move every card (through
    # the rank sums); the others' families only change the card's wording about its reference
    "rm_value_cards": (Setting(lambda config, p: {} if p in config.models else {"model": "removed"}),
                       Table("rm_rank_sums"), Table("rm_rank_cells"), Table("corpus_words"), Table("prompts"),
                       SamePartition("rm_word_scores"), REWARD_MODEL_FAMILIES, RANKING_SETTINGS),
    "rm_report": (Table("rm_rank_cells"), Table("rm_mixed_model"), Table("rm_interaction_test"),
                  Table("rm_family_tests")),
    "lm_next_token_logprobs": (
        MODEL_ENTRY, Table("prompts"),
        # a demo LM is trained on a corpus's words; a real one reads no word list
        Table("corpus_words", only_if=lambda model: model is not None and model.source == "demo"),
        Lineage("model_registry")),
    "lm_word_logprobs": (MODEL_ENTRY, SamePartition("lm_next_token_logprobs"), Table("corpus_words"),
                         Setting(lambda config, _: {"word_rule": config.implicit_rewards.word_rule}),
                         Lineage("prompts")),
    "mwlr_pair": (Setting(lambda config, p: {} if p in config.pair_models() else {"pair": "removed"}),
                  Partitions("lm_next_token_logprobs", lambda config, p: list(config.pair_models().get(p, ()))),),
    "lm_rank_cells": (Table("prompts"), Table("corpus_words"), LM_WORD_LOGPROBS, FIGURE2_GROUPS,
                      Setting(lambda config, _: {"category_overlap": config.analysis.category_overlap}),
                      Lineage("model_registry")),
    "lm_anova": (Table("lm_rank_cells"), FIGURE2_GROUPS),
    "lm_posthoc": (Table("lm_rank_cells"),
                   Setting(lambda config, _: {"pairs": ", ".join(config.pair_models()) or "none"})),
    "mwlr_tokens": (EVERY_PAIR, Table("prompts"),
                    Setting(lambda config, _: {"implicit_rewards": settings_fingerprint(config, "implicit_rewards", "top_n")})),
    "mwlr_words": (EVERY_PAIR, Table("prompts"),
                   Setting(lambda config, _: {"implicit_rewards": settings_fingerprint(config, "implicit_rewards", "words")})),
    "lm_report": tuple(Table(name) for name in ("lm_rank_cells", "lm_anova", "lm_posthoc", "mwlr_tokens",
                                                "mwlr_words")),
}


def upstream_partitions(config: RegistryConfig, asset: str, partition: str | None) -> list[tuple[str, str | None]]:
    """The (asset, partition)s that ``asset`` (``partition``) reads, from ``INPUTS`` (a pair: its two models'
    partitions only)."""
    return [key for spec in INPUTS.get(asset, ()) for key in spec.upstream(config, partition)]


def reads(asset: str) -> list[dg.AssetDep]:
    """The Dagster ``deps`` of a computed asset, from ``INPUTS``."""
    return [dep for spec in INPUTS[asset] if (dep := spec.dep()) is not None]


def current_input_versions(instance: dg.DagsterInstance, config: RegistryConfig, asset: str,
                           partition: str | None = None, overrides: dict[str, str] | None = None,
                           content: ContentCheck | None = None) -> dict[str, str]:
    """The versions of everything ``asset`` (``partition``) reads, as they are now (``INPUTS``), and its
    code version. ``overrides`` gives versions to assume for some inputs (e.g. what re-ingesting the files
    would produce). ``content`` adds the model's content identity (``model_content``) to a scoring
    partition; without it the key is left out (a scoring asset records what its worker computed instead).
    Ingest assets read files outside Dagster and have no input versions: they are re-read on every run."""
    if asset not in INPUTS:
        return {}
    reading = Reading(instance, config, partition, overrides)
    versions: dict[str, str] = {}
    for spec in INPUTS[asset]:
        versions.update(spec.versions(reading))
    versions["code"] = CODE_VERSIONS[asset]
    if content is not None and asset in CONTENT_ASSETS and reading.model is not None:
        identity = content.identity(reading.model)
        if identity is not None:
            versions["model_content"] = identity.digest
    return versions


@dataclass(frozen=True)
class PartitionState:
    asset: str
    partition: str | None
    state: str  # fresh, stale, missing, error (an input cannot be read: the reason names it)
    reason: str
    run_id: str | None
    data_version: str | None
    metadata: dict
    current: dict = field(default_factory=dict)  # the input versions it would read now
    changed: tuple = ()  # stale: the input-version keys that changed (e.g. ``rm_word_scores[m]``, ``code``)


ADOPT_REASON = "recorded before content identities"


def legacy_but_unchanged(asset: str, recorded: dict[str, str], current: dict[str, str]) -> bool:
    """True when ``recorded`` lacks only keys that older records never had and agrees on all others."""
    missing = set(current) - set(recorded)
    return (asset in ADOPTING_ASSETS and bool(missing) and missing <= set(NEW_KEYS)
            and all(current.get(k) == v for k, v in recorded.items()))


def partition_state(instance: dg.DagsterInstance, config: RegistryConfig, asset: str,
                    partition: str | None = None, overrides: dict[str, str] | None = None,
                    content: ContentCheck | None = None) -> PartitionState:
    """Fresh, stale (with the inputs that changed, a model's content by file), missing, or error (a
    model's folder or file has disappeared: named in the reason; nothing stored is touched)."""
    record = latest_record(instance, asset, partition)
    content = content or ContentCheck(config)
    if record is None:  # what it would read is kept too: a run request for it names these inputs
        try:
            current = current_input_versions(instance, config, asset, partition, overrides, content=content)
        except InputError:
            current = {}
        return PartitionState(asset, partition, "missing", "never materialized", None, None, {}, current)
    metadata = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    recorded = recorded_input_versions(record) or {}
    try:
        current = current_input_versions(instance, config, asset, partition, overrides, content=content)
    except InputError as exc:
        return PartitionState(asset, partition, "error", str(exc), record.run_id, data_version(record), metadata)
    changed = sorted(k for k in set(current) | set(recorded) if current.get(k) != recorded.get(k))
    if not changed:
        state, reason = "fresh", ""
    elif legacy_but_unchanged(asset, recorded, current):
        state, reason = "stale", f"{ADOPT_REASON}: its outputs are adopted on the next run, not recomputed"
    else:
        state, reason = "stale", "changed: " + ", ".join(_describe(k, metadata, config, partition, content)
                                                         for k in changed)
    return PartitionState(asset, partition, state, reason, record.run_id, data_version(record), metadata, current,
                          tuple(changed))


def _describe(key: str, metadata: dict, config: RegistryConfig, partition: str | None,
              content: ContentCheck) -> str:
    """An input-version key as a person reads it; a model's content names the files that changed."""
    if key != "model_content":
        return key
    identity = content.identity(config.models[partition])
    recorded = metadata.get("content") or {}
    return describe_change(identity.kind, recorded.get("parts"), identity)
