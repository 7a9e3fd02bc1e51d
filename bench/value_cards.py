"""How long value cards take as the registry grows: every card of a registry of N reward models.

Cards recompute whenever any reward model's scores change (each compares its model with all others), so
what matters is the cost of all N cards. Synthetic rank cells shaped like the default registry's (Big
Two: 2 categories, MFD2: 5; 54 prompts; raw and frequency-controlled ranks), 2,000 bootstrap draws.
Prints the time of one card and of all N cards for N = 10 and 160, and their ratio to N = 10.

    .venv/bin/python -m bench.value_cards
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl

from valuebias.value_cards import value_card

CORPORA = {"big2": ["Agency", "Communion"], "mfd2": ["Authority", "Care", "Fairness", "Loyalty", "Sanctity"]}
SIZES = {"big2": 1700, "mfd2": 2050}


def cells(n_models: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("corpus", "ranks", "model", "family", "category", "prompt", "framing", "median_rank")}
    for m in range(n_models):
        for corpus, categories in CORPORA.items():
            for category in categories:
                bias = rng.normal(0, 50)
                for p in range(54):
                    framing = "positive" if p < 27 else "negative"
                    for ranks in ("raw", "frequency_controlled"):
                        for key, value in (("corpus", corpus), ("ranks", ranks), ("model", f"rm-{m}"),
                                           ("family", f"f{m % 3}"), ("category", category), ("prompt", f"p{p}"),
                                           ("framing", framing),
                                           ("median_rank", SIZES[corpus] / 2 + bias + rng.normal(0, 20))):
                            rows[key].append(value)
    return pl.DataFrame(rows)


def main() -> None:
    baseline = None
    for n in (10, 160):
        table = cells(n)
        started = time.perf_counter()
        value_card(table, "rm-0", SIZES)
        one = time.perf_counter() - started
        started = time.perf_counter()
        for m in range(n):
            value_card(table, f"rm-{m}", SIZES)
        every = time.perf_counter() - started
        baseline = baseline or every
        print(f"models={n} one_card={one:.3f}s all_cards={every:.2f}s per_card={every / n:.3f}s "
              f"ratio_to_10_models={every / baseline:.1f}")


if __name__ == "__main__":
    main()
