"""What the invariance audit costs next to the partition it audits, side by side in one run:

- ``partition``: ``score_reward_model`` of one reward model of a registry (default: the embedded demo
  registry's first), no score cache: the engine scores every word x prompt, then the audit runs;
- ``audit``: the audit of that partition (``invariance_seconds``) as part of it, and again on its own for
  several sample sizes (``--words``), with the same loaded model.

    .venv/bin/python -m bench.invariance [--config valuebias.yaml] [--model ID] [--threads 1] [--words 32 64 128]
    .venv/bin/python -m bench.invariance --smoke    # seconds: a tiny registry (SMOKE_*), every code path

Scoring runs on ``--threads`` torch threads (the demo registry's ``scoring.threads`` is 1). Demo models are
built (or reused) under a temporary folder seeded from ``<state_dir>/demo_models``, so the state folder is
only read. ``--smoke`` writes a registry of 3 prompts, 12 words and one tiny demo RM (hidden 32, 1 layer,
20 training steps) to a temporary folder and audits 4 and 8 words per prompt; it exits 1 if the audit of that
float32 model fails (the full run only reports failures: a real model in bfloat16 may fail it).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from valuebias.assets.ingest import build_corpus_words, build_prompts
from valuebias.config import load_config
from valuebias.invariance import audit_failures, audit_partition
from valuebias.rm_scoring import load_reward_model
from valuebias.hf_loading import HuggingFaceSource
from valuebias.rm_partition import score_reward_model
from valuebias.model_sources import Workspace, source_of


SMOKE_PROMPTS = {"best_ever_one": "What, in one word, is the best thing ever?",
                 "greatest_world_single": "What, in a single word, is the greatest thing in the world?",
                 "worst_ever_one": "What, in one word, is the worst thing ever?"}
SMOKE_WORDS = {"Agency": ["ability", "ambition", "power", "skill", "success", "strength"],
               "Communion": ["love", "kindness", "friendship", "care", "trust", "warmth"]}
SMOKE_AUDIT_WORDS = [4, 8]


def write_smoke_registry(root: Path) -> Path:
    """prompts.csv, words.csv and valuebias.yaml of the smoke registry under ``root``; returns the config."""
    (root / "prompts.csv").write_text("prompt,text\n" + "".join(f'{p},"{t}"\n' for p, t in SMOKE_PROMPTS.items()))
    (root / "words.csv").write_text("word,category\n" + "".join(f"{w},{c}\n" for c, ws in SMOKE_WORDS.items()
                                                                for w in ws))
    config = root / "valuebias.yaml"
    config.write_text(
        "prompts: {uri: prompts.csv}\n"
        "corpora:\n  small: {uri: words.csv, format: csv, word_column: word, category_column: category,"
        " categories: [Agency, Communion]}\n"
        "scoring: {batch_size: 32, threads: 1}\n"
        "models:\n  demo-llama-1:\n    kind: reward_model\n    family: llama\n"
        "    demo: {architecture: llama, preferred_category: Agency, seed: 1, hidden_size: 32, num_layers: 1,"
        " train_steps: 20}\n")
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="valuebias.yaml")
    parser.add_argument("--model", default=None, help="a reward model id of the registry (default: the first)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--words", type=int, nargs="*", default=[32, 64, 128])
    parser.add_argument("--smoke", action="store_true", help="seconds: a tiny registry, every code path")
    args = parser.parse_args(argv)
    if not args.smoke:
        return run(args)
    with tempfile.TemporaryDirectory(prefix="valuebias-invariance-smoke-") as folder:
        args.config, args.model, args.words = str(write_smoke_registry(Path(folder))), None, SMOKE_AUDIT_WORDS
        return run(args)


def run(args: argparse.Namespace) -> int:
    """The benchmark on ``args.config``; 0, or 1 when ``args.smoke`` and the partition's audit failed."""
    torch.set_num_threads(args.threads)
    config = load_config(Path(args.config))
    model_id = args.model or next(m for m, e in config.models.items() if e.kind == "reward_model")
    model = config.models[model_id]
    prompts = build_prompts(config)
    corpus_words, _, _ = build_corpus_words(config)
    with tempfile.TemporaryDirectory(prefix="valuebias-invariance-bench-") as folder:
        demo_dir = Path(folder)
        built = Path(config.state_dir) / "demo_models" / model_id
        source = source_of(model)
        if source.identity_from_build and built.is_dir():
            shutil.copytree(built, demo_dir / model_id)
        where = Workspace(prompts=prompts, corpus_words=corpus_words, demo_dir=demo_dir)
        table, metadata = score_reward_model(model_id, lambda: source.reward_model(model, where), prompts=prompts,
                                             corpus_words=corpus_words, batch_size=config.scoring_batch_size)
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
        failures = audit_failures(figures)
        print(f"  failures: {failures or 'none'}")

        hf, _ = source.reward_model(model, where)
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
    if args.smoke and failures:
        print(f"FAILED: the smoke registry's float32 demo model failed its invariance audit: {failures}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
