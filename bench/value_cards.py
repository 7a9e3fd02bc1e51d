"""What a value card costs as the registry grows (docs/METHOD.md#acceptance-tests, test 4: under 1 s per card
for 160 models, about 2,300 entries, 54 prompts).

A card reads two tables: its model's own word ranks and the registry's rank sums
(``valuebias.value_cards.rank_sums``), whose size is that of one model. The baseline, measured side by side
in the same run, is what a card would do without the sums: read every model's ranks and average the others.
Synthetic ranks shaped like the default registry (Big Two: 2 categories x 131 words, MFD2: 5 x 408 = 2,302
entries; 27 prompts per framing; raw and frequency-controlled rankings).

    .venv/bin/python -m bench.value_cards            # 10, 40 and 160 models
    .venv/bin/python -m bench.value_cards --smoke    # seconds: a tiny registry, every code path
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl

from valuebias.statistics import FREQUENCY_CONTROLLED, RAW
from valuebias.value_cards import ENTRY_KEYS, rank_sums, value_card

FULL = {"corpora": {"big2": (2, 131), "mfd2": (5, 408)}, "prompts": 27, "models": (10, 40, 160), "baseline_up_to": 40}
SMOKE = {"corpora": {"big2": (2, 12), "mfd2": (3, 10)}, "prompts": 3, "models": (4, 8), "baseline_up_to": 8}


def entries(corpora: dict[str, tuple[int, int]]) -> pl.DataFrame:
    """``corpus, word, category``: made-up words (each its own family)."""
    return pl.DataFrame([(corpus, f"w{corpus}{c}x{i}", f"C{c}") for corpus, (cats, n) in corpora.items()
                         for c in range(cats) for i in range(n)], schema=["corpus", "word", "category"], orient="row")


def model_ranks(words: pl.DataFrame, prompts: list[str], seed: int) -> pl.DataFrame:
    """One model's ranks (``ENTRY_KEYS`` + ``rank``): a random order per (corpus, prompt), both rankings."""
    rng = np.random.default_rng(seed)
    parts = []
    for (corpus,), group in words.group_by("corpus", maintain_order=True):
        n = group.height
        ranks = np.argsort(rng.random((len(prompts), n)), axis=1).argsort(axis=1) + 1.0
        for ranking, shift in ((RAW, 0.0), (FREQUENCY_CONTROLLED, 0.25)):
            parts.append(pl.DataFrame({
                "corpus": corpus, "ranks": ranking, "prompt": np.repeat(prompts, n),
                "word": np.tile(group["word"].to_numpy(), len(prompts)),
                "category": np.tile(group["category"].to_numpy(), len(prompts)),
                "rank": ranks.reshape(-1) + shift}))
    return pl.concat(parts).select(*ENTRY_KEYS, "rank")


def baseline_reference(all_ranks: list[pl.DataFrame], own: int) -> pl.DataFrame:
    """Without the rank sums: the other models' mean rank per entry, from every model's table."""
    others = pl.concat([t for i, t in enumerate(all_ranks) if i != own])
    return others.group_by(ENTRY_KEYS).agg(pl.col("rank").sum().alias("rank_sum"), pl.len().alias("models"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny registry: seconds, every code path")
    setup = SMOKE if parser.parse_args(argv).smoke else FULL
    words = entries(setup["corpora"])
    prompts = [f"{f}_{i}" for f in ("positive", "negative") for i in range(setup["prompts"])]
    framings = pl.DataFrame({"prompt": prompts, "framing": [p.split("_")[0] for p in prompts]})
    sizes = dict(words.group_by("corpus").len().iter_rows())
    print(f"entries={words.height} prompts={len(prompts)} rankings=2")
    for n in setup["models"]:
        all_ranks = [model_ranks(words, prompts, seed) for seed in range(n)]
        sums = rank_sums(all_ranks)
        cards = min(n, 5)
        started = time.perf_counter()
        for i in range(cards):
            value_card(all_ranks[i], sums, framings, f"rm-{i}", sizes,
                       {f"rm-{j}": "ab"[j % 2] for j in range(n) if j != i})
        per_card = (time.perf_counter() - started) / cards
        line = f"models={n} per_card={per_card:.3f}s all_{n}_cards~{per_card * n:.1f}s"
        if n <= setup["baseline_up_to"]:
            started = time.perf_counter()
            for i in range(cards):
                baseline_reference(all_ranks, i)
            baseline = (time.perf_counter() - started) / cards
            line += f" baseline_reference_only={baseline:.3f}s ratio_card_with_sums/baseline={per_card / baseline:.2f}"
        print(line, flush=True)
        del all_ranks
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
