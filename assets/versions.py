"""Input versions: what each asset was computed from, so that only what changed recomputes.

Every asset records, in its materialization metadata, ``input_versions``: the data versions of the
stored inputs it read and the fingerprints of the config it used (a model entry, the analysis
settings). A partition is **stale** when the versions it would read now differ from the recorded ones,
and **missing** when it was never materialized. ``valuebias status`` and ``valuebias run`` use
``partition_state``; the assets use ``current_input_versions`` to record what they read.

A model's inputs include its **content** (``model_content``: ``valuebias.model_content``), not only its
config entry, and every computed asset's inputs include its **code version** (``code``, from
:data:`CODE_VERSIONS`, also the asset's Dagster ``code_version``). ``CODE_VERSIONS`` and ``INPUTS`` are derived
from the declarations (``valuebias.assets.catalog``).
"""

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable

import dagster as dg

from valuebias.config import ModelConfig, RegistryConfig
from valuebias.errors import InputError
from valuebias.model_content import ContentIdentity, DigestCache, describe_change
from valuebias.model_sources import source_of

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
            from valuebias.object_store import read_input_uri

            if self._digests is None:  # one digest cache (one read of its file) for every model
                self._digests = DigestCache(self.config.digest_cache_path)
            self._known[model.model_id] = source_of(model).content_identity(
                model, cache=self._digests, read=lambda uri: read_input_uri(uri, base_dir=self.config.base_dir),
                mode=self.mode)
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
# A table's declared ``inputs`` (``valuebias.assets.catalog.TableSpec``, beside its asset; collected as ``INPUTS``)
# say what every computed asset reads. The assets' Dagster ``deps`` are derived from them
# (``TableSpec.deps``), so the asset graph the UI draws, the run order of ``valuebias run`` and the
# requests of the sensor and the schedule (``valuebias.orchestration.plan``, which walks that graph) and the input
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
    config, "analysis", "frequency_control", "category_overlap"),
    # recorded only when not the default, so states recorded before the option stay fresh
    **({"published_coverage": config.analysis.published_coverage}
       if config.analysis.published_coverage != "complete" else {})})
REWARD_MODEL_SCORES = Partitions("rm_word_scores", lambda config, _: [m.model_id for m in config.reward_models()])
# Figure 2 reads only the language models of its groups (the pairs, and every LM when pooled), so a model in no
# group changes no Figure-2 table.
LM_WORD_LOGPROBS = Partitions("lm_word_logprobs", lambda config, _: list(dict.fromkeys(
    m for models in config.figure2_groups().values() for m in models)))
FIGURE2_GROUPS = Setting(lambda config, _: {"figure2_groups": "; ".join(
    f"{group}: {', '.join(models)}" for group, models in config.figure2_groups().items()) or "none"})
EVERY_PAIR = Partitions("mwlr_pair", lambda config, _: list(config.pair_models()))

# A demo LM is trained on a corpus's words; a real one reads no word list.
TRAINING_WORDS = Table("corpus_words", only_if=lambda model: model is not None and source_of(model).trained_on_corpus_words)


def __getattr__(name: str):
    """``CODE_VERSIONS`` ({asset: code version}) and ``INPUTS`` ({asset: what it reads}), derived from the tables'
    declarations (``valuebias.assets.catalog``) when first asked for: the asset modules declare them with the
    classes above. The same dict every time (a test may change a code version for its duration)."""
    from valuebias.assets import catalog

    if name == "CODE_VERSIONS":
        return catalog.code_versions()
    if name == "INPUTS":
        return catalog.inputs()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def upstream_partitions(config: RegistryConfig, asset: str, partition: str | None) -> list[tuple[str, str | None]]:
    """The (asset, partition)s that ``asset`` (``partition``) reads, from ``INPUTS`` (a pair: its two models'
    partitions only)."""
    return [key for spec in _inputs().get(asset, ()) for key in spec.upstream(config, partition)]


def reads(asset: str) -> list[dg.AssetDep]:
    """The Dagster ``deps`` of a computed asset, from ``INPUTS``."""
    return [dep for spec in _inputs()[asset] if (dep := spec.dep()) is not None]


def _inputs() -> dict[str, tuple]:
    from valuebias.assets import catalog

    return catalog.inputs()


def current_input_versions(instance: dg.DagsterInstance, config: RegistryConfig, asset: str,
                           partition: str | None = None, overrides: dict[str, str] | None = None,
                           content: ContentCheck | None = None) -> dict[str, str]:
    """The versions of everything ``asset`` (``partition``) reads, as they are now (``INPUTS``), and its
    code version. ``overrides`` gives versions to assume for some inputs (e.g. what re-ingesting the files
    would produce). ``content`` adds the model's content identity (``model_content``) to a scoring
    partition; without it the key is left out (a scoring asset records what its worker computed instead).
    Ingest assets read files outside Dagster and have no input versions: they are re-read on every run."""
    from valuebias.assets import catalog

    inputs = catalog.inputs()
    if asset not in inputs:
        return {}
    reading = Reading(instance, config, partition, overrides)
    versions: dict[str, str] = {}
    for spec in inputs[asset]:
        versions.update(spec.versions(reading))
    versions["code"] = catalog.code_versions()[asset]
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
