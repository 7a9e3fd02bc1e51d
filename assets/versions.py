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
    "rm_word_scores": "1", "rm_vocabulary_sweep": "1",
    "rm_rank_cells": "1", "rm_mixed_model": "1", "rm_family_tests": "1", "rm_report": "1",
    "lm_next_token_logprobs": "1", "lm_word_logprobs": "1", "mwlr_pair": "1",
    "lm_rank_cells": "1", "lm_anova": "1", "lm_posthoc": "1", "mwlr_tokens": "1", "mwlr_words": "1",
    "lm_report": "1",
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

    def identity(self, model: ModelConfig) -> ContentIdentity | None:
        if model.model_id not in self._known:
            from resources.object_store import read_input_uri

            self._known[model.model_id] = model_content(
                model.model_id, model.source, model.settings, cache=DigestCache(self.config.digest_cache_path),
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
    return record.event_log_entry.dagster_event.event_specific_data.materialization.tags.get(DATA_VERSION_TAG)


def recorded_input_versions(record) -> dict[str, str] | None:
    if record is None:
        return None
    value = record.asset_materialization.metadata.get(INPUT_VERSIONS)
    return dict(value.value) if value is not None else None


def _latest_version(instance, asset, partition=None, overrides=None) -> str:
    if overrides and asset in overrides:
        return overrides[asset]
    return data_version(latest_record(instance, asset, partition)) or "missing"


def analysis_fingerprint(config: RegistryConfig) -> str:
    payload = json.dumps({"families": config.analysis.families, "permutations": config.analysis.permutations,
                          "seed": config.analysis.seed}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def current_input_versions(instance: dg.DagsterInstance, config: RegistryConfig, asset: str,
                           partition: str | None = None, overrides: dict[str, str] | None = None,
                           content: ContentCheck | None = None) -> dict[str, str]:
    """The versions of everything ``asset`` (``partition``) reads, as they are now. ``overrides`` gives
    versions to assume for some inputs (e.g. what re-ingesting the files would produce). ``content``
    adds the model's content identity (``model_content``) to a scoring partition; without it the key is
    left out (a scoring asset records what its worker computed instead)."""
    versions = _input_versions(instance, config, asset, partition, overrides)
    if asset in CODE_VERSIONS and asset not in ("prompts", "corpus_words", "model_registry"):
        versions["code"] = CODE_VERSIONS[asset]
    model = config.models.get(partition) if partition else None
    if content is not None and asset in CONTENT_ASSETS and model is not None:
        identity = content.identity(model)
        if identity is not None:
            versions["model_content"] = identity.digest
    return versions


def _input_versions(instance, config, asset, partition, overrides) -> dict[str, str]:
    if asset == "rm_vocabulary_sweep":
        model = config.models.get(partition)
        sweep = json.dumps(model.vocabulary_sweep if model else None, sort_keys=True)
        return {"model": model.fingerprint if model else "removed",
                "sweep": hashlib.sha256(sweep.encode()).hexdigest()[:16],
                "prompts": _latest_version(instance, "prompts", overrides=overrides)}
    if asset == "rm_word_scores":
        model = config.models.get(partition)
        return {"model": model.fingerprint if model else "removed",
                "prompts": _latest_version(instance, "prompts", overrides=overrides),
                "corpus_words": _latest_version(instance, "corpus_words", overrides=overrides)}
    if asset == "rm_rank_cells":
        versions = {"prompts": _latest_version(instance, "prompts", overrides=overrides),
                    "corpus_words": _latest_version(instance, "corpus_words", overrides=overrides)}
        for model in config.reward_models():
            versions[f"rm_word_scores[{model.model_id}]"] = _latest_version(instance, "rm_word_scores",
                                                                            model.model_id)
            versions[f"family[{model.model_id}]"] = model.family
        return versions
    if asset == "rm_mixed_model":
        return {"rm_rank_cells": _latest_version(instance, "rm_rank_cells")}
    if asset == "rm_family_tests":
        return {"rm_rank_cells": _latest_version(instance, "rm_rank_cells"),
                "analysis": analysis_fingerprint(config)}
    if asset == "rm_report":
        return {name: _latest_version(instance, name)
                for name in ("rm_rank_cells", "rm_mixed_model", "rm_family_tests")}
    if asset in LM_INPUTS:
        return LM_INPUTS[asset](instance, config, partition, overrides)
    return {}  # ingest assets read files outside Dagster: they are re-read on every run (cheap)


# ---------------------------------------------------------------------------------- language models


def implicit_rewards_fingerprint(config: RegistryConfig, *fields: str) -> str:
    settings = {name: getattr(config.implicit_rewards, name) for name in fields}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:16]


def _lm_next_token_inputs(instance, config, partition, overrides):
    model = config.models.get(partition)
    versions = {"model": model.fingerprint if model else "removed",
                "prompts": _latest_version(instance, "prompts", overrides=overrides)}
    if model is not None and model.source == "demo":  # a demo LM is trained on a corpus's words
        versions["corpus_words"] = _latest_version(instance, "corpus_words", overrides=overrides)
    return versions


def _lm_word_inputs(instance, config, partition, overrides):
    model = config.models.get(partition)
    return {"model": model.fingerprint if model else "removed",
            "lm_next_token_logprobs": _latest_version(instance, "lm_next_token_logprobs", partition),
            "corpus_words": _latest_version(instance, "corpus_words", overrides=overrides),
            "word_rule": config.implicit_rewards.word_rule}


def _mwlr_pair_inputs(instance, config, partition, overrides):
    models = config.pair_models().get(partition)
    if models is None:
        return {"pair": "removed"}
    return {f"lm_next_token_logprobs[{m}]": _latest_version(instance, "lm_next_token_logprobs", m) for m in models}


def _lm_rank_cells_inputs(instance, config, partition, overrides):
    versions = {"prompts": _latest_version(instance, "prompts", overrides=overrides),
                "corpus_words": _latest_version(instance, "corpus_words", overrides=overrides)}
    for model in config.language_models():
        versions[f"lm_word_logprobs[{model.model_id}]"] = _latest_version(instance, "lm_word_logprobs",
                                                                          model.model_id)
    return versions


def _pairs_inputs(instance, config, partition, overrides):
    return {f"mwlr_pair[{p}]": _latest_version(instance, "mwlr_pair", p) for p in config.pair_models()}


LM_INPUTS = {
    "lm_next_token_logprobs": _lm_next_token_inputs,
    "lm_word_logprobs": _lm_word_inputs,
    "mwlr_pair": _mwlr_pair_inputs,
    "lm_rank_cells": _lm_rank_cells_inputs,
    "lm_anova": lambda instance, config, partition, overrides: {
        "lm_rank_cells": _latest_version(instance, "lm_rank_cells")},
    "lm_posthoc": lambda instance, config, partition, overrides: {
        "lm_rank_cells": _latest_version(instance, "lm_rank_cells"),
        "pairs": ", ".join(config.pair_models()) or "none"},
    "mwlr_tokens": lambda instance, config, partition, overrides: {
        **_pairs_inputs(instance, config, partition, overrides),
        "prompts": _latest_version(instance, "prompts", overrides=overrides),
        "implicit_rewards": implicit_rewards_fingerprint(config, "top_n")},
    "mwlr_words": lambda instance, config, partition, overrides: {
        **_pairs_inputs(instance, config, partition, overrides),
        "prompts": _latest_version(instance, "prompts", overrides=overrides),
        "implicit_rewards": implicit_rewards_fingerprint(config, "words")},
    "lm_report": lambda instance, config, partition, overrides: {
        name: _latest_version(instance, name)
        for name in ("lm_rank_cells", "lm_anova", "lm_posthoc", "mwlr_tokens", "mwlr_words")},
}


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

    @property
    def adoptable(self) -> bool:
        """Recorded by a version of ValueBias without content identities and code versions, with every
        input it did record unchanged: the next run adopts its outputs instead of recomputing them."""
        return self.state == "stale" and self.reason.startswith(ADOPT_REASON)


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
    if record is None:
        return PartitionState(asset, partition, "missing", "never materialized", None, None, {})
    metadata = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    recorded = recorded_input_versions(record) or {}
    content = content or ContentCheck(config)
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
    return PartitionState(asset, partition, state, reason, record.run_id, data_version(record), metadata, current)


def _describe(key: str, metadata: dict, config: RegistryConfig, partition: str | None,
              content: ContentCheck) -> str:
    """An input-version key as a person reads it; a model's content names the files that changed."""
    if key != "model_content":
        return key
    identity = content.identity(config.models[partition])
    recorded = metadata.get("content") or {}
    return describe_change(identity.kind, recorded.get("parts"), identity)
