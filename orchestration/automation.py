"""Automation: what recomputes by itself, and when.

- Computed assets carry ``inputs_changed``: they are requested when they are newly missing or when an
  input was materialized with a *different* data version (an unchanged re-ingest triggers nothing).
- A config change of one model (its fingerprint) or of what it points to (its content: a published file,
  a model folder's files, the commit a hub id resolves to) is not a data version Dagster can see, so
  ``orchestration.sensors.model_partitions_sensor`` requests exactly the partitions whose entry or content
  changed. Sensor and schedule ticks never hash weights (``ContentCheck`` mode ``stat``): a file whose
  size, mtime or inode changed makes its partition requested, and the scoring worker computes the digest.
- A language-model pair reads two model partitions, which no partition mapping expresses; ``mwlr_pair``
  therefore has no automation condition, and the same sensor requests exactly the pairs that are
  missing or whose two inputs changed (``stale_pair_requests``).
- ``registry_refresh_schedule`` (cron from ``schedule.cron``, default nightly) requests every missing
  or stale scoring partition as a backfill, and the statistics when only they are stale.
"""

import dagster as dg

from assets.versions import ContentCheck, partition_state
from resources.registry import Registry
from valuebias.config import RegistryConfig


def tick_content_check(config: RegistryConfig) -> ContentCheck:
    """How a sensor or schedule tick sees model content: by stat only, never hashing weights."""
    return ContentCheck(config, mode="stat")

inputs_changed = (
    (dg.AutomationCondition.missing().newly_true()
     | dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed()
                                             | dg.AutomationCondition.will_be_requested()))
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("inputs changed")

COMPUTED_GROUPS = ("scoring", "statistics", "report", "lm_scoring", "lm_statistics")


def with_automation(assets: list[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """Attaches ``inputs_changed`` to the computed assets (not to ingest, which reads outside files)."""
    return [
        a.map_asset_specs(lambda spec: spec.replace_attributes(automation_condition=inputs_changed))
        if any(spec.group_name in COMPUTED_GROUPS for spec in a.specs) else a
        for a in assets
    ]


def stale_scoring_requests(instance: dg.DagsterInstance, registry: Registry) -> list[dg.RunRequest]:
    """One run request per scoring partition that is missing or stale, with the reason as a tag."""
    config = registry.load()
    content = tick_content_check(config)
    requests = []
    for model in config.reward_models():
        state = partition_state(instance, config, "rm_word_scores", model.model_id, content=content)
        if state.state not in ("fresh", "error"):
            requests.append(dg.RunRequest(job_name="rm_scoring_job", partition_key=model.model_id,
                                          tags={"valuebias/reason": f"{state.state}: {state.reason}"[:200],
                                                "valuebias/content": state.current.get("model_content", "")}))
    return requests


def stale_language_model_requests(instance: dg.DagsterInstance, registry: Registry) -> list[dg.RunRequest]:
    """One run request per language-model partition whose log-probs are missing or stale."""
    config = registry.load()
    content = tick_content_check(config)
    requests = []
    for model in config.language_models():
        states = [partition_state(instance, config, asset, model.model_id, content=content)
                  for asset in ("lm_next_token_logprobs", "lm_word_logprobs")]
        stale = [s for s in states if s.state not in ("fresh", "error")]
        if stale:
            reason = "; ".join(f"{s.asset} {s.state}: {s.reason}" for s in stale)
            requests.append(dg.RunRequest(job_name="lm_scoring_job", partition_key=model.model_id,
                                          asset_selection=[dg.AssetKey(s.asset) for s in stale]
                                          if stale[0].asset == "lm_word_logprobs" else None,
                                          tags={"valuebias/reason": reason[:200],
                                                "valuebias/content": states[0].current.get("model_content", "")}))
    return requests


def stale_pair_requests(instance: dg.DagsterInstance, registry: Registry) -> list[dg.RunRequest]:
    """One run request per pair that is missing or stale and whose two models both have log-probs."""
    config = registry.load()
    requests = []
    content = tick_content_check(config)
    for pair, models in config.pair_models().items():
        if any(partition_state(instance, config, "lm_next_token_logprobs", m, content=content).state == "missing"
               for m in models):
            continue
        state = partition_state(instance, config, "mwlr_pair", pair, content=content)
        if state.state != "fresh":
            requests.append(dg.RunRequest(job_name="mwlr_job", partition_key=pair,
                                          tags={"valuebias/reason": f"{state.state}: {state.reason}"[:200]}))
    return requests


def build_refresh_schedule(cron: str) -> dg.ScheduleDefinition:
    @dg.schedule(cron_schedule=cron, job_name="rm_scoring_job", name="registry_refresh_schedule",
                 description="Backfills every missing or stale model partition, then the statistics.")
    def registry_refresh_schedule(context: dg.ScheduleEvaluationContext, registry: Registry):
        requests = stale_scoring_requests(context.instance, registry)
        if requests:
            return requests
        config = registry.load()
        content = tick_content_check(config)
        stale = [a for a in ("rm_rank_cells", "rm_mixed_model", "rm_family_tests", "rm_report")
                 if partition_state(context.instance, config, a, content=content).state != "fresh"]
        if stale:
            return [dg.RunRequest(job_name="rm_statistics_job", asset_selection=[dg.AssetKey(a) for a in stale])]
        return dg.SkipReason("every partition is fresh")

    return registry_refresh_schedule
