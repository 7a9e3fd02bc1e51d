"""The ``valuebias`` command: run the registry, print its tables, serve the Dagster UI.

    valuebias run   [--config PATH] [--all] [--verify] [--verbose]
    valuebias status [--format markdown|csv] [--config PATH] [--verify]
    valuebias table NAME [--format markdown|csv] [--config PATH]
    valuebias ui    [--config PATH] [--port 3000]

Runs go to the project's Dagster instance (``<state_dir>/dagster``, SQLite), so the UI shows them.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import time
from pathlib import Path

from valuebias.config import RegistryConfig, load_config
from valuebias.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TABLE_NAMES = ("prompts", "corpus_words", "model_registry", "rm_word_scores", "rm_sweep_tokens", "rm_rank_cells",
               "rm_mixed_model", "rm_family_tests", "lm_word_logprobs", "lm_rank_cells", "lm_anova", "lm_posthoc",
               "mwlr_tokens", "mwlr_words")


def _config_path(arg: str | None) -> Path:
    from orchestration.definitions import default_config_path

    return Path(arg).expanduser().resolve() if arg else default_config_path()


def use_project_instance(config: RegistryConfig) -> Path:
    """Points Dagster at ``<state_dir>/dagster`` (created with telemetry off) and at this config."""
    home = Path(config.state_dir) / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if not settings.exists():
        settings.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ["VALUEBIAS_CONFIG"] = str(config.path)
    return home


def prepare_instance(config: RegistryConfig):
    """The project's instance, with the model partitions synced and the ``gpu`` pool limit set."""
    import dagster as dg

    from orchestration.sensors import sync_model_partitions

    use_project_instance(config)
    instance = dg.DagsterInstance.get()
    instance.event_log_storage.set_concurrency_slots("gpu", config.gpu_concurrency)
    return instance, sync_model_partitions(instance, config)


def _failure_messages(result) -> list[str]:
    """Readable reasons a run failed: the innermost error of each failed step and each failed check."""
    messages = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error is not None and error.cause is not None:
                error = error.cause
            text = error.message.strip() if error is not None else "step failed"
            messages.append(f"{event.step_key}: {text}")
    for evaluation in result.get_asset_check_evaluations():
        if not evaluation.passed:
            messages.append(f"check {evaluation.check_name} failed: {evaluation.description}")
    return messages


def _execute(defs, job_name: str, instance, *, partition_key: str | None, verbose: bool,
             asset_selection=None) -> bool:
    run_config = {"loggers": {"console": {"config": {"log_level": "INFO" if verbose else "CRITICAL"}}}}
    job = defs.resolve_job_def(job_name)
    result = job.execute_in_process(instance=instance, partition_key=partition_key, run_config=run_config,
                                    raise_on_error=False, asset_selection=asset_selection)
    if not result.success:
        for message in _failure_messages(result):
            print(f"  error: {message}", file=sys.stderr)
        print(f"  run {result.run_id} failed; see `valuebias ui` for its logs", file=sys.stderr)
    return result.success


STATISTICS_ASSETS = ("rm_rank_cells", "rm_mixed_model", "rm_family_tests", "rm_report")
DOWNSTREAM = {"rm_rank_cells": STATISTICS_ASSETS[1:], "rm_mixed_model": ("rm_report",),
              "rm_family_tests": ("rm_report",), "rm_report": ()}
LM_ASSETS = ("lm_next_token_logprobs", "lm_word_logprobs")
LM_STATISTICS_ASSETS = ("lm_rank_cells", "lm_anova", "lm_posthoc", "mwlr_tokens", "mwlr_words", "lm_report")
LM_DOWNSTREAM = {"lm_rank_cells": ("lm_anova", "lm_posthoc", "lm_report"), "lm_anova": ("lm_report",),
                 "lm_posthoc": ("lm_report",), "mwlr_tokens": ("lm_report",), "mwlr_words": ("lm_report",),
                 "lm_report": ()}


def content_check(config: RegistryConfig, verify: bool):
    """How this command sees model content: cached weight digests (rehashed when a file's size, mtime or
    inode changed), or with ``--verify`` every digest recomputed."""
    from assets.versions import ContentCheck

    return ContentCheck(config, mode="verify" if verify else "cached")


def registry_states(instance, config: RegistryConfig, content=None) -> list:
    """The state of every asset partition the registry defines, in execution order. The input files
    are re-read, so a changed word list shows as stale ingest and stale scores before any run."""
    from assets.ingest import ingest_versions
    from assets.versions import PartitionState, partition_state

    state_of = functools.partial(partition_state, content=content or content_check(config, verify=False))
    would_be = ingest_versions(config)
    rows = []
    for asset, version in would_be.items():
        state = state_of(instance, config, asset)
        if state.state != "missing" and state.data_version != version:
            state = PartitionState(asset, None, "stale", "input file changed", state.run_id, state.data_version,
                                   state.metadata)
        rows.append(state)
    rows += [state_of(instance, config, "rm_word_scores", m.model_id, would_be)
             for m in config.reward_models()]
    rows += [state_of(instance, config, "rm_vocabulary_sweep", m.model_id, would_be)
             for m in config.reward_models() if m.vocabulary_sweep]
    rows += [state_of(instance, config, asset, m.model_id, would_be)
             for m in config.language_models() for asset in LM_ASSETS]
    rows += [state_of(instance, config, "mwlr_pair", pair, would_be) for pair in config.pair_models()]
    if config.reward_models():
        rows += [state_of(instance, config, asset, overrides=would_be) for asset in STATISTICS_ASSETS]
    if config.language_models():
        rows += [state_of(instance, config, asset, overrides=would_be) for asset in LM_STATISTICS_ASSETS]
    return rows


def statistics_to_run(states: list, assets: tuple[str, ...] = STATISTICS_ASSETS,
                      downstream: dict | None = None) -> list[str]:
    """The stale or missing statistics assets plus everything downstream of them, in order."""
    downstream = DOWNSTREAM if downstream is None else downstream
    selected = set()
    for state in states:
        if state.asset in assets and state.state != "fresh":
            selected.add(state.asset)
            selected.update(downstream[state.asset])
    return [asset for asset in assets if asset in selected]


def cmd_run(args) -> int:
    import dagster as dg

    from assets.versions import latest_record, partition_state
    from orchestration.definitions import build_definitions

    config = load_config(_config_path(args.config))
    defs = build_definitions(config.path)
    instance, (added, removed) = prepare_instance(config)
    content = content_check(config, args.verify)
    errors: list[str] = []
    print(f"valuebias: config {config.path}")
    print(f"valuebias: storage {config.storage_uri}; Dagster instance {os.environ['DAGSTER_HOME']}")
    if added or removed:
        print(f"valuebias: model partitions added {added or '[]'}, removed {removed or '[]'}")

    def step(label: str, job_name: str, **kwargs) -> bool:
        print(f"{label} ...", flush=True)
        started = time.perf_counter()
        ok = _execute(defs, job_name, instance, verbose=args.verbose, **kwargs)
        if ok:
            print(f"{label} done in {time.perf_counter() - started:.1f} s", flush=True)
        return ok

    # Ingest is cheap and re-reads the files every time; unchanged content keeps its data version.
    if not step("ingest_job", "ingest_job", partition_key=None):
        return 1
    def report_adopted(states: list) -> None:
        """Says which partitions the step just run adopted instead of recomputing (an upgraded state)."""
        for state in states:
            record = latest_record(instance, state.asset, state.partition)
            adopted = record.asset_materialization.metadata.get("adopted_from_run") if record else None
            if adopted is not None and record.run_id != state.run_id:
                print(f"  adopted {state.asset}[{state.partition}] as recorded by run {adopted.value} "
                      "(inputs unchanged; now recorded with its content identity, nothing recomputed)")

    def runnable(job_name: str, state) -> bool:
        """False (and the error said) when an input of the partition cannot be read."""
        if state.state == "error":
            errors.append(f"{job_name}[{state.partition}]: {state.reason}")
            print(f"{job_name}[{state.partition}] not run: {state.reason}", file=sys.stderr)
            return False
        return True

    def run_stale_partitions(job_name: str, asset: str, partitions: list[str]) -> bool:
        """Runs ``job_name`` for each partition of ``asset`` that is missing or stale (all with --all)."""
        for partition in partitions:
            state = partition_state(instance, config, asset, partition, content=content)
            if not runnable(job_name, state):
                continue
            if state.state == "fresh" and not args.all:
                print(f"{job_name}[{partition}] skipped: fresh (use --all to recompute)")
                continue
            reason = "" if args.all else f" ({state.state}{': ' + state.reason if state.reason else ''})"
            if not step(f"{job_name}[{partition}]{reason}", job_name, partition_key=partition):
                return False
            report_adopted([state])
        return True

    if not run_stale_partitions("rm_scoring_job", "rm_word_scores", [m.model_id for m in config.reward_models()]):
        return 1
    if not run_stale_partitions("rm_sweep_job", "rm_vocabulary_sweep",
                                [m.model_id for m in config.reward_models() if m.vocabulary_sweep]):
        return 1
    for model in config.language_models():
        # Next-token log-probs first; word log-probs are rerun with them, or alone when only they are stale.
        states = [partition_state(instance, config, asset, model.model_id, content=content) for asset in LM_ASSETS]
        if not all(runnable("lm_scoring_job", state) for state in states):
            continue
        todo = list(LM_ASSETS) if args.all or states[0].state != "fresh" else \
            [s.asset for s in states if s.state != "fresh"]
        if not todo:
            print(f"lm_scoring_job[{model.model_id}] skipped: fresh (use --all to recompute)")
            continue
        first = states[0] if states[0].state != "fresh" else states[1]
        reason = "" if args.all else \
            f" ({'' if first is states[0] else first.asset + ' '}{first.state}: {first.reason})"
        if not step(f"lm_scoring_job[{model.model_id}]{reason}", "lm_scoring_job", partition_key=model.model_id,
                    asset_selection=[dg.AssetKey(a) for a in todo]):
            return 1
        report_adopted([s for s in states if s.asset in todo])
    if errors:
        print(f"valuebias: {len(errors)} partition(s) could not be checked (above); their stored outputs and the "
              "statistics are kept as they are. Fix the input, or remove the model from the registry, and run "
              "again.", file=sys.stderr)
        return 1
    if not run_stale_partitions("mwlr_job", "mwlr_pair", list(config.pair_models())):
        return 1
    def run_statistics(job_name: str, assets: tuple[str, ...], downstream: dict, label: str) -> bool:
        """Runs the stale statistics tables, those no other stale table feeds first: a table that
        recomputes to the same data version leaves what reads it fresh. Missing tables run with everything
        downstream of them in one go (a first run)."""
        ran = False
        for _ in assets:
            states = {s.asset: s for s in registry_states(instance, config, content) if s.asset in assets}
            if args.all:
                todo = [] if ran else list(assets)
            else:
                waiting = {a for a in assets if states[a].state != "fresh"}
                fed = set().union(*(downstream[a] for a in waiting))
                todo = [a for a in assets if a in waiting and a not in fed]
                if any(states[a].state == "missing" for a in todo):
                    todo = statistics_to_run(list(states.values()), assets, downstream)
            if not todo:
                break
            if not step(f"{job_name}[{', '.join(todo)}]", job_name, partition_key=None,
                        asset_selection=[dg.AssetKey(a) for a in todo]):
                return False
            ran = True
        if not ran:
            print(f"{job_name} skipped: every {label} table is fresh")
        return True

    if config.reward_models() and not run_statistics("rm_statistics_job", STATISTICS_ASSETS, DOWNSTREAM,
                                                     "statistics"):
        return 1
    if config.language_models() and not run_statistics("lm_statistics_job", LM_STATISTICS_ASSETS, LM_DOWNSTREAM,
                                                       "LM statistics"):
        return 1
    tables = (["rm_family_tests"] if config.reward_models() else []) + (["mwlr_tokens"] if config.pairs else [])
    hint = " or ".join(f"`valuebias table {t}`" for t in tables)
    print(f"valuebias: done. Try {hint}." if tables else "valuebias: done.")
    return 0


def cmd_status(args) -> int:
    import dagster as dg
    import polars as pl

    from valuebias.report import markdown_table

    config = load_config(_config_path(args.config))
    use_project_instance(config)
    instance = dg.DagsterInstance.get()
    rows = [{
        "asset": s.asset, "partition": s.partition or "", "state": s.state, "reason": s.reason,
        "last_run": s.run_id or "", "data_version": s.data_version or "",
        "sequences_scored": s.metadata.get("sequences_scored"), "sequences_reused": s.metadata.get("sequences_reused"),
    } for s in registry_states(instance, config, content_check(config, args.verify))]
    table = pl.DataFrame(rows, schema={"asset": pl.Utf8, "partition": pl.Utf8, "state": pl.Utf8, "reason": pl.Utf8,
                                       "last_run": pl.Utf8, "data_version": pl.Utf8,
                                       "sequences_scored": pl.Int64, "sequences_reused": pl.Int64})
    sys.stdout.write(table.write_csv() if args.format == "csv" else markdown_table(table) + "\n")
    return 0


def load_table(config: RegistryConfig, name: str):
    import polars as pl

    from assets.tables import TABLE_KEYS, lm_word_logprobs_key, rm_sweep_tokens_key, rm_word_scores_key
    from resources.storage import Storage

    storage = Storage(uri=config.storage_uri)
    if name == "rm_sweep_tokens":
        keys = [rm_sweep_tokens_key(m.model_id) for m in config.reward_models() if m.vocabulary_sweep]
        if not keys:
            raise FileNotFoundError(f"no model in {config.path} has a vocabulary_sweep")
        missing = [k for k in keys if not storage.exists(k)]
        if missing:
            raise FileNotFoundError(f"no stored sweep at {storage.full_uri(missing[0])}: run `valuebias run` first")
        return pl.concat([storage.read_parquet(k) for k in keys])
    if name in ("rm_word_scores", "lm_word_logprobs"):
        keys = [rm_word_scores_key(m.model_id) for m in config.reward_models()] if name == "rm_word_scores" else \
            [lm_word_logprobs_key(m.model_id) for m in config.language_models()]
        if not keys:
            kind = "reward" if name == "rm_word_scores" else "language"
            raise FileNotFoundError(f"no {kind} models are registered in {config.path}")
        missing = [k for k in keys if not storage.exists(k)]
        if missing:
            raise FileNotFoundError(f"no stored scores at {storage.full_uri(missing[0])}: run `valuebias run` first")
        return pl.concat([storage.read_parquet(k) for k in keys])
    key = TABLE_KEYS[name]
    if not storage.exists(key):
        raise FileNotFoundError(f"table {name} is not stored yet at {storage.full_uri(key)}: run `valuebias run` first")
    return storage.read_parquet(key)


def cmd_table(args) -> int:
    from valuebias.report import markdown_table

    config = load_config(_config_path(args.config))
    table = load_table(config, args.name)
    sys.stdout.write(table.write_csv() if args.format == "csv" else markdown_table(table) + "\n")
    return 0


def cmd_ui(args) -> int:
    config = load_config(_config_path(args.config))
    prepare_instance(config)
    webserver = shutil.which("dagster-webserver") or str(Path(sys.executable).parent / "dagster-webserver")
    print(f"valuebias: serving the Dagster UI on http://127.0.0.1:{args.port}", flush=True)
    os.chdir(PROJECT_ROOT)
    os.execv(webserver, [webserver, "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", "127.0.0.1",
                         "-p", str(args.port)])
    return 0  # not reached


def cmd_pod(args) -> int:
    """Prints, as YAML, the Pod that ``scoring.launcher: kubernetes`` would create for one partition."""
    import yaml

    from resources.scoring_launcher import render_scoring_pod

    config = load_config(_config_path(args.config))
    if args.model not in config.models:
        raise InputError(f"no model '{args.model}' (registered: {', '.join(config.models)})", source=str(config.path),
                         field="models")
    if config.kubernetes is None:
        raise InputError("no scoring.kubernetes block: add one (see README, 'Running on a cluster')",
                         source=str(config.path), field="scoring.kubernetes")
    task = args.asset or ("rm_word_scores" if config.models[args.model].kind == "reward_model"
                          else "lm_next_token_logprobs")
    sys.stdout.write(yaml.safe_dump(render_scoring_pod(config, task, args.model), sort_keys=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="valuebias", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize every asset and partition in-process")
    run.add_argument("--config", help="registry config (default: valuebias.yaml)")
    run.add_argument("--verbose", action="store_true", help="show Dagster's INFO logs")
    run.add_argument("--all", action="store_true", help="recompute fresh partitions too")
    run.add_argument("--verify", action="store_true",
                     help="recompute the full digest of every local model file (catches a same-size replacement "
                          "that kept its mtime and inode, e.g. `cp -p`)")
    run.set_defaults(func=cmd_run)
    status = sub.add_parser("status", help="one row per asset partition: fresh, stale (and why) or missing")
    status.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    status.add_argument("--config", help="registry config (default: valuebias.yaml)")
    status.add_argument("--verify", action="store_true",
                        help="recompute the full digest of every local model file instead of trusting cached ones")
    status.set_defaults(func=cmd_status)
    table = sub.add_parser("table", help="print a stored table")
    table.add_argument("name", choices=TABLE_NAMES)
    table.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    table.add_argument("--config", help="registry config (default: valuebias.yaml)")
    table.set_defaults(func=cmd_table)
    ui = sub.add_parser("ui", help="serve the Dagster UI on 127.0.0.1")
    ui.add_argument("--config", help="registry config (default: valuebias.yaml)")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)
    pod = sub.add_parser("pod", help="print the Kubernetes pod that would score one model (scoring.kubernetes)")
    pod.add_argument("model", help="model id (a partition of the scoring assets)")
    pod.add_argument("--asset", choices=("rm_word_scores", "rm_vocabulary_sweep", "lm_next_token_logprobs",
                                         "lm_word_logprobs"), help="default: the model's first scoring asset")
    pod.add_argument("--config", help="registry config (default: valuebias.yaml)")
    pod.set_defaults(func=cmd_pod)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (InputError, FileNotFoundError) as exc:
        print(f"valuebias: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
