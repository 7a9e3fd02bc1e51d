"""Alerts: what went wrong or changed, sent to the channels of the config's ``alerts:`` block.

Three kinds of event, each found by a Dagster sensor (the daemon evaluates them; ``valuebias ui`` runs it):

- ``run_failed`` (:data:`alert_on_run_failure`, a ``@run_failure_sensor``): the job, the partition and the
  run's first error on one line;
- ``card_flags_changed`` (:data:`registry_alerts_sensor`): a value card (``rm_value_cards``) materialized
  with a different set of flagged (corpus, category, framing) panels than the card before it: the model,
  the panels flagged and unflagged, and their numbers (deviation, BH p);
- ``stale`` (also :data:`registry_alerts_sensor`): an asset partition missing, stale, failed or running for
  longer than ``alerts.stale_after``, counted from the tick that first saw it so (Dagster's freshness
  policies judge whole assets; the registry's own states judge each partition).

Channels: ``file`` (one JSON object per line, default ``<state_dir>/alerts.jsonl``) and ``webhook`` (an
HTTP POST of a JSON body a Slack incoming webhook accepts, ``{"text": ..., "blocks": [...]}``, to the URL in
the environment variable ``url_env`` names). A failed delivery is retried (``attempts``), logged, and kept in
an outbox that the next ``registry_alerts_sensor`` tick tries again; it never fails a run or a tick.

Each event is sent once per channel, across ticks and daemon restarts: its key (the run id, the card's
materialization id, the partition and the time it was first seen not fresh) is recorded, once delivered, in
the Dagster instance's key-value store (``daemon_cursor_storage``), next to the sensors' own cursors.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
from filelock import FileLock

from valuebias.resources.registry import Registry
from valuebias.resources.storage import Storage
from valuebias.config import AlertChannel, RegistryConfig

SENT_PREFIX = "valuebias/alerts/sent/"
OUTBOX_KEY = "valuebias/alerts/outbox"
NOT_FRESH_SINCE_KEY = "valuebias/alerts/not_fresh_since"
CARD_FLAGS_PREFIX = "valuebias/alerts/card_flags/"
OUTBOX_LIMIT = 200


@dataclass(frozen=True)
class Alert:
    kind: str  # run_failed, card_flags_changed, stale
    key: str  # what makes it the same event: sent once per channel
    summary: str  # one line
    details: dict = field(default_factory=dict)
    time: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def record(self) -> dict:
        return {"time": self.time, "kind": self.kind, "key": self.key, "summary": self.summary, **self.details}


def channel_id(config: RegistryConfig, channel: AlertChannel) -> str:
    if channel.type == "file":
        return f"file:{channel.path or config.alerts_file}"
    return f"webhook:{channel.url_env}"


def slack_body(alert: Alert) -> dict:
    """A body a Slack incoming webhook accepts: ``text`` (the one-line summary, also the notification) and
    one ``section`` block with the details, one per line."""
    lines = [f"*{alert.summary}*"] + [f"• {k}: {v}" for k, v in alert.details.items()]
    return {"text": alert.summary,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:2900]}}]}


def _deliver_once(config: RegistryConfig, channel: AlertChannel, alert: Alert) -> None:
    if channel.type == "file":
        path = Path(channel.path or config.alerts_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"), path.open("a") as out:
            out.write(json.dumps(alert.record(), default=str) + "\n")
        return
    url = os.environ.get(channel.url_env or "")
    if not url:
        raise RuntimeError(f"environment variable {channel.url_env} (alerts.channels url_env) is not set")
    request = urllib.request.Request(url, data=json.dumps(slack_body(alert)).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        if not 200 <= response.status < 300:
            raise RuntimeError(f"HTTP {response.status}")


def deliver(instance: dg.DagsterInstance, config: RegistryConfig, alert: Alert, log,
            *, pause: float = 1.0) -> int:
    """Sends ``alert`` to every channel that has not had it yet; returns how many channels it reached now.
    A channel that fails ``attempts`` times is logged and the alert goes to the outbox for the next tick."""
    kv = instance.daemon_cursor_storage
    sent = 0
    for channel in config.alerts.channels:
        key = SENT_PREFIX + channel_id(config, channel) + "/" + alert.key
        if kv.get_cursor_values({key}).get(key):
            continue
        attempts = channel.attempts if channel.type == "webhook" else 1
        for attempt in range(1, attempts + 1):
            try:
                _deliver_once(config, channel, alert)
            except (OSError, RuntimeError, urllib.error.URLError, ValueError) as error:
                log.warning(f"alert {alert.key} to {channel_id(config, channel)}: attempt {attempt} of {attempts} "
                            f"failed: {error}")
                if attempt < attempts:
                    time.sleep(pause * attempt)
                continue
            kv.set_cursor_values({key: alert.time})
            sent += 1
            break
        else:
            _to_outbox(kv, alert)
    return sent


def _to_outbox(kv, alert: Alert) -> None:
    outbox = json.loads(kv.get_cursor_values({OUTBOX_KEY}).get(OUTBOX_KEY) or "[]")
    if all(a["key"] != alert.key for a in outbox):
        outbox.append(asdict(alert))
    kv.set_cursor_values({OUTBOX_KEY: json.dumps(outbox[-OUTBOX_LIMIT:])})


def retry_outbox(instance: dg.DagsterInstance, config: RegistryConfig, log) -> None:
    """Tries the undelivered alerts again (channels that had one are not sent it twice)."""
    kv = instance.daemon_cursor_storage
    outbox = json.loads(kv.get_cursor_values({OUTBOX_KEY}).get(OUTBOX_KEY) or "[]")
    if not outbox:
        return
    kv.set_cursor_values({OUTBOX_KEY: "[]"})
    for item in outbox:
        deliver(instance, config, Alert(**item), log)


# --------------------------------------------------------------------------------------------------
# The events.


def run_failed_alert(instance: dg.DagsterInstance, run: dg.DagsterRun) -> Alert:
    from valuebias.assets.attempts import first_error

    partition = run.tags.get("dagster/partition")
    reason = first_error(instance, run).split(" failed: ", 1)[-1]
    where = f"{run.job_name}[{partition}]" if partition else run.job_name
    return Alert("run_failed", f"run_failed:{run.run_id}", f"ValueBias: {where} failed: {reason}",
                 {"job": run.job_name, "partition": partition, "run_id": run.run_id, "reason": reason})


@dg.run_failure_sensor(name="alert_on_run_failure", monitor_all_code_locations=True, minimum_interval_seconds=15,
                       default_status=dg.DefaultSensorStatus.RUNNING,
                       description="Sends a run_failed alert (job, partition, one-line reason) to the channels of "
                                   "the config's alerts: block, once per run.")
def alert_on_run_failure(context: dg.RunFailureSensorContext, registry: Registry) -> None:
    deliver(context.instance, registry.load(), run_failed_alert(context.instance, context.dagster_run), context.log)


def card_flags(storage: Storage, model_id: str) -> dict[str, dict] | None:
    """The flagged panels of a model's stored value card: ``{"corpus/category/framing": numbers}``."""
    import polars as pl

    from valuebias.assets.tables import rm_value_cards_key

    key = rm_value_cards_key(model_id)
    if not storage.exists(key):
        return None
    card = storage.read_parquet(key).filter(pl.col("flag"))
    return {f"{r['corpus']}/{r['category']}/{r['framing']}": {
        "deviation": r["deviation"], "p_bh": r["p_bh"], "finding": r["finding"]} for r in card.iter_rows(named=True)}


def card_alerts(instance: dg.DagsterInstance, storage: Storage, config: RegistryConfig,
                after_storage_id: int) -> tuple[list[Alert], int]:
    """A ``card_flags_changed`` alert for each value card materialized after ``after_storage_id`` whose
    flagged panels differ from those of the card last seen for that model (the first card seen of a model
    is its baseline: no alert). Returns the alerts and the new cursor."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("rm_value_cards"), after_storage_id=after_storage_id),
        limit=1000, ascending=True).records
    kv = instance.daemon_cursor_storage
    alerts, cursor = [], after_storage_id
    for record in records:
        cursor = max(cursor, record.storage_id)
        model = record.partition_key
        if model not in config.models:
            continue
        now = card_flags(storage, model)
        if now is None:
            continue
        key = CARD_FLAGS_PREFIX + model
        before_text = kv.get_cursor_values({key}).get(key)
        kv.set_cursor_values({key: json.dumps(now, sort_keys=True, default=str)})
        if before_text is None:
            continue
        before = json.loads(before_text)
        if set(before) == set(now):
            continue
        added = {p: now[p] for p in sorted(set(now) - set(before))}
        removed = {p: before[p] for p in sorted(set(before) - set(now))}

        def shown(panels: dict) -> str:
            return "; ".join(f"{p} (deviation {v['deviation']:+.3g}, BH p {v['p_bh']:.3g})"
                             if v["deviation"] is not None and v["p_bh"] is not None else p
                             for p, v in panels.items()) or "none"

        alerts.append(Alert(
            "card_flags_changed", f"card_flags:{model}:{record.storage_id}",
            f"ValueBias: value card of {model}: flags changed (+{len(added)} -{len(removed)})",
            {"model": model, "flagged": shown(added), "unflagged": shown(removed),
             "panels": {"flagged": added, "unflagged": removed}, "run_id": record.run_id}))
    return alerts, cursor


def stale_alerts(instance: dg.DagsterInstance, config: RegistryConfig, states, now: float) -> list[Alert]:
    """A ``stale`` alert for each asset partition not fresh for longer than ``alerts.stale_after`` since the
    first tick that saw it so (kept in the instance; a partition that becomes fresh starts again)."""
    kv = instance.daemon_cursor_storage
    since = json.loads(kv.get_cursor_values({NOT_FRESH_SINCE_KEY}).get(NOT_FRESH_SINCE_KEY) or "{}")
    current, alerts = {}, []
    for s in states:
        if s.state == "fresh":
            continue
        label = f"{s.asset}[{s.partition}]" if s.partition else s.asset
        current[label] = since.get(label, now)
        age = now - current[label]
        if age > config.alerts.stale_after_seconds:
            first_seen = datetime.fromtimestamp(current[label], timezone.utc).isoformat(timespec="seconds")
            alerts.append(Alert(
                "stale", f"stale:{label}:{current[label]:.0f}",
                f"ValueBias: {label} has been {s.state} for {age / 3600:.1f} h (alerts.stale_after "
                f"{config.alerts.stale_after}): {s.reason}",
                {"asset": s.asset, "partition": s.partition, "state": s.state, "reason": s.reason,
                 "since": first_seen}))
    kv.set_cursor_values({NOT_FRESH_SINCE_KEY: json.dumps(current)})
    return alerts


@dg.sensor(name="registry_alerts_sensor", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Sends card_flags_changed alerts (a value card's flagged panels changed) and stale alerts "
                       "(a partition missing or stale longer than alerts.stale_after), and retries undelivered "
                       "alerts. Starts no runs.")
def registry_alerts_sensor(context: dg.SensorEvaluationContext, registry: Registry,
                           storage: Storage) -> dg.SkipReason:
    from valuebias.assets.versions import ContentCheck
    from valuebias.orchestration.plan import RegistryGraph, registry_states

    config = registry.load()
    retry_outbox(context.instance, config, context.log)
    cards, cursor = card_alerts(context.instance, storage, config, int(context.cursor or 0))
    graph = RegistryGraph(context.repository_def.asset_graph)
    states = registry_states(graph, context.instance, config, ContentCheck(config, mode="stat"),
                             reread_inputs=False, check_outputs=False)
    alerts = cards + stale_alerts(context.instance, config, states, time.time())
    sent = [alert for alert in alerts if deliver(context.instance, config, alert, context.log)]
    context.update_cursor(str(cursor))
    return dg.SkipReason(f"{len(sent)} alert(s) sent" + (f": {'; '.join(a.summary for a in sent)}" if sent else ""))
