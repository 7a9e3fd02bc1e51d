"""The ``valuebias`` command: run the registry, print its tables, serve the Dagster UI.

    valuebias run   [--config PATH] [--all] [--verify] [--verbose]
    valuebias status [--format markdown|csv] [--config PATH] [--verify]
    valuebias table NAME [--format markdown|csv] [--config PATH]
    valuebias card MODEL_ID [--format markdown|html] [--config PATH]
    valuebias cards [--config PATH]
    valuebias ui    [--config PATH] [--port 3000]
    valuebias pod MODEL_ID [--asset NAME] [--config PATH]

Runs go to the project's Dagster instance (``<state_dir>/dagster``, SQLite), so the UI shows them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from orchestration.state import project_instance, run_lock, use_project_instance  # noqa: F401 (re-exported)
from valuebias.config import RegistryConfig, load_config
from valuebias.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_HELP = "registry config (default: $VALUEBIAS_CONFIG, else ./valuebias.yaml, else the project's own)"
TABLE_NAMES = ("prompts", "corpus_words", "model_registry", "rm_word_scores", "rm_sweep_tokens", "rm_rank_cells",
               "rm_mixed_model", "rm_interaction_test", "rm_family_tests", "rm_value_cards", "lm_word_logprobs",
               "lm_rank_cells", "lm_anova", "lm_posthoc", "mwlr_tokens", "mwlr_words")


def _config_path(arg: str | None) -> Path:
    from orchestration.definitions import default_config_path

    return Path(arg).expanduser().resolve() if arg else default_config_path()


def prepare_instance(config: RegistryConfig):
    """The project's instance, with the partition sets synced and the ``gpu`` pool limit set."""
    from orchestration.partitions import sync_model_partitions

    instance = project_instance(config)
    instance.event_log_storage.set_concurrency_slots("gpu", scoring_slots(config))
    return instance, sync_model_partitions(instance, config)


def gpu_visible() -> bool:
    """Whether this machine shows an NVIDIA GPU to CUDA (without importing torch: the CLI stays light)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def scoring_slots(config: RegistryConfig) -> int:
    """Scoring partitions that run at once (the ``gpu`` pool's limit): ``concurrency.gpu`` when set; else one
    on a GPU machine (two partitions would fight over its memory) and, without a GPU, as many as the CPU
    cores allow at ``scoring.threads`` each (torch's default, 0, takes every core: one at a time)."""
    if config.gpu_concurrency is not None:
        return config.gpu_concurrency
    if gpu_visible() or not config.scoring_threads:
        return 1
    return max(1, (os.cpu_count() or 1) // config.scoring_threads)


def content_check(config: RegistryConfig, verify: bool):
    """How this command sees model content: cached weight digests (rehashed when a file's size, mtime or
    inode changed), or with ``--verify`` every digest recomputed."""
    from assets.versions import ContentCheck

    return ContentCheck(config, mode="verify" if verify else "cached")


def registry_graph(config: RegistryConfig):
    from orchestration.definitions import build_definitions
    from orchestration.plan import RegistryGraph

    return RegistryGraph(build_definitions(config.path).resolve_asset_graph())


def cmd_run(args) -> int:
    config = load_config(_config_path(args.config))
    # one `valuebias run` per state folder at a time: a second one waits (saying for whom), then finds
    # the work done and skips it
    with run_lock(config, lambda message: print(f"valuebias: {message}", flush=True)):
        return run_registry(args, config)


def run_registry(args, config: RegistryConfig) -> int:
    """``valuebias run`` with the state folder's run lock held."""
    from orchestration.jobs import ALL_JOBS
    from orchestration.launch import JobRuns, RunOutcome, RunRequest
    from orchestration.progress import ProgressMonitor
    from orchestration.plan import INGEST_JOB, errors, ready_work, registry_states

    from orchestration.state import remove_finished_staging
    from resources.storage import Storage

    instance, (added, removed) = prepare_instance(config)
    graph = registry_graph(config)
    content = content_check(config, args.verify)
    print(f"valuebias: config {config.path}")
    print(f"valuebias: storage {config.storage_uri}; Dagster instance {os.environ['DAGSTER_HOME']}")
    staged = remove_finished_staging(Storage(uri=config.storage_uri), instance)
    if staged:
        print(f"valuebias: removed {staged} staged file(s) left by runs that did not finish publishing")
    if added or removed:
        print(f"valuebias: model partitions added {added or '[]'}, removed {removed or '[]'}")

    slots = scoring_slots(config)
    # Scoring runs go to child processes when they can run side by side, or one at a time where a terminal
    # can show their progress bars; otherwise (one slot, no terminal: CI, tests) they run here.
    side_by_side = slots > 1 or sys.stderr.isatty()
    children: set[int] = set()  # the child processes running scoring runs now: the monitor follows their runs
    with JobRuns(instance) as runs, ProgressMonitor(instance, lambda: set(children)) as progress:
        say = progress.say

        def started(request: RunRequest) -> None:
            say(f"{request.label} ...")
            clock[request.label] = time.perf_counter()

        def finished(request: RunRequest, outcome: RunOutcome) -> bool:
            if outcome.success:
                say(f"{request.label} done in {time.perf_counter() - clock[request.label]:.1f} s")
                for message in outcome.errors:  # warn-level checks that failed (e.g. a test not fitted)
                    say(f"  warning: {message}", error=True)
                for asset in request.assets or ():
                    report_adopted(instance, asset, request.partition, outcome.run_id)
                return True
            for message in outcome.errors:
                say(f"  error: {message}", error=True)
            if outcome.run_id:
                say(f"  run {outcome.run_id} failed; see `valuebias ui` for its logs", error=True)
            return False

        def run_here(request: RunRequest) -> bool:
            started(request)
            return finished(request, runs.execute(request.job, partition=request.partition, assets=request.assets,
                                                  verbose=args.verbose, tags=request.tags))

        clock: dict[str, float] = {}
        # Ingest is cheap and re-reads the files every time; unchanged content keeps its data version.
        if not run_here(RunRequest(INGEST_JOB, INGEST_JOB, None, None)):
            return 1
        done: set[tuple[str, str | None]] = set()
        rounds = 0
        while True:
            states = registry_states(graph, instance, config, content, reread_inputs=False)
            states_by_key = {(s.asset, s.partition): s for s in states}
            work = [w for w in ready_work(graph, states, config, everything=args.all and rounds == 0)
                    if w.job != INGEST_JOB]
            work = [w for w in work if (w.job, w.partition, w.assets) not in done]
            if not work:
                break
            rounds += 1
            # A round's runs are independent: scoring runs go side by side (as many as the gpu pool has slots),
            # then the cheap ones run here, one after the other
            requests = [RunRequest(f"{w.label} ({w.reason})", w.job, w.partition, list(w.assets), w.tags(states_by_key))
                        for w in work]
            scoring = [r for r in requests if r.job in graph.scoring_jobs] if side_by_side else []
            if scoring and not runs.execute_side_by_side(scoring, slots, verbose=args.verbose, started=started,
                                                         finished=finished, children=children):
                return 1
            if not all(run_here(r) for r in requests if r not in scoring):
                return 1
            done.update((item.job, item.partition, item.assets) for item in work)
        ran = {(job, partition) for job, partition, _ in done}
        for state in states:  # one run per piece of work: what a queued or running run covers is left to it
            if state.state == "running":
                print(f"{graph.job_of[state.asset]}[{state.partition or state.asset}] not started: {state.reason} "
                      "and covers it")
                ran.add((graph.job_of[state.asset], state.partition))
        for job in ALL_JOBS:
            if job.name == INGEST_JOB:
                continue
            partitions = {s.partition for s in states if graph.job_of[s.asset] == job.name}
            for partition in sorted(partitions, key=str):
                if (job.name, partition) not in ran and partition is not None:
                    print(f"{job.name}[{partition}] skipped: fresh (use --all to recompute)")
            if None in partitions and (job.name, None) not in ran:
                print(f"{job.name} skipped: every table is fresh")
    failing = errors(states)
    for state in failing:
        print(f"{graph.job_of[state.asset]}[{state.partition}] not run: {state.reason}", file=sys.stderr)
    if failing:
        print(f"valuebias: {len(failing)} partition(s) could not be checked (above); their stored outputs and "
              "what reads them are kept as they are. Fix the input, or remove the model from the registry, and "
              "run again.", file=sys.stderr)
        return 1
    tables = (["rm_family_tests"] if config.reward_models() else []) + (["mwlr_tokens"] if config.pairs else [])
    hint = " or ".join(f"`valuebias table {t}`" for t in tables)
    print(f"valuebias: done. Try {hint}." if tables else "valuebias: done.")
    return 0


def report_adopted(instance, asset: str, partition: str | None, run_id: str) -> None:
    """Says when run ``run_id`` adopted a partition's recorded outputs instead of recomputing them."""
    from assets.versions import latest_record

    record = latest_record(instance, asset, partition)
    adopted = record.asset_materialization.metadata.get("adopted_from_run") if record else None
    if adopted is not None and record.run_id == run_id:
        print(f"  adopted {asset}[{partition}] as recorded by run {adopted.value} "
              "(inputs unchanged; now recorded with its content identity, nothing recomputed)")


def cmd_status(args) -> int:
    import polars as pl

    from orchestration.plan import registry_states
    from valuebias.report import markdown_table

    config = load_config(_config_path(args.config))
    instance = project_instance(config)
    states = registry_states(registry_graph(config), instance, config, content_check(config, args.verify))
    rows = [{
        "asset": s.asset, "partition": s.partition or "", "state": s.state, "reason": s.reason,
        "last_run": s.run_id or "", "data_version": s.data_version or "",
        "sequences_scored": s.metadata.get("sequences_scored"), "sequences_reused": s.metadata.get("sequences_reused"),
    } for s in states]
    table = pl.DataFrame(rows, schema={"asset": pl.Utf8, "partition": pl.Utf8, "state": pl.Utf8, "reason": pl.Utf8,
                                       "last_run": pl.Utf8, "data_version": pl.Utf8,
                                       "sequences_scored": pl.Int64, "sequences_reused": pl.Int64})
    sys.stdout.write(table.write_csv() if args.format == "csv" else markdown_table(table) + "\n")
    return 0


def load_table(config: RegistryConfig, name: str):
    import polars as pl

    from assets.tables import (TABLE_KEYS, lm_word_logprobs_key, rm_sweep_tokens_key, rm_value_cards_key,
                               rm_word_scores_key)
    from resources.storage import Storage

    storage = Storage(uri=config.storage_uri)
    run_first = f"run `valuebias run --config {config.path}` first"
    if name == "rm_sweep_tokens":
        keys = [rm_sweep_tokens_key(m.model_id) for m in config.reward_models() if m.vocabulary_sweep]
        if not keys:
            raise FileNotFoundError(f"no model in {config.path} has a vocabulary_sweep: add `vocabulary_sweep: "
                                    "{prompts: [best_ever_one], top_n: 20}` to a reward model under models.<id>, "
                                    f"then `valuebias run --config {config.path}`")
        missing = [k for k in keys if not storage.exists(k)]
        if missing:
            raise FileNotFoundError(f"no stored sweep at {storage.full_uri(missing[0])}: {run_first}")
        return pl.concat([storage.read_parquet(k) for k in keys])
    if name in ("rm_word_scores", "rm_value_cards", "lm_word_logprobs"):
        key_of = {"rm_word_scores": rm_word_scores_key, "rm_value_cards": rm_value_cards_key,
                  "lm_word_logprobs": lm_word_logprobs_key}[name]
        models = config.language_models() if name == "lm_word_logprobs" else config.reward_models()
        keys = [key_of(m.model_id) for m in models]
        if not keys:
            kind = "language" if name == "lm_word_logprobs" else "reward"
            raise FileNotFoundError(f"no {kind} models are registered in {config.path}")
        missing = [k for k in keys if not storage.exists(k)]
        if missing:
            raise FileNotFoundError(f"no stored scores at {storage.full_uri(missing[0])}: {run_first}")
        return pl.concat([storage.read_parquet(k) for k in keys])
    key = TABLE_KEYS[name]
    if not storage.exists(key):
        raise FileNotFoundError(f"table {name} is not stored yet at {storage.full_uri(key)}: {run_first}")
    return storage.read_parquet(key)


def cmd_table(args) -> int:
    from valuebias.report import markdown_table

    config = load_config(_config_path(args.config))
    table = load_table(config, args.name)
    sys.stdout.write(table.write_csv() if args.format == "csv" else markdown_table(table) + "\n")
    return 0


def cmd_card(args) -> int:
    """One reward model's value card, as stored by ``rm_value_cards`` (markdown, or HTML with the plot inside)."""
    from assets.tables import card_key
    from resources.storage import Storage
    from valuebias.report import card_html

    config = load_config(_config_path(args.config))
    model = config.models.get(args.model)
    if model is None or model.kind != "reward_model":
        known = ", ".join(m.model_id for m in config.reward_models()) or "none"
        raise InputError(f"'{args.model}' is not a reward model of this registry (reward models: {known})",
                         source=str(config.path), field="models")
    storage = Storage(uri=config.storage_uri)
    key = card_key(args.model, "md")
    if not storage.exists(key):
        raise FileNotFoundError(f"no value card for '{args.model}' at {storage.full_uri(key)}: run "
                                f"`valuebias run --config {config.path}` first")
    markdown = storage.read_bytes(key).decode()
    if args.format == "html":
        plot = card_key(args.model, "png")
        markdown = card_html(markdown, {f"{args.model}.png": storage.read_bytes(plot)} if storage.exists(plot) else {},
                             title=f"Value card: {args.model}")
    sys.stdout.write(markdown)
    return 0


def cmd_cards(args) -> int:
    """The registry's value cards, one line per reward model: its strongest flags (smallest BH p first)."""
    import polars as pl

    config = load_config(_config_path(args.config))
    cards = load_table(config, "rm_value_cards")
    for model in config.reward_models():
        card = cards.filter(pl.col("model") == model.model_id)
        flags = (card.filter(pl.col("flag")).sort(pl.col("p_bh"), pl.col("deviation_fraction").abs(),
                                                  descending=[False, True])["finding"].to_list())
        if card.height and card["deviation"].null_count() == card.height:  # too small a registry: no numbers
            line = card["finding"][0]
        elif not flags:
            line = "no flags"
        else:
            line = "; ".join(flags[:3]) + (f" (+{len(flags) - 3} more)" if len(flags) > 3 else "")
        print(f"{model.model_id}: {line}")
    return 0


def cmd_ui(args) -> int:
    """``dagster dev``: the webserver and the daemon on the project's instance, so UI launches, backfills,
    the sensor and the schedules run. Ctrl-C stops both."""
    config = load_config(_config_path(args.config))
    prepare_instance(config)
    dagster = shutil.which("dagster") or str(Path(sys.executable).parent / "dagster")
    print(f"valuebias: starting `dagster dev` (webserver and daemon) for {config.path}\n"
          f"valuebias: Dagster instance {os.environ['DAGSTER_HOME']}\n"
          f"valuebias: the UI will be at http://127.0.0.1:{args.port} (Ctrl-C stops the webserver and the daemon)",
          flush=True)
    os.chdir(PROJECT_ROOT)
    os.execv(dagster, [dagster, "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", "127.0.0.1",
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
    run.add_argument("--config", help=CONFIG_HELP)
    run.add_argument("--verbose", action="store_true", help="show Dagster's INFO logs")
    run.add_argument("--all", action="store_true", help="recompute fresh partitions too")
    run.add_argument("--verify", action="store_true",
                     help="recompute the full digest of every local model file (catches a same-size replacement "
                          "that kept its mtime and inode, e.g. `cp -p`)")
    run.set_defaults(func=cmd_run)
    status = sub.add_parser("status", help="one row per asset partition: fresh, stale (and why) or missing")
    status.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    status.add_argument("--config", help=CONFIG_HELP)
    status.add_argument("--verify", action="store_true",
                        help="recompute the full digest of every local model file instead of trusting cached ones")
    status.set_defaults(func=cmd_status)
    table = sub.add_parser("table", help="print a stored table")
    table.add_argument("name", choices=TABLE_NAMES)
    table.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    table.add_argument("--config", help=CONFIG_HELP)
    table.set_defaults(func=cmd_table)
    card = sub.add_parser("card", help="print one reward model's value card (what it favours against the registry)")
    card.add_argument("model", help="reward model id")
    card.add_argument("--format", choices=("markdown", "html"), default="markdown")
    card.add_argument("--config", help=CONFIG_HELP)
    card.set_defaults(func=cmd_card)
    cards = sub.add_parser("cards", help="one line per reward model: the strongest flags of its value card")
    cards.add_argument("--config", help=CONFIG_HELP)
    cards.set_defaults(func=cmd_cards)
    ui = sub.add_parser("ui", help="serve the Dagster UI on 127.0.0.1 with the daemon (dagster dev)")
    ui.add_argument("--config", help=CONFIG_HELP)
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)
    pod = sub.add_parser("pod", help="print the Kubernetes pod that would score one model (scoring.kubernetes)")
    pod.add_argument("model", help="model id (a partition of the scoring assets)")
    pod.add_argument("--asset", choices=("rm_word_scores", "rm_vocabulary_sweep", "lm_next_token_logprobs",
                                         "lm_word_logprobs"), help="default: the model's first scoring asset")
    pod.add_argument("--config", help=CONFIG_HELP)
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
