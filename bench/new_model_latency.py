"""A new model through in minutes (issue 25, item 5): from the config edit to an updated ``rm_report`` and
value cards, with the real daemon and no CLI, against the time its scoring run takes.

The registry is first brought up to date by ``valuebias run``; then ``dagster-daemon run`` (what
``valuebias ui`` starts next to the webserver) runs on its instance, and each try adds one more demonstration
reward model to the config file. A try ends when ``rm_report`` and every reward model's value card have been
materialized after the edit and no run of the project is queued or running. Printed per try and as medians,
side by side: the scoring run (the new model's ``rm_scoring_job`` run, start to end), the end-to-end time
(config edit to the last of those materializations) and what the end-to-end time adds to the scoring
(the budget: 60 s).

    .venv/bin/python -m bench.new_model_latency              # the default registry (valuebias.yaml), 3 tries
    .venv/bin/python -m bench.new_model_latency --smoke      # a tiny registry, 1 try: every code path
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]


def new_model_entry(index: int, *, smoke: bool) -> dict:
    """A demonstration reward model not in the registry yet (its own seed)."""
    demo = {"architecture": "llama", "preferred_category": "Agency", "seed": 100 + index}
    if smoke:
        demo.update(hidden_size=32, train_steps=150)
    else:
        demo["train_corpus"] = "big2"
    return {"kind": "reward_model", "family": "llama", "demo": demo}


def write_config(path: Path, config: dict) -> None:
    """Writes the config through a temporary name and a rename (an editor's save: one stat change)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    os.replace(tmp, path)


def registry(root: Path, *, smoke: bool) -> Path:
    """The default registry (``valuebias.yaml``), or with ``smoke`` the tests' small one, under ``root``."""
    if smoke:
        sys.path.insert(0, str(PROJECT))
        from tests.registry_fixtures import write_small_registry

        return write_small_registry(root)  # scoring in the run's process: the smoke mode is about code paths
    path = root / "valuebias.yaml"
    write_config(path, yaml.safe_load((PROJECT / "valuebias.yaml").read_text()))
    return path


def wait_for(condition, timeout: float, what: str, daemon: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if daemon.poll() is not None:
            raise SystemExit(f"bench: the daemon exited with {daemon.returncode} while waiting for {what}")
        time.sleep(0.5)
    raise SystemExit(f"bench: timed out after {timeout:.0f} s waiting for {what}")


def latest_after(instance, asset: str, partition: str | None, after: float) -> float | None:
    """The timestamp of ``asset[partition]``'s latest materialization after ``after``, or None."""
    import dagster as dg

    records = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None, after_timestamp=after),
        limit=1).records
    return records[0].timestamp if records else None


def in_progress(instance) -> bool:
    import dagster as dg

    from valuebias.assets.attempts import IN_PROGRESS

    return bool(instance.get_run_records(filters=dg.RunsFilter(statuses=list(IN_PROGRESS)), limit=1))


def one_try(instance, config_path: Path, index: int, *, smoke: bool, daemon, timeout: float) -> tuple[float, float]:
    """Adds model ``new-<index>``; returns (scoring run seconds, end-to-end seconds)."""
    import dagster as dg

    config = yaml.safe_load(config_path.read_text())
    model = f"new-{index}"
    config["models"][model] = new_model_entry(index, smoke=smoke)
    edited = time.time()
    write_config(config_path, config)
    cards = [m for m, entry in config["models"].items() if entry["kind"] == "reward_model"]

    def done():
        stamps = [latest_after(instance, "rm_report", None, edited)]
        stamps += [latest_after(instance, "rm_value_cards", m, edited) for m in cards]
        return max(stamps) if all(stamps) and not in_progress(instance) else None

    finished = wait_for(done, timeout, f"rm_report and the value cards after adding {model}", daemon)
    [scoring] = instance.get_run_records(filters=dg.RunsFilter(
        job_name="rm_scoring_job", tags={"dagster/partition": model}, statuses=[dg.DagsterRunStatus.SUCCESS]))
    return scoring.end_time - scoring.start_time, finished - edited


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny registry and one try: every code path")
    parser.add_argument("--tries", type=int, default=None, help="models added one after the other (default 3)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one try may take")
    args = parser.parse_args(argv)
    tries = args.tries or (1 if args.smoke else 3)
    env = {**os.environ, "DAGSTER_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="valuebias-latency-") as tmp:
        config_path = registry(Path(tmp), smoke=args.smoke)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "valuebias.orchestration.cli", "run", "--config", str(config_path)], cwd=PROJECT,
                       env=env, check=True, stdout=subprocess.DEVNULL)
        print(f"registry: {'small (tests)' if args.smoke else 'default (valuebias.yaml)'}; "
              f"initial `valuebias run`: {time.monotonic() - started:.0f} s", flush=True)
        home = Path(tmp) / ".valuebias" / "dagster"
        os.environ.update(DAGSTER_HOME=str(home), VALUEBIAS_CONFIG=str(config_path))
        import dagster as dg

        from valuebias.orchestration.sensors import FULL_PLAN_SECONDS, TICK_SECONDS

        instance = dg.DagsterInstance.get()
        daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w",
                                   str(PROJECT / "workspace.yaml")], cwd=PROJECT,
                                  env={**env, "DAGSTER_HOME": str(home), "VALUEBIAS_CONFIG": str(config_path)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            def sensor_ticked():
                state = next((s for s in instance.all_instigator_state() if s.name == "model_partitions_sensor"),
                             None)
                return state and instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)

            wait_for(sensor_ticked, 300, "the first model_partitions_sensor tick", daemon)
            print(f"daemon: model_partitions_sensor every {TICK_SECONDS} s (a full plan on a change, an ended run, "
                  f"or every {FULL_PLAN_SECONDS} s)", flush=True)
            results = []
            for index in range(1, tries + 1):
                scoring, total = one_try(instance, config_path, index, smoke=args.smoke, daemon=daemon,
                                         timeout=args.timeout)
                results.append((scoring, total))
                print(f"try {index}: new-{index}: scoring run {scoring:.1f} s | config edit -> rm_report and value "
                      f"cards {total:.1f} s | beyond scoring {total - scoring:.1f} s (budget 60 s)", flush=True)
                time.sleep(2 * TICK_SECONDS)  # let the sensor settle before the next edit
        finally:
            if daemon.poll() is None:
                os.killpg(daemon.pid, signal.SIGTERM)
                try:
                    daemon.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(daemon.pid, signal.SIGKILL)
                    daemon.wait()
            instance.dispose()
    scoring = statistics.median(s for s, _ in results)
    total = statistics.median(t for _, t in results)
    beyond = statistics.median(t - s for s, t in results)
    print(f"median of {tries}: scoring run {scoring:.1f} s | end-to-end {total:.1f} s | beyond scoring {beyond:.1f} s "
          f"| end-to-end / scoring {total / scoring:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
