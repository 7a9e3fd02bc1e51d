"""The Dagster code location: assets, checks, partitions, jobs, sensors and resources, wired together.

This is the only module that knows how things are wired. ``defs`` is built from the registry config named
by the ``VALUEBIAS_CONFIG`` environment variable (default: ``valuebias.yaml`` in the working directory,
else the project's own) each time it is looked up (``workspace.yaml`` names the attribute), so one process
that runs several registries (the CLI's in-process code location, tests) always loads the current one.
It imports neither torch nor great_expectations: both are loaded lazily by resources.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from valuebias.assets.catalog import asset_modules
from valuebias.assets.release import registry_release_asset
from valuebias.orchestration.alerts import alert_on_run_failure, registry_alerts_sensor
from valuebias.orchestration.automation import build_refresh_schedules
from valuebias.orchestration.pool import install_waiting_fix
from valuebias.orchestration.jobs import (ALL_JOBS, ingest_job, lm_scoring_job, lm_statistics_job, mwlr_job,  # noqa: F401
                                release_job, release_schedule, rm_scoring_job, rm_statistics_job)
from valuebias.orchestration.release import release_materialization
from valuebias.orchestration.sensors import model_partitions_sensor
from valuebias.resources.registry import Registry
from valuebias.resources.scoring_launcher import ScoringLauncher
from valuebias.resources.storage import Storage
from valuebias.resources.validation import ContractValidator
from valuebias.config import DEFAULT_CONFIG_NAME, load_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]
install_waiting_fix()  # every run process (the CLI's, the daemon's) waits for a pool slot without spinning


def default_config_path() -> Path:
    """``$VALUEBIAS_CONFIG``, else ``./valuebias.yaml``, else the project's own ``valuebias.yaml``."""
    if os.environ.get("VALUEBIAS_CONFIG"):
        return Path(os.environ["VALUEBIAS_CONFIG"]).expanduser().resolve()
    local = Path.cwd() / DEFAULT_CONFIG_NAME
    return local.resolve() if local.exists() else PROJECT_ROOT / DEFAULT_CONFIG_NAME


def build_resources(config_path: str | Path) -> dict:
    config = load_config(config_path)
    return {
        "registry": Registry(config_path=str(config.path)),
        "storage": Storage(uri=config.storage_uri),
        "validator": ContractValidator(),
        "scoring": ScoringLauncher(),
    }


def build_definitions(config_path: str | Path | None = None) -> dg.Definitions:
    config_path = config_path or default_config_path()
    config = load_config(config_path)
    return dg.Definitions(
        # every module of valuebias.assets (a new one is found, not listed), and the on-demand release
        assets=[*dg.load_assets_from_modules(asset_modules()), registry_release_asset(release_materialization)],
        jobs=[*ALL_JOBS, release_job],
        sensors=[model_partitions_sensor, alert_on_run_failure, registry_alerts_sensor],
        schedules=[*build_refresh_schedules(config.schedule_cron), release_schedule],
        resources=build_resources(config_path),
    )


def __getattr__(name: str):
    """``valuebias.orchestration.definitions.defs``: the Definitions of the current ``$VALUEBIAS_CONFIG`` (PEP 562)."""
    if name == "defs":
        return build_definitions()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
