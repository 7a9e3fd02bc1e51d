"""The release of the registry as a Dagster asset that runs only on demand: the Materialize button, ``valuebias
release`` (which launches ``release_job``) or ``release_schedule`` (stopped unless switched on). No sensor,
schedule or ``valuebias run`` requests it on its own: it is in none of the registry's jobs
(``valuebias.orchestration.jobs.ALL_JOBS``), so ``valuebias.orchestration.plan`` never plans it.

It writes release ``name`` (``valuebias.orchestration.release.create_release``: refused, naming the partitions, while
anything is missing, stale or failed) and shows the diff against the previous release as markdown metadata.
"""


import dagster as dg

from valuebias.assets.versions import CODE_VERSIONS
from valuebias.resources.registry import Registry


class ReleaseConfig(dg.Config):
    """``name``: the release's name; empty = today's UTC date (e.g. ``2026-12-10``)."""

    name: str = ""


@dg.asset(group_name="release", code_version=CODE_VERSIONS["registry_release"],
          description="An immutable, verifiable release of the registry's tables, value cards, config and manifest "
                      "under releases/<name>/ in storage; on demand only. Its metadata shows the diff against the "
                      "previous release.")
def registry_release(context: dg.AssetExecutionContext, config: ReleaseConfig,
                     registry: Registry) -> dg.MaterializeResult:
    from valuebias.orchestration.plan import RegistryGraph, registry_states
    from valuebias.orchestration.release import ReleaseError, create_release, list_releases, release_side
    from valuebias.assets.versions import ContentCheck
    from valuebias.object_store import ObjectStore
    from valuebias.release_diff import diff_markdown

    registry_config = registry.load()
    store = ObjectStore(registry_config.storage_uri)
    previous = list_releases(store)
    asset_graph = context.repository_def.asset_graph
    states = registry_states(RegistryGraph(asset_graph), context.instance, registry_config,
                             ContentCheck(registry_config))
    try:
        manifest = create_release(registry_config, context.instance, states, asset_graph, name=config.name or None)
    except ReleaseError as exc:
        raise dg.Failure(str(exc)) from None
    if previous:
        diff = diff_markdown(release_side(store, previous[-1]["name"]), release_side(store, manifest["name"]))
    else:
        diff = f"# ValueBias release {manifest['name']}\n\nThe first release: nothing to compare with.\n"
    return dg.MaterializeResult(
        metadata={"release": manifest["name"], "uri": dg.MetadataValue.path(manifest["storage"]),
                  "manifest_sha256": manifest["manifest_sha256"], "files": len(manifest["files"]),
                  "models": len(manifest["models"]), "git_commit": manifest["code"].get("git_commit") or "none",
                  "previous_release": previous[-1]["name"] if previous else "none",
                  "diff": dg.MetadataValue.md(diff)},
        data_version=dg.DataVersion(manifest["manifest_sha256"][:16]))
