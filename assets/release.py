"""The release of the registry as a Dagster asset that runs only on demand: the Materialize button, ``valuebias
release`` (which launches ``release_job``) or ``release_schedule`` (stopped unless switched on). No sensor,
schedule or ``valuebias run`` requests it on its own: it is in none of the registry's jobs
(``valuebias.orchestration.jobs.ALL_JOBS``), so ``valuebias.orchestration.plan`` never plans it.

Writing a release needs the state of every partition, which only the orchestration knows: the asset is built by
:func:`registry_release_asset` with the function that writes it (``valuebias.orchestration.release.
release_materialization``: refused, naming the partitions, while anything is missing, stale or failed; the diff
against the previous release is shown as markdown metadata), which ``valuebias.orchestration.definitions`` passes.
"""

from typing import Callable

import dagster as dg

from valuebias.assets.catalog import ELSEWHERE, Unversioned, TableSpec
from valuebias.config import RegistryConfig
from valuebias.resources.registry import Registry

REGISTRY_RELEASE = TableSpec("registry_release", code_version="1", contract=None, stored=ELSEWHERE, listed=False,
                             inputs=Unversioned("on demand only: never planned, refused unless everything is fresh"))


class ReleaseConfig(dg.Config):
    """``name``: the release's name; empty = today's UTC date (e.g. ``2026-12-10``)."""

    name: str = ""


def registry_release_asset(
        write_release: Callable[[dg.AssetExecutionContext, RegistryConfig, str | None], dg.MaterializeResult],
) -> dg.AssetsDefinition:
    """The ``registry_release`` asset; ``write_release(context, registry config, name or None)`` writes it."""

    @dg.asset(name=REGISTRY_RELEASE.name, group_name="release", code_version=REGISTRY_RELEASE.code_version,
              description="An immutable, verifiable release of the registry's tables, value cards, config and "
                          "manifest under releases/<name>/ in storage; on demand only. Its metadata shows the diff "
                          "against the previous release.")
    def registry_release(context: dg.AssetExecutionContext, config: ReleaseConfig,
                         registry: Registry) -> dg.MaterializeResult:
        return write_release(context, registry.load(), config.name or None)

    return registry_release
