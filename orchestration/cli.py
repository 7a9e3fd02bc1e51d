"""The ``valuebias`` command: run the registry, print its tables, serve the Dagster UI.

    valuebias run   [--config PATH] [--verbose]
    valuebias table NAME [--format markdown|csv] [--config PATH]
    valuebias ui    [--config PATH] [--port 3000]

Runs go to the project's Dagster instance (``<state_dir>/dagster``, SQLite), so the UI shows them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from valuebias.config import RegistryConfig, load_config
from valuebias.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TABLE_NAMES = ("prompts", "corpus_words", "model_registry", "rm_word_scores", "rm_rank_cells",
               "rm_mixed_model", "rm_family_tests")


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


def _execute(defs, job_name: str, instance, *, partition_key: str | None, verbose: bool) -> bool:
    run_config = {"loggers": {"console": {"config": {"log_level": "INFO" if verbose else "WARNING"}}}}
    job = defs.resolve_job_def(job_name)
    result = job.execute_in_process(instance=instance, partition_key=partition_key, run_config=run_config,
                                    raise_on_error=False)
    if not result.success:
        for message in _failure_messages(result):
            print(f"  error: {message}", file=sys.stderr)
        print(f"  run {result.run_id} failed; see `valuebias ui` for its logs", file=sys.stderr)
    return result.success


def cmd_run(args) -> int:
    import dagster as dg

    from orchestration.definitions import build_definitions
    from orchestration.sensors import sync_model_partitions

    config = load_config(_config_path(args.config))
    use_project_instance(config)
    defs = build_definitions(config.path)
    instance = dg.DagsterInstance.get()
    added, removed = sync_model_partitions(instance, config)
    print(f"valuebias: config {config.path}")
    print(f"valuebias: storage {config.storage_uri}; Dagster instance {os.environ['DAGSTER_HOME']}")
    if added or removed:
        print(f"valuebias: model partitions added {added or '[]'}, removed {removed or '[]'}")
    steps = [("ingest_job", None)] + [("rm_scoring_job", m.model_id) for m in config.reward_models()] \
        + [("rm_statistics_job", None)]
    for number, (job_name, partition) in enumerate(steps, start=1):
        label = f"{job_name}[{partition}]" if partition else job_name
        print(f"[{number}/{len(steps)}] {label} ...", flush=True)
        started = time.perf_counter()
        if not _execute(defs, job_name, instance, partition_key=partition, verbose=args.verbose):
            return 1
        print(f"[{number}/{len(steps)}] {label} done in {time.perf_counter() - started:.1f} s", flush=True)
    print("valuebias: done. Try `valuebias table rm_family_tests`.")
    return 0


def load_table(config: RegistryConfig, name: str):
    import polars as pl

    from assets.tables import TABLE_KEYS, rm_word_scores_key
    from resources.storage import Storage

    storage = Storage(uri=config.storage_uri)
    if name == "rm_word_scores":
        keys = [rm_word_scores_key(m.model_id) for m in config.reward_models()]
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
    import dagster as dg

    from orchestration.sensors import sync_model_partitions

    config = load_config(_config_path(args.config))
    use_project_instance(config)
    sync_model_partitions(dg.DagsterInstance.get(), config)
    webserver = shutil.which("dagster-webserver") or str(Path(sys.executable).parent / "dagster-webserver")
    print(f"valuebias: serving the Dagster UI on http://127.0.0.1:{args.port}", flush=True)
    os.chdir(PROJECT_ROOT)
    os.execv(webserver, [webserver, "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", "127.0.0.1",
                         "-p", str(args.port)])
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="valuebias", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize every asset and partition in-process")
    run.add_argument("--config", help="registry config (default: valuebias.yaml)")
    run.add_argument("--verbose", action="store_true", help="show Dagster's INFO logs")
    run.set_defaults(func=cmd_run)
    table = sub.add_parser("table", help="print a stored table")
    table.add_argument("name", choices=TABLE_NAMES)
    table.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    table.add_argument("--config", help="registry config (default: valuebias.yaml)")
    table.set_defaults(func=cmd_table)
    ui = sub.add_parser("ui", help="serve the Dagster UI on 127.0.0.1")
    ui.add_argument("--config", help="registry config (default: valuebias.yaml)")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)
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
