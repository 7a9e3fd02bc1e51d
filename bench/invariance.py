"""What the invariance audit costs next to the partition it audits, side by side in one run:

- ``partition``: ``score_reward_model`` of one reward model of a registry (default: the embedded demo
  registry's first), no score cache: the engine scores every word x prompt, then the audit runs;
- ``audit``: the audit of that partition (``invariance_seconds``) as part of it, and again on its own for
  several sample sizes (``--words``), with the same loaded model.

    .venv/bin/python -m bench.invariance [--config valuebias.yaml] [--model ID] [--threads 1] [--words 32 64 128]

Scoring runs on ``--threads`` torch threads (the demo registry's ``scoring.threads`` is 1). Demo models are
built (or reused) under a temporary folder seeded from ``<state_dir>/demo_models``, so the state folder is
only read.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from assets.ingest import build_corpus_words, build_prompts
from valuebias.config import load_config
from valuebias.invariance import audit_failures, audit_partition
from valuebias.rm_scoring import HuggingFaceSource, load_reward_model
from valuebias.rm_scoring import resolve_model_path, score_reward_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="valuebias.yaml")
    parser.add_argument("--model", default=None, help="a reward model id of the registry (default: the first)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--words", type=int, nargs="*", default=[32, 64, 128])
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = load_config(Path(args.config))
    model_id = args.model or next(m for m, e in config.models.items() if e.kind == "reward_model")
    model = config.models[model_id]
    prompts = build_prompts(config)
    corpus_words, _, _ = build_corpus_words(config)
    with tempfile.TemporaryDirectory(prefix="valuebias-invariance-bench-") as folder:
        demo_dir = Path(folder)
        built = Path(config.state_dir) / "demo_models" / model_id
        if model.source == "demo" and built.is_dir():
            shutil.copytree(built, demo_dir / model_id)
        table, metadata = score_reward_model(model_id, model.source, model.settings, prompts=prompts,
                                             corpus_words=corpus_words, demo_dir=demo_dir,
                                             batch_size=config.scoring_batch_size)
        audit = metadata["invariance_seconds"]
        partition = metadata["total_seconds"] - audit
        print(f"model {model_id}: {metadata['sequences_scored']} sequences ({metadata['prompts']} prompts x "
              f"{metadata['unique_words']} words), batch {metadata['batch_size']}, {args.threads} thread(s), "
              f"{metadata['dtype']}")
        print(f"partition (scoring, everything but the audit): {partition:8.2f} s "
              f"({metadata['score_seconds']:.2f} s in the engine)")
        print(f"audit, within the partition:                   {audit:8.2f} s = {audit / partition:6.2%} of the "
              f"partition; {metadata['invariance_sequences']} sequences "
              f"({1000 * audit / metadata['invariance_sequences']:.2f} ms each)")
        figures = {k: v for k, v in metadata.items() if k.startswith("invariance_")}
        print(f"  figures: {figures}")
        print(f"  failures: {audit_failures(figures) or 'none'}")

        hf, _ = resolve_model_path(model_id, model.source, model.settings, demo_dir=demo_dir, prompts=prompts,
                                   corpus_words=corpus_words)
        src = HuggingFaceSource(model_id=model_id, **hf)
        started = time.perf_counter()
        loaded = load_reward_model(src)
        print(f"model load (what a fully reused partition adds for the audit): {time.perf_counter() - started:.2f} s")
        scores = table.select("prompt", "word", "score").unique()
        for words in args.words:
            result = audit_partition(loaded, score=src.score, prompts=prompts, scores=scores, words_per_prompt=words)
            seconds = result["invariance_seconds"]
            print(f"audit, {words:4d} words per prompt: {result['invariance_sequences']:5d} sequences "
                  f"{seconds:7.2f} s = {seconds / partition:6.2%} of the partition; max |diff| "
                  f"{result['invariance_max_abs_diff']:.2e}, min tau {result['invariance_min_kendall_tau']:.4f}, "
                  f"flipped {result['invariance_flipped_pair_share']:.3%}")


if __name__ == "__main__":
    main()
