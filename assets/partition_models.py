"""What every model partition does: find its registry entry and the versions of its inputs, adopt outputs
recorded before content identities existed, and record the provenance of what its worker computed."""

import dagster as dg

from valuebias.assets.versions import (CONTENT_ASSETS, INPUT_VERSIONS, current_input_versions, data_version, latest_record,
                             legacy_but_unchanged, recorded_input_versions)
from valuebias.resources.registry import Registry
from valuebias.resources.storage import Storage
from valuebias.config import ModelConfig, RegistryConfig
from valuebias.model_sources import source_of


def registered_model(config: RegistryConfig, model_id: str, kind: str) -> ModelConfig:
    """The registry entry of partition ``model_id``; a clear Failure when it is gone or of another kind."""
    model = config.models.get(model_id)
    if model is None:
        raise dg.Failure(f"model '{model_id}' is not in {config.path} any more; its stored outputs are kept "
                         "but it is left out of the statistics")
    if model.kind != kind:
        raise dg.Failure(f"model '{model_id}' is a {model.kind}, not a {kind.replace('_', ' ')}")
    return model


def partition_model(context: dg.AssetExecutionContext, registry: Registry, asset: str,
                    kind: str) -> tuple[RegistryConfig, ModelConfig, dict[str, str]]:
    """(config, the partition's registry entry, the versions of what ``asset`` reads for it now)."""
    config = registry.load()
    model = registered_model(config, context.partition_key, kind)
    return config, model, current_input_versions(context.instance, config, asset, context.partition_key)


def plain(value):
    """A metadata value as plain data (Pipes hands back ``MetadataValue``s, the in-process worker raw values)."""
    return value.value if isinstance(value, dg.MetadataValue) else value


def record_scoring(metadata: dict, model: ModelConfig, asset: str, input_versions: dict[str, str]) -> dict:
    """The metadata a scoring partition records besides the worker's own: the content identity the worker
    computed (which joins ``input_versions`` as ``model_content``) and one ``provenance`` object with
    everything the registry knows about how these numbers were made."""
    content = plain(metadata.get("content")) or {}
    source = source_of(model)
    if content and not source.identity_from_build and asset in CONTENT_ASSETS:
        input_versions = {**input_versions, "model_content": content["digest"]}
    provenance = {
        "source": model.source,
        "location": source.location(model),
        "content_kind": content.get("kind"),
        "content_digest": content.get("digest"),
        "resolved_revision": (content.get("parts") or {}).get("commit"),
        "file_sha256": {} if content.get("kind") == "hub" else dict(content.get("parts") or {}),
        **{key: plain(metadata.get(key)) for key in ("dtype", "device", "engine", "torch", "transformers",
                                                     "chat_template_sha256", "launcher")},
        "prompts_version": input_versions.get("prompts"),
        "corpus_words_version": input_versions.get("corpus_words"),
        "code_version": input_versions.get("code"),
    }
    metadata = {**metadata, "model_fingerprint": model.fingerprint, "family": model.family, "source": model.source,
                INPUT_VERSIONS: dg.MetadataValue.json(input_versions),
                "provenance": dg.MetadataValue.json({k: v for k, v in provenance.items() if v is not None})}
    if content:
        metadata["content"] = dg.MetadataValue.json(content)
    return metadata


def adopt_recorded_outputs(context: dg.AssetExecutionContext, asset: str, model: ModelConfig,
                           input_versions: dict[str, str], *, storage: Storage, scoring, config: RegistryConfig,
                           outputs: list[str], version_of) -> dg.MaterializeResult | None:
    """Upgrading keeps the scores: a partition recorded by a version of ValueBias without content
    identities and code versions, whose recorded inputs are all unchanged and whose stored outputs are
    intact (their content version equals the recorded data version), is re-recorded under the new
    identity (computed by the worker, where the weights are) instead of being recomputed. Returns that
    materialization, or None when the partition must be computed."""
    record = latest_record(context.instance, asset, context.partition_key)
    recorded = recorded_input_versions(record)
    if record is None or recorded is None:
        return None
    needs_content = asset in CONTENT_ASSETS and not source_of(model).identity_from_build
    current = {**input_versions, **({"model_content": "to be computed"} if needs_content else {})}
    if not legacy_but_unchanged(asset, recorded, current):
        return None
    version = data_version(record)
    if version is None or not all(storage.exists(key) for key in outputs):
        return None
    if version_of(storage.read_parquet(outputs[0])) != version:
        context.log.warning(f"{asset}[{context.partition_key}]: the stored table differs from what was recorded; "
                            "recomputing instead of adopting it")
        return None
    metadata = {k: v for k, v in record.asset_materialization.metadata.items() if k != INPUT_VERSIONS}
    if needs_content:
        metadata["content"] = scoring.identify(context, config, model, storage.store().to_spec())
    metadata = record_scoring(metadata, model, asset, input_versions)
    metadata["adopted_from_run"] = record.run_id
    context.log.info(f"{asset}[{context.partition_key}]: adopted the outputs recorded by run {record.run_id} "
                     "(recorded before content identities; every recorded input is unchanged)")
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))
