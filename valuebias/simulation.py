"""The synthetic registry of the value card's acceptance tests (docs/METHOD.md#acceptance-tests,
under #84-value-cards), used by the tests and by ``bench/value_cards.py``.

A model's score of a word at a prompt is ``g + 0.5 a + 0.1 e + 0.02 v``, plus ``d`` on a favoured category
(minus ``d`` under negative framing). All are standard normals: ``g`` per entry and ``a`` per model and
entry, correlated 0.5 within word families of 1-4 words and drawn afresh for negative framing; ``e`` per
model, prompt and entry; ``v`` per model, prompt and category. The words are made-up stems with English
suffixes (``-s``, ``-ing``, ``-ed``), chosen so that the Snowball stemmer groups them into exactly the
simulated families.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import product

import numpy as np
import polars as pl
from scipy.stats import rankdata

from valuebias.statistics import RAW
from valuebias.value_cards import word_families

SUFFIXES = ("", "s", "ing", "ed")
FRAMINGS = ("positive", "negative")


@lru_cache(maxsize=1)
def _stems() -> tuple[str, ...]:
    """Made-up stems (consonant-vowel-consonant-vowel-consonant) that the Snowball stemmer maps back to
    themselves with every suffix of ``SUFFIXES``."""
    candidates = ["".join(c) for c in product("bdfgklmnpt", "aiou", "bdgkmnpt", "aiou", "dgkmnpt")][:1500]
    words = [stem + suffix for stem in candidates for suffix in SUFFIXES]
    stems = word_families(words)
    return tuple(s for s in candidates if all(stems[s + suffix] == s for suffix in SUFFIXES))


@dataclass(frozen=True)
class SyntheticCorpus:
    """``words``: ``word, category, family`` (the simulated family, which the stemmer must reproduce)."""

    name: str
    words: pl.DataFrame


def synthetic_corpus(name: str, categories: int, words_per_category: int, rng: np.random.Generator,
                     offset: int = 0) -> SyntheticCorpus:
    """Categories ``C0``, ``C1``, ... of ``words_per_category`` words each, in families of 1-4 words."""
    stems = _stems()
    rows, family = [], offset
    for c in range(categories):
        left = words_per_category
        while left:
            size = min(left, int(rng.integers(1, 5)))
            rows += [(stems[family] + suffix, f"C{c}", stems[family]) for suffix in SUFFIXES[:size]]
            family, left = family + 1, left - size
    return SyntheticCorpus(name, pl.DataFrame(rows, schema=["word", "category", "family"], orient="row"))


def _family_correlated(rng: np.random.Generator, family_index: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normals over the last axis (entries), correlated 0.5 within families."""
    shared = rng.standard_normal(shape[:-1] + (int(family_index.max()) + 1,))
    return np.sqrt(0.5) * shared[..., family_index] + np.sqrt(0.5) * rng.standard_normal(shape)


def simulate_ranks(seed: int, *, corpora: dict[str, int] | None = None, words_per_category: int = 40,
                   prompts_per_framing: int = 27, models: int = 6, favoured: dict[int, tuple[str, str]] | None = None,
                   d: float = 1.0) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """(ranks, framings, corpus sizes): every model's word ranks (``model`` + ``ENTRY_KEYS`` + ``rank``, raw,
    1 = best), ``prompt, framing``, and the entries per corpus. ``corpora``: {name: number of categories}
    (default two corpora of 2 and 5 categories); ``favoured``: {model index: (corpus, category)}."""
    rng = np.random.default_rng(seed)
    corpora = corpora or {"two": 2, "five": 5}
    favoured = favoured or {}
    prompts = {framing: [f"{framing}_{i}" for i in range(prompts_per_framing)] for framing in FRAMINGS}
    framings = pl.DataFrame([(p, f) for f in FRAMINGS for p in prompts[f]], schema=["prompt", "framing"], orient="row")
    parts, sizes, offset = [], {}, 0
    for name, n_categories in corpora.items():
        corpus = synthetic_corpus(name, n_categories, words_per_category, rng, offset)
        offset += corpus.words["family"].n_unique()
        words = corpus.words
        family_index = words["family"].rank("dense").cast(pl.Int64).to_numpy() - 1
        category_index = words["category"].str.slice(1).cast(pl.Int64).to_numpy()
        n_words = words.height
        sizes[name] = n_words
        for framing in FRAMINGS:
            n_prompts = len(prompts[framing])
            g = _family_correlated(rng, family_index, (n_words,))
            a = _family_correlated(rng, family_index, (models, n_words))
            e = rng.standard_normal((models, n_prompts, n_words))
            v = rng.standard_normal((models, n_prompts, n_categories))[..., category_index]
            score = g[None, None, :] + 0.5 * a[:, None, :] + 0.1 * e + 0.02 * v
            for model, (fav_corpus, fav_category) in favoured.items():
                if fav_corpus == name:
                    sign = 1.0 if framing == "positive" else -1.0
                    score[model] += sign * d * (words["category"] == fav_category).to_numpy()[None, :]
            ranks = rankdata(-score, axis=-1)
            parts.append(pl.DataFrame({
                "model": np.repeat([f"m{m}" for m in range(models)], n_prompts * n_words),
                "corpus": name, "ranks": RAW,
                "prompt": np.tile(np.repeat(prompts[framing], n_words), models),
                "word": np.tile(words["word"].to_numpy(), models * n_prompts),
                "category": np.tile(words["category"].to_numpy(), models * n_prompts),
                "rank": ranks.reshape(-1).astype(float)}))
    return pl.concat(parts), framings, sizes
