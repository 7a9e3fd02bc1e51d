"""The scoring worker's code (see the package docstring, ``valuebias.scoring_worker``): the tasks, their progress
lines and the entry point :func:`main`."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import polars as pl

from valuebias.object_store import ObjectStore, read_input_uri
from valuebias.errors import InputError
from valuebias.config import ModelConfig
from valuebias.model_sources import ModelSource, Workspace, source_of
from valuebias.table_version import content_version, large_table_version

#: The module a launcher runs (``python -m valuebias.scoring_worker``, in a subprocess and in a pod).
WORKER_MODULE = "valuebias.scoring_worker"
#: A file the worker writes its error to (``Type: message``), so the launcher can name it in the failure.
ERROR_FILE_ENV = "VALUEBIAS_WORKER_ERROR_FILE"

Log = Callable[[str], None]


#: How often a partition logs its progress (the run log in the UI, and what `valuebias run` draws as a bar).
PROGRESS_EVERY_SECONDS = 2.0
_PROGRESS_LINE = re.compile(r"^(?P<label>\S+): (?P<done>[\d,]+)/(?P<total>[\d,]+) (?P<unit>[a-z][a-z ]*?)(?: \(.*\))?$")


def throttled_progress(log: Log, label: str, unit: str,
                       every_seconds: float = PROGRESS_EVERY_SECONDS) -> Callable[[int, int], None]:
    """A progress callback that logs a :func:`progress_line` at most every ``every_seconds``, and at the end."""
    started, last = time.monotonic(), [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every_seconds or done == total:
            last[0] = now
            log(progress_line(label, done, total, unit, now - started))

    return progress


def progress_line(label: str, done: int, total: int, unit: str, seconds: float) -> str:
    """``demo-llama-1: 50,000/196,074 sequences scored (3,210/s, 45 s left)``: what the worker logs."""
    line = f"{label}: {done:,}/{total:,} {unit}"
    if seconds > 0 and done:
        rate = done / seconds
        line += f" ({rate:,.0f}/s, {max(0.0, (total - done) / rate):.0f} s left)"
    return line


def parse_progress(message: str) -> tuple[str, int, int, str] | None:
    """(label, done, total, unit) of a :func:`progress_line`, else None."""
    match = _PROGRESS_LINE.match(message.strip())
    if match is None:
        return None
    return (match["label"], int(match["done"].replace(",", "")), int(match["total"].replace(",", "")),
            match["unit"])


class StorageScoreCache:
    """The score cache of one model in product storage: one parquet chunk per scored prompt, each
    written atomically, so a killed partition keeps every finished chunk and never a partial one. A chunk
    is named after its content version (``<prompt>-<version>.parquet``) and checked against it when read:
    a chunk that is unreadable or altered is discarded with a warning naming it, and only its sequences
    are scored again."""

    def __init__(self, store: ObjectStore, prefix: str, warn: Log | None = None):
        self.store, self.prefix, self.warn = store, prefix, warn or (lambda message: None)

    def read(self) -> pl.DataFrame:
        from valuebias.rm_partition import empty_cache

        chunks = []
        for key in (k for k in self.store.list(self.prefix) if k.endswith(".parquet")):
            problem, chunk = None, None
            try:
                chunk = self.store.read_parquet(key)
            except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
                problem = f"unreadable ({type(exc).__name__})"
            expected = key.rsplit("-", 1)[-1].removesuffix(".parquet")
            if chunk is not None and len(expected) == 16 and content_version(chunk) != expected:
                problem = "its content does not match the checksum in its name"
            if problem:
                self.warn(f"score cache chunk {self.store.full_uri(key)} is {problem}: discarded, its sequences "
                          "are scored again")
                self.store.delete(key)
                continue
            chunks.append(chunk)
        return pl.concat(chunks) if chunks else empty_cache()

    def write_chunk(self, prompt_id: str, chunk: pl.DataFrame) -> None:
        self.store.write_parquet(f"{self.prefix}{prompt_id}-{content_version(chunk)}.parquet", chunk)


# ------------------------------------------------------------------------------------------- tasks
def _set_threads(spec: dict) -> None:
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))


def _inputs(spec: dict, store: ObjectStore) -> tuple[pl.DataFrame, pl.DataFrame]:
    return store.read_parquet(spec["inputs"]["prompts"]), store.read_parquet(spec["inputs"]["corpus_words"])


def _model(spec: dict) -> tuple[ModelConfig, ModelSource]:
    """The task's registry entry, typed again, and its source."""
    model = ModelConfig.from_entry(spec["model"])
    return model, source_of(model)


def _workspace(spec: dict, prompts: pl.DataFrame, words: pl.DataFrame) -> Workspace:
    return Workspace(prompts=prompts, corpus_words=words, demo_dir=Path(spec["demo_dir"]),
                     digest_cache=spec.get("digest_cache"), dequantised_dir=spec.get("dequantised_dir"))


def rm_word_scores(spec: dict, store: ObjectStore, log: Log) -> tuple[pl.DataFrame, dict]:
    """Every corpus word x every prompt through one reward model (or its published scores)."""
    model, source = _model(spec)
    prompts, words = _inputs(spec, store)
    if not source.has_weights:
        return source.import_scores(model, base_dir=spec["base_dir"], prompts=prompts, corpus_words=words,
                                    coverage=spec.get("published_coverage", "complete"))
    from valuebias.rm_partition import score_reward_model

    _set_threads(spec)
    model_id = model.model_id
    where = _workspace(spec, prompts, words)
    return score_reward_model(
        model_id, lambda: source.reward_model(model, where), prompts=prompts, corpus_words=words,
        batch_size=int(spec["batch_size"]), device=spec.get("device"),
        cache=lambda key: StorageScoreCache(store, f"score_cache/{model_id}/{key}/", warn=log),
        progress=throttled_progress(log, model_id, "sequences scored"))


def rm_vocabulary_sweep(spec: dict, store: ObjectStore, log: Log) -> tuple[pl.DataFrame, dict]:
    """Every vocabulary token as the response to each sweep prompt; also writes the top/bottom strings
    to ``outputs.extremes``."""
    from valuebias.rm_partition import sweep_extremes, sweep_reward_model

    model, source = _model(spec)
    if not source.has_weights:
        raise InputError(f"a {source.name} model has no weights to sweep: remove its vocabulary_sweep, or register "
                         "the model with a huggingface source", source=f"models.{model.model_id}",
                         field="vocabulary_sweep")
    _set_threads(spec)
    prompts, words = _inputs(spec, store)
    log(f"{model.model_id}: sweeping the whole vocabulary")
    where = _workspace(spec, prompts, words)
    table, metadata = sweep_reward_model(model.model_id, lambda: source.reward_model(model, where),
                                         model.vocabulary_sweep, prompts=prompts,
                                         batch_size=int(spec["batch_size"]), device=spec.get("device"))
    store.write_parquet(spec["outputs"]["extremes"], sweep_extremes(table, model.vocabulary_sweep["top_n"]))
    return table, metadata


def lm_next_token_logprobs(spec: dict, store: ObjectStore, log: Log) -> tuple[pl.DataFrame, dict]:
    """The log-softmax over the whole vocabulary after every prompt."""
    from valuebias.lm_scoring import score_language_model

    model, source = _model(spec)
    _set_threads(spec)
    prompts, words = _inputs(spec, store)
    where = _workspace(spec, prompts, words)
    return score_language_model(model.model_id, lambda: source.language_model(model, where), prompts=prompts,
                                device=spec.get("device"),
                                progress=throttled_progress(log, model.model_id, "prompts"))


def lm_word_logprobs(spec: dict, store: ObjectStore, log: Log) -> tuple[pl.DataFrame, dict]:
    """Every corpus word's log-prob after every prompt, from the stored next-token log-probs (and, with
    the ``full_sequence`` rule, the model itself for words of several tokens)."""
    from valuebias.lm_scoring import language_model_word_logprobs, load_language_model

    model, source = _model(spec)
    prompts, words = _inputs(spec, store)
    next_token = store.read_parquet(spec["inputs"]["next_token"])

    def load():
        _set_threads(spec)
        lm, identity = source.language_model(model, _workspace(spec, prompts, words))
        return load_language_model(lm, device=spec.get("device"), identity=identity)

    return language_model_word_logprobs(model.model_id, next_token, words, prompts, rule=spec["word_rule"],
                                        load=load, batch_size=int(spec["batch_size"]))


def identify(spec: dict, store: ObjectStore, log: Log) -> tuple[None, dict]:
    """Only the content identity of a hub, local or published model, computed here (no scoring)."""
    from valuebias.model_content import DigestCache

    model, source = _model(spec)
    identity = source.content_identity(model, cache=DigestCache(spec.get("digest_cache")),
                                       read=lambda uri: read_input_uri(uri, base_dir=spec["base_dir"]))
    if identity is None:
        raise InputError(f"a {source.name} model is identified by its build, not by a stored file",
                         source=f"models.{model.model_id}")
    log(f"{model.model_id}: content identity {identity.digest}")
    return None, {"content": identity.to_metadata()}


#: task name -> (function, how its output's data version is computed)
TASKS: dict[str, tuple[Callable[[dict, ObjectStore, Log], tuple[pl.DataFrame | None, dict]], Callable]] = {
    "rm_word_scores": (rm_word_scores, content_version),
    "rm_vocabulary_sweep": (rm_vocabulary_sweep, content_version),
    "lm_next_token_logprobs": (lm_next_token_logprobs, large_table_version),
    "lm_word_logprobs": (lm_word_logprobs, content_version),
    "identify": (identify, None),
}


def run_task(spec: dict, log: Log) -> tuple[dict[str, Any], str]:
    """Runs one task: reads inputs, computes, writes ``outputs.table`` (atomically). Returns the metadata
    and the data version of the written table."""
    if spec.get("task") not in TASKS:
        raise ValueError(f"unknown scoring task {spec.get('task')!r}; expected one of {sorted(TASKS)}")
    compute, version_of = TASKS[spec["task"]]
    store = ObjectStore.from_spec(spec["storage"])
    table, metadata = compute(spec, store, log)
    if table is None:  # identify: nothing written; the identity is the version
        return metadata, metadata["content"]["digest"]
    uri = store.write_parquet(spec["outputs"]["table"], table)
    log(f"{spec['model']['model_id']}: wrote {len(table)} rows to {uri}")
    return {**metadata, "rows": len(table)}, version_of(table)


def pipes_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata in the form Pipes accepts: raw scalars, or typed ``{raw_value, type}`` for structures."""
    return {key: {"raw_value": value, "type": "json"} if isinstance(value, (dict, list)) else value
            for key, value in metadata.items()}


def main() -> int:
    """Entry point of the worker process (Pipes subprocess or Kubernetes pod)."""
    from dagster_pipes import open_dagster_pipes

    # progress goes to the run's log through Pipes; terminal progress bars would only clutter stderr
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if os.environ.get(ERROR_FILE_ENV):  # a subprocess on the user's terminal: Ctrl-C ends it quietly
        signal.signal(signal.SIGINT, _interrupted)
        end_with_parent()
    with open_dagster_pipes() as pipes:
        try:
            metadata, version = run_task(dict(pipes.extras), pipes.log.info)
        except Exception as exc:
            error_file = os.environ.get(ERROR_FILE_ENV)
            if not error_file:  # a pod: its own log is where the traceback is read
                traceback.print_exc(file=sys.stderr)
                raise
            # a subprocess shares the user's terminal: one line goes back to the launcher (which fails the
            # step with it), the traceback to the run's log (the UI, and the terminal with --verbose)
            Path(error_file).write_text(one_line(exc))
            pipes.log.error(f"the scoring worker failed:\n{traceback.format_exc()}")
            return 1
        pipes.report_asset_materialization(metadata=pipes_metadata(metadata), data_version=version)
    return 0


def end_with_parent() -> None:
    """A subprocess worker ends when the run process that started it dies (``kill -9``, the out-of-memory
    killer): an orphan would keep scoring, holding the CPU cores or the GPU memory that the pool's slot
    stood for (Linux: ``PR_SET_PDEATHSIG``)."""
    import ctypes

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker outlives a killed run process
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _interrupted(signum, frame) -> None:
    """Ctrl-C (or the run forwarding its interruption): stop now, without a traceback on the user's terminal.
    Finished score chunks are already stored (each atomically); the rerun resumes from them."""
    Path(os.environ[ERROR_FILE_ENV]).write_text("interrupted")
    os._exit(130)


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (an InputError's message names the file, row and field)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
